"""A member's backlog of frames waiting to be sent: what goes when it is full, and when the member is too slow. Pure.

A slow member never slows its room: when its backlog is full the oldest droppable frame goes (it skips ahead to the
live edge), and one that stays behind is given up on: stuck when it made no progress at all for `stuck_seconds`, or
when it has not once emptied its backlog in the `stuck_seconds` since it first had to drop a frame (it trickles, but
can never catch up). Frames that must not be dropped (welcome, state, errors) may overfill the backlog, but only up to
`HARD_LIMIT_FACTOR` times its size: beyond that the member is given up on at once, so memory stays bounded. The
caller passes `now` in and does the sending (jamserver.server.room.fanout.Outbox).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

HARD_LIMIT_FACTOR = 4


@dataclass(frozen=True)
class Offered:
    """What offering a frame did: `dropped` frames went to make room; `give_up` names why the member is too slow."""

    dropped: int = 0
    give_up: str | None = None


class Backlog:
    def __init__(self, max_frames: int, stuck_seconds: float, now: float) -> None:
        if max_frames < 1:
            raise ValueError("max_frames must be at least 1")
        self.max_frames = max_frames
        self.stuck_seconds = stuck_seconds
        self._frames: deque[tuple[bytes, bool, str | None]] = deque()
        self._last_progress = now
        self._sending = False
        self._behind_since: float | None = None  # first drop since the backlog was last empty

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def full(self) -> bool:
        return len(self._frames) >= self.max_frames

    def offer(self, frame: bytes, now: float, *, droppable: bool = True, replaces: str | None = None) -> Offered:
        """Queue `frame`, dropping the oldest droppable one when full; `replaces` supersedes a queued frame so tagged
        (latest state wins, so a burst of joins queues one state frame per member, not one per join)."""
        if replaces is not None:
            for index, (_, _, tag) in enumerate(self._frames):
                if tag == replaces:
                    del self._frames[index]
                    break
        if not self._frames and not self._sending:
            self._last_progress = now  # an idle spell is not slowness
        dropped = 0
        if self.full:
            behind = 0.0 if self._behind_since is None else now - self._behind_since
            if max(behind, now - self._last_progress) > self.stuck_seconds:
                return self._given_up("too slow")
            if self._behind_since is None:
                self._behind_since = now
            dropped = self._drop_oldest()
            if len(self._frames) >= HARD_LIMIT_FACTOR * self.max_frames:
                return self._given_up("too slow (queue overflow)")
        self._frames.append((frame, droppable, replaces))
        return Offered(dropped=dropped)

    def take(self) -> bytes | None:
        """The next frame to send (the caller reports `sent` when it is out), or None when the member caught up."""
        if not self._frames:
            self._behind_since = None  # caught up with the live edge
            return None
        self._sending = True
        return self._frames.popleft()[0]

    def sent(self, now: float) -> None:
        self._sending = False
        self._last_progress = now

    def clear(self) -> None:
        self._frames.clear()

    def _drop_oldest(self) -> int:
        for index, (_, droppable, _) in enumerate(self._frames):
            if droppable:
                del self._frames[index]
                return 1
        return 0

    def _given_up(self, reason: str) -> Offered:
        self._frames.clear()
        return Offered(give_up=reason)
