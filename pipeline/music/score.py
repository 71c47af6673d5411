"""A clip's score: which notes and hits happen when, from its style, key, tempo and lead instrument.

The lead plays a one-bar motif that follows the chords and comps the chords itself, so the lead instrument is what
one hears most. Bass and drums follow the style's patterns. Everything is in beats; the renderer turns it into samples.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pipeline.music.instruments import MELODY_RANGE
from pipeline.music.styles import STEPS_PER_BEAT, Style
from pipeline.music.theory import Key, progression

BAR_STEPS = 16
# Chord rhythms: (step in bar, length in steps).
CHORD_RHYTHMS = {
    "sustain": ((0, 16),),
    "stabs": ((2, 1), (6, 1), (10, 1), (14, 1), (11, 1)),
    "offbeat": ((2, 2), (6, 2), (10, 2), (14, 2)),
    "arpeggio": tuple((step, 2) for step in range(0, 16, 2)),
    "comp": ((0, 3), (6, 2), (11, 3)),
    "eighths": tuple((step, 2) for step in range(0, 16, 2)),
}
# Bass lines: (step in bar, length in steps, scale degrees above the chord root).
BASS_LINES = {
    "none": (),
    "roots": ((0, 6, 0), (8, 4, 0), (14, 2, 4)),
    "offbeat": ((2, 2, 0), (6, 2, 0), (10, 2, 0), (14, 2, 0)),
    "walking": ((0, 4, 0), (4, 4, 2), (8, 4, 4), (12, 4, 5)),
    "eighths": tuple((step, 2, 0) for step in range(0, 16, 2)),
    "syncopated": ((0, 2, 0), (3, 2, 7), (6, 2, 0), (10, 1, 4), (11, 2, 0), (14, 2, 7)),
    "drone": ((0, 16, 0),),
}


@dataclasses.dataclass(frozen=True)
class Event:
    """One note (``pitch`` a MIDI number) or drum hit (``pitch`` None) of ``voice``, in beats."""

    part: str  # "lead", "chords", "bass", "drums"
    voice: str
    start: float
    length: float
    pitch: int | None
    velocity: float


def step_to_beat(step: int, swing: float) -> float:
    """Beat position of 16th ``step``; swing delays the off 8ths (toward a triplet) and the off 16ths."""
    beat, within = divmod(step, STEPS_PER_BEAT)
    position = within / STEPS_PER_BEAT
    if within == 2:
        position += swing * (2 / 3 - 1 / 2)
    elif within % 2 == 1:
        position += swing * (1 / 12)
    return beat + position


def motif(rng: np.random.Generator, style: Style) -> list[tuple[int, int, int]]:
    """One bar of melody as (step, length in steps, degree above the chord root), on a grid set by the style."""
    grid = max(1, round(style.melody_step * STEPS_PER_BEAT))
    starts = [step for step in range(0, BAR_STEPS, grid) if step == 0 or rng.random() < 0.75]
    degrees, degree = [], int(rng.choice([0, 2, 4]))
    for index, _ in enumerate(starts):
        degrees.append(degree)
        move = int(rng.choice([-2, -1, 1, 2, 3, -3], p=[0.15, 0.25, 0.25, 0.15, 0.1, 0.1]))
        degree = int(np.clip(degree + move, -2, 9))
        if index == len(starts) - 2:
            degree = int(rng.choice([0, 2, 4, 7]))
    ends = starts[1:] + [BAR_STEPS]
    return [(start, max(1, end - start), deg) for start, end, deg in zip(starts, ends, degrees, strict=True)]


def melody_octave(key: Key, voice: str) -> int:
    """MIDI base (C of an octave) that puts ``key``'s tonic inside ``voice``'s melody range."""
    low, high = MELODY_RANGE[voice]
    return 12 * ((low + (high - low) // 3 - key.tonic) // 12)


def lead_events(key: Key, style: Style, voice: str, beats: int, rng: np.random.Generator) -> list[Event]:
    """The lead's melody (a repeated motif over the chord roots) and, except for bass, its own chord comping."""
    roots = progression(key, rng)
    phrase = motif(rng, style)
    base = melody_octave(key, voice)
    events: list[Event] = []
    for bar in range(-(-beats // 4)):
        root = roots[bar % len(roots)]
        for step, length, degree in phrase:
            absolute = bar * BAR_STEPS + step
            if absolute >= beats * STEPS_PER_BEAT:
                continue
            pitch = key.degree_pitch(root + degree, base)
            start = step_to_beat(absolute, style.swing)
            velocity = float(rng.uniform(0.75, 1.0)) * (1.0 if step % 4 == 0 else 0.85)
            events.append(Event("lead", voice, start, length / STEPS_PER_BEAT * 0.95, pitch, velocity))
        if voice == "bass":
            continue
        chord = key.chord(root, base - 12, 4 if style.name == "jazz" else 3)
        for index, (step, length) in enumerate(CHORD_RHYTHMS[style.chords]):
            absolute = bar * BAR_STEPS + step
            if absolute >= beats * STEPS_PER_BEAT:
                continue
            start = step_to_beat(absolute, style.swing)
            pitches = [chord[index % len(chord)]] if style.chords == "arpeggio" else chord
            for offset, pitch in enumerate(pitches):
                strum = 0.02 * offset if voice == "guitar" else 0.0
                events.append(Event("chords", voice, start + strum, length / STEPS_PER_BEAT * 0.9, pitch, 0.55))
    return events


def bass_events(key: Key, style: Style, beats: int, rng: np.random.Generator) -> list[Event]:
    roots = progression(key, rng)
    events = []
    for bar in range(-(-beats // 4)):
        for step, length, degree in BASS_LINES[style.bass]:
            absolute = bar * BAR_STEPS + step
            if absolute < beats * STEPS_PER_BEAT:
                pitch = key.degree_pitch(roots[bar % len(roots)] + degree, 36)
                start = step_to_beat(absolute, style.swing)
                events.append(Event("bass", "bass", start, length / STEPS_PER_BEAT * 0.9, pitch, 0.9))
    return events


def drum_events(style: Style, beats: int, rng: np.random.Generator, busy: bool) -> list[Event]:
    """The style's groove over the loop; ``busy`` (drums alone) adds ghost notes and a fill in the last beat."""
    events = []
    for absolute in range(beats * STEPS_PER_BEAT):
        step = absolute % BAR_STEPS
        for voice, hits in style.drums.items():
            if step in hits:
                velocity = hits[step] * float(rng.uniform(0.85, 1.0))
                events.append(Event("drums", voice, step_to_beat(absolute, style.swing), 0.25, None, velocity))
        if busy and rng.random() < 0.12:
            ghost = "snare" if "snare" in style.drums else "rim"
            events.append(Event("drums", ghost, step_to_beat(absolute, style.swing), 0.25, None, 0.3))
    if busy:
        for absolute in range(beats * STEPS_PER_BEAT - 4, beats * STEPS_PER_BEAT):
            events.append(Event("drums", "snare", step_to_beat(absolute, style.swing), 0.25, None, 0.6))
    return events
