"""Drum and percussion voices: kick, snare, clap, rim, closed/open hats, ride, shaker, brushes.

Each voice takes a ``DrumKit`` (the tuning one clip keeps for all its hits) and a velocity, so a pattern sounds like
one drummer on one kit, while different clips get different kits.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pipeline.music.synth import SAMPLE_RATE, band_noise, exp_decay, samples, seconds

DRUM_VOICES = ("kick", "snare", "clap", "rim", "hat", "open_hat", "ride", "shaker", "brush")


@dataclasses.dataclass(frozen=True)
class DrumKit:
    """One clip's kit: pitches and decays drawn once from the clip's seed."""

    kick_high_hz: float
    kick_low_hz: float
    kick_decay_s: float
    snare_tone_hz: float
    snare_decay_s: float
    hat_decay_s: float
    brightness: float  # 0..1: dull (lo-fi) to bright (techno)

    @classmethod
    def random(cls, rng: np.random.Generator, brightness: float) -> DrumKit:
        return cls(
            kick_high_hz=float(rng.uniform(110, 180)),
            kick_low_hz=float(rng.uniform(42, 58)),
            kick_decay_s=float(rng.uniform(0.18, 0.4)),
            snare_tone_hz=float(rng.uniform(160, 230)),
            snare_decay_s=float(rng.uniform(0.08, 0.16)),
            hat_decay_s=float(rng.uniform(0.02, 0.05)),
            brightness=brightness,
        )


def drum_sound(voice: str, kit: DrumKit, rng: np.random.Generator) -> np.ndarray:
    """One hit of ``voice`` on ``kit`` at full velocity."""
    top = 5000.0 + 5000.0 * kit.brightness
    if voice == "kick":
        length = samples(5 * kit.kick_decay_s)
        freq = kit.kick_low_hz + (kit.kick_high_hz - kit.kick_low_hz) * np.exp(-seconds(length) / 0.03)
        body = np.sin(2 * np.pi * np.cumsum(freq) / SAMPLE_RATE) * exp_decay(length, kit.kick_decay_s, 0.001)
        click = band_noise(rng, length, 1000.0, 4000.0) * exp_decay(length, 0.004, 0.0005)
        return body + 0.1 * click
    if voice == "snare":
        length = samples(6 * kit.snare_decay_s)
        t = seconds(length)
        body = np.sin(2 * np.pi * kit.snare_tone_hz * t) * np.exp(-t / 0.05)
        rattle = band_noise(rng, length, 1500.0, top) * exp_decay(length, kit.snare_decay_s, 0.0005)
        return 0.6 * body + 0.45 * rattle
    if voice == "clap":
        length = samples(0.4)
        envelope = np.zeros(length)
        for burst in range(3):
            start = samples(0.011 * burst)
            envelope[start : start + samples(0.012)] += exp_decay(samples(0.012), 0.004, 0.0005)[: length - start]
        tail_start = samples(0.033)
        envelope[tail_start:] += 0.6 * exp_decay(length - tail_start, 0.07)
        return 0.6 * band_noise(rng, length, 800.0, min(top, 7000.0)) * envelope
    if voice == "rim":
        length = samples(0.12)
        t = seconds(length)
        return 0.5 * np.sin(2 * np.pi * 1700 * t) * np.exp(-t / 0.012) + 0.3 * band_noise(
            rng, length, 2000.0, top
        ) * exp_decay(length, 0.008, 0.0003)
    if voice in ("hat", "open_hat", "ride"):
        decay = {"hat": kit.hat_decay_s, "open_hat": 0.25, "ride": 0.6}[voice]
        length = samples(5 * decay)
        noise = band_noise(rng, length, 5000.0 if voice != "ride" else 3000.0, max(top, 7000.0))
        if voice == "ride":
            bell = sum(np.sin(2 * np.pi * f * seconds(length)) for f in (3135.0, 4447.0, 5217.0)) / 3.0
            noise = 0.7 * noise + 0.6 * bell
        return 0.3 * noise * exp_decay(length, decay, 0.0005)
    if voice == "shaker":
        length = samples(0.09)
        return 0.35 * band_noise(rng, length, 4000.0, max(top, 8000.0)) * exp_decay(length, 0.02, 0.008)
    if voice == "brush":
        length = samples(0.3)
        swell = np.sin(np.pi * seconds(length) / 0.3) ** 2
        return 0.25 * band_noise(rng, length, 2500.0, 9000.0) * swell
    raise ValueError(f"voice: expected one of {DRUM_VOICES}, got {voice!r}")
