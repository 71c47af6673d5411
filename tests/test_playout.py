"""The room's playout clock: where every member is in the stream, through start, pause and starvation."""

from __future__ import annotations

import math

import pytest

from jamserver.jam.playout import PlayoutClock


def test_stream_time_plays_delay_seconds_after_the_first_clip_leaves() -> None:
    clock = PlayoutClock(1.5)
    assert clock.playhead(10.0) == -1.5  # nothing plays before the start
    clock.start(100.0)
    assert clock.playhead(100.0) == -1.5
    assert clock.playhead(101.5) == 0.0
    assert clock.playhead(104.0) == pytest.approx(2.5)
    assert clock.wall_time(7.0) == pytest.approx(108.5)


def test_a_starved_clock_waits_at_the_end_of_the_audio_and_runs_on_when_more_arrives() -> None:
    clock = PlayoutClock(0.5)
    clock.start(0.0)
    assert clock.playhead(5.0, generated_until=5.12) == pytest.approx(4.5)
    assert clock.playhead(7.0, generated_until=5.12) == pytest.approx(5.12)  # players ran dry
    assert clock.playhead(9.0, generated_until=5.12) == pytest.approx(5.12)
    assert clock.playhead(9.0, generated_until=10.24) == pytest.approx(5.12)  # the clip arrived now
    assert clock.playhead(10.0, generated_until=10.24) == pytest.approx(6.12)


def test_pause_freezes_the_playhead_and_resume_runs_on_from_it() -> None:
    clock = PlayoutClock(1.0)
    clock.start(0.0)
    clock.pause(4.0)
    assert not clock.running
    assert clock.playhead(50.0) == pytest.approx(3.0)
    assert clock.wall_time(10.0) is None
    clock.pause(51.0)  # twice: no change
    clock.resume(60.0)
    assert clock.playhead(62.0) == pytest.approx(5.0)
    clock.resume(63.0)  # twice: no change
    assert clock.playhead(63.0) == pytest.approx(6.0)


def test_resume_before_start_does_not_start_the_clock() -> None:
    clock = PlayoutClock(1.0)
    clock.resume(5.0)
    assert not clock.started and clock.playhead(9.0) == -1.0


@pytest.mark.parametrize("delay", [-0.1, math.inf, math.nan, True, "1"])
def test_bad_delays_are_refused(delay: object) -> None:
    with pytest.raises(ValueError, match="playout delay"):
        PlayoutClock(delay)  # type: ignore[arg-type]


def test_time_must_not_go_backwards_and_the_clock_starts_once() -> None:
    clock = PlayoutClock(1.0)
    clock.start(5.0)
    with pytest.raises(ValueError, match="backwards"):
        clock.playhead(4.0)
    with pytest.raises(ValueError, match="finite"):
        clock.playhead(math.nan)
    with pytest.raises(ValueError, match="already started"):
        clock.start(6.0)
