"""Users' own seed loops on disk: content-hash ids, an index, a cap with oldest-unused eviction.

A store is a folder of ``<id>.png`` files and an ``index.json`` in the shipped index's shape plus ``custom``,
``created``, ``last_used`` and ``source``. Ids are ``custom-`` and 16 hex digits of the SHA-256 of the uploaded
bytes, so the same upload is the same seed (and is not analysed twice). Files are written to a temporary name and
renamed, so a crash never leaves a half-written seed or index. ``last_used`` is kept in memory on every use and
written with the next change to the index, or when a use is older than USE_SAVE_SECONDS on disk: eviction after a
restart may be off by that much.

Several processes may share one store (cluster front-ends given one ``--data-dir``): each re-reads the index when
it changed on disk (a stat per look-up), and changes it only under an exclusive lock on ``.lock`` after taking in
the others' changes, so a seed uploaded through one front-end is known to every other at its next look-up.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.seeds import INDEX_FILE, SeedEntry

DATA_DIR_ENV = "JAMSERVER_DATA_DIR"
ID_PREFIX = "custom-"
DEFAULT_MAX_SEEDS = 200
USE_SAVE_SECONDS = 600.0
log = logging.getLogger("pipeline.seed_store")


def default_data_dir() -> Path:
    """``$JAMSERVER_DATA_DIR``, else ``$XDG_DATA_HOME/jamserver``, else ``~/.local/share/jamserver``."""
    override = os.environ.get(DATA_DIR_ENV)
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base).expanduser() / "jamserver"


def content_id(data: bytes) -> str:
    """The id a seed made from these uploaded bytes gets."""
    return ID_PREFIX + hashlib.sha256(data).hexdigest()[:16]


@dataclasses.dataclass
class StoredSeed:
    entry: SeedEntry
    created: float
    last_used: float
    source: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        row = {key: value for key, value in dataclasses.asdict(self.entry).items() if key != "custom"}
        return {**row, "custom": True, "created": self.created, "last_used": self.last_used, "source": self.source}


class SeedStore:
    """The custom seeds in ``directory`` (created on the first add), at most ``max_seeds`` of them."""

    def __init__(self, directory: Path | str, max_seeds: int = DEFAULT_MAX_SEEDS,
                 clock: Callable[[], float] = time.time) -> None:
        if max_seeds < 1:
            raise ValueError(f"max_seeds must be at least 1, got {max_seeds}")
        self.directory = Path(directory)
        self.max_seeds = max_seeds
        self._clock = clock
        self._lock = threading.Lock()
        self._stamp = self._index_stamp()
        self._seeds = self._read()
        self._saved_use = {seed.entry.id: seed.last_used for seed in self._seeds.values()}

    @classmethod
    def in_data_dir(cls, data_dir: Path | str | None = None, max_seeds: int = DEFAULT_MAX_SEEDS) -> SeedStore:
        """The store of a data directory (``default_data_dir()`` when None): its ``seeds`` folder."""
        base = Path(data_dir).expanduser() if data_dir else default_data_dir()
        return cls(base / "seeds", max_seeds)

    def entries(self) -> list[SeedEntry]:
        with self._lock:
            self._refresh()
            return [seed.entry for seed in self._seeds.values()]

    def get(self, image_id: str) -> StoredSeed | None:
        with self._lock:
            self._refresh()
            return self._seeds.get(image_id)

    def path(self, image_id: str) -> Path:
        return self.directory / f"{image_id}.png"

    def add(self, image_id: str, png: bytes, *, bpm: float | None, beats: int | None, description: str,
            source: dict[str, Any]) -> tuple[SeedEntry, list[str]]:
        """Store a seed (or just mark an existing one used); returns its entry and the ids evicted to make room."""
        if not image_id.startswith(ID_PREFIX):
            raise ValueError(f"custom seed ids start with {ID_PREFIX!r}, got {image_id!r}")
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._lock, self._shared_lock():
            self._refresh()
            now = self._clock()
            existing = self._seeds.get(image_id)
            if existing is not None:
                existing.last_used = now
                return existing.entry, []
            entry = SeedEntry(image_id, "seed", bpm, beats, description, f"{image_id}.png", custom=True)
            _write_atomically(self.path(image_id), png)
            self._seeds[image_id] = StoredSeed(entry, now, now, source)
            evicted = self._evict(keep=image_id)
            self._save()
            return entry, evicted

    def touch(self, image_id: str) -> None:
        """Note a use (a clip made from it); written out with the next change, or when the disk copy is stale."""
        with self._lock:
            seed = self._seeds.get(image_id)
            if seed is None:
                return
            seed.last_used = self._clock()
            if seed.last_used - self._saved_use.get(image_id, 0.0) > USE_SAVE_SECONDS:
                with self._shared_lock():
                    self._refresh()
                    self._save()

    def _evict(self, keep: str) -> list[str]:
        evicted = []
        while len(self._seeds) > self.max_seeds:
            oldest = min((s for s in self._seeds.values() if s.entry.id != keep), key=lambda s: s.last_used)
            del self._seeds[oldest.entry.id]
            self.path(oldest.entry.id).unlink(missing_ok=True)
            evicted.append(oldest.entry.id)
        return evicted

    def _save(self) -> None:
        """Write the index (hold `_shared_lock`, after `_refresh`, so no other process's change is lost)."""
        rows = [seed.to_json() for seed in self._seeds.values()]
        _write_atomically(self.directory / INDEX_FILE, (json.dumps(rows, indent=1) + "\n").encode())
        self._stamp = self._index_stamp()
        self._saved_use = {seed.entry.id: seed.last_used for seed in self._seeds.values()}

    @contextmanager
    def _shared_lock(self) -> Iterator[None]:
        """Exclusive among the processes sharing the directory (threads of this one hold `_lock` too)."""
        with open(self.directory / ".lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _index_stamp(self) -> tuple[int, int, int] | None:
        try:
            info = (self.directory / INDEX_FILE).stat()
        except FileNotFoundError:
            return None
        return info.st_ino, info.st_mtime_ns, info.st_size

    def _refresh(self) -> None:
        """Take in another process's changes to the index (seeds added or evicted; the latest use of each)."""
        stamp = self._index_stamp()
        if stamp == self._stamp:
            return
        seeds = self._read()
        for image_id, seed in seeds.items():
            mine = self._seeds.get(image_id)
            if mine is not None:
                seed.last_used = max(seed.last_used, mine.last_used)
        self._seeds, self._stamp = seeds, stamp

    def _read(self) -> dict[str, StoredSeed]:
        index = self.directory / INDEX_FILE
        if not index.is_file():
            return {}
        try:
            rows = json.loads(index.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ValueError(f"custom seed index {index} cannot be read: {error}") from None
        seeds: dict[str, StoredSeed] = {}
        for position, row in enumerate(rows if isinstance(rows, list) else []):
            entry = dataclasses.replace(SeedEntry.from_json(row, position), custom=True)
            if not self.path(entry.id).is_file():
                log.warning("custom seed %s has no %s; dropped from the index", entry.id, entry.file)
                continue
            created = float(row.get("created", 0.0))
            seeds[entry.id] = StoredSeed(entry, created, float(row.get("last_used", created)), row.get("source", {}))
        return seeds


def _write_atomically(path: Path, data: bytes) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
