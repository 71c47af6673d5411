"""Pipeline throughput: batched clips/s on the tiny model, our clip vs diffusers' img2img, and SD 1.5 at full size.

Everything is measured in one run and printed as ratios, so the figures compare like with like on whatever machine
(and whatever load) the run happens on.

    .venv/bin/python benchmarks/bench_pipeline.py                    # tiny model: batching + diffusers comparison
    .venv/bin/python benchmarks/bench_pipeline.py --model sd15-shape # full-size SD 1.5 architecture, random weights
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.diffusion.latents import seeded_generator
from pipeline.diffusion.requests import ClipRequest, PromptInput
from pipeline.diffusion.riffusion import RiffusionPipeline
from pipeline.model.frozen import eager, freeze_components
from pipeline.model.tiny import build_tiny_components

CLIP_SECONDS = 5.12


def seed_image() -> Image.Image:
    ramp = np.tile(np.linspace(0, 255, 512, dtype=np.uint8), (512, 1))
    return Image.fromarray(ramp).convert("RGB")


def clip_request(index: int, steps: int) -> ClipRequest:
    return ClipRequest(
        PromptInput(f"church bells {index}", seed=index, negative_prompt="hiss"),
        PromptInput("jazz with piano", seed=index + 1000),
        alpha=0.25 * (index % 4),
        seed_image=seed_image(),
        num_inference_steps=steps,
    )


def best_of(repeats: int, run) -> float:
    """Fastest of ``repeats`` runs: the least disturbed by other processes on a shared machine."""
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        timings.append(time.perf_counter() - start)
    return min(timings)


def run_batch(pipe: RiffusionPipeline, requests: list[ClipRequest]) -> None:
    jobs = [pipe.prepare(request) for request in requests]
    while not all(job.done for job in jobs):
        pipe.step(jobs)
    pipe.decode(jobs)


def bench_batching(pipe: RiffusionPipeline, steps: int, repeats: int) -> None:
    print(f"\n## step-wise batching, tiny model, {steps} steps, strength 0.75 (caches warm)")
    print(f"{'jobs':>5} {'seconds':>8} {'clips/s':>8} {'x vs 1 job':>10} {'real-time factor':>17}")
    single = None
    for count in (1, 2, 4, 8):
        requests = [clip_request(index, steps) for index in range(count)]
        run_batch(pipe, requests)  # warm the prompt and latent caches
        seconds = best_of(repeats, lambda requests=requests: run_batch(pipe, requests))
        rate = count / seconds
        single = single or rate
        print(f"{count:>5} {seconds:>8.3f} {rate:>8.2f} {rate / single:>10.2f} {rate * CLIP_SECONDS:>17.1f}")


def bench_against_diffusers(pipe: RiffusionPipeline, steps: int, repeats: int) -> None:
    """Our clip (as the server runs it, and with the eager modules) vs diffusers' img2img on the same weights."""
    from diffusers import StableDiffusionImg2ImgPipeline

    eager_components = {**pipe.components, "unet": eager(pipe.unet), "vae": eager(pipe.vae)}
    eager_pipe = RiffusionPipeline.from_components(eager_components)
    reference = StableDiffusionImg2ImgPipeline(
        **eager_components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    reference.set_progress_bar_config(disable=True)
    request = clip_request(0, steps)
    request = ClipRequest(request.start, request.start, 0.0, request.seed_image, steps)

    def diffusers_clip() -> None:
        reference(
            prompt=request.start.prompt,
            negative_prompt=request.start.negative_prompt,
            image=request.seed_image,
            strength=request.start.denoising,
            guidance_scale=request.start.guidance,
            num_inference_steps=steps,
            generator=seeded_generator(request.start.seed),
        )

    runs = {"ours": lambda: pipe.generate(request), "ours, eager modules": lambda: eager_pipe.generate(request),
            "diffusers": diffusers_clip}
    for run in runs.values():
        run()  # warm-up: caches, frozen graphs, allocator
    seconds = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):  # interleaved, so a burst of load elsewhere hits every contender alike
        for name, run in runs.items():
            seconds[name] = min(seconds[name], best_of(1, run))
    theirs = seconds["diffusers"]
    print(f"\n## one clip, same weights and inputs, {steps} steps (alpha 0), best of {repeats}")
    print(f"diffusers StableDiffusionImg2ImgPipeline {theirs:.3f} s")
    print(f"ours ({describe(pipe)}) {seconds['ours']:.3f} s   ratio {seconds['ours'] / theirs:.2f} (goal <= 0.8)")
    print(f"ours, eager modules {seconds['ours, eager modules']:.3f} s   "
          f"ratio {seconds['ours, eager modules'] / theirs:.2f}")


def describe(pipe: RiffusionPipeline) -> str:
    return "frozen UNet + VAE decoder, the CPU default" if eager(pipe.unet) is not pipe.unet else "eager modules"


def bench_full_clip(pipe: RiffusionPipeline, steps: int, repeats: int) -> None:
    """What a live room pays per clip: image, then audio (with its continuation), then MP3: the real-time budget."""
    from pipeline.audio.dsp import SpectrogramConverter
    from pipeline.audio.mp3 import encode_clip
    from pipeline.audio.params import SpectrogramParams
    from pipeline.render import spectrogram_audio

    converter = SpectrogramConverter(SpectrogramParams())
    request = clip_request(1, steps)
    image = pipe.generate(request)
    audio, _ = spectrogram_audio(image, converter)
    image_s = best_of(repeats, lambda: pipe.generate(request))
    audio_s = best_of(repeats, lambda: spectrogram_audio(image, converter))
    mp3_s = best_of(repeats, lambda: encode_clip(audio))
    total = image_s + audio_s + mp3_s
    print(f"\n## full clip, tiny model, {steps} steps x 0.75, guidance 7: image + audio + MP3")
    print(f"image {image_s:.3f} s   audio {audio_s:.3f} s   mp3 {mp3_s:.3f} s   total {total:.3f} s   "
          f"real-time factor {CLIP_SECONDS / total:.2f} (goal >= 3)")


def build_sd15_shape(device: str = "cpu") -> RiffusionPipeline:
    """SD 1.5's UNet, VAE and CLIP ViT-L/14 text encoder at full size with random weights (nothing downloaded).

    The modules are initialised on ``device`` (a GPU draws a billion random weights far faster than a CPU).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from pipeline.model.tiny import build_tiny_components as tiny

    components = tiny()  # borrow the offline tokenizer and the SD 1.5 scheduler config
    torch.manual_seed(0)
    vocab_size = len(components["tokenizer"])
    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                            num_attention_heads=12, max_position_embeddings=77, bos_token_id=vocab_size - 2,
                            eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    with torch.device(device):
        components["unet"] = UNet2DConditionModel(sample_size=64, cross_attention_dim=768,
                                                  attention_head_dim=8).eval()
        components["vae"] = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=4,
            sample_size=512,
        ).eval()
        components["text_encoder"] = CLIPTextModel(config).eval()
    return RiffusionPipeline.from_components(components)


def bench_sd15_shape(steps: int, measured_steps: int) -> None:
    start = time.perf_counter()
    pipe = build_sd15_shape()
    print(f"\n## SD 1.5 shape, random weights, fp32 CPU (built in {time.perf_counter() - start:.1f} s)")
    job = pipe.prepare(clip_request(0, steps))
    evaluations = job.total_steps
    pipe.step([job])  # warm-up
    step_seconds = best_of(measured_steps, lambda: pipe.step([job]))
    job.step_index = job.total_steps  # pretend the rest ran: decoding cost does not depend on the values
    decode_seconds = best_of(1, lambda: pipe.decode([job]))
    clip_seconds = evaluations * step_seconds + decode_seconds
    print(f"UNet step at CFG batch 2: {step_seconds:.2f} s   VAE decode 512x512: {decode_seconds:.2f} s")
    print(f"extrapolated clip ({evaluations} UNet evaluations + decode): {clip_seconds:.0f} s "
          f"= {clip_seconds / CLIP_SECONDS:.0f}x slower than real time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("tiny", "sd15-shape"), default="tiny")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sd15-steps", type=int, default=2, help="UNet steps timed for sd15-shape (each ~10 s)")
    parser.add_argument("--eager", action="store_true", help="run our pipeline on the eager modules (no freezing)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cpus, load {load:.1f}")
    with torch.inference_mode():
        if args.model == "sd15-shape":
            bench_sd15_shape(args.steps, args.sd15_steps)
            return
        components = build_tiny_components()
        pipe = RiffusionPipeline.from_components(components if args.eager else freeze_components(components))
        print(f"tiny model, {describe(pipe)}")
        bench_full_clip(pipe, args.steps, args.repeats)
        bench_batching(pipe, args.steps, args.repeats)
        bench_against_diffusers(pipe, args.steps, args.repeats)


if __name__ == "__main__":
    main()
