"""Styles: what makes techno techno. Tempo range, drum groove, swing, bass line, chord rhythm, melody density, space.

Tempos are whole beats per 5.12 s loop (``bpm = beats * 60 / 5.12``: 6 beats = 70.3 BPM ... 16 beats = 187.5 BPM),
the same grid as the seed images, so every clip loops on a beat.
"""

from __future__ import annotations

import dataclasses

from pipeline.music.synth import LOOP_SECONDS

STEPS_PER_BEAT = 4  # drum patterns are written in 16th notes, one bar = 16 steps
# Drum patterns: voice -> {step in bar: velocity}. Steps 0, 4, 8, 12 are the four beats.
Pattern = dict[str, dict[int, float]]


def _steps(steps: range | tuple[int, ...] | list[int], velocity: float) -> dict[int, float]:
    return {step: velocity for step in steps}


@dataclasses.dataclass(frozen=True)
class Style:
    """How one genre arranges a clip."""

    name: str
    beats: tuple[int, ...]  # allowed beats per loop (tempo)
    drums: Pattern  # empty: no drums
    swing: float  # 0 straight .. 1 full triplet swing of the off 8ths/16ths
    bass: str  # "none", "roots", "offbeat", "walking", "eighths", "syncopated", "drone"
    chords: str  # "sustain", "stabs", "offbeat", "arpeggio", "comp", "eighths", "strum"
    melody_step: float  # beats between melody notes (typical)
    reverb_s: float  # reverb decay; 0 = dry
    brightness: float  # overall tone (lo-fi is dull)
    lofi: bool = False  # tape hiss, crackle and a low-pass on the mix


STYLES: dict[str, Style] = {
    "techno": Style(
        "techno", (11, 12), {
            "kick": _steps(range(0, 16, 4), 1.0), "hat": _steps((2, 6, 10, 14), 0.8),
            "clap": _steps((4, 12), 0.6), "shaker": _steps(range(1, 16, 2), 0.25),
        }, 0.0, "offbeat", "stabs", 0.5, 0.6, 0.9,
    ),
    "house": Style(
        "house", (10, 11), {
            "kick": _steps(range(0, 16, 4), 1.0), "open_hat": _steps((2, 6, 10, 14), 0.6),
            "clap": _steps((4, 12), 0.8), "shaker": _steps(range(16), 0.2),
        }, 0.1, "syncopated", "offbeat", 0.5, 0.5, 0.8,
    ),
    "lofi": Style(
        "lofi", (6, 7), {
            "kick": {0: 1.0, 7: 0.6, 10: 0.9}, "snare": _steps((4, 12), 0.8), "hat": _steps(range(0, 16, 2), 0.5),
        }, 0.55, "roots", "sustain", 1.0, 0.8, 0.2, True,
    ),
    "jazz": Style(
        "jazz", (8, 9, 10, 12, 14), {
            "ride": {0: 0.7, 4: 0.7, 6: 0.5, 8: 0.7, 12: 0.7, 14: 0.5}, "hat": _steps((4, 12), 0.5),
            "brush": _steps((0, 8), 0.5), "kick": {0: 0.35},
        }, 0.75, "walking", "comp", 0.5, 0.7, 0.55,
    ),
    "rock": Style(
        "rock", (10, 11, 12, 13), {
            "kick": {0: 1.0, 6: 0.8, 8: 1.0}, "snare": _steps((4, 12), 1.0), "hat": _steps(range(0, 16, 2), 0.7),
        }, 0.0, "eighths", "eighths", 1.0, 0.5, 0.8,
    ),
    "funk": Style(
        "funk", (8, 9, 10), {
            "kick": {0: 1.0, 3: 0.7, 10: 0.9}, "snare": {4: 1.0, 12: 1.0, 7: 0.3, 9: 0.3, 15: 0.3},
            "hat": _steps(range(16), 0.45),
        }, 0.15, "syncopated", "stabs", 0.5, 0.4, 0.85,
    ),
    "ambient": Style("ambient", (6, 7, 8), {}, 0.0, "drone", "sustain", 2.0, 2.5, 0.4),
    "reggae": Style(
        "reggae", (6, 7), {
            "kick": {8: 1.0}, "rim": {8: 0.9}, "hat": _steps(range(0, 16, 2), 0.5),
        }, 0.3, "roots", "offbeat", 1.0, 0.9, 0.6,
    ),
    "classical": Style("classical", (7, 8, 9, 10, 11, 12), {}, 0.0, "none", "arpeggio", 1.0, 1.6, 0.6),
}
STYLE_NAMES = tuple(STYLES)
DRUM_STYLES = tuple(name for name, style in STYLES.items() if style.drums)


def bpm_for_beats(beats: int) -> float:
    """Tempo at which ``beats`` beats fill one 5.12 s loop exactly."""
    return beats * 60.0 / LOOP_SECONDS
