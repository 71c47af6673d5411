"""Rooms: who is in one (membership), what their messages do to it (dispatch), and the registry of all rooms.

A room owns one JamSession (the pure decisions), one RoomStream (its continuous MP3), its members' outboxes (an
`Audience`, which packs each frame once for all) and a `ClipLoop` (generation). Messages reach `Room.apply` after
the member's `MemberConnection` accepted them; the room applies them to the session and tells everyone what changed.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field
from typing import Any

from jamserver.jam import protocol
from jamserver.jam.cuts import CutTiming
from jamserver.jam.member.connection import MemberConnection
from jamserver.jam.prompt import Prompt
from jamserver.jam.session import JamSession
from jamserver.jam.settings import Settings
from jamserver.server.config import ServerConfig
from jamserver.server.device.engine import Engine
from jamserver.server.metrics import Metrics
from jamserver.server.room.fanout import Audience, Outbox
from jamserver.server.room.generation import ClipLoop
from jamserver.server.room.stream import RoomStream
from jamserver.server.transport.limits import address_key
from pipeline.diffusion.riffusion import SeedImageSizeError
from pipeline.seeds import SeedLibrary, UnknownSeedImage

log = logging.getLogger("jamserver.server.room.registry")

_member_ids = itertools.count(1)


@dataclass
class Member:
    """One joined connection in a room: its rules and its outbox (and the task sending from it)."""

    connection: MemberConnection
    outbox: Outbox
    id: int = field(default_factory=lambda: next(_member_ids))
    task: asyncio.Task | None = None


class RoomError(Exception):
    """A join that cannot be granted; `code` is a protocol error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Room:
    def __init__(self, room_id: str, *, address: str = "", engine: Engine, seeds: SeedLibrary, config: ServerConfig,
                 metrics: Metrics, executor: Executor, sample_rate: int, session: JamSession | None = None,
                 audience: Audience | None = None, token: str | None = None) -> None:
        """`session`, `audience` and `token` are given by a cluster front-end (a room taken over from a snapshot,
        frames published to Redis rather than to local outboxes, the room's token from Redis)."""
        self.id = room_id
        self.address = address  # who created it (limits.address_key), for the per-address room cap
        self.token = token or secrets.token_urlsafe(24)
        self.session = session if session is not None else new_session(config, self._beats_of)
        self.stream = RoomStream(sample_rate, bitrate_kbps=config.bitrate_kbps,
                                 crossfade_seconds=config.crossfade_seconds)
        self.members: dict[int, Member] = {}
        self.audience = audience if audience is not None else Audience(config.catch_up_clips)
        self.empty_since: float | None = time.monotonic()
        self.closed = False
        self._config = config
        self._engine = engine
        self._seeds = seeds
        self.clips = ClipLoop(room_id, self.session, self.stream, self.audience, engine=engine, seeds=seeds,
                              executor=executor, metrics=metrics, publish_state=self._publish_state,
                              tell_hosts=self._tell_hosts)

    def _beats_of(self, seed_image_id: str) -> int | None:
        return seed_beats(self._seeds, seed_image_id)

    # -- what a member's connection may read (RoomView) -------------------------------------------

    @property
    def open_jam(self) -> bool:
        return self.session.settings.open_jam

    @property
    def up_next(self) -> tuple[Prompt, ...]:
        return self.session.waiting_prompts

    # -- membership -----------------------------------------------------------------------------

    def add_member(self, member: Member) -> None:
        if len(self.members) >= self._config.max_listeners:
            raise RoomError("room_full", f"room {self.id} has reached its limit of "
                                         f"{self._config.max_listeners} listeners")
        self.members[member.id] = member
        self.audience.add(member.id, member.outbox)
        self._members_changed()

    def remove_member(self, member: Member) -> None:
        if self.members.pop(member.id, None) is not None:
            self.audience.remove(member.id)
            member.outbox.stop()
            self._members_changed()

    def _members_changed(self) -> None:
        self.listeners_changed(len(self.members))

    def listeners_changed(self, count: int) -> None:
        """The room's listener count changed (here: its members; on a cluster owner: members on every front-end)."""
        self.session.set_listeners(count)
        if count and self.empty_since is not None:
            self.empty_since = None
        elif not count and self.empty_since is None:
            self.empty_since = time.monotonic()
        self._publish_state()
        self.clips.wake()

    # -- messages from members ------------------------------------------------------------------

    def apply(self, message: protocol.ClientMessage, member: Member | None = None) -> None:
        """Apply a message a member's connection accepted; the session's refusals raise ProtocolError.

        `member` (who sent it) matters only to a cluster front-end, which answers a refusal from the owner to them."""
        now = time.monotonic()
        if isinstance(message, Prompt):
            self.session.queue_prompt(message)
        elif isinstance(message, protocol.SettingsMessage):
            changes = message.changes()
            if "seed_image_id" in changes:
                self._check_seed_image(str(changes["seed_image_id"]))
            self.session.update_settings(**changes)
            self.broadcast_settings()
        elif isinstance(message, protocol.Pause):
            self.session.pause(now)
        elif isinstance(message, protocol.Resume):
            self.session.resume(now)
        else:
            raise ValueError(f"a room does not apply {message.TYPE} messages")
        self._publish_state()
        self.clips.wake()

    def broadcast_settings(self) -> None:
        """The room's settings to everyone; a settings frame still queued for a member is replaced, not added to."""
        self.audience.broadcast(protocol.settings_frame(asdict(self.session.settings)), droppable=False,
                                replaces="settings")

    def _check_seed_image(self, image_id: str) -> None:
        """Refuse, naming it, a seed image whose size the model cannot take, before any clip is planned with it."""
        try:
            self._engine.pipeline.latent_shape(self._seeds.load_seed(image_id).size, f"seed image {image_id!r}")
        except SeedImageSizeError as error:
            raise protocol.ProtocolError("bad_field", str(error), "seed_image_id") from None

    def _tell_hosts(self, frame: dict[str, Any]) -> None:
        for member in list(self.members.values()):
            if member.connection.is_host:
                member.outbox.offer(protocol.encode(frame), droppable=False)

    def _publish_state(self) -> None:
        now = time.monotonic()
        snapshot = self.session.state_if_changed(now)
        if snapshot is not None:
            self.audience.broadcast(protocol.state_frame(listeners=snapshot.listeners, up_next=snapshot.up_next,
                                                         paused=snapshot.paused, behind=snapshot.behind,
                                                         playhead=self.session.reported_playhead(now)),
                                    droppable=False, replaces="state")

    async def close(self, code: int = 1001, reason: str = "room closed") -> None:
        """Stop generating and close every member's connection."""
        self.closed = True
        await self.clips.stop()
        self.audience.close_all(code, reason)


def seed_beats(seeds: SeedLibrary, seed_image_id: str) -> int | None:
    """Beats in a seed image's loop (its index entry), for the cut-ins' beat grid; None if it has no tempo."""
    try:
        return seeds.entry(seed_image_id, "seed").beats
    except UnknownSeedImage:
        return None


def new_session(config: ServerConfig,
                beats_of: Callable[[str], int | None] = lambda _seed_image_id: None) -> JamSession:
    """A new room's session with the server's defaults; `beats_of` gives a seed image's beats for the cut-ins' grid."""
    return JamSession(Settings(num_inference_steps=config.default_steps, denoising=config.default_denoising),
                      lookahead_clips=config.lookahead_clips,
                      limits=config.step_limits, playout_delay=config.playout_delay,
                      cut_timing=CutTiming(network_margin=config.cut_margin), beats_of=beats_of)


class RoomRegistry:
    """All live rooms of a server, with the room limit and the idle-room reaper."""

    def __init__(self, *, engine: Engine, seeds: SeedLibrary, config: ServerConfig, metrics: Metrics,
                 executor: Executor, sample_rate: int) -> None:
        self.rooms: dict[str, Room] = {}
        self._room_args = dict(engine=engine, seeds=seeds, config=config, metrics=metrics, executor=executor,
                               sample_rate=sample_rate)
        self._config = config
        self._metrics = metrics

    async def create(self, host: str | None = None) -> Room:
        """A new room for a client at `host` (its IP), within the server's and the address's room limits."""
        address = address_key(host)
        if len(self.rooms) >= self._config.max_rooms:
            raise RoomError("too_many_rooms", f"the server has reached its limit of {self._config.max_rooms} rooms")
        mine = sum(room.address == address for room in self.rooms.values())
        if mine >= self._config.max_rooms_per_address and host not in self._config.trusted_proxies:
            raise RoomError("too_many_rooms", f"your address already has {mine} live rooms, the most it may have; "
                                              f"an empty room ends {self._config.idle_room_seconds:g} s after "
                                              f"its last member leaves")
        room_id = secrets.token_urlsafe(9)
        room = Room(room_id, address=address, **self._room_args)
        self.rooms[room_id] = room
        self._metrics.rooms.set(len(self.rooms))
        log.info("room %s created", room_id)
        return room

    async def find(self, room_id: str, token: str | None) -> tuple[Room, str]:
        """The room and the caller's role; a wrong token is refused rather than demoted."""
        room = self.rooms.get(room_id)
        if room is None or room.closed:
            raise RoomError("room_not_found", f"room {room_id} does not exist or has ended")
        if token is None:
            return room, "listener"
        if not secrets.compare_digest(token, room.token):
            raise RoomError("bad_token", "that control token does not match the room")
        return room, "host"

    async def end(self, room: Room, reason: str) -> None:
        self.rooms.pop(room.id, None)
        self._metrics.rooms.set(len(self.rooms))
        log.info("room %s ended: %s", room.id, reason)
        await room.close(reason=reason)

    async def reap_idle(self, now: float) -> None:
        """End rooms nobody has been connected to for `idle_room_seconds`."""
        for room in list(self.rooms.values()):
            if room.empty_since is not None and now - room.empty_since > self._config.idle_room_seconds:
                await self.end(room, "idle")

    async def close_all(self, code: int = 1001, reason: str = "server shutting down") -> None:
        for room in list(self.rooms.values()):
            self.rooms.pop(room.id, None)
            await room.close(code, reason)
        self._metrics.rooms.set(0)
