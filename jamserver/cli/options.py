"""Options `serve` and `worker` share: which model, on which device, how fast; and loading it from them."""

from __future__ import annotations

import argparse
import logging
import os
from typing import TYPE_CHECKING

from pipeline.model.choices import DEFAULT_CHECKPOINT, SCHEDULERS

if TYPE_CHECKING:
    from pipeline.model.loading import LoadedModel

log = logging.getLogger("jamserver")


def add_model_options(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The "model" option group, returned so a command can add its own model options to it."""
    model = parser.add_argument_group("model")
    model.add_argument("--checkpoint", default=None,
                       help=f"hub id, local diffusers directory, 'mini' or 'tiny' (default: {DEFAULT_CHECKPOINT}, "
                            "falling back to the built-in mini model when it cannot be had)")
    model.add_argument("--no-fallback", action="store_true",
                       help="fail instead of falling back to the built-in mini model")
    model.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    model.add_argument("--scheduler", default=None, choices=list(SCHEDULERS),
                       help="denoising scheduler (default: the checkpoint's own)")
    model.add_argument("--guidance-rescale", type=unit_interval, default=None, metavar="0..1",
                       help="pull guided predictions back towards the text prediction's spread "
                            "(default: mini's own, off on other checkpoints)")
    model.add_argument("--compile", action="store_true", help="torch.compile the UNet (slow start, faster steps)")
    model.add_argument("--no-freeze", action="store_true",
                       help="run the UNet and VAE eagerly "
                            "(default on a CPU: frozen TorchScript graphs, ~30%% faster steps)")
    model.add_argument("--channels-last", action="store_true", help="channels_last memory format for the UNet and VAE convolutions")
    model.add_argument("--tiny-vae", default=None, help="AutoencoderTiny checkpoint id or path for faster decoding")
    model.add_argument("--lora", default=None, help="LoRA weights id or path (e.g. LCM-LoRA)")
    model.add_argument("--max-batch", type=int, default=8, help="most clip jobs advanced in one UNet call")
    model.add_argument("--threads", type=int, default=None,
                       help="torch threads per worker (default on CPU: half the cores, since the device thread "
                            "and the DSP thread compute at the same time)")
    return model


def unit_interval(text: str) -> float:
    """An argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def cpu_threads(requested: int | None) -> int:
    """Threads for torch's CPU kernels: two worker threads compute at once, so each gets half the cores.

    Oversubscribed OpenMP teams spin against each other; on a busy 2-core machine that made a clip ~10x slower.
    """
    if requested is not None:
        if requested < 1:
            raise ValueError("--threads must be at least 1")
        return requested
    return max(1, (os.cpu_count() or 2) // 2)


def load_model(args: argparse.Namespace, threads: int) -> LoadedModel | None:
    """The model the options name (None, said in the log, when it cannot be loaded)."""
    import torch

    from pipeline.model.loading import CheckpointError, load_pipeline

    torch.set_num_threads(threads)
    checkpoint = args.checkpoint or DEFAULT_CHECKPOINT
    try:
        model = load_pipeline(
            checkpoint,
            device=args.device,
            scheduler=args.scheduler,
            compile=args.compile,
            freeze=False if args.no_freeze else None,
            channels_last=args.channels_last,
            tiny_vae=args.tiny_vae,
            lora=args.lora,
            guidance_rescale=args.guidance_rescale,
            fallback=args.checkpoint is None and not args.no_fallback,
        )
    except CheckpointError as error:
        log.error("%s", error)
        return None
    if model.demo:
        log.warning("DEMO MODEL: running the built-in tiny model with random weights. It makes no music; "
                    "use --checkpoint with a riffusion model for real sound.")
    return model
