"""Stage 2: train the mini AutoencoderKL on random crops, then measure its latent scale and encode every clip.

The VAE is fully convolutional, so whole-height crops 64 frames wide (32x4 latents) teach it the same code as whole
512x512 images at an eighth of the cost, and every crop keeps the image's top and bottom edges, so the code may
depend on the mel band. Loss (``reconstruction_loss``): L1 on pixels; L1 on the vertical and horizontal differences,
which keeps harmonic lines sharp and noise textures rough instead of smooth grey; L1 on 4x4 means, which keeps the
loudness of textures (a plain L1 fits their median and comes back lighter); plus a small KL term (as Stable
Diffusion's VAE), so the latent stays a distribution the diffusion model can sample around.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from pipeline.model.mini import build_mini_vae
from pipeline.training.checkpoints import Saver, load_state, save_state, step_generator
from pipeline.training.progress import Progress

KL_WEIGHT = 1e-6


@dataclasses.dataclass(frozen=True)
class VaeSettings:
    steps: int = 3000
    batch: int = 4
    crop_height: int = 512
    crop_width: int = 64
    learning_rate: float = 1e-3
    gradient_weight: float = 0.5
    pooled_weight: float = 1.0
    seed: int = 7


def pixels_to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """(batch, h, w) uint8 grey -> (batch, 3, h, w) in [-1, 1], R = G = B like a mono riffusion image."""
    grey = torch.from_numpy(np.ascontiguousarray(pixels)).float().div(127.5).sub(1.0)
    return grey[:, None].expand(-1, 3, -1, -1).contiguous()


def random_crops(pixels: np.ndarray, settings: VaeSettings, generator: torch.Generator) -> torch.Tensor:
    """A batch of random crops; the crop grid is the latent grid (multiples of 16 pixels)."""
    count, height, width = pixels.shape
    picks = torch.randint(count, (settings.batch,), generator=generator).tolist()
    row_cells = (height - settings.crop_height) // 16 + 1
    col_cells = (width - settings.crop_width) // 16 + 1
    rows = (torch.randint(row_cells, (settings.batch,), generator=generator) * 16).tolist()
    cols = (torch.randint(col_cells, (settings.batch,), generator=generator) * 16).tolist()
    crops = np.stack([pixels[i, r : r + settings.crop_height, c : c + settings.crop_width]
                      for i, r, c in zip(picks, rows, cols, strict=True)])
    return pixels_to_tensor(crops)


def reconstruction_loss(reconstruction: torch.Tensor, target: torch.Tensor, settings: VaeSettings) -> torch.Tensor:
    """L1 on pixels + weighted L1 on vertical/horizontal differences and on 4x4 means (see the module docstring)."""
    loss = (reconstruction - target).abs().mean()
    if settings.gradient_weight:
        for dim in (2, 3):
            loss = loss + settings.gradient_weight * (reconstruction.diff(dim=dim) - target.diff(dim=dim)).abs().mean()
    if settings.pooled_weight:
        loss = loss + settings.pooled_weight * (F.avg_pool2d(reconstruction, 4) - F.avg_pool2d(target, 4)).abs().mean()
    return loss


def learning_rate(step: int, settings: VaeSettings) -> float:
    """Linear warm-up over 100 steps, then cosine decay to a tenth."""
    if step < 100:
        return settings.learning_rate * (step + 1) / 100
    progress = (step - 100) / max(settings.steps - 100, 1)
    return settings.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_vae(pixels: np.ndarray, state_path: Path, settings: VaeSettings) -> AutoencoderKL:
    """Train (or resume training) the VAE; returns it in eval mode once ``settings.steps`` are done."""
    torch.manual_seed(settings.seed)
    vae = build_mini_vae()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=settings.learning_rate, weight_decay=0.0)
    state = load_state(state_path)
    step = 0
    if state is not None:
        vae.load_state_dict(state["vae"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
    progress, saver = Progress("vae", settings.steps, step), Saver()
    vae.train()
    while step < settings.steps:
        generator = step_generator(settings.seed, step)
        batch = random_crops(pixels, settings, generator)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, settings)
        posterior = vae.encode(batch).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=generator)
        latents = posterior.mean + posterior.std * noise
        reconstruction = vae.decode(latents).sample
        l1 = (reconstruction - batch).abs().mean()
        loss = reconstruction_loss(reconstruction, batch, settings) + KL_WEIGHT * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        step += 1
        progress.update(step, l1.item())
        if saver.due() or step == settings.steps:
            save_state(state_path, {"vae": vae.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                                    "l1": l1.item()})
    return vae.eval().requires_grad_(False)


@torch.inference_mode()
def encode_all(vae: AutoencoderKL, pixels: np.ndarray, batch: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent means and standard deviations of every whole image, (clips, channels, 32, 32) float16 each."""
    means, stds = [], []
    progress = Progress("encode", len(pixels))
    for start in range(0, len(pixels), batch):
        posterior = vae.encode(pixels_to_tensor(pixels[start : start + batch])).latent_dist
        means.append(posterior.mean.half())
        stds.append(posterior.std.half())
        progress.update(min(start + batch, len(pixels)), 0.0)
    return torch.cat(means), torch.cat(stds)


def scaling_factor(means: torch.Tensor) -> float:
    """1 / std of the latents, as Stable Diffusion's 0.18215: the UNet then sees unit-variance latents."""
    return float(1.0 / means.float().std())
