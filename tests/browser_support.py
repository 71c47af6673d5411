"""Helpers for the real-browser tests: find Chromium and judge a stream's clip joins.

Kept apart from the tests so the gaplessness check (plain numpy) can itself be tested on
synthetic signals, without a browser.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# glibc returning large FFT buffers to the OS slows the server's DSP (see the Makefile).
SERVER_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "4000000000"}


@contextlib.contextmanager
def chromium_browser() -> Iterator[Any]:
    """Playwright's Chromium on Debian's binary, closed afterwards (skips the test when there is none)."""
    path = require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def chromium_path() -> str | None:
    """Debian's Chromium (never a browser downloaded by `playwright install`)."""
    for candidate in CHROMIUM_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("chromium")


def require_chromium() -> str:
    """The Chromium path; without one, skip locally but fail on CI, where it must be installed."""
    path = chromium_path()
    if path:
        return path
    reason = "no Chromium at /usr/bin/chromium (apt-get install -y chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI must run the browser tests")
    pytest.skip(reason)


# -- gaplessness of a decoded stream -------------------------------------------------------------

SILENCE_LEVEL = 1e-3  # -60 dBFS
JOIN_BEFORE_S = 0.03  # a join region: around the nominal join, widened after it for codec delay
JOIN_AFTER_S = 0.08


@dataclass(frozen=True)
class JoinReport:
    """Worst discontinuity and longest silence at the clip joins, against the same inside the clips."""

    join_jump: float
    inside_jump: float
    join_silence_s: float
    inside_silence_s: float

    def describe(self) -> str:
        return (f"largest sample step at joins {self.join_jump:.4f} vs inside clips {self.inside_jump:.4f}; "
                f"longest silence touching a join {self.join_silence_s * 1000:.1f} ms "
                f"vs inside clips {self.inside_silence_s * 1000:.1f} ms")


def join_regions(durations: list[float], sample_rate: int, length: int) -> np.ndarray:
    """Boolean mask of samples near the joins between consecutive clips of the given durations."""
    mask = np.zeros(length, dtype=bool)
    for join in np.cumsum(durations)[:-1]:
        start = max(0, int((join - JOIN_BEFORE_S) * sample_rate))
        stop = min(length, int((join + JOIN_AFTER_S) * sample_rate))
        mask[start:stop] = True
    return mask


def silent_runs(signal: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of every run of samples quieter than SILENCE_LEVEL."""
    quiet = np.concatenate([[False], np.abs(signal) < SILENCE_LEVEL, [False]])
    edges = np.flatnonzero(np.diff(quiet.astype(np.int8)))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def analyse_joins(pcm: np.ndarray, sample_rate: int, durations: list[float]) -> JoinReport:
    """Compare the stream at its clip joins with the stream inside its clips.

    `pcm` is (channels, samples); `durations` are the clips' lengths in stream order. The first and
    last 50 ms are ignored (codec start-up and flush).
    """
    if pcm.ndim != 2:
        raise ValueError(f"pcm: expected (channels, samples), got shape {pcm.shape}")
    if len(durations) < 2:
        raise ValueError("durations: need at least two clips to have a join")
    signal = pcm.mean(axis=0)
    edge = int(0.05 * sample_rate)
    valid = np.zeros(signal.size, dtype=bool)
    valid[edge:signal.size - edge] = True
    at_join = join_regions(durations, sample_rate, signal.size) & valid
    inside = ~join_regions(durations, sample_rate, signal.size) & valid
    steps = np.abs(np.diff(signal, append=signal[-1]))
    join_silence = inside_silence = 0
    for start, stop in silent_runs(signal):
        if not valid[start:stop].any():
            continue
        if at_join[start:stop].any():
            join_silence = max(join_silence, stop - start)
        else:
            inside_silence = max(inside_silence, stop - start)
    return JoinReport(
        join_jump=float(steps[at_join].max(initial=0.0)),
        inside_jump=float(steps[inside].max(initial=0.0)),
        join_silence_s=join_silence / sample_rate,
        inside_silence_s=inside_silence / sample_rate,
    )


def assert_gapless(report: JoinReport, *, min_silence_s: float = 0.005) -> None:
    """No jump at a join beyond the largest inside a clip; no silence there longer than inside."""
    assert report.join_jump <= report.inside_jump, f"jump at a clip join: {report.describe()}"
    assert report.join_silence_s <= max(report.inside_silence_s, min_silence_s), \
        f"dropout at a clip join: {report.describe()}"
