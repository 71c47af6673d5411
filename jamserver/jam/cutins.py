"""The session's cut-in rules: a prompt (or a change of sound) spliced in on a beat just ahead of the playhead.

Mixed into `JamSession` (it works on the session's state: the transition, the clips planned and delivered, the
queue, the playout clock). `plan_cut` picks the cut time T (cuts.py), goes back to the transition as it was in
the clip playing at T, and plans that clip again with the new prompt as its target, to be spliced in from T;
clips planned after T are superseded. `land_cut` moves a cut that was made too late to the next beat members can
still get. A cut that is stopped (`drop`, to coalesce it with a newer prompt) or fails is undone: the session is
as before it, with its prompt back at the head of the queue, and the cut is wanted again. Pure.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

from jamserver.jam.cuts import BeatGrid, cut_segment_seconds, loop_offset

_EPS = 1e-9
KEEP_PLANS = 8  # delivered clips remembered for a cut to go back to (a cut lands within a few clips of the end)


@dataclass(frozen=True)
class CutStats:
    """What became of the room's cut-ins (for metrics and the benchmark)."""

    planned: int = 0
    landed: int = 0
    late: int = 0  # rendered after their beat had become unreachable: moved to the next reachable one
    coalesced: int = 0  # prompts superseded by a later one before their cut was made


@dataclass
class _Undo:
    """The session as it was before a cut was planned, to go back to if the cut is stopped or fails."""

    state: dict[str, Any]
    superseded: tuple[Any, ...]  # the clips in flight the cut superseded: made again if it is undone
    taken: Any = None  # the queued prompt the cut took
    sides: dict[int, Any] = field(default_factory=dict)


_SAVED = ("_start", "_end", "_alpha", "_next_seq", "_contiguous", "_placed", "_walks", "_retry", "_delivered", "_sides")


class CutIns:
    """Cut-in rules for JamSession (see the module docstring); the attributes used are the session's."""

    def wants_cut(self, now: float) -> bool:
        """A prompt or a sound change is waiting to be cut in, and the stream is running to cut into."""
        self._tick(now)
        return (self._cut_wanted and self._clock.started and not self._paused and self._listeners > 0
                and self._cut_in_flight() is None and not self._cut_waiting())

    def _cut_waiting(self) -> bool:
        """The cut waits for the clip being made under its beat (it can only cut into audio that is there)."""
        return self._cut_wanted and self._cut_waits_for in self._in_flight

    @property
    def waiting_prompts(self) -> tuple:
        """Prompts not heard yet: the up-next queue and those taken by cuts still being made."""
        return (*self._queue, *(undo.taken for undo in self._undo.values() if undo.taken is not None))

    @property
    def stale_cut(self):
        """The cut being made, if something newer is waiting to be cut in: the caller stops it (`drop`) to coalesce."""
        return self._cut_in_flight() if self._cut_wanted else None

    def _cut_in_flight(self):
        return next((plan for plan in self._in_flight.values() if plan.seq in self._undo), None)

    def plan_cut(self, now: float):
        """Plan the cut-in for what is waiting: the clip under beat T, to be spliced in from T.

        Returns the plan and the clips in flight it supersedes (they start after T: the caller stops making
        them and never delivers them). The newest queued prompt wins over older ones. When T is the end of the
        generated audio, the clip being made for there is made again with the prompt (a plain clip, nothing to
        replace). When the first reachable beat lies in the clip still being made for the end of the stream, no
        plan yet: the cut is wanted again (and planned) once that clip is there. Otherwise no plan: the next clip
        planned at the end of the stream, before the beat, takes the prompt, as without cut-ins.
        """
        playhead = self.position(now)
        self._cut_wanted = False
        cut_time = self.cut_timing.cut_time(self._grid(self.settings.seed_image_id), playhead,
                                            self.cut_generation.seconds, self.delivery.seconds(now))
        playing = [plan for plan in self._placed.values() if plan.stream_time < cut_time - _EPS]
        at_end = abs(cut_time - self._generated) < 1e-6
        if cut_time > self._generated + 1e-6:
            # The beat lies in the clip being made for the end of the stream: cut in once it is there. Else the
            # next clip planned at the end of the stream (before the beat) carries the prompt.
            covering = [plan.seq for plan in self._in_flight.values() if plan.stream_time <= cut_time < plan.stream_end]
            self._cut_wanted, self._cut_waits_for = bool(covering), (covering[0] if covering else None)
            return None, ()
        if not playing or (at_end and not self._in_flight):
            return None, ()
        undo = _Undo({name: _copied(getattr(self, name)) for name in _SAVED}, ())
        undo.superseded = tuple(plan for plan in self._in_flight.values() if plan.stream_time >= cut_time - _EPS)
        for plan in undo.superseded:
            del self._in_flight[plan.seq]
        later = [seq for seq, plan in self._placed.items() if plan.stream_time >= cut_time - _EPS]
        unsent = [seq for seq in later if seq >= self._contiguous and seq not in self._delivered]
        for seq in later:
            for table in (self._placed, self._walks, self._delivered, self._sides):
                table.pop(seq, None)
        self._retry = [(seq, plan) for seq, plan in self._retry if seq not in later]
        heapq.heapify(self._retry)
        self._start, self._end, self._alpha = self._walks[max(plan.seq for plan in playing)]
        # the numbers of clips never sent are free again; a sent clip's is not (members drop a repeated seq)
        self._next_seq = min(unsent, default=self._next_seq)
        self._contiguous = min(self._contiguous, self._next_seq)
        if len(self._queue) > 1:  # prompts that came close together: the last wins
            self.cut_stats = replace(self.cut_stats, coalesced=self.cut_stats.coalesced + len(self._queue) - 1)
            self._queue = deque([self._queue[-1]])
        undo.taken = self._queue[0] if self._queue else None
        following = self.generation.seconds + self.cut_reach(now)
        if at_end:  # the clip for the end of the stream, now carrying the prompt
            plan = replace(self._advance_transition(), stream_time=cut_time, duration=self.clip_duration)
        else:
            plan = replace(self._advance_transition(), stream_time=cut_time, replaces=True,
                           duration=cut_segment_seconds(cut_time, self.clip_duration, following),
                           loop_offset=loop_offset(cut_time, self.clip_duration))
        self._placed[plan.seq] = self._in_flight[plan.seq] = plan
        self._undo[plan.seq] = undo
        self.cut_stats = replace(self.cut_stats, planned=self.cut_stats.planned + 1)
        return plan, undo.superseded

    def land_cut(self, plan, now: float):
        """Where a rendered cut goes now: its beat if members can still get it in time, else the next beat they can
        (a missed deadline), or the end of the stream if the generated audio runs out before that beat."""
        if not self.planned(plan):
            raise ValueError(f"clip {plan.seq} (attempt {plan.attempt}) is not in flight")
        playhead = self.position(now)
        delivery = self.delivery.seconds(now)
        if self.cut_timing.still_reachable(plan.stream_time, playhead, delivery):
            return plan
        reach = self.cut_timing.reach(delivery)
        cut_time = self._grid(plan.seed_image_id).next_beat(max(playhead, 0.0) + reach)
        end = self._generated
        if cut_time >= end - _EPS:
            landed = replace(plan, stream_time=end, duration=self.clip_duration, replaces=False, loop_offset=0.0)
        else:
            following = self.generation.seconds + reach
            landed = replace(plan, stream_time=cut_time, loop_offset=loop_offset(cut_time, self.clip_duration), replaces=True,
                             duration=cut_segment_seconds(cut_time, self.clip_duration, following))
        self._in_flight[plan.seq] = self._placed[plan.seq] = landed
        self.cut_stats = replace(self.cut_stats, late=self.cut_stats.late + 1)
        return landed

    def cut_reach(self, now: float) -> float:
        """How long before its stream time a cut must leave this process to reach every member in time."""
        return self.cut_timing.reach(self.delivery.seconds(now))

    def delivery_observed(self, seconds: float, now: float) -> None:
        """A front-end relaying the room got a frame `seconds` after this owner sent it (a cluster): cuts allow
        for the slowest such delivery of late."""
        self.delivery.observe(seconds, now)

    def drop(self, plan) -> None:
        """The caller stopped making a cut (to coalesce it with what came since): it is wanted again."""
        if plan.seq not in self._undo:
            raise ValueError(f"clip {plan.seq} is not a cut; clips are superseded by plan_cut, or fail")
        self._take_in_flight(plan)
        self._undo_cut(plan)

    def _undo_cut(self, plan) -> None:
        undo = self._undo.pop(plan.seq, None)
        if undo is None:  # landed at the end of the stream as a plain clip: nothing to go back to
            self._cut_wanted = True
            return
        for name, value in undo.state.items():
            setattr(self, name, value)
        for superseded in undo.superseded:  # those clips are needed again: made again like failed ones
            heapq.heappush(self._retry, (superseded.seq, superseded))
        if undo.taken is not None and len(self._queue) < self.max_up_next:
            self._queue.appendleft(undo.taken)
        self._cut_wanted = True

    def _cut_delivered(self, plan, length: float) -> None:
        """A cut reached the listeners: the stream now ends with it; what it superseded is forgotten."""
        self._delivered = {seq: value for seq, value in self._delivered.items() if seq < plan.seq}
        self._generated = plan.stream_time + length
        self._contiguous = plan.seq + 1
        ends = [end for end in self._clip_ends if end < plan.stream_time - _EPS]
        self._clip_ends = deque([*ends, plan.stream_time, self._generated])
        self.cut_stats = replace(self.cut_stats, landed=self.cut_stats.landed + 1)

    def _remember_plans(self) -> None:
        """Keep the plans of the last few delivered clips only (for a cut to go back to)."""
        for seq in [seq for seq in self._placed if seq < self._contiguous - KEEP_PLANS]:
            del self._placed[seq]
            self._walks.pop(seq, None)

    def _grid(self, seed_image_id: str) -> BeatGrid:
        return BeatGrid.for_seed(self.clip_duration, self._beats_of(seed_image_id))


def _copied(value: Any) -> Any:
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        return list(value)
    return value
