"""A member's backlog over simulated time: skipping to the live edge, giving up on the stuck and the trickling."""

from __future__ import annotations

import pytest

from jamserver.jam.member.backlog import HARD_LIMIT_FACTOR, Backlog


def drain(backlog: Backlog, now: float) -> list[bytes]:
    out = []
    while (frame := backlog.take()) is not None:
        out.append(frame)
        backlog.sent(now)
    return out


def test_a_full_backlog_skips_to_the_live_edge_and_keeps_control_frames():
    backlog = Backlog(max_frames=3, stuck_seconds=10, now=0.0)
    backlog.offer(b"welcome", 0.0, droppable=False)
    dropped = sum(backlog.offer(f"clip-{i}".encode(), 0.1 * i).dropped for i in range(5))
    assert dropped == 3
    assert drain(backlog, 1.0) == [b"welcome", b"clip-3", b"clip-4"]


def test_a_tagged_frame_replaces_the_queued_one_with_the_same_tag():
    backlog = Backlog(max_frames=8, stuck_seconds=10, now=0.0)
    for count in range(3):
        backlog.offer(f"state {count}".encode(), 0.0, droppable=False, replaces="state")
    backlog.offer(b"clip", 0.0)
    assert drain(backlog, 0.0) == [b"state 2", b"clip"]


def test_a_member_that_sends_nothing_for_the_stuck_time_is_given_up():
    backlog = Backlog(max_frames=2, stuck_seconds=10, now=0.0)
    backlog.offer(b"clip-0", 0.0)
    assert backlog.take() == b"clip-0"  # being sent, and never finishes
    backlog.offer(b"clip-1", 1.0)
    backlog.offer(b"clip-2", 2.0)
    assert backlog.offer(b"clip-3", 9.0).give_up is None  # full, 9 s without progress: a drop
    offered = backlog.offer(b"clip-4", 10.5)
    assert offered.give_up == "too slow" and len(backlog) == 0


def test_a_member_that_trickles_but_never_catches_up_is_given_up():
    backlog = Backlog(max_frames=2, stuck_seconds=10, now=0.0)
    now = 0.0
    for _ in range(2):
        backlog.offer(b"clip", now)
    for _ in range(20):  # it sends one frame a second while two arrive: never empty again
        now += 1.0
        assert backlog.take() is not None
        backlog.sent(now)
        first = backlog.offer(b"clip", now)
        second = backlog.offer(b"clip", now)
        if second.give_up or first.give_up:
            break
    assert now == pytest.approx(12.0)  # the first burst more than 10 s after its first drop (at 1 s), though it sent every second
    assert (first.give_up or second.give_up) == "too slow"


def test_catching_up_once_forgives_the_earlier_drops():
    backlog = Backlog(max_frames=2, stuck_seconds=10, now=0.0)
    now = 0.0
    for _ in range(3):  # a drop at 0 s
        backlog.offer(b"clip", now)
    for now in (8.0, 16.0, 24.0):  # each time it empties its backlog before the next burst
        drain(backlog, now)
        assert all(backlog.offer(b"clip", now).give_up is None for _ in range(3))


def test_an_idle_spell_is_not_slowness():
    backlog = Backlog(max_frames=2, stuck_seconds=10, now=0.0)
    backlog.offer(b"clip", 0.0)
    drain(backlog, 0.5)
    for _ in range(3):  # 100 s later a burst fills it: a drop, not a give-up
        offered = backlog.offer(b"clip", 100.0)
    assert offered.give_up is None and offered.dropped == 1


def test_control_frames_overfill_only_up_to_the_hard_limit():
    backlog = Backlog(max_frames=2, stuck_seconds=10, now=0.0)
    results = [backlog.offer(b"error", 0.0, droppable=False) for _ in range(HARD_LIMIT_FACTOR * 2 + 1)]
    assert all(result.give_up is None for result in results[:-1])
    assert results[-1].give_up == "too slow (queue overflow)" and len(backlog) == 0
