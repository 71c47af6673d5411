"""Resumable training state: one file a stage, written atomically every few minutes.

A stage's state (models, optimizer, step) is saved to ``NAME.pt`` through a temporary file and a rename, so a run
killed at any moment resumes from its last whole checkpoint. Batches are drawn from generators seeded by the step
number, so a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

DEFAULT_TRAIN_DIR = Path(os.environ.get("JAMSERVER_CACHE", Path.home() / ".cache" / "jamserver")) / "mini-train"
SAVE_EVERY_S = 180.0


def save_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    torch.save(state, temporary)
    temporary.replace(path)


def load_state(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


class Saver:
    """Calls ``save`` when ``every_s`` seconds have passed since the last save (and when asked to finish)."""

    def __init__(self, every_s: float = SAVE_EVERY_S) -> None:
        self.every_s = every_s
        self.last = time.monotonic()

    def due(self) -> bool:
        if time.monotonic() - self.last >= self.every_s:
            self.last = time.monotonic()
            return True
        return False


def step_generator(seed: int, step: int) -> torch.Generator:
    """The random stream of one training step: the same at that step however often the run was resumed."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)
