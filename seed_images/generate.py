"""Regenerate the project's own seed images, masks and ``index.json``.

Run ``python seed_images/generate.py`` (optionally ``--out DIR``). Everything is synthesised here with numpy from
fixed random seeds, so the PNGs in this folder are reproducible and free of anyone else's samples.

Seeds. Each seed is a drum or percussion loop of exactly 512 spectrogram columns = 5.12 s = 225792 samples at
44.1 kHz holding a whole number of beats, so ``bpm = beats * 60 / 5.12`` and the loop point sits on a beat. Every
hit is mixed into a circular buffer: a decay that runs past the end continues at the start, so the clip repeats
without a seam (playing it twice equals one continuous performance). Ids and grooves:

- ``og_beat``  8 beats at 93.75 BPM: hip-hop kick/snare, straight 16th hats with an open hat (the default).
- ``agile``    16 beats at 187.5 BPM: a fast four-bar breakbeat with ghost snares, ride and a crash.
- ``marim``    9 beats at 105.46875 BPM: three bars of 3/4, marimba-like arpeggios in A minor over a shaker.
- ``motorway`` 12 beats at 140.625 BPM: four-on-the-floor with claps, hats and a pumping low drone.
- ``vibes``    6 beats at 70.3125 BPM: a two-bar jazz waltz of vibraphone chords with brushes.

Masks (512x512, grey as RGB). White pixels are repainted, black pixels keep the seed; a grey level g repaints with
weight g / 255. Rows run top = high frequency to bottom = low frequency; every edge sits on the 8-pixel latent grid.
The number in a name is the grey level of the repainted part, in percent of white:

- ``mask_beat_lines_80``          80% grey everywhere except black 16-px columns starting on each of the 8 beats of a
                                  93.75 BPM loop (columns 64k..64k+15): keeps the seed's hits, repaints between them.
- ``mask_gradient_dark``          vertical gradient from black (bottom row) to 40% grey (top row): a gentle repaint
                                  that grows with frequency.
- ``mask_gradient_top_70``        vertical gradient from black (bottom row) to 70% grey (top row).
- ``mask_gradient_top_fifth_75``  black except the top fifth (rows 0..103), which ramps from black at row 103 to 75% at
                                  row 0.
- ``mask_top_third_75``           top third (rows 0..167) solid 75% grey, the rest black: new highs, the seed's lows.
- ``mask_top_third_95``           top third (rows 0..167) solid 95% grey, the rest black.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

SAMPLE_RATE = 44100
LOOP_COLUMNS = 512
HOP = 441
LOOP_SAMPLES = LOOP_COLUMNS * HOP  # 225792 = 2**9 * 3**2 * 7**2: divisible by 6, 8, 9, 12, 16 beats and their 16ths
LOOP_SECONDS = LOOP_SAMPLES / SAMPLE_RATE
IMAGE_SIZE = 512
LATENT_CELL = 8
HERE = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------------------------- sound design
def _time(seconds: float) -> np.ndarray:
    return np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE


def _decay(seconds: float, decay_s: float, attack_s: float = 0.002) -> np.ndarray:
    """Exponential decay with a short linear attack (no click at the onset)."""
    t = _time(seconds)
    return np.minimum(t / attack_s, 1.0) * np.exp(-t / decay_s)


def _band_noise(rng: np.random.Generator, seconds: float, low_hz: float, high_hz: float) -> np.ndarray:
    """White noise through a soft band-pass (fourth-order roll-offs, like a pair of analogue filters), unit RMS."""
    white = rng.standard_normal(int(seconds * SAMPLE_RATE))
    freqs = np.fft.rfftfreq(white.size, 1.0 / SAMPLE_RATE)
    gain = 1.0 / (1.0 + (low_hz / np.maximum(freqs, 1e-3)) ** 4) / (1.0 + (freqs / high_hz) ** 4)
    band = np.fft.irfft(np.fft.rfft(white) * gain, white.size)
    return band / (np.sqrt(np.mean(band**2)) + 1e-12)


def _midi_hz(note: int) -> float:
    return 440.0 * 2.0 ** ((note - 69) / 12.0)


def kick(high_hz: float = 140.0, low_hz: float = 48.0, decay_s: float = 0.3) -> np.ndarray:
    """A sine whose pitch falls quickly: the body of an electronic or acoustic bass drum."""
    t = _time(6 * decay_s)
    freq = low_hz + (high_hz - low_hz) * np.exp(-t / 0.035)
    phase = 2 * np.pi * np.cumsum(freq) / SAMPLE_RATE
    return np.sin(phase) * _decay(6 * decay_s, decay_s, attack_s=0.001)


def snare(rng: np.random.Generator, tone_hz: float = 185.0, decay_s: float = 0.12) -> np.ndarray:
    """Tuned drum body plus a bright noise rattle."""
    t = _time(6 * decay_s)
    body = np.sin(2 * np.pi * tone_hz * t) * np.exp(-t / 0.05)
    rattle = _band_noise(rng, 6 * decay_s, 1500.0, 9000.0) * np.exp(-t / decay_s)
    return 0.6 * body + 0.35 * rattle


def clap(rng: np.random.Generator) -> np.ndarray:
    """Three quick noise bursts then a short tail, like hands clapping together."""
    length = 0.4
    envelope = sum(_pad(_decay(0.012, 0.004, 0.0005), int(i * 0.011 * SAMPLE_RATE), length) for i in range(3))
    envelope = envelope + 0.6 * _pad(_decay(length - 0.033, 0.07), int(0.033 * SAMPLE_RATE), length)
    return 0.5 * _band_noise(rng, length, 800.0, 6000.0) * envelope


def hat(rng: np.random.Generator, decay_s: float = 0.035) -> np.ndarray:
    """High band noise; a short decay is a closed hat, a long one an open hat, ride or crash."""
    return 0.25 * _band_noise(rng, 6 * decay_s, 6000.0, 16000.0) * _decay(6 * decay_s, decay_s, attack_s=0.0005)


def brush(rng: np.random.Generator, sweep_s: float = 0.35) -> np.ndarray:
    """A brush swept over the snare head: mid-high noise that swells and fades."""
    t = _time(sweep_s)
    swell = np.sin(np.pi * t / sweep_s) ** 2
    return 0.12 * _band_noise(rng, sweep_s, 2500.0, 9000.0) * swell


def shaker(rng: np.random.Generator) -> np.ndarray:
    """Seeds in a shell: a short high noise grain with a soft attack."""
    return 0.5 * _band_noise(rng, 0.08, 4000.0, 12000.0) * _decay(0.08, 0.02, attack_s=0.008)


def mallet(note: int, decay_s: float = 0.45) -> np.ndarray:
    """Marimba-like bar: fundamental with the tuned 4x and 10x partials, which die much faster."""
    f0, t = _midi_hz(note), _time(5 * decay_s)
    partials = ((1.0, 1.0, decay_s), (3.93, 0.4, decay_s / 6), (9.9, 0.12, decay_s / 15))
    tone = sum(gain * np.sin(2 * np.pi * f0 * ratio * t) * np.exp(-t / d) for ratio, gain, d in partials)
    return 0.35 * tone * np.minimum(t / 0.001, 1.0)


def vibe(note: int, decay_s: float = 1.1, tremolo_hz: float = 5.5) -> np.ndarray:
    """Vibraphone-like bar: long sine decay, a faint 4x partial and the motor's amplitude tremolo."""
    f0, t = _midi_hz(note), _time(4 * decay_s)
    tone = np.sin(2 * np.pi * f0 * t) + 0.15 * np.sin(2 * np.pi * 4 * f0 * t) * np.exp(-t / 0.15)
    tremolo = 1.0 - 0.3 * (0.5 - 0.5 * np.cos(2 * np.pi * tremolo_hz * t))
    return 0.12 * tone * tremolo * _decay(4 * decay_s, decay_s, attack_s=0.003)


def _pad(sound: np.ndarray, offset: int, seconds: float) -> np.ndarray:
    out = np.zeros(int(seconds * SAMPLE_RATE))
    end = min(out.size, offset + sound.size)
    out[offset:end] = sound[: end - offset]
    return out


# ---------------------------------------------------------------------------------------------- arrangement
@dataclasses.dataclass(frozen=True)
class Hit:
    """One sound starting at a sample of the loop."""

    onset: int
    sound: np.ndarray


@dataclasses.dataclass(frozen=True)
class Groove:
    """A seed's arrangement: hits on the loop plus an optional continuous bed that already repeats per loop."""

    hits: list[Hit]
    bed: np.ndarray | None = None


def step_onsets(pattern: str, loop_samples: int = LOOP_SAMPLES) -> list[tuple[int, float]]:
    """``(onset, velocity)`` for a step pattern spread evenly over the loop: X accent, x normal, o ghost, . rest."""
    velocities = {"X": 1.0, "x": 0.75, "o": 0.35}
    unknown = set(pattern) - set(velocities) - {"."}
    if unknown:
        raise ValueError(f"pattern has unknown step characters {sorted(unknown)}: {pattern!r}")
    return [(i * loop_samples // len(pattern), velocities[c]) for i, c in enumerate(pattern) if c != "."]


def _voice(pattern: str, make: Callable[[], np.ndarray], rng: np.random.Generator) -> list[Hit]:
    """A pattern played by one instrument, each hit a fresh render with a little velocity variation."""
    return [Hit(onset, make() * velocity * rng.uniform(0.9, 1.0)) for onset, velocity in step_onsets(pattern)]


def _notes(steps: int, notes: Sequence[tuple[int, int]], make: Callable[[int], np.ndarray]) -> list[Hit]:
    """Pitched hits: ``(step, midi note)`` pairs on a grid of ``steps`` per loop."""
    return [Hit(step * LOOP_SAMPLES // steps, make(note)) for step, note in notes]


def loop_tone(hz: float) -> np.ndarray:
    """A sine snapped to a whole number of cycles per loop, so it joins itself at the loop point."""
    cycles = max(1, round(hz * LOOP_SECONDS))
    return np.sin(2 * np.pi * cycles * np.arange(LOOP_SAMPLES) / LOOP_SAMPLES)


def og_beat(rng: np.random.Generator) -> Groove:
    return Groove(
        _voice("X.........x.x.......X.....x.....", lambda: kick(), rng)
        + _voice("....X..o....X.......o.X.....X..o", lambda: snare(rng), rng)
        + _voice("x.x.x.x.x.x.x.o.x.x.x.x.x.x....x", lambda: hat(rng), rng)
        + _voice("..............................X.", lambda: hat(rng, decay_s=0.2), rng)
    )


def agile(rng: np.random.Generator) -> Groove:
    return Groove(
        _voice("X.x.......xx....X.x.......x.....X.x.......xx....X.x...x...x.....", lambda: kick(160, 55, 0.2), rng)
        + _voice("....X..o.o..X..o....X..o.o..X.o.....X..o.o..X..o....X..o.o.xX.oX", lambda: snare(rng, 210), rng)
        + _voice("x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.", lambda: hat(rng, 0.08), rng)
        + _voice("X" + "." * 63, lambda: hat(rng, decay_s=0.7), rng)
    )


def marim(rng: np.random.Generator) -> Groove:
    a_minor = [57, 60, 64, 69, 72, 76, 67, 71, 74, 62, 65, 69]  # Am, then G and Dm colours
    melody = [(step, a_minor[(step * 5) % len(a_minor)]) for step in range(18) if step % 6 != 5]
    bass = [(0, 45), (6, 43), (12, 38)]
    return Groove(
        _notes(18, melody, mallet)
        + _notes(18, bass, lambda note: 1.4 * mallet(note, decay_s=0.8))
        + _voice("xox" * 12, lambda: shaker(rng), rng)
    )


def motorway(rng: np.random.Generator) -> Groove:
    beat = LOOP_SAMPLES // 12
    position = np.arange(LOOP_SAMPLES) % beat / SAMPLE_RATE
    pump = 1.0 - 0.85 * np.exp(-position / 0.09)  # the drone ducks under every kick: the low pulse
    drone = 0.3 * (loop_tone(41.2) + 0.4 * loop_tone(82.4) + 0.15 * loop_tone(123.6)) * pump
    return Groove(
        _voice("X..." * 12, lambda: kick(120, 45, 0.25), rng)
        + _voice("....X.......X..." * 3, lambda: clap(rng), rng)
        + _voice("..x." * 12, lambda: hat(rng, 0.12), rng)
        + _voice("x.ox" * 12, lambda: 0.6 * hat(rng, 0.025), rng),
        bed=drone,
    )


def vibes(rng: np.random.Generator) -> Groove:
    d_minor9, g13 = (50, 62, 65, 69, 72, 76), (43, 59, 64, 65, 69)
    chords = [(0, d_minor9), (5, d_minor9[1:]), (9, g13), (14, g13[1:])]  # triplet grid, 3 steps a beat
    return Groove(
        _notes(18, [(step, note) for step, chord in chords for note in chord], vibe)
        + _voice("x..x..x..x..x..x..", lambda: brush(rng), rng)
        + _voice("...x.o...x.o...x.o", lambda: 0.5 * snare(rng, 200, 0.06), rng)
        + _voice("x.....o..x.....o..", lambda: 0.7 * kick(90, 45, 0.2), rng)
    )


@dataclasses.dataclass(frozen=True)
class SeedSpec:
    id: str
    beats: int
    random_seed: int
    description: str
    arrange: Callable[[np.random.Generator], Groove]

    @property
    def bpm(self) -> float:
        return self.beats * 60.0 / LOOP_SECONDS


SEEDS: dict[str, SeedSpec] = {
    spec.id: spec
    for spec in (
        SeedSpec("og_beat", 8, 1001, "Hip-hop kick/snare beat with 16th hats and an open hat (the default)", og_beat),
        SeedSpec("agile", 16, 1002, "Fast four-bar breakbeat with ghost snares, ride and a crash", agile),
        SeedSpec("marim", 9, 1003, "Marimba-like arpeggios in A minor over a shaker, 3/4", marim),
        SeedSpec("motorway", 12, 1004, "Driving four-on-the-floor with claps, hats and a pumping low drone", motorway),
        SeedSpec("vibes", 6, 1005, "Jazz waltz of vibraphone chords with soft brushes", vibes),
    )
}


def render_loop(groove: Groove, loop_samples: int = LOOP_SAMPLES) -> np.ndarray:
    """Mix hits into a circular buffer: a tail running past the end wraps to the start."""
    mix = np.zeros(loop_samples) if groove.bed is None else groove.bed.astype(np.float64).copy()
    for hit in groove.hits:
        if hit.sound.size > loop_samples:
            raise ValueError(f"hit sound is longer than the loop ({hit.sound.size} > {loop_samples} samples)")
        start = hit.onset % loop_samples
        head = min(hit.sound.size, loop_samples - start)
        mix[start : start + head] += hit.sound[:head]
        mix[: hit.sound.size - head] += hit.sound[head:]
    return mix


def synthesize(seed_id: str) -> np.ndarray:
    """The seed's loop as float32 PCM shaped (1, 225792), peak 0.9."""
    spec = _spec(seed_id)
    mix = render_loop(spec.arrange(np.random.default_rng(spec.random_seed)))
    return (0.9 * mix / np.max(np.abs(mix)))[np.newaxis, :].astype(np.float32)


def _spec(seed_id: str) -> SeedSpec:
    if seed_id not in SEEDS:
        raise ValueError(f"seed_id must be one of {sorted(SEEDS)}, got {seed_id!r}")
    return SEEDS[seed_id]


def render_seed_image(seed_id: str) -> Image.Image:
    """The seed loop as a spectrogram image in the original format (EXIF included)."""
    from pipeline.audio.image import image_from_audio  # the audio library; imported late so masks need no torch

    return image_from_audio(synthesize(seed_id))


# ---------------------------------------------------------------------------------------------------- masks
def _rows() -> np.ndarray:
    """Height above the bottom row as 0..1 for each row, top row = 1."""
    return np.linspace(1.0, 0.0, IMAGE_SIZE)[:, np.newaxis] * np.ones((1, IMAGE_SIZE))


def _top_band(rows: int, level: float) -> np.ndarray:
    grey = np.zeros((IMAGE_SIZE, IMAGE_SIZE))
    grey[:rows] = level
    return grey


def _top_ramp(rows: int, level: float) -> np.ndarray:
    grey = np.zeros((IMAGE_SIZE, IMAGE_SIZE))
    grey[:rows] = np.linspace(level, 0.0, rows)[:, np.newaxis]
    return grey


def _beat_lines(beats: int, width: int, level: float) -> np.ndarray:
    grey = np.full((IMAGE_SIZE, IMAGE_SIZE), level)
    for beat in range(beats):
        column = beat * IMAGE_SIZE // beats
        grey[:, column : column + width] = 0.0
    return grey


TOP_THIRD_ROWS = 168  # 512 / 3 rounded down to the latent grid (21 latent rows)
TOP_FIFTH_ROWS = 104  # 512 / 5 rounded up to the latent grid (13 latent rows)

MASKS: dict[str, tuple[str, Callable[[], np.ndarray]]] = {
    "mask_beat_lines_80": (
        "Repaint 80% except black 16-px columns on the 8 beats of a 93.75 BPM loop: keeps the seed's hits",
        lambda: _beat_lines(8, 16, 0.8),
    ),
    "mask_gradient_dark": ("Gradient from black at the bottom to 40% grey at the top", lambda: 0.4 * _rows()),
    "mask_gradient_top_70": ("Gradient from black at the bottom to 70% grey at the top", lambda: 0.7 * _rows()),
    "mask_gradient_top_fifth_75": (
        "Top fifth (rows 0-103) ramps from black up to 75% grey at the top; the rest is kept",
        lambda: _top_ramp(TOP_FIFTH_ROWS, 0.75),
    ),
    "mask_top_third_75": (
        "Top third (rows 0-167) repainted at 75% grey; the rest is kept",
        lambda: _top_band(TOP_THIRD_ROWS, 0.75),
    ),
    "mask_top_third_95": (
        "Top third (rows 0-167) repainted at 95% grey; the rest is kept",
        lambda: _top_band(TOP_THIRD_ROWS, 0.95),
    ),
}


def render_mask(mask_id: str) -> Image.Image:
    """A 512x512 RGB mask: white repaints, black keeps the seed."""
    if mask_id not in MASKS:
        raise ValueError(f"mask_id must be one of {sorted(MASKS)}, got {mask_id!r}")
    grey = np.round(255.0 * MASKS[mask_id][1]()).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


# ---------------------------------------------------------------------------------------------------- output
def index_entries() -> list[dict[str, object]]:
    """The rows of ``index.json``: every seed, then every mask."""
    seeds = [
        {"id": i, "kind": "seed", "bpm": s.bpm, "beats": s.beats, "description": s.description, "file": f"{i}.png"}
        for i, s in SEEDS.items()
    ]
    masks = [
        {"id": m, "kind": "mask", "bpm": None, "beats": None, "description": d, "file": f"{m}.png"}
        for m, (d, _) in MASKS.items()
    ]
    return seeds + masks


def save_png(image: Image.Image, path: Path) -> None:
    """PNG with the EXIF block kept (the spectrogram parameters travel with the image)."""
    exif = image.getexif()
    image.save(path, format="PNG", optimize=True, **({"exif": exif} if len(exif) else {}))


def generate(out: Path) -> list[Path]:
    """Write every seed and mask PNG plus ``index.json`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for entry in index_entries():
        image = render_seed_image(entry["id"]) if entry["kind"] == "seed" else render_mask(entry["id"])
        save_png(image, out / str(entry["file"]))
        written.append(out / str(entry["file"]))
    index_path = out / "index.json"
    index_path.write_text(json.dumps(index_entries(), indent=2) + "\n")
    return [*written, index_path]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write into (default: this one)")
    for path in generate(parser.parse_args(argv).out):
        print(f"{path.stat().st_size:>8}  {path}")


if __name__ == "__main__":
    main()
