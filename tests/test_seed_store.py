"""Custom seeds on disk (pipeline/seed_store.py) and in the SeedLibrary: ids, restarts, the cap and eviction."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from pipeline.seed_store import DATA_DIR_ENV, SeedStore, content_id, default_data_dir
from pipeline.seeds import SeedLibrary, UnknownSeedImage


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _png(shade: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (512, 512), (shade, shade, shade)).save(out, format="PNG")
    return out.getvalue()


def _add(library: SeedLibrary, shade: int) -> str:
    png = _png(shade)
    return library.add_custom(content_id(png), png, bpm=120.0, beats=10, description=f"shade {shade}",
                              source={"format": "png"}).id


def test_ids_are_content_hashes_and_the_same_bytes_are_stored_once(tmp_path):
    library = SeedLibrary(store=SeedStore(tmp_path))
    first, again = _add(library, 10), _add(library, 10)
    assert first == again == content_id(_png(10)) and first.startswith("custom-")
    assert _add(library, 11) != first
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted([f"{first}.png", f"{_add(library, 11)}.png"])


def test_custom_seeds_are_listed_loaded_and_served_beside_the_shipped_ones(tmp_path):
    library = SeedLibrary(store=SeedStore(tmp_path))
    image_id = _add(library, 40)
    assert library.seed_ids()[:5] == ["og_beat", "agile", "marim", "motorway", "vibes"]
    assert library.seed_ids()[-1] == image_id and image_id not in library.mask_ids()
    entry = library.entry(image_id, "seed")
    assert entry.custom and entry.bpm == 120.0 and entry.beats == 10 and entry.loop_seconds() == pytest.approx(5.0)
    assert not library.entry("og_beat").custom
    assert library.load_seed(image_id).getpixel((0, 0)) == (40, 40, 40)
    assert library.path(image_id) == tmp_path / f"{image_id}.png"
    with pytest.raises(UnknownSeedImage, match="Invalid mask image"):
        library.load_mask(image_id)


def test_custom_seeds_survive_a_restart(tmp_path):
    image_id = _add(SeedLibrary(store=SeedStore(tmp_path)), 70)
    reopened = SeedLibrary(store=SeedStore(tmp_path))
    assert image_id in reopened and reopened.entry(image_id).description == "shade 70"
    assert reopened.load_seed(image_id).getpixel((5, 5)) == (70, 70, 70)
    assert json.loads((tmp_path / "index.json").read_text())[0]["custom"] is True


def test_the_least_recently_used_seed_is_evicted_past_the_cap(tmp_path):
    clock = Clock()
    library = SeedLibrary(store=SeedStore(tmp_path, max_seeds=2, clock=clock))
    old = _add(library, 1)
    clock.now += 10
    newer = _add(library, 2)
    clock.now += 10
    library.load_seed(old)  # a room plays it: now the most recently used
    clock.now += 10
    newest = _add(library, 3)
    assert old in library and newest in library and newer not in library
    assert not (tmp_path / f"{newer}.png").exists()
    with pytest.raises(UnknownSeedImage, match=f"Invalid seed image: {newer}"):
        library.load_seed(newer)
    assert set(SeedLibrary(store=SeedStore(tmp_path, max_seeds=2)).seed_ids()[5:]) == {old, newest}


def test_a_seed_whose_file_is_gone_is_dropped_and_shipped_ids_cannot_be_taken(tmp_path):
    library = SeedLibrary(store=SeedStore(tmp_path))
    image_id = _add(library, 90)
    (tmp_path / f"{image_id}.png").unlink()
    assert image_id not in SeedLibrary(store=SeedStore(tmp_path))
    with pytest.raises(ValueError, match="shipped seed id"):
        library.add_custom("og_beat", _png(1), bpm=None, beats=None, description="", source={})
    with pytest.raises(ValueError, match="no store"):
        SeedLibrary().add_custom(content_id(b"x"), _png(1), bpm=None, beats=None, description="", source={})


def test_the_store_is_created_only_when_a_seed_is_added(tmp_path):
    store = SeedStore.in_data_dir(tmp_path / "data")
    assert store.entries() == [] and not (tmp_path / "data").exists()
    _add(SeedLibrary(store=store), 5)
    assert (tmp_path / "data" / "seeds" / "index.json").is_file()


def test_default_data_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "mine"))
    assert default_data_dir() == tmp_path / "mine"
    monkeypatch.delenv(DATA_DIR_ENV)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "xdg" / "jamserver"


def test_libraries_sharing_a_directory_see_each_others_uploads_and_lose_none(tmp_path):
    """Two front-ends with one --data-dir: a seed uploaded through one is usable through the other at once, and
    an upload through the second does not write the first's out of the shared index."""
    one, other = SeedLibrary(store=SeedStore(tmp_path, max_seeds=3)), SeedLibrary(store=SeedStore(tmp_path, max_seeds=3))
    first = _add(one, 20)
    assert first in other.seed_ids() and other.entry(first, "seed").beats == 10
    assert other.load_seed(first).size == (512, 512)
    second = _add(other, 21)
    assert {first, second} <= set(one.seed_ids())
    assert {first, second} <= {row["id"] for row in json.loads((tmp_path / "index.json").read_text())}
    third, fourth = _add(one, 22), _add(other, 23)  # past the cap of 3: the least recently used goes, everywhere
    for library in (one, other):
        assert set(library.seed_ids()) >= {second, third, fourth} and first not in library
