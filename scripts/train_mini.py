"""Train the built-in ``mini`` model from scratch on 2 CPU cores: data, VAE, latents, text encoder, UNet, export.

    python scripts/train_mini.py                  # every stage; resumes wherever a previous run stopped
    python scripts/train_mini.py --out DIR        # write the model somewhere else than the cache

Stages keep their state under ``--train-dir`` (default ~/.cache/jamserver/mini-train): ``vae.pt`` and ``unet.pt``
are rewritten every few minutes, ``latents.pt`` and ``text.pt`` once, so killing the run loses at most a few minutes. Seeds are fixed
and each step's batch depends only on the step number, so a resumed run reproduces an uninterrupted one.
The result is a diffusers directory (default ``<train-dir>/model``); copy it to ``pipeline/model/mini`` to ship it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import socket
import tempfile
import time
from pathlib import Path

import torch

from pipeline.model.mini import build_mini_text_encoder, build_mini_tokenizer
from pipeline.music.dataset import DEFAULT_DATA_DIR, SHARD_SIZE, build_dataset, load_dataset, load_labels
from pipeline.training.checkpoints import DEFAULT_TRAIN_DIR, load_state
from pipeline.training.export import export_model
from pipeline.training.text import TextSettings, train_text_encoder
from pipeline.training.unet import CaptionTokens, UnetSettings, train_unet
from pipeline.training.vae import VaeSettings, encode_all, scaling_factor, train_vae

DEFAULT_CLIPS = 2400


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help=f"default: {DEFAULT_DATA_DIR}")
    parser.add_argument("--train-dir", type=Path, default=DEFAULT_TRAIN_DIR, help=f"default: {DEFAULT_TRAIN_DIR}")
    parser.add_argument("--out", type=Path, default=None, help="model directory (default: <train-dir>/model)")
    parser.add_argument("--clips", type=int, default=DEFAULT_CLIPS, help="training clips (whole shards of 200)")
    parser.add_argument("--vae-steps", type=int, default=VaeSettings.steps)
    parser.add_argument("--unet-steps", type=int, default=UnetSettings.steps)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared 2-core machine two OpenMP threads ran 20x slower)")
    parser.add_argument("--workers", type=int, default=2, help="processes rendering the data set")
    parser.add_argument("--ranks", type=int, default=2,
                        help="processes training the UNet, each on its share of every batch (gloo all-reduce); "
                             "2 one-thread ranks use both cores without OpenMP's spinning")
    return parser.parse_args()


def offline_tokenizer():
    with tempfile.TemporaryDirectory(prefix="mini-tokenizer-") as directory:
        return build_mini_tokenizer(Path(directory))


def caption_encoder(args: argparse.Namespace, tokenizer, labels: list[dict]) -> tuple[CaptionTokens, torch.nn.Module, dict]:
    """The trained, frozen text encoder (trained now unless text.pt holds it), the tokens it reads, its summary."""
    torch.manual_seed(TextSettings.seed)
    text_encoder = build_mini_text_encoder(len(tokenizer))
    tokens = CaptionTokens(tokenizer, text_encoder)
    text_encoder, summary = train_text_encoder(text_encoder, labels, tokens, args.train_dir / "text.pt", TextSettings())
    return tokens, text_encoder, summary


def unet_rank(rank: int, args: argparse.Namespace, settings: UnetSettings, clips: int, address: str) -> None:
    """One training process: its share of every batch; gradients averaged with the other ranks."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=address, rank=rank, world_size=args.ranks)
    latents = torch.load(args.train_dir / "latents.pt")
    labels = load_labels(args.data_dir, range(-(-clips // SHARD_SIZE)))
    tokens, text_encoder, _ = caption_encoder(args, offline_tokenizer(), labels)
    train_unet(latents["means"], latents["stds"], latents["scale"], labels, tokens, text_encoder,
               args.train_dir / "unet.pt", settings, rank=rank, world=args.ranks)
    torch.distributed.destroy_process_group()


def train_in_ranks(args: argparse.Namespace, settings: UnetSettings, clips: int) -> None:
    """Run the UNet stage in ``args.ranks`` processes until ``settings.steps`` are saved in unet.pt."""
    state = load_state(args.train_dir / "unet.pt")
    if state is not None and state["step"] >= settings.steps:
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    torch.multiprocessing.spawn(unet_rank, args=(args, settings, clips, address), nprocs=args.ranks)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    started = time.monotonic()
    build_dataset(args.data_dir, args.clips, workers=args.workers)
    data = load_dataset(args.data_dir, range(-(-args.clips // 200)))
    print(f"data: {len(data.labels)} clips ({time.monotonic() - started:.0f} s)", flush=True)

    vae_settings = VaeSettings(steps=args.vae_steps)
    # The last shard is the benchmark's real reference (bench_mini.py): the VAE never sees it, so its measured round
    # trip is that of unseen clips.
    seen = data.pixels[:-SHARD_SIZE] if len(data.pixels) > SHARD_SIZE else data.pixels
    vae = train_vae(seen, args.train_dir / "vae.pt", vae_settings)
    latents_path = args.train_dir / "latents.pt"
    if latents_path.exists():
        latents = torch.load(latents_path)
    else:
        means, stds = encode_all(vae, data.pixels)
        latents = {"means": means, "stds": stds, "scale": scaling_factor(means)}
        torch.save(latents, latents_path)
    print(f"latents: {tuple(latents['means'].shape)} scale {latents['scale']:.4f}", flush=True)

    tokenizer = offline_tokenizer()
    tokens, text_encoder, text_summary = caption_encoder(args, tokenizer, data.labels)
    print(f"text encoder: {text_summary}", flush=True)
    unet_settings = UnetSettings(steps=args.unet_steps)
    if args.ranks > 1:
        train_in_ranks(args, unet_settings, len(data.labels))
    unet, summary = train_unet(
        latents["means"], latents["stds"], latents["scale"], data.labels, tokens, text_encoder,
        args.train_dir / "unet.pt", unet_settings,
    )
    vae_state = torch.load(args.train_dir / "vae.pt", weights_only=False)
    card = {
        "clips": len(data.labels),
        "vae": {**dataclasses.asdict(vae_settings), "final_l1": vae_state["l1"]},
        "text_encoder": {**dataclasses.asdict(TextSettings()), **text_summary},
        "unet": {**dataclasses.asdict(unet_settings), **summary},
        "latent_scale": latents["scale"],
    }
    out = export_model(args.out or args.train_dir / "model", unet, vae, text_encoder, tokenizer, latents["scale"], card)
    print(f"model written to {out} ({time.monotonic() - started:.0f} s this run)", flush=True)
    print(json.dumps(card), flush=True)


if __name__ == "__main__":
    main()
