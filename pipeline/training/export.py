"""Write trained mini components as a diffusers directory (fp16 safetensors), the layout ``load_pipeline`` reads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline

from pipeline.model.mini import build_mini_scheduler


def export_model(directory: Path, unet, vae: AutoencoderKL, text_encoder, tokenizer, scale: float, card: dict) -> Path:
    """Save the five components plus ``training.json`` (steps, losses, data) into ``directory`` (replaced)."""
    vae.register_to_config(scaling_factor=scale)
    temporary = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=build_mini_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipeline.to(torch.float16).save_pretrained(temporary, safe_serialization=True)
    (temporary / "training.json").write_text(json.dumps(card, indent=2) + "\n")
    shutil.rmtree(directory, ignore_errors=True)
    temporary.rename(directory)
    return directory
