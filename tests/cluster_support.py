"""Real `jamserver worker` and `jamserver serve --redis` processes against a test redis-server, clip requests for
the workers, and WebSocket members for the front-ends."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from jamserver.cluster.keys import JOBS_STREAM, WORKERS_GROUP, RoomKeys, worker_key
from jamserver.jam import protocol
from pipeline.diffusion.requests import ClipRequest, PromptInput
from pipeline.render import RenderedClip
from pipeline.seeds import SeedLibrary
from tests.server_support import REPO, ServerProcess, checked, free_port, stop_process, wait_healthy


class WorkerProcess:
    def __init__(self, process: subprocess.Popen, name: str, log_path: Path) -> None:
        self.process = process
        self.name = name
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_until_alive(client: redis.Redis, worker: WorkerProcess, timeout: float) -> None:
    """Until the worker's first heartbeat (it has loaded the model and made its warm-up clip)."""
    deadline = time.monotonic() + timeout
    while not client.exists(worker_key(worker.name)):
        if worker.process.poll() is not None:
            raise RuntimeError(f"worker {worker.name} exited with {worker.process.returncode}:\n{worker.log()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"worker {worker.name} sent no heartbeat in {timeout} s:\n{worker.log()}")
        time.sleep(0.2)


@contextlib.contextmanager
def running_worker(redis_url: str, name: str, *args: str, log_dir: Path, wait: bool = True,
                   timeout: float = 240.0) -> Iterator[WorkerProcess]:
    """`jamserver worker --checkpoint tiny --threads 1`, stopped with SIGTERM (SIGKILL if it hangs) after."""
    log_path = log_dir / f"worker-{name}.log"
    command = [sys.executable, "-m", "jamserver", "worker", "--redis", redis_url, "--name", name,
               "--checkpoint", "tiny", "--threads", "1", *args]
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONPATH": str(REPO)})
    worker = WorkerProcess(process, name, log_path)
    try:
        if wait:
            with redis.Redis.from_url(redis_url) as client:
                wait_until_alive(client, worker, timeout)
        yield worker
    finally:
        stop_process(process, timeout=40)


def clip_request(prompt: str = "church bells", *, steps: int = 8, seed: int = 7) -> ClipRequest:
    """A request for the tiny model; `steps` with denoising 1.0 is the number of UNet calls it takes."""
    return ClipRequest(PromptInput(prompt, seed, None, 1.0, 7.0), PromptInput(prompt, seed + 1, None, 1.0, 7.0),
                       0.25, SeedLibrary().load_seed("og_beat"), steps)


def pending_owner(client: redis.Redis, stream: str = JOBS_STREAM) -> str | None:
    """The worker holding the oldest pending job of `stream`, if any."""
    rows = client.xpending_range(stream, WORKERS_GROUP, min="-", max="+", count=1)
    return rows[0]["consumer"].decode() if rows else None


def log_magnitudes(audio: np.ndarray, frame: int = 2048, hop: int = 512) -> np.ndarray:
    """Log magnitude spectrogram: what a listener hears, blind to the phases the image's inversion settled on."""
    frames = np.lib.stride_tricks.sliding_window_view(audio.ravel(), frame)[::hop]
    return np.log1p(np.abs(np.fft.rfft(frames * np.hanning(frame), axis=-1)))


def assert_same_clip(one: RenderedClip, other: RenderedClip) -> None:
    """The same job made twice: the same clip up to batching's rounding (as tests/test_batching.py allows, images
    within one level per pixel), so the same sound. The waveforms are not compared sample by sample: a level's
    difference in a few pixels can move the phases the inversion finds (waveform correlation 0.993 for 7 such
    pixels of one seed) while the sound stays the same."""
    pixels = np.abs(np.asarray(one.image, np.int16) - np.asarray(other.image, np.int16))
    assert pixels.max() <= 1 and pixels.mean() < 0.01, (pixels.max(), pixels.mean())
    assert one.audio.shape == other.audio.shape
    correlation = np.corrcoef(log_magnitudes(one.audio).ravel(), log_magnitudes(other.audio).ravel())[0, 1]
    assert correlation > 0.995, correlation


# -- front-ends ---------------------------------------------------------------------------------------------


def start_frontend(redis_url: str, name: str, *args: str, log_dir: Path) -> ServerProcess:
    """`jamserver serve --redis URL --name NAME --checkpoint tiny`, not yet waited for (start several at once)."""
    port = free_port()
    log_path = log_dir / f"frontend-{name}.log"
    command = [sys.executable, "-m", "jamserver", "serve", "--redis", redis_url, "--name", name, "--host",
               "127.0.0.1", "--port", str(port), "--checkpoint", "tiny", "--steps", "8", *args]
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONPATH": str(REPO)})
    return ServerProcess(process, port, log_path)


@contextlib.contextmanager
def running_cluster(redis_url: str, frontends: tuple[str, ...], *, log_dir: Path, worker_args: tuple[str, ...] = (),
                    frontend_args: tuple[str, ...] = (), workers: tuple[str, ...] = ("w1",),
                    timeout: float = 240.0) -> Iterator[dict[str, ServerProcess]]:
    """Workers and front-ends started together (they load in parallel), each ready when this yields."""
    with contextlib.ExitStack() as stack:
        started = [stack.enter_context(running_worker(redis_url, name, *worker_args, log_dir=log_dir, wait=False))
                   for name in workers]
        servers = {name: start_frontend(redis_url, name, *frontend_args, log_dir=log_dir) for name in frontends}
        for server in servers.values():
            stack.callback(stop_process, server.process)
        with redis.Redis.from_url(redis_url) as client:
            for worker in started:
                wait_until_alive(client, worker, timeout)
        for server in servers.values():
            wait_healthy(server, timeout)
        yield servers


class Member:
    """A WebSocket member of a room, reading in the background: every frame it got, in order, with its arrival time.

    No keepalive pings: a front-end SIGSTOPped for a while must not look like a dead connection to the client."""

    def __init__(self, ws: Any, welcome: dict[str, Any]) -> None:
        self.ws = ws
        self.welcome = welcome
        self.frames: list[tuple[float, dict[str, Any]]] = []
        self.closed: float | None = None
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def join(cls, server: ServerProcess, **fields: Any) -> Member:
        ws = await connect(server.ws_url, max_size=None, ping_interval=None)
        await ws.send(protocol.encode({"type": "join", **fields}))
        frame = protocol.decode(await asyncio.wait_for(ws.recv(), 60))
        return cls(ws, frame)

    async def _read(self) -> None:
        try:
            async for data in self.ws:
                self.frames.append((time.monotonic(), protocol.decode(data)))
        except ConnectionClosed:
            pass
        self.closed = time.monotonic()

    def clips(self) -> list[dict[str, Any]]:
        return [frame for _, frame in self.frames if frame["type"] == "clip"]

    def seqs(self) -> list[int]:
        return [clip["seq"] for clip in self.clips()]

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [frame for _, frame in self.frames if frame["type"] == kind]

    def open_jam(self) -> bool:
        """Whether the room is an open jam, as this member last heard."""
        settings = [self.welcome["settings"], *(frame["settings"] for frame in self.of_type("settings"))]
        return bool(settings[-1].get("open_jam"))

    async def send(self, **message: Any) -> None:
        await self.ws.send(protocol.encode(message))

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.wait({self._reader}, timeout=10)


async def until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Wait (without blocking the loop) until `condition()` is truthy; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not (value := checked(condition, deadline, timeout, what)):
        await asyncio.sleep(0.05)
    return value


def lease_holder(client: redis.Redis, room_id: str) -> str | None:
    value = client.get(RoomKeys(room_id).lease)
    return None if value is None else value.decode().split(" ", 1)[1]
