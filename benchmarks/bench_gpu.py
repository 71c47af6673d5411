"""GPU benchmark: one command for the day a CUDA GPU is at hand (no download; under 8 minutes on an H100).

Measures, on SD 1.5-shaped random weights in fp16 (and on riffusion-model-v1 too when it is in the hub cache):

1. UNet steps/s at batch 2, 8, 16 and 32 rows (a CFG clip is 2 rows) for eager, channels_last, torch.compile
   (on channels_last) and a CUDA graph (of the channels_last module);
2. one clip's time split at the original's settings (50 steps x 0.75 denoising = 37 UNet evaluations, guidance 7):
   seed encode, prepare, steps, decode, DSP (spectrogram -> audio), MP3;
3. the engine's aggregate clips/s with 1, 8, 16 and 32 rooms (each keeping one clip in flight), and how many
   rooms that serves in real time (clips/s x clip length).

Writes the figures as JSON (``--out``) and prints them as markdown tables.

    .venv/bin/python benchmarks/bench_gpu.py                      # needs CUDA
    .venv/bin/python benchmarks/bench_gpu.py --dry-run --out x.json  # CPU, tiny model, small sizes: CI checks

Without CUDA (and without ``--dry-run``) it exits at once with one line. The dry run takes the same code paths
(fp16 and compile/graph capture are the only CUDA-only steps, and are reported as skipped there).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

if TYPE_CHECKING:  # the pipeline is imported once CUDA (or --dry-run) is known to be there: no CUDA exits at once
    from pipeline.audio.dsp import SpectrogramConverter
    from pipeline.diffusion.riffusion import RiffusionPipeline

NO_CUDA = "bench_gpu: no CUDA device (torch.cuda.is_available() is False); run it on an NVIDIA GPU, or --dry-run"


@dataclass(frozen=True)
class Plan:
    """How much to measure: the full run on a GPU, or a small dry run of the same logic on a CPU."""

    device: str
    dtype: torch.dtype
    batches: tuple[int, ...]
    rooms: tuple[int, ...]
    steps: int = 50
    strength: float = 0.75
    unet_iterations: int = 20
    warmup: int = 3
    clips_per_room: int = 2
    skip_accelerated: str | None = None  # why compile and CUDA graphs are not measured (None: they are)


FULL = Plan("cuda", torch.float16, batches=(2, 8, 16, 32), rooms=(1, 8, 16, 32))
DRY = Plan("cpu", torch.float32, batches=(2, 4), rooms=(1, 2), steps=8, unet_iterations=2, warmup=1,
           clips_per_room=1,
           skip_accelerated="skipped: CUDA only (the CPU path is the frozen TorchScript graph, see bench_pipeline)")
# The real checkpoint's UNet is SD 1.5's architecture: compiling and capturing it again would time the same kernels
# and cost minutes of the 8-minute budget.
SAME_AS_SD15 = "skipped: same UNet architecture as the SD 1.5 shape (measured there)"


@dataclass
class ModelReport:
    model: str
    unet_steps_per_second: dict[str, dict[str, float | str]] = field(default_factory=dict)  # variant -> batch
    clip_seconds: dict[str, float] = field(default_factory=dict)
    engine: list[dict[str, float]] = field(default_factory=list)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, run: Callable[[], Any]) -> float:
    synchronize(device)
    start = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - start


# -- 1. UNet steps/s per variant and batch ------------------------------------------------------------------------


def unet_inputs(pipe: RiffusionPipeline, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    text_dim = int(pipe.unet.config.cross_attention_dim)
    shape = (batch, *pipe.latent_shape((512, 512))[1:])
    options = {"device": pipe.device, "dtype": pipe.dtype}
    return (torch.randn(shape, **options), torch.full((batch,), 500.0, device=pipe.device),
            torch.randn(batch, 77, text_dim, **options))


def eager_call(unet: torch.nn.Module) -> Callable[..., torch.Tensor]:
    return lambda sample, t, text: unet(sample, t, encoder_hidden_states=text, return_dict=False)[0]


def cuda_graph_call(unet: torch.nn.Module, example: tuple[torch.Tensor, ...]) -> Callable[..., torch.Tensor]:
    """Capture one UNet call on static buffers; each call copies its inputs in and replays the graph."""
    static = tuple(tensor.clone() for tensor in example)
    call = eager_call(unet)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm-up on a side stream, as capture requires
            call(*static)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output = call(*static)

    def replay(*inputs: torch.Tensor) -> torch.Tensor:
        for buffer, tensor in zip(static, inputs):
            buffer.copy_(tensor)
        graph.replay()
        return output

    return replay


def variants(unet: torch.nn.Module, skip_accelerated: str | None) -> dict[str, Callable[[tuple], Callable | str]]:
    """Variant name -> build(example inputs) giving the call, or the reason it is skipped.

    ``skip_accelerated``: why torch.compile and the CUDA graph are not measured (None: they are).
    """
    def channels_last(_example: tuple) -> Callable:
        return eager_call(unet.to(memory_format=torch.channels_last))

    def compiled(_example: tuple) -> Callable | str:
        if skip_accelerated:
            return skip_accelerated
        return eager_call(torch.compile(unet.to(memory_format=torch.channels_last), fullgraph=False))

    def graphed(example: tuple) -> Callable | str:
        if skip_accelerated:
            return skip_accelerated
        return cuda_graph_call(unet.to(memory_format=torch.channels_last), example)

    return {"eager": lambda _example: eager_call(unet.to(memory_format=torch.contiguous_format)),
            "channels_last": channels_last, "torch.compile": compiled, "CUDA graph": graphed}


def bench_unet(pipe: RiffusionPipeline, plan: Plan, skip_accelerated: str | None) -> dict[str, dict[str, float | str]]:
    results: dict[str, dict[str, float | str]] = {}
    for name, build in variants(pipe.unet, skip_accelerated).items():
        results[name] = {}
        for batch in plan.batches:
            example = unet_inputs(pipe, batch)
            call = build(example)
            if isinstance(call, str):
                results[name][str(batch)] = call
                continue
            for _ in range(plan.warmup):  # compiles, captures, autotunes
                call(*example)
            seconds = timed(pipe.device, lambda: [call(*example) for _ in range(plan.unet_iterations)])
            results[name][str(batch)] = round(plan.unet_iterations / seconds, 3)
    pipe.unet.to(memory_format=torch.contiguous_format)
    return results


# -- 2. one clip's time split ---------------------------------------------------------------------------------------


def bench_clip(pipe: RiffusionPipeline, converter: SpectrogramConverter, plan: Plan) -> dict[str, float]:
    """One clip at the original's settings, stage by stage (the second of two runs: caches and kernels warm)."""
    from bench_pipeline import clip_request

    from pipeline.audio.mp3 import encode_clip
    from pipeline.render import spectrogram_audio

    request = clip_request(7, plan.steps)
    split: dict[str, float] = {}
    for _ in range(2):
        pipe.latent_cache = type(pipe.latent_cache)(pipe.latent_cache.capacity)  # the seed encode is timed
        split["encode"] = timed(pipe.device, lambda: pipe.encode_seed_image(request.seed_image, 1))
        job = pipe.prepare(request)
        split["prepare"] = timed(pipe.device, lambda: pipe.prepare(request))
        split["steps"] = timed(pipe.device, lambda: [pipe.step([job]) for _ in range(job.total_steps)])
        images: list = []
        split["decode"] = timed(pipe.device, lambda: images.extend(pipe.decode([job])))
        audio: list = []
        split["dsp"] = timed(pipe.device, lambda: audio.append(spectrogram_audio(images[0], converter)[0]))
        split["mp3"] = timed(pipe.device, lambda: encode_clip(audio[0]))
        split["unet_evaluations"] = job.total_steps
    split["total"] = sum(value for key, value in split.items() if key != "unet_evaluations")
    return {key: round(value, 4) for key, value in split.items()}


# -- 3. engine throughput with N rooms ---------------------------------------------------------------------------


def bench_engine(pipe: RiffusionPipeline, converter: SpectrogramConverter, plan: Plan) -> list[dict[str, float]]:
    """Each room keeps one clip in the engine; clips/s once every room has had ``clips_per_room`` made."""
    from bench_pipeline import clip_request

    from jamserver.server.device.engine import Engine

    rows = []
    for rooms in plan.rooms:
        engine = Engine(pipe, converter, max_batch=rooms)
        try:
            clips, durations = rooms * plan.clips_per_room, []
            done = threading.Semaphore(0)
            lock = threading.Lock()
            submitted = [0]

            def submit(room: int) -> None:
                with lock:
                    if submitted[0] >= clips:
                        return
                    submitted[0] += 1
                future = engine.submit(clip_request(room, plan.steps), deadline=time.monotonic())
                future.add_done_callback(lambda f, room=room: finished(f, room))

            def finished(future: Any, room: int) -> None:
                durations.append(future.result().duration)
                done.release()
                submit(room)

            start = time.perf_counter()
            for room in range(rooms):
                submit(room)
            for _ in range(clips):
                done.acquire()
            seconds = time.perf_counter() - start
        finally:
            engine.close()
        rate = clips / seconds
        rows.append({"rooms": rooms, "clips": clips, "seconds": round(seconds, 3), "clips_per_second": round(rate, 3),
                     "real_time_rooms": round(rate * sum(durations) / len(durations), 2),
                     "mean_batch": round(engine.stats.batched_rows / max(engine.stats.unet_calls, 1), 2)})
    return rows


# -- models, report, main -----------------------------------------------------------------------------------------


def models(plan: Plan, dry_run: bool) -> dict[str, tuple[Callable[[], RiffusionPipeline | str], str | None]]:
    """Name -> (loader giving the pipeline or why it is skipped, why compile/graphs are skipped). No download."""
    from bench_pipeline import build_sd15_shape

    from pipeline.diffusion.riffusion import RiffusionPipeline
    from pipeline.model.loading import DEFAULT_CHECKPOINT, CheckpointError, load_pipeline

    def place(pipe: RiffusionPipeline) -> RiffusionPipeline:
        components = dict(pipe.components)
        for name in ("unet", "vae", "text_encoder"):
            module = components[name].to(device=plan.device)
            components[name] = module if module.dtype == plan.dtype else module.to(dtype=plan.dtype)
        return RiffusionPipeline.from_components(components)

    def real_checkpoint() -> RiffusionPipeline | str:
        os.environ["HF_HUB_OFFLINE"] = "1"
        try:
            loaded = load_pipeline(DEFAULT_CHECKPOINT, device=plan.device, dtype=plan.dtype, freeze=False)
        except CheckpointError as error:
            return f"skipped: not in the hub cache ({error.reason[:80]})"
        return loaded.pipeline

    if dry_run:
        from pipeline.model.tiny import build_tiny_components

        def tiny() -> RiffusionPipeline:
            return place(RiffusionPipeline.from_components(build_tiny_components()))

        return {"tiny (dry run)": (tiny, plan.skip_accelerated)}
    return {"SD 1.5 shape, random weights": (lambda: place(build_sd15_shape(plan.device)), plan.skip_accelerated),
            DEFAULT_CHECKPOINT: (real_checkpoint, SAME_AS_SD15)}


def markdown(reports: list[ModelReport], plan: Plan) -> str:
    lines = []
    for report in reports:
        lines += [f"### {report.model}", "", "UNet steps/s (rows per call):", "",
                  "| variant | " + " | ".join(f"batch {b}" for b in plan.batches) + " |",
                  "|---|" + "---|" * len(plan.batches)]
        for name, by_batch in report.unet_steps_per_second.items():
            cells = [by_batch.get(str(b), "") for b in plan.batches]
            lines.append(f"| {name} | " + " | ".join(c if isinstance(c, str) else f"{c:.2f}" for c in cells) + " |")
        split = report.clip_seconds
        lines += ["", f"One clip ({split.get('unet_evaluations', 0):.0f} UNet evaluations, guidance 7), seconds:",
                  "", "| " + " | ".join(split) + " |", "|---" * len(split) + "|",
                  "| " + " | ".join(f"{value:.3f}" for value in split.values()) + " |", "",
                  "| rooms | clips/s | real-time rooms | mean batch |", "|---|---|---|---|"]
        lines += [f"| {row['rooms']} | {row['clips_per_second']:.2f} | {row['real_time_rooms']:.1f} | "
                  f"{row['mean_batch']:.1f} |" for row in report.engine]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny model, small sizes: check the logic")
    parser.add_argument("--out", type=Path, default=Path("bench_gpu.json"), help="where to write the JSON")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        return 1
    plan = DRY if args.dry_run else FULL
    if args.dry_run:
        torch.set_num_threads(1)  # CI machines are small and shared: one busy-waiting thread, not a contended team
    from pipeline.audio.dsp import SpectrogramConverter
    from pipeline.audio.params import SpectrogramParams

    started = time.perf_counter()
    device_name = torch.cuda.get_device_name() if plan.device == "cuda" else "cpu"
    print(f"torch {torch.__version__} on {device_name}, {str(plan.dtype).removeprefix('torch.')}", flush=True)
    reports = []
    with torch.inference_mode():
        for name, (load, skip_accelerated) in models(plan, args.dry_run).items():
            pipe = load()
            if isinstance(pipe, str):
                print(f"{name}: {pipe}", flush=True)
                continue
            converter = SpectrogramConverter(SpectrogramParams(), device=pipe.device)
            report = ModelReport(name, bench_unet(pipe, plan, skip_accelerated), bench_clip(pipe, converter, plan),
                                 bench_engine(pipe, converter, plan))
            reports.append(report)
            print(markdown([report], plan), flush=True)
            del pipe
            if plan.device == "cuda":
                torch.cuda.empty_cache()
    document = {"device": device_name, "torch": torch.__version__, "plan": {**asdict(plan), "dtype": str(plan.dtype)},
                "seconds": round(time.perf_counter() - started, 1), "models": [asdict(r) for r in reports]}
    args.out.write_text(json.dumps(document, indent=1) + "\n")
    print(f"wrote {args.out} in {document['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
