"""When a cut-in lands: the earliest beat (or a bar, if it costs little more) the listeners have not reached yet.

A new prompt is rendered as the clip under the cut time T and spliced into the stream from T, so
the listener hears it after T minus the playhead. T must leave time for the clip to be generated
(estimated from the room's recent clips) and to reach every member (a network margin, plus the delay measured from
the owner to the front-ends relaying the room when it runs on a cluster); it sits on
the seed loop's beat grid so the music changes on a beat, and on a bar line when the next bar is
only a little later. Seed loops repeat every clip, so the grid is the same in every clip. Pure.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

_EPS = 1e-9
DEFAULT_BEATS = 8  # a seed without a tempo (an upload) is cut on eighths of its loop


@dataclass(frozen=True)
class BeatGrid:
    """Beat boundaries of a looping clip: `beats` per `loop_seconds`, bars of `beats_per_bar`, from stream time 0."""

    loop_seconds: float
    beats: int = DEFAULT_BEATS
    beats_per_bar: int = 4

    def __post_init__(self) -> None:
        if not self.loop_seconds > 0 or not math.isfinite(self.loop_seconds):
            raise ValueError(f"loop_seconds must be positive, got {self.loop_seconds!r}")
        for name in ("beats", "beats_per_bar"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")

    @classmethod
    def for_seed(cls, loop_seconds: float, beats: int | None) -> BeatGrid:
        """The grid of a seed image from its index entry's `beats`; bars of 3 when the beats divide by 3 only."""
        if beats is None:
            return cls(loop_seconds)
        per_bar = 4 if beats % 4 == 0 else 3 if beats % 3 == 0 else beats
        return cls(loop_seconds, beats, per_bar)

    @property
    def beat_seconds(self) -> float:
        return self.loop_seconds / self.beats

    @property
    def bar_seconds(self) -> float:
        return self.beat_seconds * self.beats_per_bar

    def next_beat(self, at_or_after: float) -> float:
        return _next_multiple(at_or_after, self.beat_seconds)

    def next_bar(self, at_or_after: float) -> float:
        return _next_multiple(at_or_after, self.bar_seconds)


def _next_multiple(at_or_after: float, step: float) -> float:
    """The smallest multiple of `step` that is >= `at_or_after` (up to rounding)."""
    return math.ceil(at_or_after / step - _EPS) * step


@dataclass(frozen=True)
class CutTiming:
    """How far ahead of the playhead a cut must be planned, and how far it may stray to reach a bar line."""

    network_margin: float = 0.35  # frame to every member, client splice; covers the MP3 restart's lead
    bar_slack: float = 0.5  # take the next bar line if it is at most this much later than the next beat

    def __post_init__(self) -> None:
        for name in ("network_margin", "bar_slack"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")

    def reach(self, delivery: float = 0.0) -> float:
        """Seconds a cut must leave the room's owner ahead of its stream time: the margin, plus `delivery`, the time
        its frame takes to get from the owner to the front-ends relaying it (0 in one process)."""
        return self.network_margin + max(delivery, 0.0)

    def earliest(self, playhead: float, generation_seconds: float, delivery: float = 0.0) -> float:
        """The earliest stream time a cut decided now can reach every member before they play it."""
        return max(playhead, 0.0) + max(generation_seconds, 0.0) + self.reach(delivery)

    def cut_time(self, grid: BeatGrid, playhead: float, generation_seconds: float, delivery: float = 0.0) -> float:
        """T: the first beat after `earliest`, or the first bar line if it is no more than `bar_slack` later."""
        earliest = self.earliest(playhead, generation_seconds, delivery)
        beat = grid.next_beat(earliest)
        bar = grid.next_bar(earliest)
        return bar if bar - beat <= self.bar_slack + _EPS else beat

    def still_reachable(self, cut_time: float, playhead: float, delivery: float = 0.0) -> bool:
        """A rendered cut may still land at `cut_time`: members get it before they play it."""
        return cut_time >= max(playhead, 0.0) + self.reach(delivery) - _EPS


def loop_offset(cut_time: float, loop_seconds: float) -> float:
    """Where in its loop a cut at `cut_time` begins; 0 on a loop boundary, even one that rounding puts a hair
    before the loop's end (15.36 % 5.12 is 5.1199...)."""
    offset = cut_time % loop_seconds
    return 0.0 if loop_seconds - offset < 1e-6 else offset


def cut_segment_seconds(cut_time: float, loop_seconds: float, following_seconds: float) -> float:
    """How much of the cut-in clip to splice from T: to the end of its loop, plus one more loop when too little
    would be left for the clip after it to be made in time (`following_seconds`: its expected generation time plus
    the margin), so the music never runs dry behind a late cut."""
    to_loop_end = _next_multiple(cut_time, loop_seconds) - cut_time
    if to_loop_end < _EPS:  # a cut on a loop boundary plays one whole loop
        to_loop_end = loop_seconds
    return to_loop_end + (loop_seconds if to_loop_end < following_seconds else 0.0)


class GenerationEstimate:
    """Expected seconds to make a clip: an exponentially weighted mean of the room's recent clips.

    Leans to the slow side (a cut planned on an optimistic guess misses its beat): a slower clip
    moves the estimate by `rise` of the difference, a faster one only by `fall`.
    """

    def __init__(self, initial: float, *, rise: float = 0.5, fall: float = 0.2, headroom: float = 1.15) -> None:
        if not initial > 0 or not math.isfinite(initial):
            raise ValueError(f"initial must be a positive number of seconds, got {initial!r}")
        if not (0 < rise <= 1 and 0 < fall <= 1):
            raise ValueError(f"rise and fall must be in (0, 1], got {rise!r} and {fall!r}")
        if not headroom >= 1:
            raise ValueError(f"headroom must be >= 1, got {headroom!r}")
        self._mean = float(initial)
        self._rise, self._fall = rise, fall
        self.headroom = headroom

    def observe(self, seconds: float) -> None:
        if not seconds >= 0 or not math.isfinite(seconds):
            raise ValueError(f"a generation time must be a finite number of seconds >= 0, got {seconds!r}")
        weight = self._rise if seconds > self._mean else self._fall
        self._mean += weight * (seconds - self._mean)

    @property
    def mean(self) -> float:
        return self._mean

    @property
    def seconds(self) -> float:
        """What a cut should plan for."""
        return self._mean * self.headroom


class DeliveryDelay:
    """Seconds from a frame leaving the room's owner to the front-ends relaying it reaching it (a cluster; none in
    one process): the largest delay observed in the last `memory` seconds.

    The largest, not a mean: a cut planned for the typical delay lands late whenever one front-end is slow, and a
    late cut is heard (the old audio past the beat, then a jump). Forgotten after `memory`, so one stall does not
    slow every cut for good. Time is passed in.
    """

    def __init__(self, memory: float = 60.0, *, most: float = 5.0) -> None:
        if not memory > 0 or not math.isfinite(memory):
            raise ValueError(f"memory must be a positive number of seconds, got {memory!r}")
        self.memory = float(memory)
        self.most = most  # larger reports are taken as this much (a wrong clock must not stop cuts altogether)
        self._seen: deque[tuple[float, float]] = deque()  # (when, seconds), the seconds falling from left to right

    def observe(self, seconds: float, now: float) -> None:
        """A front-end got a frame `seconds` after the owner sent it (negative: the clocks differ; taken as 0)."""
        if not math.isfinite(seconds) or not math.isfinite(now):
            raise ValueError(f"a delivery delay must be a finite number of seconds, got {seconds!r} at {now!r}")
        seconds = min(max(seconds, 0.0), self.most)
        while self._seen and self._seen[-1][1] <= seconds:  # outlived by a larger one: never the maximum again
            self._seen.pop()
        self._seen.append((now, seconds))

    def seconds(self, now: float) -> float:
        """What a cut planned at `now` should allow for."""
        while self._seen and self._seen[0][0] < now - self.memory:
            self._seen.popleft()
        return self._seen[0][1] if self._seen else 0.0
