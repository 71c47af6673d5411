"""Regenerate the project's own seed images, masks and ``index.json``.

Run ``python seed_images/generate.py`` (optionally ``--out DIR``). Everything is synthesised here with numpy from
fixed random seeds, so the PNGs in this folder are reproducible and free of anyone else's samples.

Seeds. Each seed is a groove made by the project's music generator (``pipeline/music``, the same one that renders
the built-in ``mini`` model's training data): one style's drums and bass line, with no lead, at the levels they keep
under a lead. img2img from a seed keeps its groove and the prompt brings the lead, as riffusion's seeds do; a drum
loop alone drowns the prompted instrument (docs/MINI_MODEL.md). A seed is exactly 512 spectrogram columns = 5.12 s =
225792 samples at 44.1 kHz holding a whole number of beats, so ``bpm = beats * 60 / 5.12`` and the loop point sits
on a beat; every sound is mixed into a circular buffer, so the clip repeats without a seam. Ids (the original
server's) and grooves:

- ``og_beat``  8 beats at 93.75 BPM: a swung lo-fi hip-hop beat and root bass, tape-dulled (the default).
- ``agile``    16 beats at 187.5 BPM: a fast four-bar rock beat with ghost snares and a fill, driving eighths bass.
- ``marim``    9 beats at 105.46875 BPM: a reggae one-drop with rim shots and a roots bass line.
- ``motorway`` 12 beats at 140.625 BPM: techno four-on-the-floor with claps and hats, off-beat bass.
- ``vibes``    6 beats at 70.3125 BPM: a slow jazz ride-and-brushes groove with a walking bass.

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
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SIZE = 512
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run as a script from a checkout: the generator lives in pipeline/music
from pipeline.music.styles import bpm_for_beats  # noqa: E402  torch-free, unlike the generator imported below


# ---------------------------------------------------------------------------------------------------- seeds
@dataclasses.dataclass(frozen=True)
class SeedSpec:
    """One seed: the generator's groove for ``style`` at ``beats`` per loop, drawn from ``random_seed``."""

    id: str
    style: str
    beats: int
    random_seed: int
    busy: bool
    description: str

    @property
    def bpm(self) -> float:
        return bpm_for_beats(self.beats)


SEEDS: dict[str, SeedSpec] = {
    spec.id: spec
    for spec in (
        SeedSpec("og_beat", "lofi", 8, 1001, False,
                 "Swung lo-fi hip-hop beat with a root bass line, tape-dulled (the default)"),
        SeedSpec("agile", "rock", 16, 1002, True,
                 "Fast four-bar rock beat with ghost snares and a fill over a driving eighths bass"),
        SeedSpec("marim", "reggae", 9, 1003, False, "Reggae one-drop with rim shots and a roots bass line"),
        SeedSpec("motorway", "techno", 12, 1004, False,
                 "Driving techno four-on-the-floor with claps and hats over an off-beat bass"),
        SeedSpec("vibes", "jazz", 6, 1005, False, "Slow jazz groove of ride and brushes with a walking bass"),
    )
}


def synthesize(seed_id: str) -> np.ndarray:
    """The seed's loop as float32 PCM shaped (1, 225792), at the generator's own level (peak at most 0.9)."""
    from pipeline.music.clip import render_groove  # imported late: masks need neither torch nor the generator

    spec = _spec(seed_id)
    groove = render_groove(spec.style, spec.beats, spec.random_seed, busy=spec.busy)
    return groove.audio[np.newaxis, :].astype(np.float32)


def _spec(seed_id: str) -> SeedSpec:
    if seed_id not in SEEDS:
        raise ValueError(f"seed_id must be one of {sorted(SEEDS)}, got {seed_id!r}")
    return SEEDS[seed_id]


def render_seed_image(seed_id: str) -> Image.Image:
    """The seed loop as a spectrogram image in the original format (EXIF included)."""
    from pipeline.audio.image import image_from_audio

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
