"""Front-end figures for bench_cluster.py (`--frontends`): 2 front-ends x 2 workers against one process.

1. Throughput: rooms generating flat out (`--lookahead-clips 50`, as bench_server.py does, else a room idles at the
   stream's pace and clips/s measures the clock), half of them on each front-end; clips/s counted at the clients.
2. Prompt-to-ear: right after a clip arrives the host sends a new prompt; how much stream a gapless player still
   plays before the first clip carrying it, and the wall time until that clip arrives (bench_server.py's trial). In
   the cluster the host's clips come through Redis like everyone's (the owner's members are relayed too).
3. Fan-out: 1,000 listeners, half on each front-end, in one room: per clip, the spread between the first and the
   last listener receiving it (goal p99 < 0.5 s) and clip frames missing (goal 0).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from benchmarks.bench_fanout import scenario
from benchmarks.bench_server import (
    ThroughputResult,
    describe_prompts,
    late_cuts_metric,
    measure_prompt_latency,
    measure_throughput,
)
from tests.cluster_support import running_cluster
from tests.redis_support import running_redis
from tests.server_support import ServerProcess, running_server

THROUGHPUT_LOOKAHEAD = 50
CROWD = Path(__file__).resolve().parent / "crowd.py"


def emit(*lines: str) -> None:
    print(*lines, sep="\n", flush=True)


async def throughput(servers: Sequence[ServerProcess], rooms: int, window: float) -> ThroughputResult:
    """`rooms` rooms spread over `servers`, counted over the same window."""
    shares = [rooms // len(servers) + (index < rooms % len(servers)) for index in range(len(servers))]
    parts = await asyncio.gather(*(measure_throughput(server, share, window, 120.0)
                                   for server, share in zip(servers, shares) if share))
    total = ThroughputResult(rooms, max(part.window for part in parts), warm=all(part.warm for part in parts))
    for part in parts:
        total.clips += part.clips
        total.gen_seconds += part.gen_seconds
        total.errors += part.errors
    return total


def describe_throughput(label: str, result: ThroughputResult) -> str:
    warm = "" if result.warm else " (some rooms never warmed up)"
    errors = f" ({len(result.errors)} error frames, first: {result.errors[0]})" if result.errors else ""
    return (f"  {label:<28} {result.rooms} rooms: {result.clips} clips in {result.window:.1f} s = "
            f"{result.clips_per_second:.2f} clips/s; median gen {result.median_gen_seconds:.2f} s{warm}{errors}")


@contextlib.contextmanager
def cluster(directory: Path, args: argparse.Namespace, *flags: str) -> Iterator[list[ServerProcess]]:
    """A redis-server, 2 workers and 2 front-ends (started together, so their models load in parallel)."""
    with running_redis(directory) as redis, running_cluster(
            redis.url, ("fa", "fb"), workers=("w1", "w2"), log_dir=directory,
            worker_args=("--threads", str(args.threads), "--checkpoint", args.checkpoint),
            frontend_args=("--checkpoint", args.checkpoint, "--steps", str(args.steps), *flags)) as servers:
        yield list(servers.values())


async def prompt_figures(label: str, servers: Sequence[ServerProcess], trials: int, listeners: int = 0) -> list[str]:
    """The trials in a room on the first server; with `listeners` more in it, spread over all the servers and
    reading every frame in a process of their own (benchmarks/crowd.py), so the owner and the relays fan each clip
    out to them while cuts are planned, and the host's client still reads its frames as they come."""
    crowd_process: list[asyncio.subprocess.Process] = []

    async def crowd(room: str) -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(CROWD), room, str(listeners), *(server.ws_url for server in servers),
            stdout=asyncio.subprocess.PIPE)
        crowd_process.append(process)
        if (await asyncio.wait_for(process.stdout.readline(), 300)).strip() != b"ready":
            raise RuntimeError("the crowd's listeners did not all join")

    try:
        done, client = await measure_prompt_latency(servers[0], trials, 60.0, crowd=crowd if listeners else None)
    finally:
        for process in crowd_process:
            process.terminate()
            await process.wait()
    crowded = f" ({listeners} listeners in the room)" if listeners else ""
    return describe_prompts(label + crowded, done, client, late_cuts_metric(servers[0]))


@contextlib.contextmanager
def logs_directory(kept: str | None) -> Iterator[Path]:
    """Where the servers' and workers' logs go: `--log-dir` (kept, to read each cut's plan), else a temporary one."""
    if kept:
        Path(kept).mkdir(parents=True, exist_ok=True)
        yield Path(kept)
        return
    with tempfile.TemporaryDirectory() as directory:
        yield Path(directory)


def run(args: argparse.Namespace) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.listeners + 512)), hard))
    emit(f"front-ends: checkpoint {args.checkpoint}, {args.steps} steps, {args.rooms} rooms, window "
         f"{args.window:.0f} s, {args.listeners} listeners, load average {os.getloadavg()[0]:.1f} "
         f"on {os.cpu_count()} CPUs")
    local_flags = ("--checkpoint", args.checkpoint, "--steps", str(args.steps), "--threads", str(args.threads))
    flat_out = ("--lookahead-clips", str(THROUGHPUT_LOOKAHEAD), "--idle-room-seconds", "5")
    with logs_directory(args.log_dir) as directory:
        if not args.prompts_only:
            emit("throughput (rooms generating flat out):")
            with running_server(*local_flags, *flat_out, log_dir=directory) as server:
                emit(describe_throughput("one process", asyncio.run(throughput([server], args.rooms, args.window))))
            with cluster(directory, args, *flat_out) as servers:
                emit(describe_throughput("2 front-ends x 2 workers", asyncio.run(
                    throughput(servers, args.rooms, args.window))))
        emit("prompt-to-ear (server defaults):")
        with running_server(*local_flags, log_dir=directory) as server:
            emit(*asyncio.run(prompt_figures("one process", [server], args.prompt_trials, args.prompt_listeners)))
        # the prompt phase logs at info level (each cut's plan and splice, for --log-dir); fan-out quietly
        listeners = ("--max-listeners", str(args.listeners + 10)) if args.prompts_only else (
            "--max-listeners", str(args.listeners + 10), "--log-level", "warning")
        with cluster(directory, args, *listeners) as servers:
            emit(*asyncio.run(prompt_figures("2 front-ends x 2 workers", servers, args.prompt_trials,
                                             args.prompt_listeners)))
            if not args.prompts_only:
                result = asyncio.run(scenario(servers, "2 front-ends", args.listeners, args.clips, stalled=False))
                emit("fan-out:", "  " + result.report())
    emit(f"load average at end {os.getloadavg()[0]:.1f}")
