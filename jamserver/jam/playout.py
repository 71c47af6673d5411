"""One playout clock per room: stream time S is played by every member at wall time t0 + S + D.

D (the playout delay) is the time every member gets between a clip leaving the server and having
to play its first sample; t0 is when the room's first clip left. Because all members follow the
same clock, the server knows where every listener is (the playhead) and can place a cut-in just
ahead of it. The clock holds still while the room is paused, and while it is starved: when the
playhead reaches the end of the audio generated so far, players run dry and wait, so the clock
waits with them instead of running ahead of what anyone can hear. Pure: time is passed in.
"""

from __future__ import annotations

import math


class PlayoutClock:
    """Wall time <-> stream time for one room. Before `start` the playhead is -delay (nothing plays yet)."""

    def __init__(self, delay: float) -> None:
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not 0 <= delay < math.inf:
            raise ValueError(f"playout delay must be a finite number of seconds >= 0, got {delay!r}")
        self.delay = float(delay)
        self._anchor_wall: float | None = None  # wall time at which the playhead was `_anchor_stream`
        self._anchor_stream = -self.delay
        self._running = False
        self._now = -math.inf

    @property
    def started(self) -> bool:
        return self._anchor_wall is not None

    @property
    def running(self) -> bool:
        """Started and not paused."""
        return self._running

    def start(self, now: float) -> None:
        """The first clip leaves the server now: stream time 0 plays at now + delay."""
        self._check(now)
        if self.started:
            raise ValueError("the playout clock has already started")
        self._anchor_wall, self._anchor_stream, self._running = now, -self.delay, True

    def playhead(self, now: float, generated_until: float = math.inf) -> float:
        """The stream time members are playing at `now`; held at `generated_until` while they are starved."""
        self._check(now)
        if self._anchor_wall is None:
            return self._anchor_stream
        if self._running:
            position = self._anchor_stream + (now - self._anchor_wall)
            if position > generated_until:  # starved: everyone waits at the end of the audio
                self._anchor_wall, self._anchor_stream = now, max(self._anchor_stream, generated_until)
                return self._anchor_stream
            return position
        return self._anchor_stream

    def wall_time(self, stream_time: float) -> float | None:
        """When members will play `stream_time` if nothing stalls; None before start or while paused."""
        if self._anchor_wall is None or not self._running:
            return None
        return self._anchor_wall + (stream_time - self._anchor_stream)

    @classmethod
    def resumed(cls, delay: float, playhead: float, now: float, *, started: bool, running: bool) -> PlayoutClock:
        """A clock carried over from another process: at `now` it stands at `playhead` (a room snapshot)."""
        clock = cls(delay)
        clock._check(now)
        if started:
            clock._anchor_wall, clock._anchor_stream, clock._running = now, playhead, running
        return clock

    def pause(self, now: float, generated_until: float = math.inf) -> None:
        """Freeze the playhead where it is (pausing twice is harmless)."""
        position = self.playhead(now, generated_until)
        if self._running:
            self._anchor_wall, self._anchor_stream, self._running = now, position, False

    def resume(self, now: float) -> None:
        """Run on from the frozen playhead (resuming a running or unstarted clock is harmless)."""
        self._check(now)
        if self._anchor_wall is not None and not self._running:
            self._anchor_wall, self._running = now, True

    def _check(self, now: float) -> None:
        if not math.isfinite(now):
            raise ValueError(f"now must be a finite time, got {now}")
        if now < self._now:
            raise ValueError(f"now went backwards: {now} < {self._now}")
        self._now = now
