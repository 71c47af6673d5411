"""Fan-out: each member's outbox (a bounded frame queue drained by its own sender task) and a room's audience.

Frames are packed once per room (`Audience`) and the same bytes object is queued in every member's `Outbox`, the
host's included. A slow member never slows the room: when its queue is full the oldest droppable frame goes (it skips
ahead to the live edge), and one that stays behind is closed with 1013 ("try again later"): stuck when it made no
progress at all for `stuck_seconds`, or when it has not once emptied its queue in the `stuck_seconds` since it first
had to drop a frame (it trickles, but can never catch up). Frames that must not be dropped (welcome, state, errors)
may overfill the queue, but only up to `HARD_LIMIT_FACTOR` times its size: beyond that the member is closed at once,
so memory stays bounded. Transport is injected (`send`, `close`), so this module holds policy only and tests need no
socket.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from jamserver.jam import protocol

CLOSE_TRY_AGAIN_LATER = 1013
HARD_LIMIT_FACTOR = 4

SendBytes = Callable[[bytes], Awaitable[None]]
CloseSocket = Callable[[int, str], Awaitable[None]]


@dataclass
class FanoutCounters:
    """Shared by all outboxes of an app; read by /metrics."""

    bytes_sent: int = 0
    frames_dropped: int = 0
    closed_slow: int = 0


class Outbox:
    """One member's outgoing side, whatever its role."""

    def __init__(
        self,
        send: SendBytes,
        close: CloseSocket,
        *,
        max_frames: int,
        stuck_seconds: float,
        counters: FanoutCounters,
        clock: Callable[[], float] = time.monotonic,
        on_stuck: Callable[[], None] | None = None,
    ) -> None:
        self._send = send
        self._close = close
        self._frames: deque[tuple[bytes, bool, str | None]] = deque()
        self._max_frames = max_frames
        self._stuck_seconds = stuck_seconds
        self._counters = counters
        self._clock = clock
        self._on_stuck = on_stuck  # the sender may be blocked in send(): the owner must cut it off
        self._ready = asyncio.Event()
        self._has_room = asyncio.Event()  # set whenever the queue is below max_frames or the outbox is ending
        self._has_room.set()
        self._sender_running = True  # until run() returns
        self._last_progress = clock()
        self._sending = False
        self._behind_since: float | None = None  # first drop since the queue was last empty
        self.closed = False  # stop sending now
        self.close_code: int | None = None  # close the socket with this once the queue is sent
        self.close_reason = ""

    def offer(self, frame: bytes, *, droppable: bool = True, replaces: str | None = None) -> None:
        """Queue a frame without waiting; drop the oldest droppable one when full.

        A frame with `replaces` set supersedes a still-queued frame with the same tag (latest state
        wins), so a burst of joins queues one state frame per member, not one per join.
        """
        if self.closed or self.close_code is not None:
            return
        if replaces is not None:
            for index, (_, _, tag) in enumerate(self._frames):
                if tag == replaces:
                    del self._frames[index]
                    break
        if not self._frames and not self._sending:
            self._last_progress = self._clock()  # an idle spell is not slowness
        if len(self._frames) >= self._max_frames:
            now = self._clock()
            behind = now - (now if self._behind_since is None else self._behind_since)
            if max(behind, now - self._last_progress) > self._stuck_seconds:
                self._give_up("too slow")
                return
            if self._behind_since is None:
                self._behind_since = now
            self._drop_oldest()
            if len(self._frames) >= HARD_LIMIT_FACTOR * self._max_frames:
                self._give_up("too slow (queue overflow)")
                return
        self._frames.append((frame, droppable, replaces))
        self._ready.set()

    @property
    def queued(self) -> int:
        return len(self._frames)

    async def wait_for_room(self) -> None:
        """Wait while the queue is full: the connection's reader calls this before taking another message.

        A client that sends faster than it reads its replies (one error frame per bad message) is paused at
        the socket, not disconnected, whatever the transport's own read buffering.
        """
        while (len(self._frames) >= self._max_frames and self._sender_running and not self.closed
               and self.close_code is None):
            self._has_room.clear()
            await self._has_room.wait()

    def _drop_oldest(self) -> None:
        for index, (_, droppable, _) in enumerate(self._frames):
            if droppable:
                del self._frames[index]
                self._counters.frames_dropped += 1
                return

    def _give_up(self, reason: str) -> None:
        self._counters.closed_slow += 1
        self._frames.clear()
        self.close_with(CLOSE_TRY_AGAIN_LATER, reason)
        if self._on_stuck is not None:
            self._on_stuck()

    def close_with(self, code: int, reason: str) -> None:
        """Send what is already queued, then close the connection with `code`."""
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        self._ready.set()
        self._has_room.set()

    def stop(self) -> None:
        """End the sender loop quietly (the connection is already going away)."""
        self.closed = True
        self._ready.set()
        self._has_room.set()

    async def run(self) -> None:
        """Send queued frames until stopped or asked to close."""
        try:
            while not self.closed:
                if not self._frames:
                    self._behind_since = None  # caught up with the live edge
                    if self.close_code is not None:
                        break
                    self._ready.clear()
                    await self._ready.wait()
                    continue
                frame = self._frames.popleft()[0]
                if len(self._frames) < self._max_frames:
                    self._has_room.set()
                self._sending = True
                try:
                    await self._send(frame)
                finally:
                    self._sending = False
                self._counters.bytes_sent += len(frame)
                self._last_progress = self._clock()
            if self.close_code is not None and not self.closed:
                self.closed = True
                await self._close(self.close_code, self.close_reason)
        finally:  # a sender that ended (or died in send()) must not hold the reader back
            self._sender_running = False
            self._has_room.set()


class Audience:
    """A room's members as far as fan-out goes: their outboxes, and the last clips for late joiners (catch-up)."""

    def __init__(self, catch_up_clips: int) -> None:
        self._outboxes: dict[int, Outbox] = {}
        self.recent_clips: deque[bytes] = deque(maxlen=max(catch_up_clips, 1))

    def __len__(self) -> int:
        return len(self._outboxes)

    def add(self, member_id: int, outbox: Outbox) -> None:
        """Start fanning out to `outbox`, beginning with the newest clips so playback can start at once."""
        self._outboxes[member_id] = outbox
        for frame in self.recent_clips:
            outbox.offer(frame)

    def remove(self, member_id: int) -> Outbox | None:
        return self._outboxes.pop(member_id, None)

    def broadcast(self, frame: dict[str, Any], *, droppable: bool = True, replaces: str | None = None) -> bytes:
        """Pack once, offer the same bytes to every outbox (`replaces`: supersede a queued frame so tagged)."""
        data = protocol.encode(frame)
        for outbox in list(self._outboxes.values()):
            outbox.offer(data, droppable=droppable, replaces=replaces)
        return data

    def broadcast_clip(self, frame: dict[str, Any]) -> None:
        """A clip frame for everyone, kept for the catch-up of members who join later."""
        self.recent_clips.append(self.broadcast(frame))

    def close_all(self, code: int, reason: str) -> None:
        """Send every outbox what it holds, then close its connection with `code`."""
        for outbox in list(self._outboxes.values()):
            outbox.close_with(code, reason)
