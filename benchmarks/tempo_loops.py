"""Synthesised loops at known tempos for the tempo benchmark: drums, pitched and percussion styles, with swing.

Conventions (the ground truth the benchmark checks): the beat is the quarter note (the dotted-free pulse a
listener taps); backbeats fall on 2 and 4; hats or shakers subdivide into 16ths below ~100 BPM and 8ths above;
swing delays every second subdivision by a fraction of it (0 straight, 1/3 a triplet feel). Each hit is a fresh
render with velocity and timing jitter (a few ms), instruments are retuned per loop, and a little noise is
added, so no two loops are alike. Nothing here is used by the product.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.music.synth import band_noise  # noqa: E402  the music generator's noise, shared

SAMPLE_RATE = 44100


def _t(seconds: float) -> np.ndarray:
    """Sample times of a sound ``seconds`` long."""
    return np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE


def _env(seconds: float, decay_s: float, attack_s: float = 0.002) -> np.ndarray:
    """Exponential decay with a short linear attack (no click at the onset)."""
    t = _t(seconds)
    return np.minimum(t / attack_s, 1.0) * np.exp(-t / decay_s)


def _noise(rng: np.random.Generator, seconds: float, low_hz: float, high_hz: float) -> np.ndarray:
    """Band-passed white noise ``seconds`` long, unit RMS."""
    return band_noise(rng, int(seconds * SAMPLE_RATE), low_hz, high_hz)


STYLES = ("rock", "house", "hiphop", "waltz", "keys", "percussion", "breakbeat", "funk")


@dataclasses.dataclass(frozen=True)
class Loop:
    name: str
    bpm: float
    swing: float
    audio: np.ndarray  # (samples,) float32, peak 0.9


class Kit:
    """One loop's instruments, tuned at random."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.kick_hz = rng.uniform(45, 65)
        self.snare_hz = rng.uniform(160, 240)
        self.hat_decay = rng.uniform(0.02, 0.06)
        self.root = int(rng.integers(36, 48))
        self.bright = rng.uniform(0.3, 1.0)

    def kick(self) -> np.ndarray:
        t = _t(0.4)
        freq = self.kick_hz + 90 * np.exp(-t / 0.03)
        return np.sin(2 * np.pi * np.cumsum(freq) / SAMPLE_RATE) * _env(0.4, 0.12, 0.001)

    def snare(self) -> np.ndarray:
        t = _t(0.3)
        body = np.sin(2 * np.pi * self.snare_hz * t) * np.exp(-t / 0.04)
        return 0.5 * body + 0.4 * _noise(self.rng, 0.3, 1200, 9000) * np.exp(-t / 0.08)

    def clap(self) -> np.ndarray:
        return 0.5 * _noise(self.rng, 0.25, 800, 6000) * _env(0.25, 0.06, 0.001)

    def hat(self, open_hat: bool = False) -> np.ndarray:
        decay = 0.18 if open_hat else self.hat_decay
        return 0.2 * _noise(self.rng, 6 * decay, 6000, 16000) * _env(6 * decay, decay, 0.0005)

    def shaker(self) -> np.ndarray:
        return 0.25 * _noise(self.rng, 0.09, 4000, 12000) * _env(0.09, 0.025, 0.01)

    def conga(self, high: bool) -> np.ndarray:
        hz = (330 if high else 210) * self.rng.uniform(0.9, 1.1)
        t = _t(0.3)
        return 0.5 * np.sin(2 * np.pi * hz * t * (1 + 0.1 * np.exp(-t / 0.01))) * _env(0.3, 0.07, 0.001)

    def note(self, midi: int, decay: float = 0.35) -> np.ndarray:
        hz = 440.0 * 2 ** ((midi - 69) / 12)
        t = _t(4 * decay)
        tone = sum((self.bright**k) / k * np.sin(2 * np.pi * hz * k * t) for k in range(1, 6))
        return 0.3 * tone * _env(4 * decay, decay, 0.003)


# A pattern: (position in beats, instrument, velocity). Positions on subdivision grids get swing applied.
Hit = tuple[float, Callable[[], np.ndarray], float]


def _subdivisions(kit: Kit, beats: int, per_beat: int, make: Callable[[], np.ndarray], accent: float) -> list[Hit]:
    return [(i / per_beat, make, accent if i % per_beat == 0 else 0.6 * accent) for i in range(beats * per_beat)]


def _style_hits(style: str, kit: Kit, bpm: float) -> tuple[list[Hit], int]:
    """Hits of one bar and its number of beats."""
    fine = 4 if bpm < 100 else 2
    rng = kit.rng
    if style == "rock":
        return [(0, kit.kick, 1.0), (2, kit.kick, 0.9), (2.5, kit.kick, 0.6), (1, kit.snare, 1.0), (3, kit.snare, 1.0)] \
            + _subdivisions(kit, 4, fine, kit.hat, 0.6), 4
    if style == "house":
        return [(b, kit.kick, 1.0) for b in range(4)] + [(1, kit.clap, 0.9), (3, kit.clap, 0.9)] \
            + [(b + 0.5, lambda: kit.hat(True), 0.7) for b in range(4)] + _subdivisions(kit, 4, fine, kit.hat, 0.4), 4
    if style == "hiphop":
        return [(0, kit.kick, 1.0), (1.75, kit.kick, 0.7), (2.5, kit.kick, 0.9), (1, kit.snare, 1.0),
                (3, kit.snare, 1.0), (3.75, kit.snare, 0.3)] + _subdivisions(kit, 4, fine, kit.hat, 0.5), 4
    if style == "breakbeat":
        return [(0, kit.kick, 1.0), (2.5, kit.kick, 0.9), (1, kit.snare, 1.0), (3, kit.snare, 1.0),
                (1.75, kit.snare, 0.3), (3.25, kit.snare, 0.3)] + _subdivisions(kit, 4, 2, kit.hat, 0.6), 4
    if style == "funk":
        return [(0, kit.kick, 1.0), (0.75, kit.kick, 0.7), (2, kit.kick, 0.9), (1, kit.snare, 1.0), (3, kit.snare, 1.0),
                (2.75, kit.snare, 0.35)] + _subdivisions(kit, 4, 4 if bpm < 130 else 2, kit.hat, 0.5) \
            + [(b, lambda: kit.note(kit.root, 0.2), 0.6) for b in (0, 1.5, 2)], 4
    if style == "waltz":
        chord = [kit.root + 12 + i for i in (0, 4, 7)]
        return [(0, lambda: kit.note(kit.root, 0.5), 1.0)] \
            + [(b, (lambda n=n: kit.note(n, 0.25)), 0.6) for b in (1, 2) for n in chord] \
            + [(b, kit.hat, 0.5) for b in range(3)] + [(b + 0.5, kit.hat, 0.25) for b in range(3)], 3
    if style == "keys":
        scale = [0, 3, 5, 7, 10, 12, 15]
        notes = [kit.root + 24 + scale[int(step)] for step in rng.integers(0, 7, size=8)]
        arpeggio = [(i / 2, (lambda n=note: kit.note(n, 0.2)), 0.7 if i % 2 == 0 else 0.4) for i, note in enumerate(notes)]
        return [(0, lambda: kit.note(kit.root, 0.6), 1.0), (2, lambda: kit.note(kit.root + 7, 0.6), 0.9)] \
            + [(b, (lambda n=n: kit.note(n, 0.3)), 0.5) for b in range(4) for n in (kit.root + 12, kit.root + 19)] \
            + arpeggio, 4
    if style == "percussion":
        return [(0, lambda: kit.conga(False), 1.0), (1, lambda: kit.conga(False), 0.8), (1.5, lambda: kit.conga(True), 0.7),
                (2, lambda: kit.conga(False), 0.9), (3, lambda: kit.conga(False), 0.8), (3.5, lambda: kit.conga(True), 0.7),
                (2.75, lambda: kit.conga(True), 0.5)] + _subdivisions(kit, 4, fine, kit.shaker, 0.6), 4
    raise ValueError(f"unknown style {style!r}")


def _swung(position: float, swing: float) -> float:
    """Delay off-beat 8ths (or 16ths) by ``swing`` of a subdivision: 16ths when the position is on a 16th."""
    beat, within = divmod(position, 1.0)
    for grid in (0.5, 0.25):
        steps = within / grid
        if abs(steps - round(steps)) < 1e-9:
            if round(steps) % 2 == 1:
                return beat + within + swing * grid
            return position
    return position


def make_loop(style: str, bpm: float, swing: float, seed: int, seconds: float = 12.0) -> Loop:
    """``seconds`` (or more, to end on a bar) of ``style`` at ``bpm``."""
    rng = np.random.default_rng(seed)
    kit = Kit(rng)
    hits, beats_per_bar = _style_hits(style, kit, bpm)
    beat_seconds = 60.0 / bpm
    bars = int(np.ceil(seconds / (beats_per_bar * beat_seconds)))
    total = int(bars * beats_per_bar * beat_seconds * SAMPLE_RATE) + SAMPLE_RATE
    mix = np.zeros(total)
    for bar in range(bars):
        for position, make, velocity in hits:
            when = (bar * beats_per_bar + _swung(position, swing)) * beat_seconds + rng.normal(0, 0.003)
            start = max(0, round(when * SAMPLE_RATE))
            sound = make() * velocity * rng.uniform(0.85, 1.0)
            end = min(total, start + sound.size)
            mix[start:end] += sound[: end - start]
    mix += 0.003 * rng.standard_normal(total)
    mix = mix[: int(bars * beats_per_bar * beat_seconds * SAMPLE_RATE)]
    return Loop(f"{style}", bpm, swing, (0.9 * mix / np.max(np.abs(mix))).astype(np.float32))


def benchmark_loops(count: int = 80, seed: int = 2026) -> list[Loop]:
    """``count`` loops at tempos spread over 60-190 BPM, styles in turn, swing 0-0.3 on every other loop."""
    rng = np.random.default_rng(seed)
    loops = []
    for index in range(count):
        bpm = float(np.round(60.0 + 130.0 * index / (count - 1) + rng.uniform(-0.8, 0.8), 2))
        bpm = float(np.clip(bpm, 60.0, 190.0))
        style = STYLES[index % len(STYLES)]
        swing = float(np.round(rng.uniform(0.1, 0.3), 2)) if index % 2 else 0.0
        loops.append(make_loop(style, bpm, swing, seed=int(rng.integers(1 << 31))))
    return loops
