"""A room run by the front-end holding its lease: the usual Room, whose frames go to Redis instead of to sockets.

The owner's Room is the one-process Room (session, stream, clip loop) with two things swapped: its audience is a
`Publisher`, which appends every frame to `room:{ID}:out` through the lease-checked script, and its members are on
any front-end, so their messages arrive on `room:{ID}:in` and their number is what the front-ends report. Members,
the owner's own included, hear only what was published (see relay.py): a clip the owner made but could not publish
(it lost the lease) is heard by nobody, so the next owner can remake that seq without anyone hearing it twice.

Each clip is published with the room's snapshot as it stands once the clip is delivered (the session, the stream's
seam and the last inbox entry applied), so a new owner carries on from exactly what listeners heard, and with the
wall-clock time it was sent: each relay reports back on the inbox how long clips take to reach it, and the session
plans cut-ins that much earlier (in one process that hop does not exist; here it is what would make a cut late).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from jamserver.cluster.connection import BLOCK_MS, UNREACHABLE, Backoff, connect, finish
from jamserver.cluster.keys import IDLE_KEY_SECONDS, ROOMS_SET, RoomKeys
from jamserver.cluster.lease import DuplicateClip, Lease, LeaseLost, Leases
from jamserver.cluster.snapshots import RoomSnapshot
from jamserver.jam import protocol
from jamserver.jam.member.connection import check_one_at_a_time
from jamserver.jam.prompt import Prompt
from jamserver.server.room.registry import Room, seed_beats

log = logging.getLogger("jamserver.cluster.ownership")

MEMBER_REPORT_SECONDS = 2.0  # how often each front-end reports its members of a room (and at once on a change)
MEMBER_REPORT_TTL = 5 * MEMBER_REPORT_SECONDS  # a front-end that stopped reporting has no members any more
HOSTS = "hosts"  # an out-stream kind: for the room's hosts only
END = "end"  # an out-stream kind: the room has ended
TO_PREFIX = "to:"  # an out-stream kind `to:FRONTEND:MEMBER`: an answer for one member
DELIVERY = "delivery"  # an inbox kind: how long a clip took from this owner to a relaying front-end (cut-ins allow it)


def member_kind(frontend: str, member_id: int) -> str:
    return f"{TO_PREFIX}{frontend}:{member_id}"


@dataclass
class _Frame:
    kind: str
    data: bytes
    seq: int | None = None
    snapshot: bytes | None = None
    sent: float | None = None  # wall clock as the clip loop sent it


class Publisher:
    """A leased room's audience: its frames, in order, onto the room's out stream (what `Audience` is to sockets).

    Frames wait in order while Redis is unreachable; a frame the script refuses because the lease is gone ends the
    publisher and calls `on_lost`.
    """

    def __init__(self, leases: Leases, lease: Callable[[], Lease], snapshot: Callable[[], bytes],
                 on_lost: Callable[[str], None], *, resumed: bool = False) -> None:
        self._leases = leases
        self._lease = lease
        self._snapshot = snapshot
        self._on_lost = on_lost
        self._queue: asyncio.Queue[_Frame] = asyncio.Queue()
        self.recent_clips: deque[bytes] = deque(maxlen=1)  # the relays keep the catch-up clips, not the owner
        self.published_clips = 0
        self._resumed = resumed  # the next clip starts a new MP3 stream (a takeover): it says so

    def __len__(self) -> int:
        return 0

    def remove(self, member_id: int) -> None:
        return None

    def broadcast(self, frame: dict[str, Any], *, droppable: bool = True, replaces: str | None = None) -> bytes:
        data = protocol.encode(frame)
        self._queue.put_nowait(_Frame(str(frame["type"]), data))
        return data

    def broadcast_clip(self, frame: dict[str, Any]) -> None:
        """Queue the clip with the snapshot taken once the clip loop has marked it delivered (it does so before it
        next waits), so the snapshot never has a clip in the stream that the session still wants made."""
        if self._resumed:
            frame, self._resumed = {**frame, "discontinuity": True}, False
        data = protocol.encode(frame)
        asyncio.get_running_loop().call_soon(self._queue_clip, data, int(frame["seq"]), time.time())

    def _queue_clip(self, data: bytes, seq: int, sent: float) -> None:
        self._queue.put_nowait(_Frame("clip", data, seq, self._snapshot(), sent))

    def send(self, kind: str, frame: dict[str, Any]) -> None:
        """A frame for some members only (`HOSTS`, `member_kind(...)`)."""
        self._queue.put_nowait(_Frame(kind, protocol.encode(frame)))

    def close_all(self, code: int, reason: str) -> None:
        return None  # the room's end is published by LeasedRoom.end, not by closing the Room

    async def run(self) -> None:
        backoff = Backoff()
        while True:
            frame = await self._queue.get()
            while True:
                try:
                    await self._leases.publish(self._lease(), frame.kind, frame.data, seq=frame.seq,
                                               snapshot=frame.snapshot, sent=frame.sent)
                    self.published_clips += frame.seq is not None
                except UNREACHABLE as error:
                    log.warning("publishing to Redis failed (%s); retrying", error)
                    await backoff.wait()
                    continue
                except LeaseLost as error:
                    self._on_lost(str(error))
                    return
                except DuplicateClip as error:
                    log.info("%s: not published twice", error)
                backoff.reset()
                break


class OwnedRoom(Room):
    """The Room on its owner: host-only frames and seed checks go through the cluster rather than local members."""

    def __init__(self, room_id: str, *, publisher: Publisher, latent_shape: Callable[..., Any],
                 **room_args: Any) -> None:
        self._publisher = publisher
        self._latent_shape = latent_shape
        super().__init__(room_id, audience=publisher, **room_args)

    def _tell_hosts(self, frame: dict[str, Any]) -> None:
        self._publisher.send(HOSTS, frame)

    def _check_seed_image(self, image_id: str) -> None:
        from pipeline.diffusion.riffusion import SeedImageSizeError

        try:
            self._latent_shape(self._seeds.load_seed(image_id).size, f"seed image {image_id!r}")
        except SeedImageSizeError as error:
            raise protocol.ProtocolError("bad_field", str(error), "seed_image_id") from None


class LeasedRoom:
    """One room this front-end owns: the Room, its lease kept alive, its inbox read and applied, its frames published.

    `on_end(room_id)` is called once it stops, whether it ended, lost its lease, or the front-end shut down.
    """

    def __init__(self, lease: Lease, token: str, snapshot: RoomSnapshot | None, *, leases: Leases, redis: Redis,
                 redis_url: str, frontend: str, room_args: dict[str, Any], latent_shape: Callable[..., Any],
                 on_end: Callable[[str], None], address: str = "") -> None:
        self.lease = lease
        self.keys = lease.keys
        self._leases = leases
        self._redis = redis
        self._redis_url = redis_url
        self._frontend = frontend
        self._on_end = on_end
        self._config = room_args["config"]
        self._seeds = room_args["seeds"]
        self._inbox_id = snapshot.inbox_id if snapshot is not None else "0-0"
        self._counts: dict[str, tuple[int, float]] = {}
        self._queued: dict[tuple[str, int], Prompt] = {}  # listeners' prompts still up next, by member
        self._listeners = 0
        self._stopping = False
        self.publisher = Publisher(leases, lambda: self.lease, self._take_snapshot, self._lost,
                                   resumed=snapshot is not None)
        session = None if snapshot is None else snapshot.restore_session(
            time.monotonic(), beats_of=lambda seed_image_id: seed_beats(self._seeds, seed_image_id))
        self.room = OwnedRoom(self.keys.room_id, publisher=self.publisher, latent_shape=latent_shape, token=token,
                              session=session, address=address, **room_args)
        if snapshot is not None:
            snapshot.restore_stream(self.room.stream)
            self._listeners = session.listeners
        self._tasks = [asyncio.create_task(self.publisher.run(), name=f"publish-{self.keys.room_id}"),
                       asyncio.create_task(self._keep_lease(), name=f"lease-{self.keys.room_id}"),
                       asyncio.create_task(self._read_inbox(), name=f"inbox-{self.keys.room_id}")]

    @property
    def id(self) -> str:
        return self.keys.room_id

    def _take_snapshot(self) -> bytes:
        return RoomSnapshot.take(self.id, self.lease.epoch, self.room.session, self.room.stream, time.monotonic(),
                                 self._inbox_id).pack()

    # -- the lease ------------------------------------------------------------------------------------

    async def _keep_lease(self) -> None:
        """Renew about three times a lease term; after an outage take the lease again if nobody else had it."""
        backoff = Backoff()
        interval = self._leases.lease_ms / 1000 / 3
        renewals = 0
        while not self._stopping:
            try:
                if not await self._leases.renew(self.lease) and not await self._take_back():
                    self._lost("the lease went to another front-end")
                    return
                await self._redis.zadd(ROOMS_SET, {self.id: time.time()})
                renewals += 1
                if renewals % 600 == 0:  # every ~7 minutes: the room's meta outlives the idle-key expiry
                    await self._redis.expire(self.keys.meta, IDLE_KEY_SECONDS)
            except UNREACHABLE as error:
                log.warning("room %s: renewing the lease failed (%s); retrying", self.id, error)
                await backoff.wait()
                continue
            backoff.reset()
            self._count_listeners()
            await asyncio.sleep(interval)

    async def _take_back(self) -> bool:
        """The lease ran out unseen (a stall, or Redis restarted without its data): take it again only if nobody
        else held it meanwhile (the next epoch is ours, or Redis forgot the room), else this room's state is old."""
        won = await self._leases.acquire(self.keys, self._frontend)
        if not isinstance(won, Lease):
            return False
        if won.epoch != self.lease.epoch + 1 and won.epoch > self.lease.epoch:
            await self._leases.release(won)
            return False
        log.warning("room %s: lease taken again (epoch %d -> %d)", self.id, self.lease.epoch, won.epoch)
        self.lease = won
        await write_meta(self._redis, self.keys, self.room.token, self._frontend)
        return True

    def _lost(self, why: str) -> None:
        if self._stopping:
            return
        log.warning("room %s: stopping here: %s", self.id, why)
        asyncio.get_running_loop().create_task(self.stop(release=False))

    # -- members' messages ----------------------------------------------------------------------------

    async def _read_inbox(self) -> None:
        reader = connect(self._redis_url, blocking_reader=True)
        backoff = Backoff()
        try:
            while not self._stopping:
                try:
                    reply = await reader.xread({self.keys.inbox: self._inbox_id}, count=256, block=BLOCK_MS)
                except UNREACHABLE as error:
                    log.warning("room %s: reading the inbox failed (%s); reconnecting", self.id, error)
                    await backoff.wait()
                    continue
                backoff.reset()
                for _stream, entries in reply or []:
                    for entry_id, fields in entries:
                        self._inbox_id = entry_id.decode()
                        self._handle(fields)
        finally:
            await reader.aclose()

    def _handle(self, fields: dict[bytes, bytes]) -> None:
        kind = fields.get(b"kind", b"").decode()
        frontend = fields.get(b"frontend", b"").decode()
        if kind == "members":
            self._counts[frontend] = (int(fields[b"count"]), time.monotonic())
            self._count_listeners()
        elif kind == "message":
            self._apply(frontend, int(fields[b"member"]), fields.get(b"host") == b"1", fields[b"data"])
        elif kind == DELIVERY:
            self._delivery_reported(frontend, fields.get(b"seconds", b""))
        else:
            log.error("room %s: unknown inbox entry %r", self.id, kind)

    def _delivery_reported(self, frontend: str, seconds: bytes) -> None:
        """A relay's measure of how long a clip took to reach it: the next cuts are planned that much earlier."""
        try:
            delay = float(seconds)
            self.room.session.delivery_observed(delay, time.monotonic())
        except ValueError as error:
            log.error("room %s: bad delivery report from %s: %s", self.id, frontend, error)
            return
        if delay > self._config.cut_margin:
            log.warning("room %s: a clip took %.2f s to reach front-end %s (more than the %.2f s cut margin)",
                        self.id, delay, frontend, self._config.cut_margin)

    def _apply(self, frontend: str, member_id: int, host: bool, data: bytes) -> None:
        try:
            message = protocol.decode_client_message(
                data, max_bytes=max(len(data), 1), seed_image_ids=self._seeds.seed_ids(),
                mask_image_ids=self._seeds.mask_ids())
            if isinstance(message, Prompt) and not host:
                self._queue_listener_prompt((frontend, member_id), message)
            else:
                self.room.apply(message)
        except protocol.ProtocolError as error:
            self.publisher.send(member_kind(frontend, member_id), error.frame())
        except Exception as error:  # a bug must not stop the room
            log.exception("room %s: applying a message failed", self.id)
            self.publisher.send(member_kind(frontend, member_id), protocol.error_frame(
                "server_error", f"the server failed to handle that message: {type(error).__name__}"))

    def _queue_listener_prompt(self, member: tuple[str, int], prompt: Prompt) -> None:
        """An open jam's listener prompt: one at a time per member, as a one-process room has it."""
        up_next = self.room.up_next
        self._queued = {key: queued for key, queued in self._queued.items() if any(q is queued for q in up_next)}
        check_one_at_a_time(self._queued.get(member), up_next)
        self.room.apply(prompt)
        self._queued[member] = prompt

    def _count_listeners(self) -> None:
        now = time.monotonic()
        self._counts = {name: entry for name, entry in self._counts.items() if now - entry[1] < MEMBER_REPORT_TTL}
        total = sum(count for count, _ in self._counts.values())
        if total != self._listeners or (not total and self.room.empty_since is None):
            self._listeners = total
            self.room.listeners_changed(total)

    # -- the end --------------------------------------------------------------------------------------

    async def end(self, reason: str) -> None:
        """The room is over (nobody listened for a while): say so on the stream, free its keys."""
        if self._stopping:
            return
        try:
            await self._leases.publish(self.lease, END, protocol.encode({"type": END, "reason": reason}))
            await self._redis.delete(self.keys.meta)
            await self._redis.zrem(ROOMS_SET, self.id)
        except (LeaseLost, *UNREACHABLE) as error:
            log.warning("room %s: could not announce its end: %s", self.id, error)
        await self.stop(release=True)

    async def stop(self, *, release: bool) -> None:
        """Stop running the room here; `release`: give the lease up at once (a clean shutdown), so another front-end
        with members in it takes over without waiting for the lease to run out."""
        if self._stopping:
            return
        self._stopping = True
        await self.room.close()
        publisher, keeper, reader = self._tasks
        for task in (publisher, keeper):  # neither blocks in a Redis read: cancelling them is safe
            if task is not asyncio.current_task():
                task.cancel()
        await finish(reader)
        if release:
            try:
                await self._leases.release(self.lease)
            except UNREACHABLE:
                pass
        self._on_end(self.id)


async def write_meta(redis: Redis, keys: RoomKeys, token: str, frontend: str) -> None:
    """What any front-end needs to admit a member: the host's token (and who created the room, for the logs)."""
    await redis.hset(keys.meta, mapping={"token": token, "frontend": frontend, "created": time.time()})
    await redis.expire(keys.meta, IDLE_KEY_SECONDS)
