"""The pre-rendered training set: clips in shards of spectrogram pixels plus their labels, in a cache directory.

A shard is ``shard-NNNN.npy`` (clips x 512 x 512 uint8, the grey level of the riffusion image; R = G = B for mono)
and ``shard-NNNN.json`` (one label dict per clip). A shard is written to a temporary name and renamed, so an
interrupted build resumes at the first missing shard and never reads a half-written one.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from pipeline.music.clip import ClipSpec, render_clip
from pipeline.music.theory import Key

DEFAULT_DATA_DIR = Path(os.environ.get("JAMSERVER_CACHE", Path.home() / ".cache" / "jamserver")) / "mini-data"
SHARD_SIZE = 200
DATA_SEED = 1_000_000  # clip i of the training set is drawn from seed DATA_SEED + i


def spec_labels(spec: ClipSpec) -> dict:
    return {"seed": spec.seed, "style": spec.style, "lead": spec.lead, "tonic": spec.key.tonic, "mode": spec.key.mode,
            "beats": spec.beats, "bpm": spec.bpm, "solo": spec.solo, "brightness": spec.brightness,
            "key": spec.key.name}


def spec_from_labels(labels: dict) -> ClipSpec:
    return ClipSpec(labels["seed"], labels["style"], labels["lead"], Key(labels["tonic"], labels["mode"]),
                    labels["beats"], labels["solo"], labels["brightness"])


def clip_pixels(spec: ClipSpec) -> np.ndarray:
    """The clip's spectrogram image as (512, 512) uint8 grey levels."""
    return np.asarray(render_clip(spec).image())[..., 0].copy()


def render_shard(directory: Path, index: int, seed_base: int = DATA_SEED, size: int = SHARD_SIZE) -> Path:
    """Render clips ``index * size`` .. ``+ size`` of the set into shard ``index`` (skipped if already there)."""
    import torch

    torch.set_num_threads(1)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"shard-{index:04d}.npy"
    if target.exists():
        return target
    specs = [ClipSpec.from_seed(seed_base + index * size + offset) for offset in range(size)]
    pixels = np.stack([clip_pixels(spec) for spec in specs])
    labels = [spec_labels(spec) for spec in specs]
    temporary = directory / f".shard-{index:04d}.tmp.npy"
    np.save(temporary, pixels)
    (directory / f"shard-{index:04d}.json").write_text(json.dumps(labels))
    temporary.rename(target)
    return target


def build_dataset(directory: Path, clips: int, workers: int = 2, seed_base: int = DATA_SEED) -> list[Path]:
    """Render the first ``clips`` clips (rounded up to whole shards) with ``workers`` processes; resumable."""
    directory.mkdir(parents=True, exist_ok=True)
    shards = range(-(-clips // SHARD_SIZE))
    if workers <= 1:
        return [render_shard(directory, index, seed_base) for index in shards]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(render_shard, [directory] * len(shards), shards, [seed_base] * len(shards)))


@dataclasses.dataclass
class Dataset:
    pixels: np.ndarray  # (clips, 512, 512) uint8
    labels: list[dict]


def load_labels(directory: Path, shards: Sequence[int]) -> list[dict]:
    """The labels of the given shards, in clip order, without the pixels."""
    return [row for index in shards for row in json.loads((directory / f"shard-{index:04d}.json").read_text())]


def load_dataset(directory: Path, shards: Sequence[int] | None = None) -> Dataset:
    """Load the rendered shards (all, or the given indices) into memory."""
    paths = sorted(directory.glob("shard-*.npy"))
    if shards is not None:
        paths = [path for path in paths if int(path.stem.split("-")[1]) in set(shards)]
    if not paths:
        raise FileNotFoundError(f"{directory}: no rendered shards; run scripts/train_mini.py data first")
    pixels = np.concatenate([np.load(path) for path in paths])
    labels = [row for path in paths for row in json.loads(path.with_suffix(".json").read_text())]
    return Dataset(pixels, labels)
