"""The shipped seed images and masks, their index, the generator that made them, and `SeedLibrary`."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.music.clip import render_groove
from pipeline.seeds import SEED_IMAGES_ENV, SeedLibrary, UnknownSeedImage, default_seed_directory

SEED_DIR = Path(__file__).resolve().parent.parent / "seed_images"
ORIGINAL_SEEDS = {"og_beat", "agile", "marim", "motorway", "vibes"}
ORIGINAL_MASKS = {
    "mask_beat_lines_80",
    "mask_gradient_dark",
    "mask_gradient_top_70",
    "mask_gradient_top_fifth_75",
    "mask_top_third_75",
    "mask_top_third_95",
}
ORIGINAL_EXIF = {11000: 44100, 11005: 0, 11010: 10, 11020: 100, 11030: 400, 11040: 512, 11050: 0, 11060: 10000}
LOOP_SAMPLES = 512 * 441


def _load_generator():
    spec = importlib.util.spec_from_file_location("seed_images_generate", SEED_DIR / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


generate = _load_generator()


@pytest.fixture(scope="module")
def library() -> SeedLibrary:
    return SeedLibrary(SEED_DIR)


def _grey(image: Image.Image) -> np.ndarray:
    pixels = np.asarray(image.convert("RGB"))
    assert np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 1], pixels[..., 2])
    return pixels[..., 0].astype(int)


# --------------------------------------------------------------------------------------------------- index
def test_index_lists_exactly_the_original_ids_with_the_right_kinds(library):
    assert set(library.seed_ids()) == ORIGINAL_SEEDS
    assert set(library.mask_ids()) == ORIGINAL_MASKS
    ids = [entry.id for entry in library.entries()]
    assert len(ids) == len(set(ids))
    assert library.seed_ids()[0] == "og_beat"


def test_every_entry_has_its_file_and_every_png_is_indexed(library):
    indexed = {entry.file for entry in library.entries()}
    assert all((SEED_DIR / name).is_file() for name in indexed)
    assert {path.name for path in SEED_DIR.glob("*.png")} == indexed
    assert all(library.path(entry.id) == SEED_DIR / entry.file for entry in library.entries())


def test_index_matches_what_the_generator_writes():
    assert json.loads((SEED_DIR / "index.json").read_text()) == generate.index_entries()


def test_seed_tempo_fits_a_whole_number_of_beats_in_5_12_seconds(library):
    for entry in library.entries():
        if entry.kind == "mask":
            assert entry.bpm is None and entry.beats is None
            continue
        assert isinstance(entry.beats, int) and entry.beats > 0
        assert math.isclose(entry.bpm * 5.12 / 60, entry.beats, rel_tol=1e-12)
        assert math.isclose(entry.loop_seconds(), 5.12)
    tempos = {entry.bpm for entry in library.entries() if entry.kind == "seed"}
    assert len(tempos) == len(ORIGINAL_SEEDS), "each seed should have its own tempo"


# -------------------------------------------------------------------------------------------------- images
@pytest.mark.parametrize("seed_id", sorted(ORIGINAL_SEEDS))
def test_seed_images_are_512_rgb_spectrograms_with_the_original_exif(library, seed_id):
    image = library.load(seed_id)
    assert image.mode == "RGB" and image.size == (512, 512)
    exif = image.getexif()
    assert {tag: exif[tag] for tag in ORIGINAL_EXIF} == ORIGINAL_EXIF
    assert exif[11070] == pytest.approx(0.25)
    assert exif[11080] > 0
    grey = _grey(image)  # mono: three equal channels
    assert grey.min() < 40 and grey.max() > 200, "a seed should span loud and quiet pixels"


def test_load_returns_a_copy_and_caches_the_file(tmp_path):
    shutil.copy(SEED_DIR / "index.json", tmp_path / "index.json")
    shutil.copy(SEED_DIR / "vibes.png", tmp_path / "vibes.png")
    library = SeedLibrary(tmp_path)
    first = library.load("vibes")
    first.paste((255, 0, 0), (0, 0, 512, 512))
    (tmp_path / "vibes.png").unlink()  # a second load must come from the cache
    second = library.load_seed("vibes")
    assert second.getpixel((10, 10)) != (255, 0, 0)
    assert second.getexif()[11000] == 44100


def test_the_generator_is_deterministic_and_the_committed_png_is_current(tmp_path):
    assert np.array_equal(generate.synthesize("marim"), generate.synthesize("marim"))
    assert not np.array_equal(generate.synthesize("marim"), generate.synthesize("vibes"))
    generate.save_png(generate.render_seed_image("og_beat"), tmp_path / "og_beat.png")
    fresh = np.asarray(Image.open(tmp_path / "og_beat.png").convert("RGB"), dtype=int)
    committed = np.asarray(Image.open(SEED_DIR / "og_beat.png").convert("RGB"), dtype=int)
    difference = np.abs(fresh - committed)
    assert difference.max() <= 1 and difference.mean() < 0.01, "rerun seed_images/generate.py"


def test_seed_audio_is_float32_mono_of_exactly_5_12_seconds():
    audio = generate.synthesize("og_beat")
    assert audio.dtype == np.float32 and audio.shape == (1, LOOP_SAMPLES)
    assert 0.1 < np.max(np.abs(audio)) <= 0.9


# ----------------------------------------------------------------------------------------------- the grooves
@pytest.mark.parametrize("seed_id", sorted(ORIGINAL_SEEDS))
def test_each_seed_is_the_music_generators_drums_and_bass_at_its_index_tempo(library, seed_id):
    """Seeds come from the generator mini learnt from: its groove of one style, drums and bass, no lead."""
    spec = generate.SEEDS[seed_id]
    groove = render_groove(spec.style, spec.beats, spec.random_seed, busy=spec.busy)
    assert groove.parts == ("bass", "drums")
    assert np.array_equal(generate.synthesize(seed_id)[0], groove.audio)
    assert library.entry(seed_id).beats == spec.beats == groove.spec.beats


@pytest.mark.parametrize("seed_id", sorted(ORIGINAL_SEEDS))
def test_each_seed_loops_without_a_seam(seed_id):
    """Played over and over, the jump across the loop point is no bigger than the largest inside the loop."""
    audio = generate.synthesize(seed_id)[0].astype(np.float64)
    assert abs(audio[0] - audio[-1]) <= np.max(np.abs(np.diff(audio)))


def test_a_style_without_drums_makes_no_groove():
    with pytest.raises(ValueError, match="style: 'ambient' has no drum groove"):
        render_groove("ambient", 8, 1)


# --------------------------------------------------------------------------------------------------- masks
@pytest.fixture(scope="module")
def masks(library) -> dict[str, np.ndarray]:
    loaded = {mask_id: library.load_mask(mask_id) for mask_id in ORIGINAL_MASKS}
    assert all(image.mode == "RGB" and image.size == (512, 512) for image in loaded.values())
    return {mask_id: _grey(image) for mask_id, image in loaded.items()}


@pytest.mark.parametrize(("mask_id", "level"), [("mask_top_third_75", 191), ("mask_top_third_95", 242)])
def test_top_third_masks_repaint_the_top_third_at_their_level(masks, mask_id, level):
    grey = masks[mask_id]
    assert np.all(grey[:168] == level) and np.all(grey[168:] == 0)


@pytest.mark.parametrize(("mask_id", "top"), [("mask_gradient_dark", 102), ("mask_gradient_top_70", 178)])
def test_gradient_masks_fade_from_black_at_the_bottom_to_their_level_at_the_top(masks, mask_id, top):
    grey = masks[mask_id]
    assert np.all(grey == grey[:, :1]), "constant along time"
    column = grey[:, 0]
    assert column[-1] == 0 and column[0] == top and np.all(np.diff(column) <= 0)


def test_top_fifth_gradient_only_touches_the_top_fifth(masks):
    column = masks["mask_gradient_top_fifth_75"][:, 0]
    assert np.all(masks["mask_gradient_top_fifth_75"] == column[:, None])
    assert column[0] == 191 and np.all(column[104:] == 0) and np.all(np.diff(column[:104]) < 0)


def test_beat_lines_keep_the_beats_and_repaint_between_them(masks):
    grey = masks["mask_beat_lines_80"]
    assert np.all(grey == grey[:1]), "constant along frequency"
    on_beat = np.zeros(512, dtype=bool)
    for beat in range(8):
        on_beat[beat * 64 : beat * 64 + 16] = True
    assert np.all(grey[0, on_beat] == 0) and np.all(grey[0, ~on_beat] == 204)


# --------------------------------------------------------------------------------------------------- errors
def test_unknown_ids_use_the_original_error_text(library):
    with pytest.raises(UnknownSeedImage) as error:
        library.load("church_bells")
    assert str(error.value) == "Invalid seed image: church_bells"
    assert isinstance(error.value, ValueError)
    with pytest.raises(UnknownSeedImage, match=r"^Invalid mask image: og_beat$"):
        library.load_mask("og_beat")
    with pytest.raises(UnknownSeedImage, match=r"^Invalid seed image: mask_top_third_75$"):
        library.load_seed("mask_top_third_75")
    with pytest.raises(UnknownSeedImage, match=r"^Invalid seed image: nope$"):
        library.path("nope")
    assert "og_beat" in library and "nope" not in library


def test_env_var_points_the_default_library_at_another_folder(tmp_path, monkeypatch):
    shutil.copy(SEED_DIR / "mask_top_third_75.png", tmp_path / "mine.png")
    entry = {"id": "mine", "kind": "mask", "bpm": None, "beats": None, "description": "", "file": "mine.png"}
    (tmp_path / "index.json").write_text(json.dumps([entry]))
    monkeypatch.setenv(SEED_IMAGES_ENV, str(tmp_path))
    assert default_seed_directory() == tmp_path
    assert SeedLibrary().mask_ids() == ["mine"]
    monkeypatch.delenv(SEED_IMAGES_ENV)
    assert default_seed_directory() == SEED_DIR


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"id": "", "kind": "seed", "file": "a.png"}, "id"),
        ({"id": "a", "kind": "loop", "file": "a.png"}, "kind"),
        ({"id": "a", "kind": "seed", "file": "../a.png"}, "file"),
        ({"id": "a", "kind": "seed", "file": "a.png", "bpm": -1, "beats": 8}, "bpm"),
        ({"id": "a", "kind": "seed", "file": "a.png", "bpm": 90.0, "beats": 2.5}, "beats"),
        ({"id": "a", "kind": "seed", "file": "a.png", "bpm": 90.0}, "bpm and beats"),
    ],
)
def test_a_bad_index_is_a_value_error_naming_the_field(tmp_path, row, field):
    (tmp_path / "index.json").write_text(json.dumps([row]))
    with pytest.raises(ValueError, match=field):
        SeedLibrary(tmp_path)


def test_duplicate_ids_and_missing_index_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="no index.json"):
        SeedLibrary(tmp_path)
    row = {"id": "a", "kind": "mask", "file": "a.png"}
    (tmp_path / "index.json").write_text(json.dumps([row, row]))
    with pytest.raises(ValueError, match="listed twice"):
        SeedLibrary(tmp_path)
