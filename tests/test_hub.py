"""Download hygiene: which files of a checkpoint are fetched and loaded, shown on the fixtures' real file lists."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import httpx2
import pytest
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

from pipeline.model.hub import (
    FileSelection,
    HubAccessError,
    RepoFile,
    SelectionError,
    WeightChoice,
    fetch_checkpoint,
    format_bytes,
    list_directory,
    select_files,
)
from pipeline.model.loading import CheckpointError, load_pipeline
from tests.hub_fixtures import (
    FINETUNE,
    RIFFUSION_V1,
    OpenedFiles,
    add_cached_file,
    build_hub_cache,
    is_never_read,
    marker_of,
    offline_env,
)

V1_NEEDED = ["model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
             "text_encoder/pytorch_model.bin", "tokenizer/merges.txt", "tokenizer/special_tokens_map.json",
             "tokenizer/tokenizer_config.json", "tokenizer/vocab.json", "unet/config.json",
             "unet/diffusion_pytorch_model.bin", "vae/config.json", "vae/diffusion_pytorch_model.bin"]
FINETUNE_CONFIGS = ["model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
                    "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json", "unet/config.json",
                    "vae/config.json"]


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    """The fixture repositories as the hub serves them (a cache standing in for the hub's storage)."""
    return build_hub_cache(tmp_path_factory.mktemp("remote") / "hub")


def listing(repo) -> list[RepoFile]:
    return [RepoFile(path, size) for path, size in repo.sizes.items()]


def weights(selection: FileSelection) -> dict[str, tuple[str, str | None]]:
    return {name: (choice.format, choice.variant) for name, choice in selection.weights.items()}


@pytest.mark.parametrize("half", [False, True])
def test_riffusion_v1_fetches_its_bin_weights_and_configs_only(remote, half):
    selection = select_files(listing(remote[RIFFUSION_V1]), half=half)  # it has no fp16 variant
    assert selection.paths == V1_NEEDED
    assert weights(selection) == {name: ("bin", None) for name in ("unet", "vae", "text_encoder")}
    assert not any(is_never_read(path) for path in selection.paths)
    assert selection.total_bytes == sum(remote[RIFFUSION_V1].sizes[path] for path in V1_NEEDED)


def test_the_finetune_fetches_fp32_safetensors_for_fp32_and_the_fp16_variant_for_fp16(remote):
    fp32 = select_files(listing(remote[FINETUNE]), half=False)
    assert fp32.paths == sorted(FINETUNE_CONFIGS + ["text_encoder/model.safetensors",
                                                    "unet/diffusion_pytorch_model.safetensors",
                                                    "vae/diffusion_pytorch_model.safetensors"])
    fp16 = select_files(listing(remote[FINETUNE]), half=True)
    assert fp16.paths == sorted(FINETUNE_CONFIGS + ["text_encoder/model.fp16.safetensors",
                                                    "unet/diffusion_pytorch_model.fp16.safetensors",
                                                    "vae/diffusion_pytorch_model.fp16.safetensors"])
    assert weights(fp16)["unet"] == ("safetensors", "fp16")
    assert WeightChoice("safetensors", "fp16").load_options() == {"use_safetensors": True, "variant": "fp16"}


def test_sizes_are_shown_in_decimal_units():
    assert [format_bytes(n) for n in (0, 999, 1000, 4_300_000_000)] == ["0 B", "999 B", "1.00 KB", "4.30 GB"]


def test_a_directory_listing_selects_like_the_hub_listing(remote):
    repo = remote[FINETUNE]
    on_disk = select_files(list_directory(repo.snapshot), half=True)
    assert on_disk == select_files(listing(repo), half=True)


def test_sharded_weights_are_fetched_whole_and_a_missing_component_is_named():
    files = [RepoFile(path, 10) for path in (
        "unet/config.json", "unet/diffusion_pytorch_model.safetensors.index.json",
        "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
        "unet/diffusion_pytorch_model-00002-of-00002.safetensors", "unet/diffusion_pytorch_model.bin",
        "vae/config.json", "vae/diffusion_pytorch_model.bin", "text_encoder/config.json",
        "text_encoder/model.safetensors", "tokenizer/vocab.json", "scheduler/scheduler_config.json")]
    selection = select_files(files, half=False)
    assert [path for path in selection.paths if path.startswith("unet/")] == [
        "unet/config.json", "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
        "unet/diffusion_pytorch_model-00002-of-00002.safetensors",
        "unet/diffusion_pytorch_model.safetensors.index.json"]
    with pytest.raises(SelectionError, match="vae: no weights"):
        select_files([file for file in files if file.path != "vae/diffusion_pytorch_model.bin"], half=False)
    with pytest.raises(SelectionError, match="scheduler: no config"):
        select_files([file for file in files if not file.path.startswith("scheduler/")], half=False)


class FakeHub:
    """HfApi's two calls, served from a fixture repository; downloads land in a real hub-cache layout."""

    def __init__(self, repo, refuse: Exception | None = None) -> None:
        self.repo = repo
        self.refuse = refuse
        self.downloaded: list[str] = []

    def model_info(self, repo_id: str, *, files_metadata: bool = False):
        if self.refuse is not None:
            raise self.refuse
        assert repo_id == self.repo.repo_id and files_metadata
        siblings = [SimpleNamespace(rfilename=path, size=size) for path, size in self.repo.sizes.items()]
        return SimpleNamespace(sha=self.repo.commit, siblings=siblings)

    def hf_hub_download(self, repo_id: str, filename: str, *, revision=None, cache_dir=None) -> str:
        assert revision == self.repo.commit
        self.downloaded.append(filename)
        data = (self.repo.snapshot / filename).read_bytes()
        return str(add_cached_file(Path(cache_dir), repo_id, revision, filename, data))


def test_fetch_reports_the_bytes_first_then_fetches_only_the_selection_once(remote, tmp_path):
    hub, lines = FakeHub(remote[RIFFUSION_V1]), []
    snapshot = fetch_checkpoint(RIFFUSION_V1, half=True, cache_dir=str(tmp_path), report=lines.append, client=hub)
    assert sorted(hub.downloaded) == V1_NEEDED
    needed = sum(remote[RIFFUSION_V1].sizes[path] for path in V1_NEEDED)
    skipped = sum(remote[RIFFUSION_V1].sizes.values()) - needed  # the .ckpt, safety checker, traced UNet, ...
    assert lines[0] == (f"{RIFFUSION_V1}: 12 of 12 files to fetch, {format_bytes(needed)} (skipping "
                        f"{format_bytes(skipped)} of other formats, variants, checkpoints and extras)")
    assert len(lines) == 13 and lines[1].startswith(f"{RIFFUSION_V1}: fetching [1/12] ")
    assert sorted(file.path for file in list_directory(snapshot)) == V1_NEEDED
    again = FakeHub(remote[RIFFUSION_V1])
    assert fetch_checkpoint(RIFFUSION_V1, half=True, cache_dir=str(tmp_path), report=lines.append,
                            client=again) == snapshot
    assert again.downloaded == [] and lines[-1].startswith(f"{RIFFUSION_V1}: 0 of 12 files to fetch, 0 B")


def refusal(kind: type[Exception]) -> Exception:
    response = httpx2.Response(401, request=httpx2.Request("GET", "https://huggingface.co/api/models/x"))
    return kind("401 Client Error. (Request ID: x)\n\nCannot access gated repo for url ...", response=response)


@pytest.mark.parametrize("kind", [GatedRepoError, RepositoryNotFoundError])
def test_a_gated_or_private_repository_is_one_line_that_says_to_set_hf_token(remote, tmp_path, kind):
    with pytest.raises(HubAccessError) as caught:
        fetch_checkpoint(FINETUNE, half=False, cache_dir=str(tmp_path), report=print,
                         client=FakeHub(remote[FINETUNE], refuse=refusal(kind)))
    assert "HF_TOKEN" in str(caught.value) and "\n" not in str(caught.value)


def test_serve_path_downloads_with_progress_lines_and_loads_the_fp16_variant(remote, tmp_path, monkeypatch, caplog):
    hub = FakeHub(remote[FINETUNE])
    monkeypatch.setattr("huggingface_hub.HfApi", lambda: hub)
    for name, value in offline_env(tmp_path / "hub").items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with caplog.at_level(logging.INFO, logger="pipeline.model.loading"), OpenedFiles() as opened:
        model = load_pipeline(FINETUNE, device="cpu", dtype="fp16", freeze=False)
    messages = [record.getMessage() for record in caplog.records]
    assert any("10 of 10 files to fetch" in message for message in messages), messages
    assert any("fetching [10/10]" in message for message in messages)
    assert all("fp16" in path or "config" in path or "tokenizer" in path or path == "model_index.json"
               for path in hub.downloaded)
    for component in ("unet", "vae", "text_encoder"):  # loaded from the fp16 safetensors, marker 0.25
        assert marker_of(getattr(model.pipeline, component), component) == 0.25
    assert not [path for path in opened if path.endswith(".bin")]


def test_the_loader_says_set_hf_token_for_a_gated_repository(remote, tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.HfApi", lambda: FakeHub(remote[FINETUNE], refuse=refusal(GatedRepoError)))
    for name, value in offline_env(tmp_path / "hub").items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(CheckpointError, match="gated on the hub: .* set HF_TOKEN"):
        load_pipeline(FINETUNE, device="cpu")
