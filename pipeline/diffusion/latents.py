"""Latent-space helpers for interpolated img2img: seeded noise, slerp, image and mask tensors, the init-latent cache.

These are the pieces of "the interpolation math" that do not need a UNet. They are kept free of any pipeline state
so the one-clip path, the step-wise batch path and the tests all share exactly the same arithmetic.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np
import torch
from PIL import Image

from pipeline.diffusion.requests import lerp

# Above this cosine the two noise vectors are nearly parallel and slerp's 1/sin(theta) loses precision, so it is
# replaced by a plain lerp (the convention of the original riffusion code).
SLERP_PARALLEL_THRESHOLD = 0.9995


def slerp(alpha: float, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between two noise tensors of equal shape.

    Gaussian noise lives near a sphere; a straight lerp would shrink its norm towards the middle (and the scheduler
    would see too little noise), slerp walks along the sphere instead. alpha 0 returns ``start``, 1 returns ``end``.
    """
    if start.shape != end.shape:
        raise ValueError(f"end: shape {tuple(end.shape)} differs from start's {tuple(start.shape)}")
    a = start.double()
    b = end.double()
    cosine = float((a * b).sum() / (a.norm() * b.norm()))
    if abs(cosine) > SLERP_PARALLEL_THRESHOLD:
        mixed = lerp(a, b, alpha)
    else:
        theta = np.arccos(cosine)
        sin_theta = np.sin(theta)
        mixed = a * (np.sin(theta * (1 - alpha)) / sin_theta) + b * (np.sin(theta * alpha) / sin_theta)
    return mixed.to(start.dtype)


def seeded_generator(seed: int) -> torch.Generator:
    """A fresh CPU generator: the same seed draws the same numbers on every device and in any batch."""
    return torch.Generator(device="cpu").manual_seed(int(seed))


def seeded_noise(seed: int, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise drawn on the CPU from a fresh generator (what diffusers' ``randn_tensor`` does there)."""
    return torch.randn(shape, generator=seeded_generator(seed), dtype=dtype)


def image_to_tensor(image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """RGB image -> ``(1, 3, height, width)`` float32 in [-1, 1], resized to ``size`` (width, height) if needed."""
    rgb = image.convert("RGB")
    if rgb.size != size:
        rgb = rgb.resize(size, resample=Image.Resampling.LANCZOS)
    pixels = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0)
    return (pixels * 2.0 - 1.0).permute(2, 0, 1).unsqueeze(0).contiguous()


def mask_to_keep(mask: Image.Image, size: tuple[int, int], latent_size: tuple[int, int]) -> torch.Tensor:
    """Mask image -> ``(1, 1, h, w)`` latent-resolution keep weights: 1 where black (kept), 0 where white.

    Downscaling uses nearest-neighbour, like the original riffusion, so hard-edged masks stay hard in latent space.
    """
    grey = mask.convert("L")
    if grey.size != size:
        grey = grey.resize(size, resample=Image.Resampling.NEAREST)
    grey = grey.resize(latent_size, resample=Image.Resampling.NEAREST)
    repaint = torch.from_numpy(np.asarray(grey, dtype=np.float32) / 255.0)
    return (1.0 - repaint)[None, None]


def image_digest(image: Image.Image) -> str:
    """Content key for an image, so two equal seed images share one VAE encoding whatever object holds them."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{image.mode}:{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


class LatentDistributionCache:
    """A bounded LRU of VAE encodings of seed images, as ``(mean, std)`` (``std`` is None for deterministic VAEs).

    Encoding a 512x512 image is a large share of a clip's cost, yet a jam session reuses a handful of seed images.
    Keeping the distribution (not one sample) lets every seed draw its own exact ``latent_dist.sample(generator)``.
    """

    def __init__(self, capacity: int = 16) -> None:
        if not isinstance(capacity, int) or capacity < 0:
            raise ValueError(f"capacity: expected an int >= 0, got {capacity!r}")
        self.capacity = capacity
        self._entries: OrderedDict[str, tuple[torch.Tensor, torch.Tensor | None]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: str, entry: tuple[torch.Tensor, torch.Tensor | None]) -> None:
        if self.capacity == 0:
            return
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)


def sample_latent(mean: torch.Tensor, std: torch.Tensor | None, seed: int) -> torch.Tensor:
    """Draw ``mean + std * eps`` with eps from a fresh CPU generator: equal to ``latent_dist.sample(generator)``."""
    if std is None:
        return mean
    eps = torch.randn(mean.shape, generator=seeded_generator(seed), dtype=mean.dtype).to(mean.device)
    return mean + std * eps
