"""Steady delivery: a room's clips leave the server one clip length apart, whatever the device's jitter.

A clip is planned when the playhead enters the last clip made, so plans are one clip length apart; but a clip
takes 0.9 s when the device is free and 1.9 s when other rooms' work is batched beside it, and a listener that
plays clips as they arrive (a version-1 client, a script) sees that jitter as a gap of 5.12 s + the change in
render time. So each finished clip is held until `planned + offset`: the offset aims a quarter above the slowest
of the room's recent renders, rises towards that by at most `RAISE_STEP` a clip (each rise stretches one gap by as
much), and never exceeds a share of the clip, so a hold never eats into the time listeners need the clip by. A
render slower than the offset goes out when ready; the next clip is aimed one clip length after it. Cut-ins and a
room's first clip are never held: they are about latency, not cadence; nor is a clip of a room that already wants
the next one (catching up, or a deep lookahead), since holding it would idle the room's share of the device. Pure: times are passed in.
"""

from __future__ import annotations

import math
from collections import deque

RECENT_RENDERS = 8
HEADROOM = 1.25  # over the slowest recent render: a slightly slower one still leaves on time
RAISE_STEP = 0.1  # seconds the offset may grow from one clip to the next
# Of the time between planning a clip and its first sample playing (one clip length), at most this share is spent
# holding it: the rest stays as the listeners' margin.
MAX_HOLD_SHARE = 0.4


class SteadyDelivery:
    """When a finished clip should be sent: `release_at(planned)`; then tell it when the clip was `sent`."""

    def __init__(self, clip_duration: float, *, recent: int = RECENT_RENDERS) -> None:
        _check_positive("clip_duration", clip_duration)
        if recent < 1:
            raise ValueError(f"recent must be >= 1, got {recent!r}")
        self.clip_duration = float(clip_duration)
        self._renders: deque[float] = deque(maxlen=recent)
        self.offset = 0.0  # seconds after planning at which the next clip leaves, if it is ready

    @property
    def target(self) -> float:
        """The offset aimed at: a quarter above the slowest recent render, capped."""
        slowest = max(self._renders, default=0.0)
        return min(HEADROOM * slowest, MAX_HOLD_SHARE * self.clip_duration)

    def release_at(self, planned: float) -> float:
        """The wall time a clip planned at `planned` leaves, if it is ready by then."""
        if not math.isfinite(planned):
            raise ValueError(f"planned must be a finite time, got {planned!r}")
        return planned + self.offset

    def sent(self, planned: float, sent_at: float, render_seconds: float, clip_duration: float | None = None) -> None:
        """A clip planned at `planned` took `render_seconds` and left at `sent_at` (held or late)."""
        if not (math.isfinite(render_seconds) and render_seconds >= 0):
            raise ValueError(f"a render time must be a finite number of seconds >= 0, got {render_seconds!r}")
        if not (math.isfinite(sent_at) and sent_at >= planned):
            raise ValueError(f"sent_at must be a finite time not before planned, got {sent_at!r}")
        if clip_duration is not None:
            _check_positive("clip_duration", clip_duration)
            self.clip_duration = float(clip_duration)
        self._renders.append(float(render_seconds))
        actual = sent_at - planned
        self.offset = min(self.target, actual + RAISE_STEP)


def _check_positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
