"""Fan-out: each member's outbox (its backlog of frames drained by its own sender task) and a room's audience.

Frames are packed once per room (`Audience`) and the same bytes object is queued in every member's `Outbox`, the
host's included. What is dropped when a member falls behind, and when it is given up on (closed with 1013, "try
again later"), is the pure `jamserver.jam.member.backlog.Backlog`'s decision; this module does the waiting and sending.
Transport is injected (`send`, `close`), so tests need no socket.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from jamserver.jam import protocol
from jamserver.jam.member.backlog import Backlog

CLOSE_TRY_AGAIN_LATER = 1013

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
        self._backlog = Backlog(max_frames, stuck_seconds, clock())
        self._counters = counters
        self._clock = clock
        self._on_stuck = on_stuck  # the sender may be blocked in send(): the owner must cut it off
        self._ready = asyncio.Event()
        self._has_room = asyncio.Event()  # set whenever the backlog is not full or the outbox is ending
        self._has_room.set()
        self._sender_running = True  # until run() returns
        self.closed = False  # stop sending now
        self.close_code: int | None = None  # close the socket with this once the queue is sent
        self.close_reason = ""

    def offer(self, frame: bytes, *, droppable: bool = True, replaces: str | None = None) -> None:
        """Queue a frame without waiting (see Backlog.offer); a member given up on is closed with 1013."""
        if self.closed or self.close_code is not None:
            return
        offered = self._backlog.offer(frame, self._clock(), droppable=droppable, replaces=replaces)
        self._counters.frames_dropped += offered.dropped
        if offered.give_up is not None:
            self._counters.closed_slow += 1
            self.close_with(CLOSE_TRY_AGAIN_LATER, offered.give_up)
            if self._on_stuck is not None:
                self._on_stuck()
            return
        self._ready.set()

    @property
    def queued(self) -> int:
        return len(self._backlog)

    async def wait_for_room(self) -> None:
        """Wait while the queue is full: the connection's reader calls this before taking another message.

        A client that sends faster than it reads its replies (one error frame per bad message) is paused at
        the socket, not disconnected, whatever the transport's own read buffering.
        """
        while (self._backlog.full and self._sender_running and not self.closed
               and self.close_code is None):
            self._has_room.clear()
            await self._has_room.wait()

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
                frame = self._backlog.take()
                if frame is None:
                    if self.close_code is not None:
                        break
                    self._ready.clear()
                    await self._ready.wait()
                    continue
                if not self._backlog.full:
                    self._has_room.set()
                await self._send(frame)
                self._counters.bytes_sent += len(frame)
                self._backlog.sent(self._clock())
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
        self.recent_clips: deque[tuple[float, bytes]] = deque(maxlen=max(catch_up_clips, 1))  # (stream time, frame)

    def __len__(self) -> int:
        return len(self._outboxes)

    def add(self, member_id: int, outbox: Outbox) -> None:
        """Start fanning out to `outbox`, beginning with the newest clips so playback can start at once."""
        self._outboxes[member_id] = outbox
        for _, frame in self.recent_clips:
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
        """A clip frame for everyone, kept for the catch-up of members who join later (a cut-in first drops the
        kept clips it supersedes, so a late joiner is never sent audio that no longer plays)."""
        stream_time = float(frame["stream_time"])
        if frame.get("replaces"):
            kept = [(start, data) for start, data in self.recent_clips if start < stream_time]
            self.recent_clips.clear()
            self.recent_clips.extend(kept)
        self.recent_clips.append((stream_time, self.broadcast(frame)))

    def close_all(self, code: int, reason: str) -> None:
        """Send every outbox what it holds, then close its connection with `code`."""
        for outbox in list(self._outboxes.values()):
            outbox.close_with(code, reason)
