"""Benchmark fair use of the device: does a normal room keep real time while others ask for the most they may?

Starts `jamserver serve` (tiny model, default flags plus `--rest-queue`) and measures one normal room (the
default settings: 50 steps x denoising 0.75) twice: alone, then while 8 more rooms run at the maximum the server
allows (`--max-steps` steps at denoising 1.0) and 20 `POST /run_inference/` requests at the same maximum are
kept queued (each one answered is sent again). Reported for the normal room: the gaps between its clips'
arrivals (real time is one clip every 5.12 s; the goal is no gap over 5.5 s) and how long a gapless player
would have starved; for the others: their clips, and the REST answers by status.

Issue 16 measured the old server under the same abuse (at 999 steps): the normal room's clips took 22-26 s.

    .venv/bin/python benchmarks/bench_abuse.py [--heavy-rooms 8] [--rest 20] [--window 60] [--server-arg=--max-batch=8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.room_client import ReceivedClip, RoomClient  # noqa: E402
from jamserver.jam import protocol  # noqa: E402
from tests.server_support import ServerProcess, running_server  # noqa: E402

CLIP_SECONDS = 5.12
GAP_GOAL = 5.5
MAX_STEPS = 50  # the server's default --max-steps and --max-denoising-steps


def starved_seconds(clips: list[ReceivedClip]) -> float:
    """How long a gapless player, started at the first clip, would have waited for audio over these clips."""
    if not clips:
        return 0.0
    starved, played_until = 0.0, clips[0].arrived
    for clip in clips:
        starved += max(0.0, clip.arrived - played_until)
        played_until = max(played_until, clip.arrived) + clip.duration
    return starved


def gaps(clips: list[ReceivedClip]) -> list[float]:
    return [later.arrived - earlier.arrived for earlier, later in zip(clips, clips[1:])]


async def heavy_room(server: ServerProcess) -> RoomClient:
    client = await RoomClient.open(server)
    await client.websocket.send(protocol.encode(
        {"type": "settings", "num_inference_steps": MAX_STEPS, "denoising": 1.0}))
    await client.websocket.send(protocol.encode({"type": "prompt", "prompt": "heavy industrial drone"}))
    return client


async def keep_rest_queued(server: ServerProcess, count: int, stop: asyncio.Event, statuses: Counter) -> None:
    body = {"alpha": 0.5, "num_inference_steps": MAX_STEPS, "seed_image_id": "og_beat",
            "start": {"prompt": "rest start", "seed": 1, "denoising": 1.0},
            "end": {"prompt": "rest end", "seed": 2, "denoising": 1.0}}

    async def one_slot(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            try:
                answer = await client.post("/run_inference/", json=body)
                statuses[answer.status_code] += 1
                if answer.status_code in (429, 503):
                    await asyncio.sleep(1.0)  # honour the spirit of Retry-After without leaving the queue short
            except httpx.HTTPError as error:
                statuses[type(error).__name__] += 1

    async with httpx.AsyncClient(base_url=server.http_url, timeout=300) as client:
        await asyncio.gather(*(one_slot(client) for _ in range(count)))


async def measure(server: ServerProcess, heavy: int, rest: int, window: float) -> dict:
    normal = await RoomClient.open(server)
    try:
        if not await normal.wait_for_clips(3, 180):
            raise RuntimeError("the normal room did not start")
        await asyncio.sleep(window / 3)
        alone = [clip for clip in normal.clips[2:]]
        others = await asyncio.gather(*(heavy_room(server) for _ in range(heavy)))
        stop, statuses = asyncio.Event(), Counter()
        rest_task = asyncio.create_task(keep_rest_queued(server, rest, stop, statuses))
        await asyncio.sleep(15)  # let the heavy rooms and the queue fill up before counting
        mark = len(normal.clips)
        heavy_marks = [len(other.clips) for other in others]
        started = time.monotonic()
        await asyncio.sleep(window)
        loaded = normal.clips[mark - 1:]  # from the clip before the window, for the first gap
        heavy_clips = sum(len(other.clips) - seen for other, seen in zip(others, heavy_marks))
        stop.set()
        rest_task.cancel()
        await asyncio.gather(rest_task, return_exceptions=True)
        await asyncio.gather(*(other.close() for other in others))
        return {"alone": alone, "loaded": loaded, "heavy_clips": heavy_clips, "statuses": statuses,
                "elapsed": time.monotonic() - started, "errors": normal.errors}
    finally:
        await normal.close()


def describe(name: str, clips: list[ReceivedClip]) -> str:
    spacing = gaps(clips)
    if not spacing:
        return f"{name}: fewer than two clips"
    gens = [clip.gen_seconds for clip in clips[1:]]
    return (f"{name}: {len(spacing)} gaps, mean {statistics.mean(spacing):.2f} s, max {max(spacing):.2f} s "
            f"(goal <= {GAP_GOAL} s: {'met' if max(spacing) <= GAP_GOAL else 'MISSED'}); "
            f"starved {starved_seconds(clips[1:]):.2f} s; gen_seconds median {statistics.median(gens):.2f} s, "
            f"max {max(gens):.2f} s\n  gaps: {' '.join(f'{gap:.2f}' for gap in spacing)}\n"
            f"  gen_seconds: {' '.join(f'{gen:.2f}' for gen in gens)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heavy-rooms", type=int, default=8)
    parser.add_argument("--rest", type=int, default=20, help="REST requests kept queued")
    parser.add_argument("--window", type=float, default=60.0, help="seconds measured under load")
    parser.add_argument("--server-arg", action="append", default=[], help="extra `jamserver serve` argument")
    args = parser.parse_args(argv)
    flags = ["--rest-queue", str(args.rest), *args.server_arg]
    with tempfile.TemporaryDirectory() as logs, running_server(*flags, log_dir=Path(logs)) as server:
        result = asyncio.run(measure(server, args.heavy_rooms, args.rest, args.window))
    print(f"server flags: {' '.join(flags)}; load average after the run: "
          f"{', '.join(f'{load:.1f}' for load in os.getloadavg())} on {os.cpu_count()} cores")
    print(describe("normal room alone", result["alone"]))
    print(describe(f"normal room beside {args.heavy_rooms} rooms at {MAX_STEPS} steps x 1.0 and {args.rest} "
                   f"queued REST requests", result["loaded"]))
    print(f"heavy rooms: {result['heavy_clips']} clips in {result['elapsed']:.0f} s "
          f"({result['heavy_clips'] / max(args.heavy_rooms, 1) / result['elapsed'] * CLIP_SECONDS:.2f} of real time "
          f"each); REST answers: {dict(result['statuses'])}")
    if result["errors"]:
        print(f"normal room errors: {result['errors']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
