"""Benchmark the real jam server: throughput of 1 vs N rooms, prompt-change latency, real-time factor.

Starts `jamserver serve` as a subprocess on 127.0.0.1 (tests/server_support.py) and drives it with real
websockets clients, twice:

1. Throughput, with `--lookahead-clips 50`: a room normally generates only one clip ahead of playback, so
   it idles most of the time and "clips/s" would measure the clock, not the server. With a deep lookahead
   every room generates flat out and the engine's continuous batching is what is measured. Each phase waits
   until every room has its first clip (warm-up), then counts clips arriving in a fixed window.
2. Prompt-to-ear latency, with the server's defaults (what a listener gets): at random moments the host sends
   a new prompt; the latency is T minus the playhead when the prompt left, where T is the stream time from which
   the prompt is heard (the cut-in's `stream_time`, or the first clip carrying it) and the playhead is the room's
   playout clock as the frames report it. Once in a room of its own, once while more rooms play. Late cuts (a
   cut arriving after its first frame should have played) and underruns (audio arriving after its time, or a
   `behind` state) are counted from what the client receives.

Engine batching comes from /metrics (jam_batched_rows_total / jam_unet_calls_total = mean batch size).
Every phase has a time limit, so the run stops by itself. Run from the repository root:

    .venv/bin/python benchmarks/bench_server.py [--rooms 8] [--window 20] [--prompt-trials 12]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from tests.server_support import ServerProcess, running_server  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
from room_client import RoomClient  # noqa: E402

CLIP_SECONDS = 5.12
THROUGHPUT_LOOKAHEAD = 50
ORIGINAL_PROMPT_CLIPS = "2-5 clips (10-26 s)"  # the original web app, see REFERENCE.md
BEFORE_CUT_INS = "9.4-9.5 s"  # this server before cut-ins: the prompt rode the next clip generated (PERFORMANCE.md)
STEPS_PER_CLIP = int(50 * 0.75)  # UNet steps of one clip at the room defaults: 50 steps, denoising 0.75
BATCH_COUNTERS = ("jam_unet_calls_total", "jam_batched_rows_total", "jam_engine_busy_seconds_total")


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


# -- prompt-to-ear latency -------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptTrial:
    """One prompt: latency = T - playhead at send = `wall` (send -> its clip arrived) + `lead` (T - playhead then)."""

    latency: float | None  # T - the playhead as the prompt left; None: never heard within the timeout
    cut: bool = False  # heard through a cut-in (else through a clip at the end of the stream)
    wall: float = 0.0  # seconds from sending the prompt to its clip arriving: generation, queueing, join, network
    gen_seconds: float = 0.0  # of which the engine's time for the clip, as the server reports it
    lead: float = 0.0  # T minus the playhead as the clip arrived: the margin it came early by, plus beat rounding


async def prompt_trial(client: RoomClient, prompt: str, timeout: float) -> PromptTrial:
    """Send `prompt` now; follow the clips until one carries it."""
    seen = len(client.clips)
    await client.send_prompt(prompt)
    sent = time.monotonic()
    playhead = client.clock.at(sent)
    deadline = sent + timeout
    while playhead is not None and time.monotonic() < deadline:
        if not await client.wait_for_clips(seen + 1, deadline - time.monotonic()):
            break
        clip = client.clips[seen]
        seen += 1
        if clip.end_prompt == prompt:
            arrived_at = client.clock.at(clip.arrived)
            lead = clip.stream_time - (arrived_at if arrived_at is not None else playhead + clip.arrived - sent)
            return PromptTrial(clip.stream_time - playhead, clip.replaces, clip.arrived - sent, clip.gen_seconds, lead)
    return PromptTrial(None)


async def measure_prompt_latency(server: ServerProcess, trials: int, timeout: float, *, others: int = 0,
                                 seed: int = 1, crowd: Callable[[str], Awaitable[None]] | None = None,
                                 ) -> tuple[list[PromptTrial], RoomClient]:
    """Prompt trials at random moments in one room while `others` more rooms play; the room's client for its counts.
    `crowd(room)` is awaited once the room plays, before the trials (e.g. to fill it with listeners)."""
    rng = random.Random(seed)
    background = await asyncio.gather(*(RoomClient.open(server) for _ in range(others)))
    client = await RoomClient.open(server)
    try:
        if not await client.wait_for_clips(2, timeout):
            return [], client
        if crowd is not None and client.room is not None:
            await crowd(client.room)
        done = []
        for n in range(trials):
            await asyncio.sleep(rng.uniform(1.5, 6.0))
            done.append(await prompt_trial(client, f"benchmark prompt number {n}", timeout))
        return done, client
    finally:
        await asyncio.gather(client.close(), *(other.close() for other in background))


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


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile: the smallest value with at least `fraction` of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(-(-fraction * len(ordered) // 1)) - 1))]


def describe_prompts(label: str, trials: Sequence[PromptTrial], client: RoomClient, late_metric: float) -> list[str]:
    heard = [trial.latency for trial in trials if trial.latency is not None]
    cuts = sum(trial.cut for trial in trials if trial.latency is not None)
    lines = [f"  {label}: " + " ".join(f"{value:.2f}" for value in heard)]
    done = [trial for trial in trials if trial.latency is not None]
    if done:
        lines.append(f"  {label}: where the time goes (medians): send -> clip arrived "
                     f"{statistics.median(t.wall for t in done):.2f} s (engine {statistics.median(t.gen_seconds for t in done):.2f} s, "
                     f"the rest queueing behind other clips, joining, encoding, sending), + arrived ahead of T by "
                     f"{statistics.median(t.lead for t in done):.2f} s (margin and beat rounding)")
    if heard:
        lines.append(f"  {label}: {len(heard)}/{len(trials)} prompts heard ({cuts} through cut-ins), "
                     f"prompt-to-ear median {statistics.median(heard):.2f} s, p95 {percentile(heard, 0.95):.2f} s, "
                     f"max {max(heard):.2f} s; late cuts {client.late_cuts} (server: {late_metric:.0f}), "
                     f"underruns {client.underruns}; before cut-ins: {BEFORE_CUT_INS}; "
                     f"original app: {ORIGINAL_PROMPT_CLIPS}")
    return (lines + [f"  {label}: {miss}" for miss in client.misses[:5]]
            + [f"  {label}: server error frame: {error}" for error in client.errors[:3]])


def late_cuts_metric(server: ServerProcess) -> float:
    with urllib.request.urlopen(server.http_url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "jam_late_cuts_total")


def ratio(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.2f}x" if denominator > 0 else "n/a"


def emit(*lines: str) -> None:
    print(*lines, sep="\n", flush=True)


async def report_throughput(args: argparse.Namespace, log_dir: Path, env: dict[str, str]) -> None:
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


async def run_benchmark(args: argparse.Namespace, log_dir: Path) -> None:
    env = {"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}
    emit(f"bench_server: tiny model, rooms 1 vs {args.rooms}, window {args.window:.0f} s, "
         f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
         + (f", server OMP_NUM_THREADS={args.threads}" if args.threads else "")
         + (f", server arguments {' '.join(args.server_arg)}" if args.server_arg else ""))
    if not args.latency_only:
        await report_throughput(args, log_dir, env)
    with running_server(*args.server_arg, log_dir=log_dir, env=env, timeout=args.start_timeout) as server:
        emit(f"prompt-to-ear latency (server defaults; {args.prompt_trials} prompts at random moments, 1.5-6 s apart):")
        for others, label in ((0, "1 room"), (args.rooms - 1, f"{args.rooms} rooms")):
            late_before = await asyncio.to_thread(late_cuts_metric, server)
            trials, client = await measure_prompt_latency(server, args.prompt_trials, args.prompt_timeout,
                                                          others=others)
            late = await asyncio.to_thread(late_cuts_metric, server) - late_before
            emit(*(describe_prompts(label, trials, client, late) if trials else [f"  {label}: no clips arrived"]))
    emit(f"load average at end {os.getloadavg()[0]:.1f}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rooms", type=int, default=8, help="concurrent rooms in the second phase")
    parser.add_argument("--window", type=float, default=20.0, help="seconds each throughput phase counts clips")
    parser.add_argument("--max-batch", type=int, default=8, help="passed to the server")
    parser.add_argument("--prompt-trials", type=int, default=12, help="prompts per latency phase (goal: >= 10)")
    parser.add_argument("--latency-only", action="store_true", help="skip the throughput phases")
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
