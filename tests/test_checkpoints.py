"""The real checkpoints' layouts, loaded offline from a hub cache: right geometry, no extras read, usable clips."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from jamserver.cli import main as jamserver_main
from pipeline.audio.dsp import SpectrogramConverter
from pipeline.audio.mp3 import DECODED_DELAY_SAMPLES, decode_mp3
from pipeline.audio.params import SpectrogramParams
from pipeline.diffusion.requests import ClipRequest, PromptInput
from pipeline.model.loading import load_pipeline
from pipeline.render import render_clip
from pipeline.seeds import SEED_IMAGES_ENV, SeedLibrary
from tests.hub_fixtures import (
    FINETUNE,
    RIFFUSION_V1,
    OpenedFiles,
    build_hub_cache,
    never_read_opened,
    offline_env,
    write_seed_library,
)

RATE = 44100


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """Both fixture repositories in a hub cache, and the environment pointing at it offline."""
    cache = tmp_path_factory.mktemp("hf") / "hub"
    repos = build_hub_cache(cache)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in offline_env(cache).items():
            patch.setenv(name, value)
        yield repos


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> SeedLibrary:
    return SeedLibrary(write_seed_library(tmp_path_factory.mktemp("seeds"), {"wide": 768}))


def request(seed_image: Image.Image, steps: int = 8) -> ClipRequest:
    return ClipRequest(PromptInput("church bells", 42), PromptInput("jazz", 43), 0.5, seed_image,
                       num_inference_steps=steps)


def test_the_riffusion_v1_fixture_is_laid_out_like_the_hub(hub):
    repo = hub[RIFFUSION_V1]
    root = repo.snapshot.parent.parent
    assert (root / "refs" / "main").read_text() == repo.commit
    weights = repo.snapshot / "unet" / "diffusion_pytorch_model.bin"
    assert weights.is_symlink() and weights.resolve().parent == root / "blobs"
    assert not any(path.endswith(".safetensors") for path in repo.sizes)
    assert json.loads((repo.snapshot / "unet" / "config.json").read_text())["sample_size"] == 32
    vae_config = json.loads((repo.snapshot / "vae" / "config.json").read_text())
    assert "scaling_factor" not in vae_config and vae_config["_diffusers_version"] == "0.4.0"
    vae_keys = torch.load(repo.snapshot / "vae" / "diffusion_pytorch_model.bin", weights_only=True)
    assert "encoder.mid_block.attentions.0.query.weight" in vae_keys
    assert "decoder.mid_block.attentions.0.proj_attn.weight" in vae_keys
    tokenizer = json.loads((repo.snapshot / "tokenizer" / "tokenizer_config.json").read_text())
    assert tokenizer["bos_token"]["__type"] == "AddedToken"
    index = json.loads((repo.snapshot / "model_index.json").read_text())
    assert index["safety_checker"] == ["stable_diffusion", "StableDiffusionSafetyChecker"]
    assert index["feature_extractor"] == ["transformers", "CLIPImageProcessor"]


@pytest.mark.parametrize("repo_id", [RIFFUSION_V1, FINETUNE])
def test_a_cached_checkpoint_loads_offline_reading_no_extras(hub, repo_id):
    with OpenedFiles() as opened:
        model = load_pipeline(repo_id, device="cpu")
    assert model.checkpoint == repo_id and not model.demo
    assert opened and never_read_opened(opened, hub[repo_id]) == []
    assert model.pipeline.scheduler.config.steps_offset == 1  # patched like diffusers' pipeline does for v1
    assert model.pipeline.vae.config.scaling_factor == pytest.approx(0.18215)


@pytest.mark.parametrize("repo_id", [RIFFUSION_V1, FINETUNE])
def test_a_hub_checkpoint_makes_512px_images_and_5_12_s_clips_and_width_sets_length(hub, seeds, repo_id):
    model = load_pipeline(repo_id, device="cpu")
    converter = SpectrogramConverter(SpectrogramParams())
    clip = render_clip(model.pipeline, converter, request(seeds.load_seed("og_beat")))
    assert clip.image.size == (512, 512) and clip.duration == pytest.approx(5.12)
    wide = render_clip(model.pipeline, converter, request(seeds.load_seed("wide")))
    assert wide.image.size == (768, 512) and wide.duration == pytest.approx(7.68)


@pytest.mark.parametrize("repo_id", [RIFFUSION_V1, FINETUNE])
def test_render_cli_on_a_hub_checkpoint_makes_512px_5_12_s_clips(hub, tmp_path, capsys, repo_id):
    out = tmp_path / "song.mp3"
    code = jamserver_main(["render", "--checkpoint", repo_id, "--prompt", "a", "--clips", "2", "--steps", "6",
                           "--out", str(out), "--strip", str(tmp_path / "song.png"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    timeline = json.loads((tmp_path / "song.json").read_text())
    assert timeline["model"] == {"checkpoint": repo_id, "device": "cpu", "demo": False}
    assert [clip["duration"] for clip in timeline["clips"]] == pytest.approx([5.12, 5.12])
    assert Image.open(tmp_path / "song.png").size == (2 * 512, 512)


def test_render_cli_clip_length_follows_the_seed_image_width(hub, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(SEED_IMAGES_ENV, str(write_seed_library(tmp_path / "seeds", {"wide": 768})))
    wide = tmp_path / "wide.mp3"
    code = jamserver_main(["render", "--checkpoint", RIFFUSION_V1, "--prompt", "a", "--clips", "2", "--steps", "6",
                           "--seed-image", "wide", "--out", str(wide), "--strip", str(tmp_path / "wide.png"),
                           "--quiet"])
    assert code == 0, capsys.readouterr().err
    clips = json.loads((tmp_path / "wide.json").read_text())["clips"]
    assert [clip["stream_time"] for clip in clips] == pytest.approx([0, 7.68])
    assert [clip["duration"] for clip in clips] == pytest.approx([7.68, 7.68])
    assert Image.open(tmp_path / "wide.png").size == (2 * 768, 512)
    decoded = decode_mp3(wide.read_bytes(), RATE).shape[-1] - DECODED_DELAY_SAMPLES
    assert 2 * 7.68 * RATE <= decoded <= 2 * 7.68 * RATE + 2 * 1152


def test_render_cli_refuses_a_seed_image_the_model_cannot_take(hub, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(SEED_IMAGES_ENV, str(write_seed_library(tmp_path / "seeds", {"odd": 516})))
    code = jamserver_main(["render", "--checkpoint", RIFFUSION_V1, "--prompt", "a", "--clips", "1",
                           "--seed-image", "odd", "--out", str(tmp_path / "x.mp3")])
    assert code == 2
    assert "--seed-image odd: 516x512 pixels cannot be used by this model" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x.mp3") or Path(tmp_path / "x.mp3").stat().st_size == 0
