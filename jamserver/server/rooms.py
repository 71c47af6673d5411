"""Rooms: members, control tokens, the generation loop, and fan-out of packed frames.

A room owns one JamSession (pure decisions), one RoomStream (continuous MP3) and its members'
listeners. Its loop asks the session whether a clip is wanted, has the shared engine make it,
joins it into the stream off the event loop, packs the clip frame once and offers the same bytes
to every listener. Late joiners get the last few clip frames first so they can start playing.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections import deque
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field
from typing import Any

from jamserver.jam import protocol
from jamserver.jam.prompt import Prompt
from jamserver.jam.ratelimit import TokenBucket
from jamserver.jam.session import ClipPlan, JamSession, Settings
from jamserver.server.config import ServerConfig
from jamserver.server.engine import Engine
from jamserver.server.fanout import FanoutCounters, Listener
from jamserver.server.jobs import clip_frame, clip_request
from jamserver.server.limits import address_key
from jamserver.server.metrics import Metrics
from jamserver.server.stream import RoomStream
from pipeline.model.riffusion import SeedImageSizeError
from pipeline.render import jpeg_bytes
from pipeline.seeds import SeedLibrary

log = logging.getLogger("jamserver.server.rooms")

TICK_SECONDS = 0.1
# A new room waits this long for its host's first prompt (sent right behind the join) before it opens
# on the default prompt, so a scripted or typed-ahead first prompt is heard from the first clip.
FIRST_PROMPT_GRACE = 0.5
MAX_RETRY_DELAY = 5.0
_member_ids = itertools.count(1)


@dataclass
class Member:
    """One connection in a room."""

    role: str
    listener: Listener
    prompts: TokenBucket
    settings: TokenBucket | None = None  # None: unlimited (in-process tests)
    id: int = field(default_factory=lambda: next(_member_ids))
    queued_prompt: Prompt | None = None
    task: asyncio.Task | None = None

    @property
    def is_host(self) -> bool:
        return self.role == "host"


class RoomError(Exception):
    """A join that cannot be granted; `code` is a protocol error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Room:
    def __init__(self, room_id: str, *, address: str = "", engine: Engine, seeds: SeedLibrary, config: ServerConfig,
                 counters: FanoutCounters, metrics: Metrics, executor: Executor, sample_rate: int) -> None:
        self.id = room_id
        self.address = address  # who created it (limits.address_key), for the per-address room cap
        self.token = secrets.token_urlsafe(24)
        self.session = JamSession(Settings(num_inference_steps=config.default_steps),
                                  lookahead_clips=config.lookahead_clips, limits=config.step_limits)
        self.stream = RoomStream(sample_rate, bitrate_kbps=config.bitrate_kbps,
                                 crossfade_seconds=config.crossfade_seconds)
        self.members: dict[int, Member] = {}
        self.recent_clips: deque[bytes] = deque(maxlen=max(config.catch_up_clips, 1))
        self.empty_since: float | None = time.monotonic()
        self.closed = False
        self._engine = engine
        self._seeds = seeds
        self._config = config
        self._counters = counters
        self._metrics = metrics
        self._executor = executor
        self._wake = asyncio.Event()
        self._failures = 0
        self._created = time.monotonic()
        self._opened = False  # the first clip has been planned
        self._task = asyncio.create_task(self._run(), name=f"room-{room_id}")

    # -- membership -----------------------------------------------------------------------------

    def add_member(self, member: Member) -> None:
        if len(self.members) >= self._config.max_listeners:
            raise RoomError("room_full", f"room {self.id} has reached its limit of "
                                         f"{self._config.max_listeners} listeners")
        self.members[member.id] = member
        for frame in self.recent_clips:  # catch-up: the newest clips, so playback can start at once
            member.listener.offer(frame)
        self._members_changed()

    def remove_member(self, member: Member) -> None:
        if self.members.pop(member.id, None) is not None:
            member.listener.stop()
            self._members_changed()

    def _members_changed(self) -> None:
        self.session.set_listeners(len(self.members))
        self.empty_since = None if self.members else time.monotonic()
        self._publish_state()
        self._wake.set()

    # -- messages from members ------------------------------------------------------------------

    def handle(self, member: Member, message: protocol.ClientMessage) -> None:
        """Apply one validated client message; refusals raise ProtocolError."""
        protocol.check_permission(message, is_host=member.is_host, open_jam=self.session.settings.open_jam)
        now = time.monotonic()
        if isinstance(message, Prompt):
            self._queue_prompt(member, message, now)
        elif isinstance(message, protocol.SettingsMessage):
            if member.settings is not None and not member.settings.allow(now):
                wait = member.settings.retry_after()
                raise protocol.ProtocolError("rate_limited", f"too many settings changes; try again in {wait:.1f} s")
            changes = message.changes()
            if "seed_image_id" in changes:
                self._check_seed_image(str(changes["seed_image_id"]))
            self.session.update_settings(**changes)
            self._broadcast_settings()
        elif isinstance(message, protocol.Pause):
            self.session.pause(now)
        elif isinstance(message, protocol.Resume):
            self.session.resume(now)
        elif isinstance(message, protocol.Ping):
            member.listener.offer(protocol.encode(protocol.pong_frame(message.t)), droppable=False)
        elif isinstance(message, protocol.Join):
            raise protocol.ProtocolError("already_joined", "this connection has already joined a room")
        self._publish_state()
        self._wake.set()

    def _check_seed_image(self, image_id: str) -> None:
        """Refuse, naming it, a seed image whose size the model cannot take, before any clip is planned with it."""
        try:
            self._engine.pipeline.latent_shape(self._seeds.load_seed(image_id).size, f"seed image {image_id!r}")
        except SeedImageSizeError as error:
            raise protocol.ProtocolError("bad_field", str(error), "seed_image_id") from None

    def _queue_prompt(self, member: Member, message: Prompt, now: float) -> None:
        if not member.is_host and member.queued_prompt is not None and any(
                queued is member.queued_prompt for queued in self.session.up_next):
            raise protocol.ProtocolError("rate_limited", "your previous prompt is still up next; "
                                                         "in an open jam each member queues one at a time")
        if not member.prompts.allow(now):
            wait = member.prompts.retry_after()
            raise protocol.ProtocolError("rate_limited", f"too many prompts; try again in {wait:.0f} s")
        self.session.queue_prompt(message)
        member.queued_prompt = message

    # -- fan-out --------------------------------------------------------------------------------

    def broadcast(self, frame: dict[str, Any], *, droppable: bool = True, replaces: str | None = None) -> bytes:
        """Pack once, offer the same bytes to every member (`replaces`: supersede a queued frame so tagged)."""
        data = protocol.encode(frame)
        for member in list(self.members.values()):
            member.listener.offer(data, droppable=droppable, replaces=replaces)
        return data

    def _broadcast_settings(self) -> None:
        """The room's settings to everyone; a settings frame still queued for a member is replaced, not added to."""
        self.broadcast(protocol.settings_frame(asdict(self.session.settings)), droppable=False, replaces="settings")

    def _publish_state(self) -> None:
        snapshot = self.session.state_if_changed(time.monotonic())
        if snapshot is not None:
            self.broadcast(protocol.state_frame(listeners=snapshot.listeners, up_next=snapshot.up_next,
                                                paused=snapshot.paused, behind=snapshot.behind),
                           droppable=False, replaces="state")

    # -- generation -----------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self.closed:
            self._publish_state()
            now = time.monotonic()
            if self.session.wants_clip(now) and self._may_open(now):
                self._opened = True
                await self._produce(self.session.plan_next_clip())
                continue
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), TICK_SECONDS)
            except asyncio.TimeoutError:
                pass

    def _may_open(self, now: float) -> bool:
        return self._opened or bool(self.session.up_next) or now - self._created >= FIRST_PROMPT_GRACE

    async def _produce(self, plan: ClipPlan) -> None:
        """Make, join, pack and fan out one clip; a failure is reported and the clip retried."""
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        deadline = now + max(0.0, plan.stream_time - self.session.position(now))
        try:
            clip = await self._engine.render(clip_request(plan, self._seeds), deadline, owner=self.id)
            piece = await loop.run_in_executor(self._executor, self.stream.append, clip.audio, clip.continuation)
            image = await loop.run_in_executor(self._executor, jpeg_bytes, clip.image)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            await self._clip_failed(plan, error)
            return
        self._failures = 0
        frame = clip_frame(plan, stream_time=piece.stream_time, duration=piece.duration, image=image, audio=piece.audio,
                           sample_rate=self.stream.sample_rate, gen_seconds=clip.gen_seconds)
        self.recent_clips.append(self.broadcast(frame))
        self.session.clip_delivered(plan, time.monotonic(), piece.duration)
        self._metrics.clips.inc()
        self._metrics.generation_seconds.observe(clip.gen_seconds)

    async def _clip_failed(self, plan: ClipPlan, error: Exception) -> None:
        """Tell the host, re-plan the clip from the settings of the moment (reset after repeated failures)."""
        log.warning("room %s: clip %d failed (attempt %d): %s", self.id, plan.seq, plan.attempt, error)
        self._metrics.clip_failures.inc()
        reset = self.session.clip_failed(plan)
        then = (f"the room's settings were reset to the defaults after {plan.attempt} failures" if reset
                else "retrying with the room's current settings")
        frame = protocol.error_frame("server_error", f"clip {plan.seq} failed ({type(error).__name__}: {error}); {then}")
        for member in list(self.members.values()):
            if member.is_host:
                member.listener.offer(protocol.encode(frame), droppable=False)
        if reset:
            self._broadcast_settings()
        self._failures += 1
        await asyncio.sleep(min(MAX_RETRY_DELAY, 0.25 * 2 ** (self._failures - 1)))

    async def close(self, code: int = 1001, reason: str = "room closed") -> None:
        """Stop generating and close every member's connection."""
        self.closed = True
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        for member in list(self.members.values()):
            member.listener.close_with(code, reason)


class RoomRegistry:
    """All live rooms of a server, with the room limit and the idle-room reaper."""

    def __init__(self, *, engine: Engine, seeds: SeedLibrary, config: ServerConfig, counters: FanoutCounters,
                 metrics: Metrics, executor: Executor, sample_rate: int) -> None:
        self.rooms: dict[str, Room] = {}
        self._room_args = dict(engine=engine, seeds=seeds, config=config, counters=counters,
                               metrics=metrics, executor=executor, sample_rate=sample_rate)
        self._config = config
        self._metrics = metrics

    def create(self, host: str | None = None) -> Room:
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

    def find(self, room_id: str, token: str | None) -> tuple[Room, str]:
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
