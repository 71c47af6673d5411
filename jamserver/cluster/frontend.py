"""`jamserver serve --redis URL`: a front-end. It holds sockets, the page and the REST API, and loads no model.

Rooms: the front-end a room is created on takes its lease and runs it (`LeasedRoom`, ownership.py); every front-end
with members in it relays it (`RelayedRoom`, relay.py). `ClusterRooms` is the registry the sockets use, with the one-
process `RoomRegistry`'s interface: `create` (with the cluster's capacity check: `busy` when the workers' slots are
all taken by live rooms), `find` (any front-end admits a member, the host by its token), the idle reaper, and
`take_over` (a relay found the room's lease free: take it and carry on from the room's snapshot).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from jamserver.cluster.connection import UNREACHABLE, connect
from jamserver.cluster.keys import OUT_STREAM_MAXLEN, ROOMS_SET, RoomKeys, checked_name
from jamserver.cluster.lease import DEFAULT_LEASE_SECONDS, Lease, Leases
from jamserver.cluster.ownership import LeasedRoom, write_meta
from jamserver.cluster.relay import RelayedRoom
from jamserver.cluster.remote import RemoteEngine
from jamserver.cluster.snapshots import load_snapshot
from jamserver.jam.settings import Settings
from jamserver.server.config import ServerConfig
from jamserver.server.metrics import Metrics
from jamserver.server.room.registry import RoomError
from jamserver.server.transport.limits import address_key
from pipeline.diffusion.riffusion import latent_shape_for
from pipeline.model.choices import TINY_CHECKPOINT
from pipeline.model.geometry import checkpoint_geometry
from pipeline.model.loading import CheckpointFacts
from pipeline.model.mini import LATENT_CHANNELS as MINI_LATENT_CHANNELS
from pipeline.model.mini import MINI_CHECKPOINT
from pipeline.model.mini import VAE_CHANNELS as MINI_VAE_CHANNELS
from pipeline.seeds import SeedLibrary

log = logging.getLogger("jamserver.cluster.frontend")

@dataclass(frozen=True)
class FrontendOptions:
    redis_url: str
    name: str
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    out_maxlen: int = OUT_STREAM_MAXLEN

    def __post_init__(self) -> None:
        checked_name("front-end name", self.name)
        if self.out_maxlen < 2:
            raise ValueError("the out stream must keep at least 2 frames")


@dataclass(frozen=True)
class RemoteGeometry:
    """The seed-image check a front-end makes before a job goes out (the worker's pipeline checks again): the VAE
    geometry of the checkpoint the workers run, since a front-end loads no weights: the built-in models' by name,
    another's from its config files (a local directory, or the hub cache), else Stable Diffusion 1.x's."""

    scale_factor: int = 8  # every riffusion checkpoint (Stable Diffusion 1.x) and the tiny model
    latent_channels: int = 4

    @classmethod
    def of(cls, checkpoint: str) -> RemoteGeometry:
        if checkpoint == MINI_CHECKPOINT:
            return cls(2 ** (len(MINI_VAE_CHANNELS) - 1), MINI_LATENT_CHANNELS)
        if checkpoint == TINY_CHECKPOINT:
            return cls()
        found = checkpoint_geometry(checkpoint)
        if found is None:
            log.info("checkpoint %s: no config files here; taking Stable Diffusion 1.x's latent geometry", checkpoint)
            return cls()
        return cls(found.scale_factor, found.latent_channels)

    def latent_shape(self, image_size: tuple[int, int], name: str = "seed_image") -> tuple[int, int, int, int]:
        return latent_shape_for(image_size, self.scale_factor, self.latent_channels, name)


@dataclass(frozen=True)
class RemoteModel(CheckpointFacts):
    """What a front-end says about the model its workers run (`--checkpoint`, the same flag as theirs): no weights."""

    checkpoint: str
    pipeline: RemoteGeometry
    device: str = "workers"

    @classmethod
    def named(cls, checkpoint: str) -> RemoteModel:
        return cls(checkpoint, RemoteGeometry.of(checkpoint))

    @property
    def demo(self) -> bool:
        return self.checkpoint == TINY_CHECKPOINT


class ClusterRooms:
    """The rooms this front-end runs (owns) or relays (has members in)."""

    def __init__(self, options: FrontendOptions, engine: RemoteEngine, *, config: ServerConfig, seeds: SeedLibrary,
                 metrics: Metrics, executor: Executor, sample_rate: int, geometry: RemoteGeometry) -> None:
        self.options = options
        self.name = options.name
        self.rooms: dict[str, RelayedRoom] = {}  # by id: the rooms with members here
        self.owned: dict[str, LeasedRoom] = {}
        self.takeovers = 0
        self._skipped_by_closed = 0  # clips skipped by relays that have stopped since
        self._engine = engine
        self._geometry = geometry
        self._config = config
        self._metrics = metrics
        self._redis = connect(options.redis_url)
        self._leases = Leases(self._redis, lease_seconds=options.lease_seconds, out_maxlen=options.out_maxlen)
        self._room_args: dict[str, Any] = dict(engine=engine, seeds=seeds, config=config, metrics=metrics,
                                               executor=executor, sample_rate=sample_rate)

    # -- the registry's interface ----------------------------------------------------------------------

    async def create(self, host: str | None = None) -> RelayedRoom:
        """A new room, run here, if the server's room limits and the workers' capacity allow it."""
        address = address_key(host)
        if len(self.owned) >= self._config.max_rooms:
            raise RoomError("too_many_rooms", f"this server has reached its limit of {self._config.max_rooms} rooms")
        mine = sum(owned.room.address == address for owned in self.owned.values())
        if mine >= self._config.max_rooms_per_address and host not in self._config.trusted_proxies:
            raise RoomError("too_many_rooms", f"your address already has {mine} live rooms, the most it may have")
        try:
            await self._check_capacity()
            room_id, token = secrets.token_urlsafe(9), secrets.token_urlsafe(24)
            keys = RoomKeys(room_id)
            await write_meta(self._redis, keys, token, self.name)
            lease = await self._leases.acquire(keys, self.name)
        except UNREACHABLE as error:
            raise RoomError("server_error", f"the cluster's Redis is unreachable ({error}); try again") from None
        if not isinstance(lease, Lease):  # a fresh random id: cannot be held by anyone else
            raise RoomError("server_error", "could not take the new room's lease")
        self._own(lease, token, None, address)
        log.info("room %s created (epoch %d)", room_id, lease.epoch)
        return await self._relay(room_id, token)

    async def find(self, room_id: str, token: str | None) -> tuple[RelayedRoom, str]:
        """The room (relayed here from now on) and the caller's role; a wrong token is refused, not demoted."""
        room = self.rooms.get(room_id)
        if room is None or room.closed:
            try:
                meta_token = await self._redis.hget(RoomKeys(room_id).meta, "token")
            except (ValueError, *UNREACHABLE):  # ValueError: not a room id at all
                meta_token = None
            if meta_token is None:
                raise RoomError("room_not_found", f"room {room_id} does not exist or has ended")
            room = self.rooms.get(room_id)  # another member's join may have opened it meanwhile
            if room is None or room.closed:
                room = await self._relay(room_id, meta_token.decode())
        if token is None:
            return room, "listener"
        if not secrets.compare_digest(token, room.token):
            raise RoomError("bad_token", "that control token does not match the room")
        return room, "host"

    async def reap_idle(self, now: float) -> None:
        """End owned rooms nobody anywhere listened to for `idle_room_seconds`; stop relaying rooms with no member
        here for as long."""
        idle = self._config.idle_room_seconds
        for owned in list(self.owned.values()):
            if owned.room.empty_since is not None and now - owned.room.empty_since > idle:
                log.info("room %s ended: idle", owned.id)
                await owned.end("idle")
        for room in list(self.rooms.values()):
            if room.empty_since is not None and now - room.empty_since > idle:
                await room.stop()

    async def close_all(self, code: int = 1001, reason: str = "server shutting down") -> None:
        """Close this front-end's members and give its rooms' leases up, so front-ends with members take them."""
        rooms = list(self.rooms.values())
        for room in rooms:
            room.close_members(code, reason)
        for owned in list(self.owned.values()):
            await owned.stop(release=True)
        for room in rooms:
            await room.stop()

    async def close(self) -> None:
        await self._redis.aclose()

    # -- owning and relaying ---------------------------------------------------------------------------

    async def take_over(self, room_id: str) -> None:
        """The room's lease is free: take it if still free, restore the room from its snapshot and run it here.

        Not when Redis has forgotten the room (no epoch: it restarted without its data): its owner, if it lives,
        still has the room in memory and takes the lease back itself."""
        keys = RoomKeys(room_id)
        if room_id in self.owned or not await self._redis.exists(keys.epoch):
            return
        lease = await self._leases.acquire(keys, self.name)
        if not isinstance(lease, Lease):
            return
        token = await self._redis.hget(keys.meta, "token")
        if token is None:  # the room ended meanwhile
            await self._leases.release(lease)
            return
        try:
            snapshot = await load_snapshot(self._redis, keys)
        except ValueError as error:  # a snapshot this version cannot read: let a front-end that can take it
            log.error("room %s: cannot take over: %s", room_id, error)
            await self._leases.release(lease)
            return
        self._own(lease, token.decode(), snapshot)
        self.takeovers += 1
        log.warning("room %s taken over (epoch %d) from %s", room_id, lease.epoch,
                    "its snapshot" if snapshot is not None else "its start (no clip was published)")

    def _own(self, lease: Lease, token: str, snapshot: Any, address: str = "") -> None:
        self.owned[lease.keys.room_id] = LeasedRoom(
            lease, token, snapshot, leases=self._leases, redis=self._redis, redis_url=self.options.redis_url,
            frontend=self.name, room_args=self._room_args, latent_shape=self._geometry.latent_shape,
            on_end=self._owned_ended, address=address)
        self._metrics.rooms.set(len(self.owned))

    def _owned_ended(self, room_id: str) -> None:
        self.owned.pop(room_id, None)
        self._metrics.rooms.set(len(self.owned))

    async def _relay(self, room_id: str, token: str) -> RelayedRoom:
        room = RelayedRoom(room_id, token, frontend=self.name, redis=self._redis, redis_url=self.options.redis_url,
                           leases=self._leases, config=self._config, take_over=self.take_over,
                           on_closed=self._relay_closed)
        self.rooms[room_id] = room
        try:
            snapshot = await load_snapshot(self._redis, room.keys)
        except (ValueError, *UNREACHABLE) as error:  # ValueError: a snapshot of another format
            log.warning("room %s: no settings from its snapshot (%s)", room_id, error)
            snapshot = None
        if snapshot is not None:  # the settings as of the last clip; later changes come on the stream
            room.session.settings = Settings(**snapshot.session["settings"])
        return room

    def _relay_closed(self, room: RelayedRoom) -> None:
        self._skipped_by_closed += room.clips_skipped
        if self.rooms.get(room.id) is room:
            del self.rooms[room.id]

    @property
    def clips_skipped(self) -> int:
        """Clips this front-end's relays skipped to reach the live edge after a stall."""
        return self._skipped_by_closed + sum(room.clips_skipped for room in self.rooms.values())

    async def _check_capacity(self) -> None:
        """`busy` unless some worker slot is left over by the live rooms (each room keeps about one busy)."""
        workers = await self._engine.workers()
        slots = sum(worker.slots for worker in workers)
        live = await self._redis.zcount(ROOMS_SET, time.time() - 3 * self.options.lease_seconds, "+inf")
        if live >= slots:
            raise RoomError("busy", f"no generation capacity left: {live} live rooms on {slots} worker slots "
                                    f"({len(workers)} workers); try again later")


class FrontendCollector(Collector):
    """A front-end's own figures on its /metrics, beside the one-process set, read at scrape time."""

    def __init__(self, rooms: ClusterRooms, engine: RemoteEngine) -> None:
        self._rooms = rooms
        self._engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield GaugeMetricFamily("jam_cluster_rooms_relayed", "Rooms with members on this front-end",
                                value=len(self._rooms.rooms))
        yield CounterMetricFamily("jam_cluster_takeovers", "Rooms this front-end took over from an owner that died "
                                  "or stalled", value=self._rooms.takeovers)
        yield CounterMetricFamily("jam_cluster_clips_skipped", "Clips relays skipped to reach the live edge after "
                                  "a stall", value=self._rooms.clips_skipped)
        yield CounterMetricFamily("jam_cluster_jobs_resubmitted", "Clip jobs queued again after Redis lost them",
                                  value=self._engine.jobs_resubmitted)


@dataclass
class Frontend:
    """The cluster backend of the app: the remote engine and the rooms that use it."""

    config: ServerConfig
    engine: RemoteEngine
    rooms: ClusterRooms
    engine_stats: None = None  # the workers count UNet work; a front-end has none

    async def close(self) -> None:
        await self.rooms.close()
        await self.engine.close()


async def start_frontend(options: FrontendOptions, model: RemoteModel, *, config: ServerConfig, seeds: SeedLibrary,
                         metrics: Metrics, executor: Executor, sample_rate: int) -> Frontend:
    engine = RemoteEngine(options.redis_url, name=options.name)
    await engine.start()
    rooms = ClusterRooms(options, engine, config=config, seeds=seeds, metrics=metrics, executor=executor,
                         sample_rate=sample_rate, geometry=model.pipeline)
    metrics.registry.register(FrontendCollector(rooms, engine))
    log.info("front-end %s on %s", options.name, options.redis_url)
    return Frontend(config, engine, rooms)
