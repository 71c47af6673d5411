"""Starlette routes: /ws (rooms), /run_inference (original REST API), seed images, health, metrics, page.

The app is built and its routes are listed here; the handlers of a member's socket live in `websocket`, the REST
API's in `rest`, uploads in `uploads`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from jamserver.cluster.frontend import FrontendOptions, RemoteModel, start_frontend
from jamserver.server.config import ServerConfig
from jamserver.server.device.engine import Engine, EngineStats
from jamserver.server.http.rest import RestQueue, run_inference
from jamserver.server.http.uploads import UploadGate, upload_seed
from jamserver.server.metrics import Metrics
from jamserver.server.room.fanout import FanoutCounters
from jamserver.server.room.registry import RoomRegistry
from jamserver.server.state import JamState
from jamserver.server.transport.websocket import ws_endpoint
from pipeline.audio.dsp import SpectrogramConverter
from pipeline.audio.params import SpectrogramParams
from pipeline.diffusion.riffusion import supported_steps
from pipeline.model.loading import LoadedModel
from pipeline.seeds import SeedLibrary

log = logging.getLogger("jamserver.server.app")
STATIC_DIR = Path(__file__).resolve().parents[2] / "static"
REAP_INTERVAL = 1.0


def create_app(config: ServerConfig, model: LoadedModel | RemoteModel, *, seeds: SeedLibrary | None = None,
               static_dir: Path = STATIC_DIR, frontend: FrontendOptions | None = None) -> Starlette:
    """The app; with `frontend`, a cluster front-end: rooms run on whichever front-end holds their lease in Redis,
    clips are made by workers (`model` is then a RemoteModel: names and geometry, no weights)."""
    seeds = seeds or SeedLibrary()
    metrics = Metrics()
    counters = FanoutCounters()
    executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="jam-stream")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if frontend is None:
            backend = _local_backend(fit_to_scheduler(config, model), model, seeds, metrics, executor)
        else:
            backend = await start_frontend(frontend, model, config=config, seeds=seeds, metrics=metrics, executor=executor,
                                           sample_rate=SpectrogramParams().sample_rate)
        rooms = backend.rooms
        app.state.jam = JamState(backend.config, model, seeds, backend.engine, rooms, metrics, counters, executor,
                                 UploadGate(config.uploads_per_minute), RestQueue(config.rest_queue))
        metrics.watch(counters, backend.engine_stats)
        reaper = asyncio.create_task(_reap_forever(rooms))
        log.info("model %s on %s%s", model.checkpoint, model.device,
                 f" ({model.description})" if model.description else "")
        try:
            yield
        finally:
            reaper.cancel()
            await rooms.close_all()
            await asyncio.sleep(0.2)  # let senders flush their close frames
            await backend.close()
            executor.shutdown(wait=False, cancel_futures=True)
            app.state.jam.uploads.executor.shutdown(wait=False, cancel_futures=True)

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


@dataclass
class LocalBackend:
    """One process: the batching engine on this machine's device, and the rooms that use it."""

    config: ServerConfig
    engine: Engine
    rooms: RoomRegistry

    @property
    def engine_stats(self) -> EngineStats:
        return self.engine.stats

    async def close(self) -> None:
        await asyncio.to_thread(self.engine.close)


def _local_backend(config: ServerConfig, model: LoadedModel, seeds: SeedLibrary, metrics: Metrics,
                   executor: ThreadPoolExecutor) -> LocalBackend:
    converter = SpectrogramConverter(SpectrogramParams(), device=model.device)
    engine = Engine(model.pipeline, converter, max_batch=config.max_batch)
    rooms = RoomRegistry(engine=engine, seeds=seeds, config=config, metrics=metrics, executor=executor,
                         sample_rate=converter.params.sample_rate)
    return LocalBackend(config, engine, rooms)


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
    return Response(_state(request).metrics.exposition(), media_type="text/plain; version=0.0.4")


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
