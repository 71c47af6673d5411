"""Real `jamserver worker` processes against a test redis-server, and clip requests for them."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import redis

from jamserver.cluster.keys import JOBS_STREAM, WORKERS_GROUP, worker_key
from pipeline.diffusion.requests import ClipRequest, PromptInput
from pipeline.render import RenderedClip
from pipeline.seeds import SeedLibrary
from tests.server_support import REPO


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
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def clip_request(prompt: str = "church bells", *, steps: int = 8, seed: int = 7) -> ClipRequest:
    """A request for the tiny model; `steps` with denoising 1.0 is the number of UNet calls it takes."""
    return ClipRequest(PromptInput(prompt, seed, None, 1.0, 7.0), PromptInput(prompt, seed + 1, None, 1.0, 7.0),
                       0.25, SeedLibrary().load_seed("og_beat"), steps)


def pending_owner(client: redis.Redis) -> str | None:
    """The worker holding the oldest pending job, if any."""
    rows = client.xpending_range(JOBS_STREAM, WORKERS_GROUP, min="-", max="+", count=1)
    return rows[0]["consumer"].decode() if rows else None


def assert_same_clip(one: RenderedClip, other: RenderedClip) -> None:
    """The same job made twice: the same clip up to batching's rounding (as tests/test_batching.py allows, images
    within one level per pixel), so the same sound."""
    pixels = np.abs(np.asarray(one.image, np.int16) - np.asarray(other.image, np.int16))
    assert pixels.max() <= 1 and pixels.mean() < 0.01, (pixels.max(), pixels.mean())
    assert one.audio.shape == other.audio.shape
    assert np.corrcoef(one.audio.ravel(), other.audio.ravel())[0, 1] > 0.995
