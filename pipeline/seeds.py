"""Seed and mask images by id, as the original server named them (``og_beat``, ``mask_top_third_75``, ...).

A folder holds the PNGs and an ``index.json`` listing ``{"id", "kind", "bpm", "beats", "description", "file"}`` for
each. The project ships its own in ``seed_images/`` (see ``seed_images/generate.py``); point
``JAMSERVER_SEED_IMAGES`` or ``SeedLibrary(directory)`` at another folder to use your own loops. Users' uploaded
loops live in a ``SeedStore`` (pipeline/seed_store.py); a library given one lists and loads them like the shipped
seeds, marked ``custom``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from pathlib import Path
from typing import Any, Literal, Protocol

import PIL.Image

SEED_IMAGES_ENV = "JAMSERVER_SEED_IMAGES"
INDEX_FILE = "index.json"

Kind = Literal["seed", "mask"]
_KINDS: tuple[Kind, ...] = ("seed", "mask")


class CustomSeeds(Protocol):
    """What a library needs of the store of custom seeds (``pipeline.seed_store.SeedStore``, which imports this
    module for the index format: naming it here would make an import circle)."""

    def entries(self) -> list[SeedEntry]: ...

    def get(self, image_id: str) -> Any: ...

    def path(self, image_id: str) -> Path: ...

    def add(self, image_id: str, png: bytes, **fields: Any) -> tuple[SeedEntry, list[str]]: ...

    def touch(self, image_id: str) -> None: ...


class UnknownSeedImage(ValueError):
    """An id that the library does not hold; the message matches the original server's 400 text."""

    def __init__(self, image_id: str, kind: Kind = "seed") -> None:
        super().__init__(f"Invalid {kind} image: {image_id}")
        self.image_id = image_id
        self.kind = kind


@dataclasses.dataclass(frozen=True)
class SeedEntry:
    """One row of the index. ``bpm``/``beats`` describe the loop (``bpm * 5.12 / 60 == beats``); None for masks."""

    id: str
    kind: Kind
    bpm: float | None
    beats: int | None
    description: str
    file: str
    custom: bool = False

    @classmethod
    def from_json(cls, row: Any, position: int) -> SeedEntry:
        """Validate one index row; errors name the row and the field so a hand-edited index is easy to fix."""
        where = f"index entry {position}"
        if not isinstance(row, dict):
            raise ValueError(f"{where} must be an object, got {type(row).__name__}")
        image_id, kind, file = row.get("id"), row.get("kind"), row.get("file")
        bpm, beats, description = row.get("bpm"), row.get("beats"), row.get("description", "")
        if not isinstance(image_id, str) or not image_id:
            raise ValueError(f"{where}: id must be a non-empty string, got {image_id!r}")
        where = f"index entry {image_id!r}"
        if kind not in _KINDS:
            raise ValueError(f"{where}: kind must be one of {list(_KINDS)}, got {kind!r}")
        if not isinstance(file, str) or not file or Path(file).name != file:
            raise ValueError(f"{where}: file must be a file name inside the folder, got {file!r}")
        if bpm is not None and (isinstance(bpm, bool) or not isinstance(bpm, (int, float)) or not bpm > 0):
            raise ValueError(f"{where}: bpm must be a positive number or null, got {bpm!r}")
        if beats is not None and (isinstance(beats, bool) or not isinstance(beats, int) or beats <= 0):
            raise ValueError(f"{where}: beats must be a positive integer or null, got {beats!r}")
        if not isinstance(description, str):
            raise ValueError(f"{where}: description must be a string, got {description!r}")
        return cls(image_id, kind, None if bpm is None else float(bpm), beats, description, file)

    def loop_seconds(self) -> float | None:
        """Length of the loop implied by the tempo (5.12 for the shipped seeds), None when not a loop."""
        if self.bpm is None or self.beats is None:
            return None
        return self.beats * 60.0 / self.bpm


def default_seed_directory() -> Path:
    """``$JAMSERVER_SEED_IMAGES`` if set, else the repository's ``seed_images/`` beside this package."""
    override = os.environ.get(SEED_IMAGES_ENV)
    if override:
        return Path(override).expanduser()
    return Path(__file__).resolve().parent.parent / "seed_images"


class SeedLibrary:
    """The index of a seed image folder plus an optional store of custom seeds, with loaded images cached (they
    are read on every clip)."""

    def __init__(self, directory: Path | str | None = None, store: CustomSeeds | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_seed_directory()
        self.store = store
        self._entries = _read_index(self.directory)
        self._by_id = {entry.id: entry for entry in self._entries}
        self._cache: dict[str, PIL.Image.Image] = {}
        self._lock = threading.Lock()

    def entries(self) -> list[SeedEntry]:
        """The shipped entries, then the custom ones."""
        return list(self._entries) + (self.store.entries() if self.store is not None else [])

    def seed_ids(self) -> list[str]:
        return [entry.id for entry in self.entries() if entry.kind == "seed"]

    def mask_ids(self) -> list[str]:
        return [entry.id for entry in self._entries if entry.kind == "mask"]

    def __contains__(self, image_id: object) -> bool:
        return isinstance(image_id, str) and self._find(image_id) is not None

    def entry(self, image_id: str, kind: Kind | None = None) -> SeedEntry:
        """The index row for ``image_id``; with ``kind``, an id of the other kind counts as unknown."""
        found = self._find(image_id) if isinstance(image_id, str) else None
        if found is None or (kind is not None and found.kind != kind):
            raise UnknownSeedImage(str(image_id), kind or "seed")
        return found

    def path(self, image_id: str) -> Path:
        entry = self.entry(image_id)
        if entry.custom and self.store is not None:
            return self.store.path(entry.id)
        return self.directory / entry.file

    def load(self, image_id: str) -> PIL.Image.Image:
        """RGB image with its EXIF; a fresh copy each call, so callers may draw on it.

        The shipped seeds are 512x512 (5.12 s); other widths make clips of width x 10 ms. Whether a model can take
        an image's size is the model's to say (``RiffusionPipeline.latent_shape``), not the library's.
        """
        return self._load(self.entry(image_id)).copy()

    def load_seed(self, image_id: str) -> PIL.Image.Image:
        """Like ``load`` but only for seeds: a mask id here is ``Invalid seed image: ID``."""
        return self._load(self.entry(image_id, "seed")).copy()

    def load_mask(self, image_id: str) -> PIL.Image.Image:
        """Like ``load`` but only for masks: anything else is ``Invalid mask image: ID``."""
        return self._load(self.entry(image_id, "mask")).copy()

    def add_custom(self, image_id: str, png: bytes, **fields: Any) -> SeedEntry:
        """Store a custom seed (see ``SeedStore.add``); images of seeds evicted to make room leave the cache."""
        if self.store is None:
            raise ValueError("this seed library has no store for custom seeds")
        if image_id in self._by_id:
            raise ValueError(f"{image_id!r} is a shipped seed id")
        entry, evicted = self.store.add(image_id, png, **fields)
        with self._lock:
            for gone in evicted:
                self._cache.pop(gone, None)
        return entry

    def _find(self, image_id: str) -> SeedEntry | None:
        found = self._by_id.get(image_id)
        if found is None and self.store is not None:
            stored = self.store.get(image_id)
            found = stored.entry if stored is not None else None
        return found

    def _load(self, entry: SeedEntry) -> PIL.Image.Image:
        if entry.custom and self.store is not None:
            self.store.touch(entry.id)
        with self._lock:
            cached = self._cache.get(entry.id)
            if cached is None:
                cached = self._cache[entry.id] = _open_rgb(self.path(entry.id))
            return cached


def _read_index(directory: Path) -> list[SeedEntry]:
    index_path = directory / INDEX_FILE
    if not index_path.is_file():
        raise ValueError(f"seed image directory {str(directory)!r} has no {INDEX_FILE}")
    try:
        rows = json.loads(index_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{index_path} is not valid JSON: {error}") from None
    if not isinstance(rows, list):
        raise ValueError(f"{index_path} must hold a list of entries, got {type(rows).__name__}")
    entries = [SeedEntry.from_json(row, position) for position, row in enumerate(rows)]
    seen: set[str] = set()
    for entry in entries:
        if entry.id in seen:
            raise ValueError(f"{index_path}: id {entry.id!r} is listed twice")
        seen.add(entry.id)
        if (entry.bpm is None) != (entry.beats is None):
            raise ValueError(f"{index_path}: entry {entry.id!r} needs both bpm and beats, or neither")
    return entries


def _open_rgb(path: Path) -> PIL.Image.Image:
    """Read fully (so the file is closed) and keep the EXIF when converting to RGB."""
    with PIL.Image.open(path) as opened:
        opened.load()
        exif = opened.info.get("exif")
        image = opened.convert("RGB") if opened.mode != "RGB" else opened.copy()
    if exif is not None:
        image.info["exif"] = exif
    return image
