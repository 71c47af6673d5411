"""Which files of a diffusers checkpoint to fetch and load, and fetching just those from the Hugging Face hub.

A hub repository holds far more than a pipeline needs. riffusion-model-v1 carries a ~14 GB ``.ckpt``, a traced
UNet, a safety checker and seed images beside the 4.3 GB the five components need; current repositories hold each
weight twice (``.bin`` and ``.safetensors``) and in variants (``fp16``, ``non_ema``). :func:`select_files` picks,
from a repository's file list, the configs and ONE weight set per component: safetensors when the folder has them,
else ``.bin``; the ``fp16`` variant when loading in half precision and the folder has one. It is a pure function of
the list, so the same choice decides what is downloaded (from the hub's file list) and what is loaded (from a
directory's listing). :func:`fetch_checkpoint` reports the bytes to fetch before fetching, one line per file
(huggingface_hub draws its progress bar under it), and turns a gated or private repository into one line that
says to set ``HF_TOKEN``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

WEIGHT_COMPONENTS = ("unet", "vae", "text_encoder")
CONFIG_COMPONENTS = ("tokenizer", "scheduler")
COMPONENTS = WEIGHT_COMPONENTS + CONFIG_COMPONENTS
HALF_VARIANT = "fp16"
# A weight file, single or sharded, maybe of a variant: diffusion_pytorch_model.fp16.safetensors,
# model-00001-of-00002.safetensors, pytorch_model.bin; and a shard index: model.safetensors.index.fp16.json.
_WEIGHT_FILE = re.compile(
    r"^(?:diffusion_pytorch_model|pytorch_model|model)(?:\.(?P<variant>\w+))?(?:-\d{5}-of-\d{5})?"
    r"\.(?P<format>safetensors|bin)$"
)
_WEIGHT_INDEX = re.compile(
    r"^(?:diffusion_pytorch_model|pytorch_model|model)\.(?P<format>safetensors|bin)\.index(?:\.(?P<variant>\w+))?"
    r"\.json$"
)
_CONFIG_SUFFIXES = (".json", ".txt", ".model")


class SelectionError(ValueError):
    """A repository or directory lacks a component the pipeline needs; the message names it."""


@dataclass(frozen=True)
class RepoFile:
    """One file of a repository: its path inside it and its size in bytes (None when unknown)."""

    path: str
    size: int | None = None


@dataclass(frozen=True)
class WeightChoice:
    """The one weight set loaded for a component: its format and variant (None: the plain fp32 files)."""

    format: str
    variant: str | None

    def load_options(self) -> dict[str, Any]:
        """``from_pretrained`` keywords that load exactly these files (diffusers and transformers alike)."""
        return {"use_safetensors": self.format == "safetensors", "variant": self.variant}


@dataclass(frozen=True)
class FileSelection:
    """What a pipeline needs of a repository: the files, and per weight component which weight set."""

    files: tuple[RepoFile, ...]
    weights: Mapping[str, WeightChoice]

    @property
    def paths(self) -> list[str]:
        return [file.path for file in self.files]

    @property
    def total_bytes(self) -> int:
        return sum(file.size or 0 for file in self.files)


def _weight_key(name: str) -> tuple[str, str | None] | None:
    """(format, variant) of a weight file or shard index name, None for anything else."""
    match = _WEIGHT_FILE.match(name) or _WEIGHT_INDEX.match(name)
    return (match["format"], match["variant"]) if match else None


def _preference(half: bool) -> list[tuple[str, str | None]]:
    """Safetensors before .bin whatever the variant; within a format, fp16 first only when loading in fp16."""
    variants: list[str | None] = [HALF_VARIANT, None] if half else [None, HALF_VARIANT]
    return [(fmt, variant) for fmt in ("safetensors", "bin") for variant in variants]


def select_files(files: Iterable[RepoFile], *, half: bool) -> FileSelection:
    """The files a pipeline loads from a repository listing ``files`` (see the module docstring for the rules).

    Only the five component folders (direct children, not deeper) and ``model_index.json`` are ever chosen: never
    a top-level ``.ckpt`` or single-file checkpoint, ``safety_checker/``, ``feature_extractor/``, ``unet_traced/``
    nor ``seed_images/``. ``half``: the pipeline will run in fp16, so an ``fp16`` variant is preferred.

    Raises:
        SelectionError: a component has no config, or a weight component no weights, naming it.
    """
    by_folder: dict[str, list[RepoFile]] = {}
    chosen: list[RepoFile] = []
    for file in files:
        parts = PurePosixPath(file.path).parts
        if parts == ("model_index.json",):
            chosen.append(file)
        elif len(parts) == 2 and parts[0] in COMPONENTS:
            by_folder.setdefault(parts[0], []).append(file)
    weights: dict[str, WeightChoice] = {}
    for component in COMPONENTS:
        folder = by_folder.get(component, [])
        configs = [file for file in folder if _weight_key(PurePosixPath(file.path).name) is None
                   and file.path.endswith(_CONFIG_SUFFIXES)]
        if not configs:
            raise SelectionError(f"{component}: no config files in {component}/")
        chosen += configs
        if component in WEIGHT_COMPONENTS:
            sets: dict[tuple[str, str | None], list[RepoFile]] = {}
            for file in folder:
                key = _weight_key(PurePosixPath(file.path).name)
                if key is not None:
                    sets.setdefault(key, []).append(file)
            best = next((key for key in _preference(half) if key in sets), None)
            if best is None:
                raise SelectionError(f"{component}: no weights (.safetensors or .bin, plain or fp16) in {component}/")
            weights[component] = WeightChoice(*best)
            chosen += sets[best]
    return FileSelection(tuple(sorted(chosen, key=lambda file: file.path)), weights)


def list_directory(directory: Path) -> list[RepoFile]:
    """A local checkpoint directory (or a hub-cache snapshot) as a file list, sizes read through symlinks."""
    listing = []
    for root, folders, names in os.walk(directory):
        folders[:] = [name for name in folders if not name.startswith(".")]
        for name in names:
            path = Path(root, name)
            if path.is_file():
                listing.append(RepoFile(path.relative_to(directory).as_posix(), path.stat().st_size))
    return listing


def format_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


class HubAccessError(RuntimeError):
    """The hub refused the repository: gated, private or not there. One line, saying what to do."""


class HubClient(Protocol):
    """The two calls of ``huggingface_hub.HfApi`` fetching needs (a test passes its own)."""

    def model_info(self, repo_id: str, *, files_metadata: bool = ...) -> Any: ...

    def hf_hub_download(self, repo_id: str, filename: str, *, revision: str | None = ...,
                        cache_dir: str | Path | None = ...) -> str: ...


def access_error(repo_id: str, error: Exception) -> HubAccessError | None:
    """The one-line message for a hub refusal of ``repo_id``; None if ``error`` is not one."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if isinstance(error, GatedRepoError):
        return HubAccessError(f"{repo_id} is gated on the hub: accept its terms on huggingface.co and set HF_TOKEN "
                              f"to a token of that account")
    if isinstance(error, RepositoryNotFoundError):
        return HubAccessError(f"{repo_id} is private or does not exist on the hub: check the id, or set HF_TOKEN "
                              f"to a token that can read it")
    return None


def fetch_checkpoint(repo_id: str, *, half: bool, cache_dir: str | None, report: Callable[[str], None],
                     client: HubClient | None = None) -> Path:
    """Download what :func:`select_files` picks from ``repo_id`` into the hub cache; the snapshot directory.

    Files already in the cache are not fetched again. Before fetching, one line says how many files and bytes will
    come (from the hub's file list) and what is skipped; then one line per file.

    Raises:
        HubAccessError: the repository is gated, private or missing.
        SelectionError: the repository lacks a component.
        Exception: whatever huggingface_hub raises when the hub cannot be reached (the caller falls back to the
            cache).
    """
    from huggingface_hub import HfApi, try_to_load_from_cache

    client = client or HfApi()
    try:
        info = client.model_info(repo_id, files_metadata=True)
    except Exception as error:
        refusal = access_error(repo_id, error)
        if refusal is not None:
            raise refusal from None
        raise
    listing = [RepoFile(sibling.rfilename, sibling.size) for sibling in info.siblings]
    selection = select_files(listing, half=half)
    cached = {file.path: try_to_load_from_cache(repo_id, file.path, cache_dir=cache_dir, revision=info.sha)
              for file in selection.files}
    missing = [file for file in selection.files if not isinstance(cached[file.path], str)]
    skipped = sum(file.size or 0 for file in listing) - selection.total_bytes
    report(f"{repo_id}: {len(missing)} of {len(selection.files)} files to fetch, "
           f"{format_bytes(sum(file.size or 0 for file in missing))} "
           f"(skipping {format_bytes(skipped)} of other formats, variants, checkpoints and extras)")
    for number, file in enumerate(missing, 1):
        report(f"{repo_id}: fetching [{number}/{len(missing)}] {file.path} ({format_bytes(file.size or 0)})")
        try:
            cached[file.path] = client.hf_hub_download(repo_id, file.path, revision=info.sha, cache_dir=cache_dir)
        except Exception as error:
            refusal = access_error(repo_id, error)
            if refusal is not None:
                raise refusal from None
            raise
    first = selection.files[0]
    return Path(str(cached[first.path])).parents[len(PurePosixPath(first.path).parts) - 1]
