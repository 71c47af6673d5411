"""Starlette routes: /ws (rooms), /run_inference (original REST API), seed images, health, metrics, page."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from jamserver.jam import protocol
from jamserver.jam.ratelimit import TokenBucket
from jamserver.server.config import ServerConfig
from jamserver.server.engine import Engine
from jamserver.server.fanout import FanoutCounters, Listener
from jamserver.server.metrics import Metrics
from jamserver.server.rest import RestQueue, run_inference
from jamserver.server.rooms import Member, Room, RoomError, RoomRegistry
from jamserver.server.uploads import UploadGate, upload_seed
from pipeline.audio.dsp import SpectrogramConverter
from pipeline.audio.params import SpectrogramParams
from pipeline.model.loading import LoadedModel
from pipeline.model.riffusion import supported_steps
from pipeline.seeds import SeedLibrary

log = logging.getLogger("jamserver.server.app")
STATIC_DIR = Path(__file__).resolve().parents[2] / "static"
REAP_INTERVAL = 1.0
CLOSE_POLICY_VIOLATION = 1008


@dataclass
class JamState:
    """Everything a request handler needs, built once per app."""

    config: ServerConfig
    model: LoadedModel
    seeds: SeedLibrary
    engine: Engine
    rooms: RoomRegistry
    metrics: Metrics
    counters: FanoutCounters
    executor: ThreadPoolExecutor
    uploads: UploadGate
    rest_queue: RestQueue


def create_app(config: ServerConfig, model: LoadedModel, *, seeds: SeedLibrary | None = None,
               static_dir: Path = STATIC_DIR) -> Starlette:
    seeds = seeds or SeedLibrary()
    config = fit_to_scheduler(config, model)
    converter = SpectrogramConverter(SpectrogramParams(), device=model.device)
    metrics = Metrics()
    counters = FanoutCounters()
    executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="jam-stream")
    holder: dict[str, JamState] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine = Engine(model.pipeline, converter, max_batch=config.max_batch)
        rooms = RoomRegistry(engine=engine, seeds=seeds, config=config, counters=counters, metrics=metrics,
                             executor=executor, sample_rate=converter.params.sample_rate)
        state = JamState(config, model, seeds, engine, rooms, metrics, counters, executor,
                         UploadGate(config.uploads_per_minute), RestQueue(config.rest_queue))
        holder["state"] = app.state.jam = state
        metrics.watch(counters, engine.stats)
        reaper = asyncio.create_task(_reap_forever(rooms))
        log.info("model %s on %s%s", model.checkpoint, model.device,
                 f" ({model.description})" if model.description else "")
        try:
            yield
        finally:
            reaper.cancel()
            await rooms.close_all()
            await asyncio.sleep(0.2)  # let senders flush their close frames
            await asyncio.to_thread(engine.close)
            executor.shutdown(wait=False, cancel_futures=True)
            state.uploads.executor.shutdown(wait=False, cancel_futures=True)

    routes = [
        WebSocketRoute("/ws", ws_endpoint),
        Route("/run_inference", run_inference, methods=["POST"]),
        Route("/run_inference/", run_inference, methods=["POST"]),
        Route("/seed_images", seed_index),
        Route("/seed_images", upload_seed, methods=["POST"]),
        Route("/seed_images/{image_id}.png", seed_image),
        Route("/healthz", healthz),
        Route("/metrics", metrics_endpoint),
        Mount("/", StaticFiles(directory=static_dir, html=True), name="static"),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def fit_to_scheduler(config: ServerConfig, model: LoadedModel) -> ServerConfig:
    """Lower --max-steps to what the model's scheduler can run at full denoising (PNDM: 999 of 1000)."""
    supported = supported_steps(model.pipeline.scheduler, config.max_steps)
    if supported == config.max_steps:
        return config
    log.warning("--max-steps %d is more than the %s scheduler can take; using %d",
                config.max_steps, type(model.pipeline.scheduler).__name__, supported)
    return replace(config, max_steps=supported)


def _state(scope_owner: Request | WebSocket) -> JamState:
    return scope_owner.app.state.jam


async def _reap_forever(rooms: RoomRegistry) -> None:
    while True:
        await asyncio.sleep(REAP_INTERVAL)
        await rooms.reap_idle(time.monotonic())


# -- HTTP -----------------------------------------------------------------------------------------


async def healthz(request: Request) -> Response:
    state = _state(request)
    return JSONResponse({"ok": True, "rooms": len(state.rooms.rooms), "checkpoint": state.model.checkpoint,
                         "device": str(state.model.device), "demo": state.model.demo,
                         "description": state.model.description})


async def metrics_endpoint(request: Request) -> Response:
    return Response(_state(request).metrics.render(), media_type="text/plain; version=0.0.4")


async def seed_index(request: Request) -> Response:
    return JSONResponse([
        {"id": e.id, "kind": e.kind, "bpm": e.bpm, "beats": e.beats, "description": e.description,
         "url": f"/seed_images/{e.id}.png", "custom": e.custom}
        for e in _state(request).seeds.entries()
    ])


async def seed_image(request: Request) -> Response:
    seeds = _state(request).seeds
    image_id = request.path_params["image_id"]
    if image_id not in seeds:
        return PlainTextResponse(f"Unknown seed image: {image_id}", status_code=404)
    return FileResponse(seeds.path(image_id), media_type="image/png")


# -- WebSocket --------------------------------------------------------------------------------------


async def _send_frame(websocket: WebSocket, frame: dict[str, Any]) -> None:
    with contextlib.suppress(Exception):
        await websocket.send_bytes(protocol.encode(frame))


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(Exception):
        # longer than the WebSocket layer's own close timeout (10 s), which then aborts a stuck TCP connection
        await asyncio.wait_for(websocket.close(code, reason[:120]), timeout=30)


def _decode(state: JamState, message: dict[str, Any]) -> protocol.ClientMessage:
    data = message.get("bytes")
    if data is None:
        data = message.get("text", "")
    return protocol.decode_client_message(
        data, max_bytes=state.config.max_message_bytes,
        seed_image_ids=state.seeds.seed_ids(), mask_image_ids=state.seeds.mask_ids())


async def _receive(websocket: WebSocket) -> dict[str, Any] | None:
    """The next data message, or None once the client has gone."""
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        return None
    return message


async def _join(state: JamState, websocket: WebSocket) -> tuple[Room, str] | None:
    """Read and honour the first message; refusals get an error frame and a policy close."""
    try:
        message = await asyncio.wait_for(_receive(websocket), state.config.join_timeout_seconds)
        if message is None:
            return None
        join = _decode(state, message)
        if not isinstance(join, protocol.Join):
            raise protocol.ProtocolError("not_joined", "the first message must be a join")
        if join.room is None:
            room = state.rooms.create(websocket.client.host if websocket.client else None)
            return room, "host"
        return state.rooms.find(join.room, join.token)
    except asyncio.TimeoutError:
        await _send_frame(websocket, protocol.error_frame("not_joined", "no join message arrived in time"))
    except protocol.ProtocolError as error:
        await _send_frame(websocket, error.frame())
    except RoomError as error:
        await _send_frame(websocket, protocol.error_frame(error.code, error.message))
    await _close(websocket, CLOSE_POLICY_VIOLATION, "join refused")
    return None


def _welcome(state: JamState, room: Room, role: str) -> dict[str, Any]:
    return protocol.welcome_frame(
        room=room.id, role=role, token=room.token if role == "host" else None,
        checkpoint=state.model.checkpoint, device=str(state.model.device), demo=state.model.demo,
        description=state.model.description,
        settings=asdict(room.session.settings), seed_images=state.seeds.seed_ids(),
        mask_images=state.seeds.mask_ids(), defaults=asdict(room.session.defaults), clip_seconds=room.session.clip_duration,
        limits=protocol.value_limits(max_up_next=room.session.max_up_next,
                                     max_message_bytes=state.config.max_message_bytes))


def _new_member(state: JamState, websocket: WebSocket, role: str) -> Member:
    async def send(data: bytes) -> None:
        await websocket.send_bytes(data)

    async def close(code: int, reason: str) -> None:
        await _close(websocket, code, reason)

    members: list[Member] = []
    listener = Listener(send, close, max_frames=state.config.listener_queue_frames,
                        stuck_seconds=state.config.slow_listener_seconds, counters=state.counters,
                        on_stuck=lambda: _cut_off(members[0], websocket))
    members.append(Member(role=role, listener=listener, prompts=TokenBucket(state.config.prompts_per_minute),
                          settings=TokenBucket(state.config.settings_per_minute, burst=10)))
    return members[0]


def _cut_off(member: Member, websocket: WebSocket) -> None:
    """A listener stuck in send(): stop its sender and close the connection from outside."""
    if member.task is not None:
        member.task.cancel()
    asyncio.get_running_loop().create_task(_close(websocket, member.listener.close_code or 1013, "too slow"))


async def ws_endpoint(websocket: WebSocket) -> None:
    state = _state(websocket)
    if not state.config.origin_allowed(websocket.headers.get("origin")):
        await websocket.close(CLOSE_POLICY_VIOLATION)
        return
    await websocket.accept()
    state.metrics.connections.inc()
    try:
        joined = await _join(state, websocket)
        if joined is not None:
            await _serve_member(state, websocket, *joined)
    finally:
        state.metrics.connections.dec()


async def _serve_member(state: JamState, websocket: WebSocket, room: Room, role: str) -> None:
    member = _new_member(state, websocket, role)
    member.listener.offer(protocol.encode(_welcome(state, room, role)), droppable=False)
    try:
        room.add_member(member)
    except RoomError as error:
        await _send_frame(websocket, protocol.error_frame(error.code, error.message))
        await _close(websocket, CLOSE_POLICY_VIOLATION, "room full")
        return
    member.task = asyncio.create_task(member.listener.run())
    try:
        await _read_messages(state, websocket, room, member)
    except WebSocketDisconnect:
        pass
    finally:
        room.remove_member(member)
        member.task.cancel()
        with contextlib.suppress(BaseException):
            await member.task


async def _read_messages(state: JamState, websocket: WebSocket, room: Room, member: Member) -> None:
    """Validate and apply each message; a bad one costs an error frame, never the connection."""
    while not member.listener.closed:
        await member.listener.wait_for_room()
        message = await _receive(websocket)
        if message is None:
            return
        try:
            room.handle(member, _decode(state, message))
        except protocol.ProtocolError as error:
            state.metrics.protocol_errors.inc()
            member.listener.offer(protocol.encode(error.frame()), droppable=False)
        except Exception as error:  # a bug must not cost the socket either
            log.exception("room %s: handling a message failed", room.id)
            member.listener.offer(protocol.encode(protocol.error_frame(
                "server_error", f"the server failed to handle that message: {type(error).__name__}")),
                droppable=False)
