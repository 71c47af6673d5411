"""Cut times: on the seed's beat grid, after the playhead plus generation and network time, bars when cheap."""

from __future__ import annotations

import math

import pytest

from jamserver.jam.cuts import (
    BeatGrid,
    CutTiming,
    DeliveryDelay,
    GenerationEstimate,
    cut_segment_seconds,
    loop_offset,
)

LOOP = 5.12
OG_BEAT = BeatGrid.for_seed(LOOP, 8)  # 93.75 BPM: beats every 0.64 s, bars every 2.56 s


def test_grids_from_the_seed_index() -> None:
    assert OG_BEAT.beat_seconds == pytest.approx(0.64) and OG_BEAT.bar_seconds == pytest.approx(2.56)
    waltz = BeatGrid.for_seed(LOOP, 9)  # marim: 3/4
    assert waltz.beats_per_bar == 3 and waltz.bar_seconds == pytest.approx(LOOP / 3)
    odd = BeatGrid.for_seed(LOOP, 7)
    assert odd.bar_seconds == pytest.approx(LOOP)
    assert BeatGrid.for_seed(LOOP, None).beat_seconds == pytest.approx(LOOP / 8)


def test_next_boundaries_include_an_exact_hit() -> None:
    assert OG_BEAT.next_beat(1.28) == pytest.approx(1.28)
    assert OG_BEAT.next_beat(1.2800001) == pytest.approx(1.92)
    assert OG_BEAT.next_bar(0.1) == pytest.approx(2.56)


@pytest.mark.parametrize("playhead", [0.0, 0.37, 3.0, 11.9, 100.01])
def test_the_cut_is_the_first_beat_after_playhead_generation_and_margin(playhead: float) -> None:
    timing = CutTiming(network_margin=0.3, bar_slack=0.0)
    cut = timing.cut_time(OG_BEAT, playhead, generation_seconds=0.8)
    earliest = playhead + 1.1
    assert earliest - 1e-9 <= cut < earliest + 0.64
    assert (cut / 0.64) == pytest.approx(round(cut / 0.64))


def test_a_bar_line_is_taken_when_it_is_only_a_little_later_than_the_next_beat() -> None:
    timing = CutTiming(network_margin=0.0, bar_slack=0.7)
    assert timing.cut_time(OG_BEAT, 1.5, 0.0) == pytest.approx(2.56)  # beat 1.92, bar 0.64 later: take the bar
    assert timing.cut_time(OG_BEAT, 2.6, 0.0) == pytest.approx(3.2)  # bar 5.12 is far: the beat


def test_a_cut_never_lands_before_the_playhead_even_with_nothing_to_wait_for() -> None:
    timing = CutTiming(network_margin=0.0, bar_slack=0.0)
    assert timing.cut_time(OG_BEAT, 7.0, 0.0) >= 7.0
    assert timing.cut_time(OG_BEAT, -1.0, 0.0) == 0.0  # before the stream starts: its very beginning


def test_a_rendered_cut_is_still_reachable_only_with_the_margin_left() -> None:
    timing = CutTiming(network_margin=0.3)
    assert timing.still_reachable(5.0, playhead=4.7)
    assert not timing.still_reachable(5.0, playhead=4.71)


@pytest.mark.parametrize("kwargs", [{"network_margin": -0.1}, {"bar_slack": math.inf}, {"network_margin": "1"}])
def test_bad_timings_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        CutTiming(**kwargs)


def test_bad_grids_are_refused() -> None:
    with pytest.raises(ValueError, match="loop_seconds"):
        BeatGrid(0.0)
    with pytest.raises(ValueError, match="beats"):
        BeatGrid(LOOP, beats=0)


def test_the_segment_runs_to_the_loop_end_or_one_loop_further_when_that_is_too_close() -> None:
    assert cut_segment_seconds(6.4, LOOP, following_seconds=1.0) == pytest.approx(10.24 - 6.4)
    assert cut_segment_seconds(9.6, LOOP, following_seconds=1.0) == pytest.approx(10.24 - 9.6 + LOOP)
    assert cut_segment_seconds(10.24, LOOP, following_seconds=1.0) == pytest.approx(LOOP)


def test_a_cut_on_a_loop_boundary_starts_at_the_loop_start_whatever_the_rounding() -> None:
    assert 15.36 % LOOP > LOOP - 1e-9  # what the server once sent as an offset outside the clip
    assert loop_offset(15.36, LOOP) == 0.0 and loop_offset(3 * 0.64 * 8, LOOP) == 0.0
    assert loop_offset(6.4, LOOP) == pytest.approx(1.28)


def test_the_generation_estimate_rises_fast_and_falls_slowly() -> None:
    estimate = GenerationEstimate(1.0, rise=0.5, fall=0.2, headroom=1.0)
    estimate.observe(3.0)
    assert estimate.seconds == pytest.approx(2.0)
    estimate.observe(0.0)
    assert estimate.seconds == pytest.approx(1.6)
    for _ in range(40):
        estimate.observe(0.5)
    assert estimate.seconds == pytest.approx(0.5, abs=1e-3)
    assert GenerationEstimate(1.0, headroom=1.2).seconds == pytest.approx(1.2)
    with pytest.raises(ValueError, match="generation time"):
        estimate.observe(math.nan)
    with pytest.raises(ValueError, match="initial"):
        GenerationEstimate(0.0)


def test_the_delivery_delay_is_added_to_the_margin_when_a_cut_is_timed_and_when_it_lands() -> None:
    timing = CutTiming(network_margin=0.3, bar_slack=0.0)
    assert timing.reach(0.25) == pytest.approx(0.55) and timing.reach(-0.1) == pytest.approx(0.3)
    assert timing.cut_time(OG_BEAT, 2.0, generation_seconds=0.4) == pytest.approx(5 * 0.64)  # earliest 2.7
    assert timing.cut_time(OG_BEAT, 2.0, generation_seconds=0.4, delivery=0.6) == pytest.approx(6 * 0.64)  # 3.3
    assert timing.still_reachable(5.0, playhead=4.6, delivery=0.1)
    assert not timing.still_reachable(5.0, playhead=4.61, delivery=0.1)


def test_the_delivery_delay_is_the_largest_of_the_last_minute_forgotten_after_it() -> None:
    delay = DeliveryDelay(memory=60.0)
    assert delay.seconds(0.0) == 0.0  # one process: nothing relayed, nothing added
    for now, seconds in ((0.0, 0.02), (5.0, 0.40), (10.0, 0.05), (15.0, 0.03)):
        delay.observe(seconds, now)
    assert delay.seconds(15.0) == pytest.approx(0.40)  # one slow delivery counts at once, not averaged away
    assert delay.seconds(65.0) == pytest.approx(0.40)
    assert delay.seconds(65.1) == pytest.approx(0.05)  # a minute after it, the largest since
    assert delay.seconds(75.1) == pytest.approx(0.0)
    delay.observe(-0.3, 80.0)  # a front-end whose clock is behind the owner's: no negative margin
    delay.observe(99.0, 81.0)  # nor a wrong clock that would stop cuts altogether
    assert delay.seconds(81.0) == pytest.approx(delay.most)
    with pytest.raises(ValueError):
        delay.observe(math.nan, 82.0)
