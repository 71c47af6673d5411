"""A checkpoint's latent geometry (VAE scale factor, latent channels) from its config files alone, no weights.

A cluster front-end loads no model, yet must refuse a seed image the workers' model cannot take (its sides must be
multiples of the VAE's scale factor) before a job goes out. The geometry is what a loaded pipeline derives from the
same files (RiffusionPipeline: 2 ** (len(vae block_out_channels) - 1), the UNet's in_channels), so a checkpoint
directory whose VAE downsamples 16x, or whose UNet takes 8 latent channels, is judged as its workers will judge it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class LatentGeometry:
    scale_factor: int = 8  # Stable Diffusion 1.x, so every riffusion checkpoint, and the tiny model
    latent_channels: int = 4


def checkpoint_geometry(checkpoint: str, cache_dir: str | None = None) -> LatentGeometry | None:
    """From `checkpoint`'s vae/config.json and unet/config.json: a local directory's, or a hub id's already in the
    hub cache (nothing is fetched); None when they cannot be had.

    Raises:
        ValueError: a config file that is there but says no geometry, named.
    """
    directory = Path(checkpoint).expanduser()
    if directory.is_dir():
        vae, unet = (_read(directory / name) for name in ("vae/config.json", "unet/config.json"))
    else:
        vae, unet = (_cached(checkpoint, name, cache_dir) for name in ("vae/config.json", "unet/config.json"))
    if vae is None or unet is None:
        return None
    blocks, channels = vae[1].get("block_out_channels"), unet[1].get("in_channels")
    if not isinstance(blocks, list) or not blocks:
        raise ValueError(f"checkpoint {checkpoint!r}: {vae[0]} has no block_out_channels list")
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"checkpoint {checkpoint!r}: {unet[0]} has no positive in_channels")
    return LatentGeometry(2 ** (len(blocks) - 1), channels)


def _read(path: Path) -> tuple[Path, dict[str, Any]] | None:
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} cannot be read: {error}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} is not a JSON object")
    return path, config


def _cached(repo_id: str, filename: str, cache_dir: str | None) -> tuple[Path, dict[str, Any]] | None:
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
    except Exception:  # not a valid hub id (a path that does not exist): nothing cached under it
        return None
    return _read(Path(found)) if isinstance(found, str) else None
