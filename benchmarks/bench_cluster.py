"""Benchmark clip generation through Redis Streams against the in-process engine: clips/s and latency per clip.

Three set-ups make the same clip jobs (tiny model unless --checkpoint says otherwise), `--jobs` at a time, for
`--window` seconds each after a warm-up:

1. local: the Engine in this process, as `jamserver serve` without --redis runs it;
2. 1 worker: a `jamserver worker` process behind a real redis-server, jobs sent by RemoteEngine (the front-end's
   side), each carrying its seed image as PNG and coming back with the clip's image (PNG) and PCM;
3. 2 workers: two such processes sharing the consumer group.

It also times packing and unpacking one job and one result, the per-clip cost the Redis path adds on each side.
Workers run with `--threads` torch threads each; on a machine with few cores two workers share them, so the
2-worker figure measures the queue (does it keep both busy, what does a hop cost), not the scaling of GPUs.
With `--frontends` it measures `jamserver serve --redis` instead (benchmarks/cluster_frontends.py): 2 front-ends x
2 workers against one process, for clips/s, prompt-to-ear latency and 1,000 listeners spread over both front-ends.

    .venv/bin/python benchmarks/bench_cluster.py [--jobs 4] [--window 30] [--steps 20]
    .venv/bin/python benchmarks/bench_cluster.py --frontends [--rooms 4] [--listeners 1000] [--clips 3]
    .venv/bin/python benchmarks/bench_cluster.py --frontends --prompts-only --prompt-trials 8 [--log-dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from jamserver.cluster.messages import ClipJobMessage, ClipResultMessage, PngCache  # noqa: E402
from jamserver.cluster.remote import RemoteEngine  # noqa: E402
from jamserver.server.device.engine import Engine  # noqa: E402
from pipeline.render import RenderedClip  # noqa: E402
from tests.cluster_support import clip_request, running_worker  # noqa: E402
from tests.redis_support import running_redis  # noqa: E402

Render = Callable[..., Awaitable[RenderedClip]]


async def measure(render: Render, *, jobs: int, window: float, steps: int) -> tuple[float, list[float]]:
    """Keep `jobs` clips in flight for `window` seconds after one warm-up round: (clips/s, latencies)."""
    await asyncio.gather(*(render(clip_request(seed=100 + k, steps=steps), time.monotonic()) for k in range(jobs)))
    latencies: list[float] = []
    end = time.monotonic() + window

    async def keep_one_going(slot: int) -> None:
        seed = 1000 * slot
        while time.monotonic() < end:
            started = time.monotonic()
            await render(clip_request(seed=seed, steps=steps), started)
            latencies.append(time.monotonic() - started)
            seed += 1

    started = time.monotonic()
    await asyncio.gather(*(keep_one_going(slot) for slot in range(jobs)))
    return len(latencies) / (time.monotonic() - started), latencies


def report(name: str, rate: float, latencies: list[float]) -> None:
    ordered = sorted(latencies)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    print(f"{name:<10} {rate:6.2f} clips/s   latency mean {statistics.mean(latencies):6.2f} s   "
          f"p95 {p95:6.2f} s   ({len(latencies)} clips)", flush=True)


def codec_costs(steps: int) -> None:
    """Pack/unpack times of one job and one result (a real clip from the tiny model)."""
    from pipeline.audio.dsp import SpectrogramConverter
    from pipeline.audio.params import SpectrogramParams
    from pipeline.model.loading import load_pipeline
    from pipeline.render import render_clip

    model = load_pipeline("tiny", device="cpu")
    clip = render_clip(model.pipeline, SpectrogramConverter(SpectrogramParams()), clip_request(steps=steps))
    job = ClipJobMessage("job", "jam:results:bench", time.time(), time.time() + 60, clip_request(steps=steps))
    cache = PngCache()
    job.pack(cache)  # the seed image's PNG is cached after the first job
    result = ClipResultMessage("job", "bench", clip)
    for name, pack, unpack in (
        ("job", lambda: job.pack(cache), ClipJobMessage.unpack),
        ("result", result.pack, ClipResultMessage.unpack),
    ):
        started = time.perf_counter()
        data = pack()
        packed = time.perf_counter() - started
        started = time.perf_counter()
        unpack(data)
        print(f"{name:<10} {len(data) / 1e3:8.0f} kB   pack {1e3 * packed:6.1f} ms   "
              f"unpack {1e3 * (time.perf_counter() - started):6.1f} ms", flush=True)


async def remote(url: str, **options: float) -> tuple[float, list[float]]:
    engine = RemoteEngine(url, name="bench")
    await engine.start()
    try:
        return await measure(engine.render, **options)
    finally:
        await engine.close()


def local(args: argparse.Namespace) -> tuple[float, list[float]]:
    import torch

    from pipeline.audio.dsp import SpectrogramConverter
    from pipeline.audio.params import SpectrogramParams
    from pipeline.model.loading import load_pipeline

    torch.set_num_threads(args.threads)
    model = load_pipeline(args.checkpoint, device="cpu")
    engine = Engine(model.pipeline, SpectrogramConverter(SpectrogramParams(), device=model.device))
    try:
        return asyncio.run(measure(engine.render, jobs=args.jobs, window=args.window, steps=args.steps))
    finally:
        engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=4, help="clip jobs kept in flight")
    parser.add_argument("--window", type=float, default=30.0, help="seconds measured per set-up")
    parser.add_argument("--steps", type=int, default=20, help="scheduler steps per clip (denoising 1.0)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker (and for local)")
    parser.add_argument("--checkpoint", default="tiny")
    front = parser.add_argument_group("front-ends (--frontends)")
    front.add_argument("--frontends", action="store_true", help="measure `serve --redis` front-ends instead")
    front.add_argument("--rooms", type=int, default=4, help="rooms generating flat out, spread over the front-ends")
    front.add_argument("--listeners", type=int, default=1000, help="listeners in the fan-out room")
    front.add_argument("--clips", type=int, default=3, help="clips the fan-out spread is measured over")
    front.add_argument("--prompt-trials", type=int, default=3)
    front.add_argument("--prompts-only", action="store_true", help="only the prompt-to-ear part (cut-ins)")
    front.add_argument("--prompt-listeners", type=int, default=0,
                       help="listeners in the prompt trials' room, spread over the front-ends (the fan-out's load)")
    front.add_argument("--log-dir", help="keep the processes' logs here (each cut's plan and splice at info level)")
    args = parser.parse_args()
    if args.frontends:
        from benchmarks.cluster_frontends import run

        run(args)
        return
    options = {"jobs": args.jobs, "window": args.window, "steps": args.steps}
    print(f"{args.jobs} jobs in flight, {args.steps} steps, {args.window:.0f} s per set-up, "
          f"checkpoint {args.checkpoint}, {args.threads} torch thread(s) each", flush=True)
    codec_costs(args.steps)
    report("local", *local(args))
    worker_flags = ("--threads", str(args.threads), "--checkpoint", args.checkpoint)
    with tempfile.TemporaryDirectory() as directory, running_redis(Path(directory)) as redis:
        for count in (1, 2):
            with contextlib.ExitStack() as stack:
                for index in range(count):
                    stack.enter_context(running_worker(redis.url, f"bench{count}-{index}", *worker_flags,
                                                       log_dir=Path(directory)))
                report(f"{count} worker{'s' if count > 1 else ''}", *asyncio.run(remote(redis.url, **options)))


if __name__ == "__main__":
    main()
