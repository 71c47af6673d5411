"""A small CNN that names a spectrogram's lead instrument and style, trained only on the generator's own clips.

It is the judge of the mini model's benchmark (benchmarks/bench_mini.py): prompt following is "does the judge hear
the prompted instrument", realism is the Fréchet distance between generated and real clips in its embedding. It
never sees model output while training. Input: the riffusion image, pooled to 128 mel rows x 64 frames of darkness
(0 silent .. 1 loudest); a random circular shift in time during training, as every clip is a loop.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.music.clip import INSTRUMENTS
from pipeline.music.styles import STYLE_NAMES
from pipeline.training.progress import Progress

POOL = (4, 8)  # (mel rows, frames) averaged into one input cell
EMBEDDING = 64


def image_features(pixels: np.ndarray) -> torch.Tensor:
    """(batch, 512, 512) uint8 grey levels (or one image) -> (batch, 1, 128, 64) float darkness."""
    grey = torch.from_numpy(np.asarray(pixels, dtype=np.float32))
    if grey.ndim == 2:
        grey = grey[None]
    darkness = (255.0 - grey[:, None]) / 255.0
    return F.avg_pool2d(darkness, POOL)


def image_pixels(image: PIL.Image.Image) -> np.ndarray:
    """A spectrogram image as (512, 512) uint8 grey levels (mean of R, G, B)."""
    return np.asarray(image.convert("L").resize((512, 512)), dtype=np.uint8)


class Judge(nn.Module):
    """Four conv blocks, pooled over time (not frequency: register matters), a 64-d embedding, two heads."""

    def __init__(self) -> None:
        super().__init__()
        channels = (1, 16, 32, 48, 64)
        self.blocks = nn.Sequential(*[
            nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(), nn.MaxPool2d(2))
            for a, b in zip(channels, channels[1:], strict=False)
        ])
        self.embed = nn.Sequential(nn.Linear(64 * 8 * 2, EMBEDDING), nn.ReLU())
        self.instrument = nn.Linear(EMBEDDING, len(INSTRUMENTS))
        self.style = nn.Linear(EMBEDDING, len(STYLE_NAMES))

    def embedding(self, features: torch.Tensor) -> torch.Tensor:
        hidden = self.blocks(features)  # (batch, 64, 8, 4)
        pooled = torch.cat([hidden.mean(dim=3), hidden.amax(dim=3)], dim=2)
        return self.embed(pooled.flatten(1))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.embedding(features)
        return self.instrument(embedding), self.style(embedding)


@dataclasses.dataclass(frozen=True)
class JudgeSettings:
    epochs: int = 12
    batch: int = 32
    learning_rate: float = 2e-3
    seed: int = 5


def label_targets(labels: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    instruments = torch.tensor([INSTRUMENTS.index(row["lead"]) for row in labels])
    styles = torch.tensor([STYLE_NAMES.index(row["style"]) for row in labels])
    return instruments, styles


def train_judge(pixels: np.ndarray, labels: list[dict], settings: JudgeSettings = JudgeSettings()) -> Judge:
    """Train on generator clips: cross-entropy on both heads, random circular time shifts."""
    torch.manual_seed(settings.seed)
    judge = Judge()
    features = torch.cat([image_features(pixels[i : i + 64]) for i in range(0, len(pixels), 64)])
    instruments, styles = label_targets(labels)
    optimizer = torch.optim.AdamW(judge.parameters(), lr=settings.learning_rate, weight_decay=1e-3)
    steps_per_epoch = -(-len(features) // settings.batch)
    total = settings.epochs * steps_per_epoch
    lr_schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, settings.learning_rate, total_steps=total)
    generator = torch.Generator().manual_seed(settings.seed)
    progress = Progress("judge", total)
    judge.train()
    step = 0
    for _ in range(settings.epochs):
        order = torch.randperm(len(features), generator=generator)
        for start in range(0, len(order), settings.batch):
            picks = order[start : start + settings.batch]
            shift = int(torch.randint(features.shape[-1], (1,), generator=generator))
            batch = torch.roll(features[picks], shift, dims=-1)
            instrument_logits, style_logits = judge(batch)
            loss = F.cross_entropy(instrument_logits, instruments[picks]) + F.cross_entropy(style_logits, styles[picks])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            lr_schedule.step()
            step += 1
            progress.update(step, loss.item())
    return judge.eval().requires_grad_(False)


@torch.inference_mode()
def judge_outputs(judge: Judge, pixels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(instrument probabilities, style probabilities, embeddings) of (batch, 512, 512) uint8 images."""
    results = [judge_batch(judge, image_features(pixels[i : i + 64])) for i in range(0, len(pixels), 64)]
    return tuple(torch.cat(parts) for parts in zip(*results, strict=True))  # type: ignore[return-value]


def judge_batch(judge: Judge, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    embedding = judge.embedding(features)
    return judge.instrument(embedding).softmax(-1), judge.style(embedding).softmax(-1), embedding


def load_or_train_judge(path: Path, pixels: np.ndarray, labels: list[dict]) -> Judge:
    """The judge cached at ``path``, else trained on ``pixels``/``labels`` and cached there."""
    judge = Judge()
    if path.exists():
        judge.load_state_dict(torch.load(path, map_location="cpu"))
        return judge.eval().requires_grad_(False)
    judge = train_judge(pixels, labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(judge.state_dict(), path)
    return judge


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two sets of embeddings (as FID/FAD)."""
    a64, b64 = a.double(), b.double()
    mean_a, mean_b = a64.mean(0), b64.mean(0)
    cov_a, cov_b = torch.cov(a64.T), torch.cov(b64.T)
    # trace sqrt(cov_a cov_b) from the eigenvalues of sqrt(cov_a) cov_b sqrt(cov_a), which is symmetric PSD.
    values, vectors = torch.linalg.eigh(cov_a)
    root_a = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T
    middle = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    return float((mean_a - mean_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * middle)
