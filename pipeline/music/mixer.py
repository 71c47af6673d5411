"""Render a score to one loop of audio: every event into its part's circular buffer, parts levelled and mixed."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from pipeline.music.drums import DrumKit, drum_sound
from pipeline.music.instruments import PITCHED
from pipeline.music.score import Event
from pipeline.music.styles import Style
from pipeline.music.synth import (
    LOOP_SAMPLES,
    band_noise,
    loop_reverb,
    lowpass,
    mix_into,
    rms,
    samples,
)

# RMS of each part in the mix: the lead clearly on top.
PART_LEVELS = {"lead": 0.11, "chords": 0.05, "bass": 0.045, "drums": 0.06}
SOLO_LEVEL = 0.11  # a part heard alone (drums only, or a lead without band)


def render_part(
    events: Iterable[Event], beats: int, brightness: float, kit: DrumKit, rng: np.random.Generator
) -> np.ndarray:
    """Mix one part's events into a loop; identical notes are synthesised once."""
    loop = np.zeros(LOOP_SAMPLES)
    beat_samples = LOOP_SAMPLES / beats
    cache: dict[tuple[str, int | None, int], np.ndarray] = {}
    for event in events:
        gate = samples(event.length * beat_samples / 44100.0)
        key = (event.voice, event.pitch, gate)
        if key not in cache:
            if event.pitch is None:
                cache[key] = drum_sound(event.voice, kit, rng)
            else:
                cache[key] = PITCHED[event.voice](float(event.pitch), gate, brightness, rng)
        mix_into(loop, cache[key], round(event.start * beat_samples), event.velocity)
    return loop


def level(part: np.ndarray, target_rms: float) -> np.ndarray:
    level_now = rms(part)
    return part * (target_rms / level_now) if level_now > 0 else part


def master(parts: dict[str, np.ndarray], style: Style, rng: np.random.Generator) -> np.ndarray:
    """Level and sum the parts, add the style's room and (lo-fi) tape character, and keep the peak below 0 dBFS."""
    alone = len(parts) == 1 or set(parts) == {"lead", "chords"}
    mix = np.zeros(LOOP_SAMPLES)
    for name, part in parts.items():
        target = SOLO_LEVEL if alone and name != "chords" else PART_LEVELS[name]
        if alone and name == "chords":
            target = PART_LEVELS["chords"] * 1.5
        mix += level(part, target)
    if style.reverb_s > 0:
        mix = loop_reverb(mix, rng, style.reverb_s, 0.35 if style.reverb_s > 1 else 0.2)
    if style.lofi:
        mix = lowpass(mix, 3200.0)
        crackle = np.zeros(LOOP_SAMPLES)
        crackle[rng.integers(0, LOOP_SAMPLES, 60)] = rng.uniform(-0.3, 0.3, 60)
        mix += 0.004 * band_noise(rng, LOOP_SAMPLES, 200.0, 8000.0) + lowpass(crackle, 6000.0)
    peak = float(np.max(np.abs(mix)))
    return mix * (0.9 / peak) if peak > 0.9 else mix
