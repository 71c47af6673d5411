"""Benchmark the real jam server: throughput of 1 vs N rooms, prompt-change latency, real-time factor.

Starts `jamserver serve` as a subprocess on 127.0.0.1 (tests/server_support.py) and drives it with real
websockets clients, twice:

1. Throughput, with `--lookahead-clips 50`: a room normally generates only one clip ahead of playback, so
   it idles most of the time and "clips/s" would measure the clock, not the server. With a deep lookahead
   every room generates flat out and the engine's continuous batching is what is measured. Each phase waits
   until every room has its first clip (warm-up), then counts clips arriving in a fixed window.
2. Prompt latency, with the default lookahead (what a listener gets): right after a clip arrives, the host
   sends a new prompt; we count clips until one carries it, and how much stream time a gapless player would
   still play before that clip starts.

Engine batching comes from /metrics (jam_batched_rows_total / jam_unet_calls_total = mean batch size).
Every phase has a time limit, so the run stops by itself. Run from the repository root:

    .venv/bin/python benchmarks/bench_server.py [--rooms 8] [--window 20] [--prompt-trials 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from websockets.asyncio.client import ClientConnection, connect  # noqa: E402

from jamserver.jam import protocol  # noqa: E402
from tests.server_support import ServerProcess, running_server  # noqa: E402

CLIP_SECONDS = 5.12
THROUGHPUT_LOOKAHEAD = 50
ORIGINAL_PROMPT_CLIPS = "2-5 clips (10-26 s)"  # the original web app, see REFERENCE.md
STEPS_PER_CLIP = int(50 * 0.75)  # UNet steps of one clip at the room defaults: 50 steps, denoising 0.75
BATCH_COUNTERS = ("jam_unet_calls_total", "jam_batched_rows_total", "jam_engine_busy_seconds_total")


@dataclass(frozen=True)
class ReceivedClip:
    seq: int
    stream_time: float
    duration: float
    alpha: float
    end_prompt: str
    gen_seconds: float
    arrived: float  # time.monotonic() on the client


class PlaybackClock:
    """Where a gapless player of the room's stream would be: starts at the first clip, stalls when it runs dry."""

    def __init__(self) -> None:
        self.position = 0.0
        self.generated_until = 0.0
        self._last: float | None = None

    def advance(self, now: float) -> float:
        if self._last is not None:
            self.position = min(self.generated_until, self.position + (now - self._last))
            self._last = now
        return self.position

    def clip_arrived(self, clip: ReceivedClip) -> None:
        self.advance(clip.arrived)
        if self._last is None:
            self._last = clip.arrived
        self.generated_until = max(self.generated_until, clip.stream_time + clip.duration)


class RoomClient:
    """One host connection that reads every frame as it arrives and keeps the clips."""

    def __init__(self, websocket: ClientConnection) -> None:
        self.websocket = websocket
        self.clips: list[ReceivedClip] = []
        self.errors: list[str] = []
        self.playback = PlaybackClock()
        self._new_clip = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, server: ServerProcess, timeout: float = 30.0) -> RoomClient:
        websocket = await asyncio.wait_for(connect(server.ws_url, max_size=None), timeout)
        await websocket.send(protocol.encode({"type": "join"}))
        return cls(websocket)

    async def _read(self) -> None:
        async for data in self.websocket:
            frame = protocol.decode(data)
            if frame["type"] == "error":
                self.errors.append(f"{frame['code']}: {frame['message']}")
            if frame["type"] != "clip":
                continue
            clip = ReceivedClip(frame["seq"], frame["stream_time"], frame["duration"], frame["alpha"],
                                frame["end"]["prompt"], frame["gen_seconds"], time.monotonic())
            self.playback.clip_arrived(clip)
            async with self._new_clip:
                self.clips.append(clip)
                self._new_clip.notify_all()

    async def wait_for_clips(self, count: int, timeout: float) -> bool:
        """True once `count` clips have arrived; False if `timeout` passed first."""
        async with self._new_clip:
            try:
                await asyncio.wait_for(self._new_clip.wait_for(lambda: len(self.clips) >= count), timeout)
            except asyncio.TimeoutError:
                return False
        return True

    async def send_prompt(self, prompt: str) -> None:
        await self.websocket.send(protocol.encode({"type": "prompt", "prompt": prompt}))

    async def close(self) -> None:
        await self.websocket.close()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


def read_counters(server: ServerProcess) -> dict[str, float]:
    """The engine's batching counters from /metrics."""
    with urllib.request.urlopen(server.http_url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {sample.name: sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples}
    return {name: samples.get(name, 0.0) for name in BATCH_COUNTERS}


# -- throughput -------------------------------------------------------------------------------------


@dataclass
class ThroughputResult:
    rooms: int
    window: float
    clips: int = 0
    warm: bool = True
    errors: list[str] = field(default_factory=list)
    gen_seconds: list[float] = field(default_factory=list)
    counters: dict[str, float] = field(default_factory=dict)

    @property
    def clips_per_second(self) -> float:
        return self.clips / self.window if self.window > 0 else 0.0

    @property
    def mean_batch(self) -> float:
        calls = self.counters.get("jam_unet_calls_total", 0.0)
        return self.counters.get("jam_batched_rows_total", 0.0) / calls if calls else 0.0

    @property
    def steps_per_second(self) -> float:
        """Clip-steps denoised per second: unlike whole clips, this does not jump by one clip at a time."""
        return self.counters.get("jam_batched_rows_total", 0.0) / self.window if self.window > 0 else 0.0

    @property
    def device_busy(self) -> float:
        """Share of the window the engine's device thread spent stepping and decoding (the rest it waited)."""
        return self.counters.get("jam_engine_busy_seconds_total", 0.0) / self.window if self.window > 0 else 0.0

    @property
    def median_gen_seconds(self) -> float:
        return statistics.median(self.gen_seconds) if self.gen_seconds else float("nan")


async def measure_throughput(server: ServerProcess, rooms: int, window: float,
                             warmup_timeout: float) -> ThroughputResult:
    """Open `rooms` rooms, wait for each one's first clip, then count clips arriving during `window` s."""
    clients = await asyncio.gather(*(RoomClient.open(server) for _ in range(rooms)))
    try:
        warm = await asyncio.gather(*(client.wait_for_clips(1, warmup_timeout) for client in clients))
        seen = [len(client.clips) for client in clients]
        before = await asyncio.to_thread(read_counters, server)
        started = time.monotonic()
        await asyncio.sleep(window)
        elapsed = time.monotonic() - started
        after = await asyncio.to_thread(read_counters, server)
        result = ThroughputResult(rooms, elapsed, warm=all(warm),
                                  counters={name: after[name] - before[name] for name in BATCH_COUNTERS})
        for client, skip in zip(clients, seen):
            fresh = [clip for clip in client.clips[skip:] if clip.arrived <= started + elapsed]
            result.clips += len(fresh)
            result.gen_seconds += [clip.gen_seconds for clip in fresh]
            result.errors += client.errors
        return result
    finally:
        await asyncio.gather(*(client.close() for client in clients))


# -- prompt latency ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptTrial:
    clips: int | None  # clips after the one that had just arrived, up to the first carrying the prompt
    stream_seconds: float | None  # stream time the player still plays before that clip starts
    wall_seconds: float | None  # from sending the prompt to the carrying clip arriving


async def prompt_trial(client: RoomClient, prompt: str, timeout: float) -> PromptTrial:
    """Send `prompt` right after the next clip arrives; follow clips until one moves towards it."""
    if not await client.wait_for_clips(len(client.clips) + 1, timeout):
        return PromptTrial(None, None, None)
    trigger = client.clips[-1]
    await client.send_prompt(prompt)
    sent = time.monotonic()
    position = client.playback.advance(sent)
    deadline = sent + timeout
    index = len(client.clips) - 1
    while time.monotonic() < deadline:
        if not await client.wait_for_clips(index + 2, deadline - time.monotonic()):
            break
        index += 1
        clip = client.clips[index]
        if clip.end_prompt == prompt:
            return PromptTrial(clip.seq - trigger.seq, clip.stream_time - position, clip.arrived - sent)
    return PromptTrial(None, None, None)


async def measure_prompt_latency(server: ServerProcess, trials: int,
                                 timeout: float) -> tuple[list[PromptTrial], list[str]]:
    """Prompt trials in one room, and the error frames the room sent meanwhile."""
    client = await RoomClient.open(server)
    try:
        if not await client.wait_for_clips(2, timeout):  # clips 0 and 1 arrive back to back: start after them
            return [], client.errors
        done = [await prompt_trial(client, f"benchmark prompt number {n}", timeout) for n in range(trials)]
        return done, client.errors
    finally:
        await client.close()


# -- report -----------------------------------------------------------------------------------------


def describe_throughput(result: ThroughputResult) -> str:
    warm = "" if result.warm else " (some rooms never warmed up: machine overloaded?)"
    if result.errors:
        warm += f" ({len(result.errors)} error frames, first: {result.errors[0]})"
    calls = int(result.counters.get("jam_unet_calls_total", 0))
    return (f"  {result.rooms} room(s): {result.clips} clips in {result.window:.1f} s = "
            f"{result.clips_per_second:.3f} clips/s; median gen {result.median_gen_seconds:.2f} s/clip; "
            f"UNet calls {calls}, mean batch {result.mean_batch:.2f}, device thread busy {result.device_busy:.0%}; "
            f"{result.steps_per_second:.1f} clip-steps/s "
            f"(= {result.steps_per_second / STEPS_PER_CLIP:.3f} clips/s at {STEPS_PER_CLIP} steps a clip){warm}")


def describe_prompts(trials: Sequence[PromptTrial]) -> list[str]:
    done = [trial for trial in trials if trial.clips is not None]
    lines = [f"  trial {n}: " + (f"carried by clip +{t.clips}, heard after {t.stream_seconds:.2f} s of stream "
                                 f"({t.wall_seconds:.2f} s wall)" if t.clips is not None else "never carried (timeout)")
             for n, t in enumerate(trials)]
    if done:
        lines.append(f"  this server: {min(t.clips for t in done)}-{max(t.clips for t in done)} clips, "
                     f"{min(t.stream_seconds for t in done):.1f}-{max(t.stream_seconds for t in done):.1f} s "
                     f"of stream; original app: {ORIGINAL_PROMPT_CLIPS}")
    return lines


def ratio(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.2f}x" if denominator > 0 else "n/a"


def emit(*lines: str) -> None:
    print(*lines, sep="\n", flush=True)


async def run_benchmark(args: argparse.Namespace, log_dir: Path) -> None:
    env = {"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}
    emit(f"bench_server: tiny model, rooms 1 vs {args.rooms}, window {args.window:.0f} s, "
         f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
         + (f", server OMP_NUM_THREADS={args.threads}" if args.threads else "")
         + (f", server arguments {' '.join(args.server_arg)}" if args.server_arg else ""))
    throughput_args = ("--lookahead-clips", str(THROUGHPUT_LOOKAHEAD), "--max-batch", str(args.max_batch),
                       "--max-rooms", str(max(64, args.rooms)), *args.server_arg)
    with running_server(*throughput_args, log_dir=log_dir, env=env, timeout=args.start_timeout) as server:
        emit(f"throughput (server run with --lookahead-clips {THROUGHPUT_LOOKAHEAD} so rooms generate flat out; "
             f"--max-batch {args.max_batch}):")
        single = await measure_throughput(server, 1, args.window, args.warmup_timeout)
        emit(describe_throughput(single))
        many = await measure_throughput(server, args.rooms, args.window, args.warmup_timeout)
        emit(describe_throughput(many))
    rtf = CLIP_SECONDS / single.median_gen_seconds if single.gen_seconds else float("nan")
    emit(f"  aggregate clips/s, {args.rooms} rooms vs 1: {ratio(many.clips_per_second, single.clips_per_second)} "
         f"(goal >= 3x)",
         f"  clip-steps/s, {args.rooms} rooms vs 1: {ratio(many.steps_per_second, single.steps_per_second)}",
         f"  mean batch, {args.rooms} rooms vs 1: {ratio(many.mean_batch, single.mean_batch)}",
         f"real-time factor (5.12 s clip / median generation time, 1 room): {rtf:.2f}",
         f"real-time rooms the server sustains ({args.rooms} rooms' clips/s x 5.12 s): "
         f"{many.clips_per_second * CLIP_SECONDS:.2f}")
    with running_server(*args.server_arg, log_dir=log_dir, env=env, timeout=args.start_timeout) as server:
        emit("prompt-change latency (default lookahead, prompt sent right after a clip arrives):")
        trials, errors = await measure_prompt_latency(server, args.prompt_trials, args.prompt_timeout)
    emit(*(describe_prompts(trials) or ["  no clips arrived"]), *(f"  server error frame: {e}" for e in errors[:3]))
    emit(f"load average at end {os.getloadavg()[0]:.1f}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rooms", type=int, default=8, help="concurrent rooms in the second phase")
    parser.add_argument("--window", type=float, default=20.0, help="seconds each throughput phase counts clips")
    parser.add_argument("--max-batch", type=int, default=8, help="passed to the server")
    parser.add_argument("--prompt-trials", type=int, default=3)
    parser.add_argument("--warmup-timeout", type=float, default=60.0, help="most seconds to wait for first clips")
    parser.add_argument("--prompt-timeout", type=float, default=30.0, help="most seconds per prompt trial")
    parser.add_argument("--start-timeout", type=float, default=120.0, help="most seconds for the server to start")
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS for the server (0: inherit)")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra `jamserver serve` argument, repeatable (e.g. --server-arg=--no-freeze)")
    args = parser.parse_args(argv)
    for name in ("rooms", "prompt_trials", "max_batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("window", "warmup_timeout", "prompt_timeout", "start_timeout"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.threads < 0:
        parser.error("--threads must be >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-server-") as log_dir:
        try:
            asyncio.run(run_benchmark(args, Path(log_dir)))
        except RuntimeError as error:  # the server would not start: its log is in the message
            print(f"bench_server: {error}", file=sys.stderr)
            return 1
    emit(f"total {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
