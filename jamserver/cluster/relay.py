"""A room as the members on one front-end see it: the owner's published frames relayed to their sockets.

Every front-end with members in a room, the owner's included, keeps one `RelayedRoom`: it reads `room:{ID}:out`
from the last id it saw (from the start of the capped stream when it opens, which is the late joiner's catch-up),
fans each frame out to its members' outboxes, forwards their messages to the owner on `room:{ID}:in`, reports how
many members it has and how long each clip took from the owner to here (cut-ins are planned that much earlier),
and, when the room's lease is free (the owner died), asks its front-end to take the room over.

Why the owner's own members are relayed too, rather than served directly: a member hears only what was published,
in the order it was published. A clip an owner made but could not publish (it lost its lease) is then heard by
nobody, so the next owner remaking that seq gives no one a duplicate, and every front-end's members hear the same.
The cost is one Redis round trip (well under a millisecond on a LAN) on a path that runs seconds ahead of playback.

Clips are taken once, by seq, whichever epoch published them. After a stall (a front-end paused past the stream's
cap), only the newest `catch_up_clips` clips of what piled up are sent on: the members skip to the live edge.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from jamserver.cluster.connection import BLOCK_MS, UNREACHABLE, Backoff, connect, finish
from jamserver.cluster.keys import IN_STREAM_MAXLEN, RoomKeys
from jamserver.cluster.lease import Leases
from jamserver.cluster.ownership import DELIVERY, END, HOSTS, MEMBER_REPORT_SECONDS, TO_PREFIX
from jamserver.jam import protocol
from jamserver.jam.prompt import Prompt
from jamserver.jam.settings import Settings
from jamserver.server.config import ServerConfig
from jamserver.server.room.fanout import Audience
from jamserver.server.room.registry import Member, RoomError, new_session

log = logging.getLogger("jamserver.cluster.relay")

WATCH_SECONDS = 0.5  # how often a relay looks at the room's lease (a dead owner's room moves within ~lease + this)
_DROPPABLE = {"clip"}
_REPLACEABLE = {"state", "settings"}


class RelayedRoom:
    """The member-facing side of a room on this front-end; the same interface as a one-process Room to a socket."""

    def __init__(self, room_id: str, token: str, *, frontend: str, redis: Redis, redis_url: str, leases: Leases,
                 config: ServerConfig, take_over: Callable[[str], Awaitable[None]],
                 on_closed: Callable[[RelayedRoom], None]) -> None:
        self.id = room_id
        self.token = token
        self.keys = RoomKeys(room_id)
        self.session = new_session(config)  # the room's settings as last published, for welcomes and the rules
        self.members: dict[int, Member] = {}
        self.audience = Audience(config.catch_up_clips)
        self.empty_since: float | None = time.monotonic()
        self.closed = False
        self._stopped = False
        self.clips_skipped = 0
        self._frontend = frontend
        self._redis = redis
        self._redis_url = redis_url
        self._leases = leases
        self._config = config
        self._take_over = take_over
        self._on_closed = on_closed
        self._last_seq = -1
        self._reported: int | None = None
        self._changed = asyncio.Event()
        self._outgoing: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._tasks = [asyncio.create_task(self._relay(), name=f"relay-{room_id}"),
                       asyncio.create_task(self._watch(), name=f"watch-{room_id}"),
                       asyncio.create_task(self._forward(), name=f"forward-{room_id}")]

    # -- what a member's connection reads (RoomView) --------------------------------------------------

    @property
    def open_jam(self) -> bool:
        return self.session.settings.open_jam

    @property
    def up_next(self) -> tuple[Prompt, ...]:
        return ()  # known to the owner only: it keeps the queue's limits and the open jam's one-at-a-time rule

    # -- membership -----------------------------------------------------------------------------------

    def add_member(self, member: Member) -> None:
        if len(self.members) >= self._config.max_listeners:
            raise RoomError("room_full", f"room {self.id} has reached this server's limit of "
                                         f"{self._config.max_listeners} listeners")
        self.members[member.id] = member
        self.audience.add(member.id, member.outbox)
        self.empty_since = None
        self._changed.set()

    def remove_member(self, member: Member) -> None:
        if self.members.pop(member.id, None) is not None:
            self.audience.remove(member.id)
            member.outbox.stop()
            if not self.members:
                self.empty_since = time.monotonic()
            self._changed.set()

    def apply(self, message: protocol.ClientMessage, member: Member | None = None) -> None:
        """To the owner, whichever front-end it is on; its refusals come back to `member` on the out stream."""
        self._outgoing.put_nowait({"kind": "message", "frontend": self._frontend,
                                   "member": member.id if member is not None else 0,
                                   "host": int(member is None or member.connection.is_host),
                                   "data": protocol.encode(protocol.client_message_to_wire(message))})

    # -- the out stream -> members --------------------------------------------------------------------

    async def _relay(self) -> None:
        reader = connect(self._redis_url, blocking_reader=True)
        backoff = Backoff()
        cursor = "0-0"  # the whole capped stream first: the catch-up
        try:
            while not self.closed:
                try:
                    reply = await reader.xread({self.keys.out: cursor}, block=BLOCK_MS)
                except UNREACHABLE as error:
                    log.warning("room %s: relaying failed (%s); reconnecting", self.id, error)
                    await backoff.wait()
                    continue
                backoff.reset()
                for _stream, entries in reply or []:
                    cursor = entries[-1][0].decode()
                    self.deliver(entries)
        finally:
            await reader.aclose()

    def deliver(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        """Fan a batch of out-stream entries out; of the clips in it, only the newest few (the live edge)."""
        fresh = [int(fields[b"seq"]) for _id, fields in entries
                 if fields[b"kind"] == b"clip" and int(fields[b"seq"]) > self._last_seq]
        keep = set(fresh[-max(1, self._config.catch_up_clips):])
        live = self._last_seq >= 0  # not the catch-up of a front-end that just opened the room
        for _id, fields in entries:
            kind = fields[b"kind"].decode()
            if kind == "clip":
                seq = int(fields[b"seq"])
                if seq in keep and seq > self._last_seq:
                    if self._last_seq >= 0:  # not the catch-up: what the members never got, skipped or trimmed
                        self.clips_skipped += seq - self._last_seq - 1
                    self._last_seq = seq
                    self.audience.broadcast_clip(protocol.decode(fields[b"frame"]))
                    if live:
                        self._report_delivery(seq, fields.get(b"sent", b""))
            else:
                self._deliver_frame(kind, fields[b"frame"])

    def _report_delivery(self, seq: int, sent: bytes) -> None:
        """Tell the owner how long the clip took from it to here (same-clock hosts, or NTP-synced ones)."""
        if not sent:  # published by an owner that does not stamp its clips
            return
        delay = time.time() - float(sent)
        self._outgoing.put_nowait({"kind": DELIVERY, "frontend": self._frontend, "seq": seq,
                                   "seconds": f"{delay:.4f}"})

    def _deliver_frame(self, kind: str, data: bytes) -> None:
        if kind == END:
            self.close_members(1001, "room ended")
        elif kind == HOSTS:
            for member in list(self.members.values()):
                if member.connection.is_host:
                    member.outbox.offer(data, droppable=False)
        elif kind.startswith(TO_PREFIX):
            frontend, _, member_id = kind[len(TO_PREFIX):].rpartition(":")
            member = self.members.get(int(member_id)) if frontend == self._frontend else None
            if member is not None:
                member.outbox.offer(data, droppable=False)
        else:
            frame = protocol.decode(data)
            if kind == "settings":
                self.session.settings = Settings(**frame["settings"])
            self.audience.broadcast(frame, droppable=kind in _DROPPABLE,
                                    replaces=kind if kind in _REPLACEABLE else None)

    # -- members -> the owner -------------------------------------------------------------------------

    async def _forward(self) -> None:
        """Member messages onto the inbox, in order; they wait while Redis is away."""
        backoff = Backoff()
        while True:
            entry = await self._outgoing.get()
            while True:
                try:
                    await self._redis.xadd(self.keys.inbox, entry, maxlen=IN_STREAM_MAXLEN, approximate=True)
                except UNREACHABLE as error:
                    log.warning("room %s: forwarding failed (%s); retrying", self.id, error)
                    await backoff.wait()
                    continue
                backoff.reset()
                break

    async def _watch(self) -> None:
        """Report the member count (at once on a change, else every few seconds); take the room over when its
        lease is free."""
        reported_at = 0.0
        while not self.closed:
            try:
                await asyncio.wait_for(self._changed.wait(), WATCH_SECONDS)
            except TimeoutError:
                pass
            self._changed.clear()
            now = time.monotonic()
            try:
                if len(self.members) != self._reported or now - reported_at >= MEMBER_REPORT_SECONDS:
                    count = len(self.members)
                    self._outgoing.put_nowait({"kind": "members", "frontend": self._frontend, "count": count})
                    self._reported, reported_at = count, now
                if self.members and await self._leases.holder(self.keys) is None:
                    await self._take_over(self.id)
            except UNREACHABLE as error:
                log.warning("room %s: watching the lease failed (%s)", self.id, error)
                await asyncio.sleep(WATCH_SECONDS)
            except Exception:  # a bug must not end the watch: this room would never be taken over from here
                log.exception("room %s: watching the lease failed", self.id)
                await asyncio.sleep(WATCH_SECONDS)

    # -- the end --------------------------------------------------------------------------------------

    def close_members(self, code: int, reason: str) -> None:
        """Close every member's connection (their outboxes send what they hold first) and stop relaying."""
        self.audience.close_all(code, reason)
        if not self.closed:
            self.closed = True
            asyncio.get_running_loop().create_task(self.stop())

    async def stop(self) -> None:
        """Stop relaying (once, whoever asks first: the reaper, the room's end, the front-end's shutdown)."""
        self.closed = True
        if self._stopped:
            return
        self._stopped = True
        relay, watch, forward = self._tasks
        watch.cancel()
        await finish(relay)
        await self._flush(forward)
        self._on_closed(self)

    async def _flush(self, forward: asyncio.Task, grace: float = 2.0) -> None:
        """Let the last messages and the final member count reach the owner before the forwarder stops."""
        self._outgoing.put_nowait({"kind": "members", "frontend": self._frontend, "count": 0})
        deadline = time.monotonic() + grace
        while not self._outgoing.empty() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        forward.cancel()
