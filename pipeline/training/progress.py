"""A progress line for long CPU runs that write to a log file: step, smoothed loss, speed and ETA."""

from __future__ import annotations

import sys
import time


class Progress:
    """Prints ``name step/total loss ... s/step ETA hh:mm`` every ``every_s`` seconds (and at the end)."""

    def __init__(self, name: str, total: int, start_step: int = 0, every_s: float = 20.0) -> None:
        self.name, self.total, self.every_s = name, total, every_s
        self.start_step = start_step
        self.started = time.monotonic()
        self.last_print = 0.0
        self.smoothed: float | None = None

    def update(self, step: int, loss: float, **extra: float) -> None:
        self.smoothed = loss if self.smoothed is None else 0.98 * self.smoothed + 0.02 * loss
        now = time.monotonic()
        if now - self.last_print < self.every_s and step < self.total:
            return
        self.last_print = now
        done = max(step - self.start_step, 1)
        per_step = (now - self.started) / done
        eta = per_step * (self.total - step)
        width = 30
        filled = int(width * step / max(self.total, 1))
        bar = "#" * filled + "-" * (width - filled)
        extras = " ".join(f"{key} {value:.4g}" for key, value in extra.items())
        print(
            f"{self.name} [{bar}] {step}/{self.total} loss {self.smoothed:.4f} {extras} "
            f"{per_step:.2f} s/step ETA {int(eta // 3600):d}:{int(eta % 3600 // 60):02d}:{int(eta % 60):02d}",
            file=sys.stderr,
            flush=True,
        )
