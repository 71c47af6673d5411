"""Steady delivery over simulated time: clips planned one clip length apart leave one clip length apart even
when their render times jitter, and a hold never takes more than its share of a listener's margin."""

from __future__ import annotations

import pytest

from jamserver.jam.pacing import HEADROOM, MAX_HOLD_SHARE, RAISE_STEP, SteadyDelivery

CLIP = 5.12
# Render times of a cheap room's clips beside eight heavy rooms (bench_abuse.py, 20:12 UTC): 0.9-1.9 s.
JITTER = [0.43, 1.21, 0.9, 1.9, 0.95, 1.8, 1.0, 1.3, 0.9, 1.85, 1.1, 0.92, 1.4, 0.95, 1.7, 1.0]


def arrivals(render_times: list[float], pacer: SteadyDelivery | None) -> list[float]:
    """When each clip, planned every CLIP seconds, reaches listeners (the first is never held)."""
    sent = []
    for index, render in enumerate(render_times):
        planned = index * CLIP
        ready = planned + render
        leaves = max(ready, pacer.release_at(planned)) if pacer is not None and index else ready
        sent.append(leaves)
        if pacer is not None:
            pacer.sent(planned, leaves, render)
    return sent


def gaps(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in zip(times, times[1:], strict=False)]


def test_jittery_renders_arrive_one_clip_length_apart_once_the_slowest_is_known():
    unpaced = gaps(arrivals(JITTER, None))
    paced = gaps(arrivals(JITTER, SteadyDelivery(CLIP)))
    assert max(unpaced) > 5.5  # what listeners saw before: 5.12 s + the change in render time
    slow = [index for index, gap in enumerate(paced) if gap > CLIP + RAISE_STEP + 1e-9]
    assert slow == [0, 2]  # only a render slower than anything before it stretches its gap
    assert max(paced[3:]) <= CLIP + RAISE_STEP + 1e-9  # then the hold rises a step a clip
    assert all(CLIP - 0.1 <= gap <= CLIP + 1e-9 for gap in paced[8:])  # until clips leave a clip length apart


def test_a_late_render_goes_out_when_ready_and_the_next_clip_is_aimed_one_clip_after_it():
    pacer = SteadyDelivery(CLIP)
    pacer.sent(0.0, 1.0, 1.0)
    assert pacer.release_at(CLIP) == pytest.approx(CLIP + 1.0 + RAISE_STEP)  # rising by one step
    pacer.sent(CLIP, CLIP + 1.9, 1.9)  # late for its release
    assert pacer.release_at(2 * CLIP) == pytest.approx(2 * CLIP + 1.9 + RAISE_STEP)


def test_the_hold_is_capped_so_listeners_keep_most_of_a_clip_as_margin():
    pacer = SteadyDelivery(CLIP)
    pacer.sent(0.0, 4.9, 4.9)  # a heavy room: renders near real time go out as soon as they are ready
    assert pacer.offset == pytest.approx(MAX_HOLD_SHARE * CLIP)
    pacer.sent(CLIP, CLIP + 2.56, 0.5, clip_duration=2.56)  # a narrower seed: shorter clips, smaller cap
    assert pacer.offset == pytest.approx(MAX_HOLD_SHARE * 2.56)


def test_the_slowest_render_is_forgotten_after_a_few_clips():
    pacer = SteadyDelivery(CLIP, recent=3)
    for index, render in enumerate((1.9, 0.5, 0.6, 0.7)):
        pacer.sent(index * CLIP, index * CLIP + render, render)
    assert pacer.target == pytest.approx(HEADROOM * 0.7)
    assert pacer.offset <= pacer.target


def test_nothing_is_held_before_a_render_was_seen_and_bad_times_are_refused():
    pacer = SteadyDelivery(CLIP)
    assert pacer.release_at(3.0) == 3.0
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="render time"):
            pacer.sent(0.0, 1.0, bad)
    with pytest.raises(ValueError, match="sent_at"):
        pacer.sent(5.0, 4.0, 1.0)
    with pytest.raises(ValueError, match="clip_duration"):
        SteadyDelivery(0.0)
    with pytest.raises(ValueError, match="planned"):
        pacer.release_at(float("nan"))
