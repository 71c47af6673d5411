"""Keys, scales and chord progressions: enough harmony that a clip is in a key and its chords move."""

from __future__ import annotations

import dataclasses

import numpy as np

NOTE_NAMES = ("c", "c#", "d", "eb", "e", "f", "f#", "g", "ab", "a", "bb", "b")
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
# Progressions as scale degrees (0-based) of the chord roots, one chord per bar.
PROGRESSIONS = {
    "major": ((0, 4, 5, 3), (0, 5, 3, 4), (1, 4, 0, 0), (0, 3, 0, 4), (0, 3, 4, 3)),
    "minor": ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 6), (0, 3, 0, 4), (0, 5, 3, 4)),
}


@dataclasses.dataclass(frozen=True)
class Key:
    """A tonic pitch class (0 = C) and a mode."""

    tonic: int
    mode: str

    @property
    def name(self) -> str:
        return f"{NOTE_NAMES[self.tonic]} {self.mode}"

    @classmethod
    def random(cls, rng: np.random.Generator) -> Key:
        return cls(int(rng.integers(12)), str(rng.choice(sorted(SCALES))))

    def degree_pitch(self, degree: int, octave_base: int) -> int:
        """MIDI pitch of scale ``degree`` (any integer; 7 is the next octave) above ``octave_base`` + tonic."""
        scale = SCALES[self.mode]
        octave, step = divmod(degree, len(scale))
        return octave_base + self.tonic + 12 * octave + scale[step]

    def chord(self, root_degree: int, octave_base: int, size: int = 3) -> list[int]:
        """Stacked thirds on ``root_degree``: triad (3) or seventh chord (4)."""
        return [self.degree_pitch(root_degree + 2 * i, octave_base) for i in range(size)]

    def nearest_degree(self, pitch: int, octave_base: int) -> int:
        """The scale degree whose pitch is closest to ``pitch``."""
        candidates = range(-14, 28)
        return min(candidates, key=lambda degree: abs(self.degree_pitch(degree, octave_base) - pitch))


def progression(key: Key, rng: np.random.Generator) -> tuple[int, ...]:
    options = PROGRESSIONS[key.mode]
    return options[int(rng.integers(len(options)))]
