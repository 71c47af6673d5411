"""Model loading: the tiny model, local and hub-cache checkpoints, fallback, devices and the speed knobs."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch
from diffusers import AutoencoderTiny, StableDiffusionPipeline
from PIL import Image
from torch._dynamo.utils import counters

from pipeline.diffusion.requests import ClipRequest, PromptInput
from pipeline.model.choices import DEFAULT_CHECKPOINT, SCHEDULERS
from pipeline.model.frozen import eager
from pipeline.model.loading import (
    CheckpointError,
    load_pipeline,
    resolve_device,
    resolve_dtype,
)
from pipeline.model.tiny import build_tiny_components, save_tiny_model

SNAPSHOT_HASH = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def request_() -> ClipRequest:
    ramp = np.tile(np.linspace(0, 255, 512, dtype=np.uint8), (512, 1))
    return ClipRequest(
        PromptInput("church bells", 42), PromptInput("jazz", 123), 0.5, Image.fromarray(ramp), num_inference_steps=4
    )


def final_latents(pipe, request) -> torch.Tensor:
    job = pipe.prepare(request)
    while not job.done:
        pipe.step([job])
    return job.latents


@pytest.fixture(scope="module")
def tiny_latents(request_) -> torch.Tensor:
    return final_latents(load_pipeline("tiny").pipeline, request_)


def hub_cache_with_tiny(cache_root, tiny_dir):
    """The huggingface_hub cache layout: models--owner--name/refs/main -> snapshots/<commit>/..."""
    repo = cache_root / ("models--" + DEFAULT_CHECKPOINT.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SNAPSHOT_HASH)
    shutil.copytree(tiny_dir, repo / "snapshots" / SNAPSHOT_HASH)
    return cache_root


# --- the tiny model ------------------------------------------------------------------------------------------------


def test_tiny_model_is_deterministic_and_has_riffusion_geometry() -> None:
    first, second = build_tiny_components(), build_tiny_components()
    for name in ("unet", "vae", "text_encoder"):
        a, b = first[name].state_dict(), second[name].state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    vae = first["vae"]
    with torch.inference_mode():
        latent = vae.encode(torch.zeros(1, 3, 512, 512)).latent_dist.mean
    assert latent.shape == (1, 4, 64, 64) and vae.config.scaling_factor == 0.18215
    assert first["unet"].config.sample_size == 64 and first["unet"].config.in_channels == 4
    config = first["scheduler"].config
    assert type(first["scheduler"]).__name__ == "PNDMScheduler"
    assert (config.beta_schedule, config.beta_start, config.beta_end) == ("scaled_linear", 0.00085, 0.012)
    assert config.skip_prk_steps and config.steps_offset == 1


def test_saved_tiny_model_has_diffusers_layout_and_reloads_identically(tiny_dir, request_, tiny_latents) -> None:
    for folder in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (tiny_dir / folder).is_dir()
    index = json.loads((tiny_dir / "model_index.json").read_text())
    assert index["safety_checker"] == [None, None]
    loaded = load_pipeline(str(tiny_dir))
    assert loaded.checkpoint == str(tiny_dir) and not loaded.demo
    assert torch.equal(final_latents(loaded.pipeline, request_), tiny_latents)


def test_tiny_checkpoint_is_flagged_as_a_demo() -> None:
    loaded = load_pipeline("tiny")
    assert loaded.demo and loaded.checkpoint == "tiny"
    assert any("NO music" in note for note in loaded.notes)


# --- hub ids through the cache, fallback, errors -------------------------------------------------------------------


def test_hub_id_loads_from_a_prior_download_offline(tmp_path, monkeypatch, tiny_dir, request_, tiny_latents) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache_with_tiny(tmp_path / "hub", tiny_dir)))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_pipeline(DEFAULT_CHECKPOINT)
    assert loaded.checkpoint == DEFAULT_CHECKPOINT and not loaded.demo
    assert torch.equal(final_latents(loaded.pipeline, request_), tiny_latents)


def test_uncached_hub_id_offline_falls_back_to_the_shipped_mini_with_one_warning(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with caplog.at_level(logging.WARNING, logger="pipeline.model.loading"):
        loaded = load_pipeline(fallback=True)
    assert not loaded.demo and loaded.checkpoint == "mini"  # the built-in weights in pipeline/model/mini
    warnings = [record.getMessage() for record in caplog.records if record.name == "pipeline.model.loading"]
    assert len(warnings) == 1
    assert DEFAULT_CHECKPOINT in warnings[0] and "not riffusion" in warnings[0]


def test_uncached_hub_id_without_fallback_raises_naming_it(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="riffusion/riffusion-model-v1") as error:
        load_pipeline(DEFAULT_CHECKPOINT)
    assert error.value.checkpoint == DEFAULT_CHECKPOINT
    assert error.value.reason == "not in the hub cache, and HF_HUB_OFFLINE is set"


@pytest.mark.parametrize("make_bad", ["missing", "incomplete", "not-an-id"])
def test_bad_local_checkpoints_raise_naming_them(tmp_path, make_bad) -> None:
    if make_bad == "incomplete":
        (tmp_path / "ckpt" / "unet").mkdir(parents=True)
        checkpoint = str(tmp_path / "ckpt")
    elif make_bad == "missing":
        checkpoint = str(tmp_path / "nowhere")
    else:
        checkpoint = "no/such/thing"
    with pytest.raises(CheckpointError, match=checkpoint):
        load_pipeline(checkpoint)


# --- devices and dtypes --------------------------------------------------------------------------------------------


def test_device_and_dtype_resolution() -> None:
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert resolve_device() == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype(None, torch.device("cuda")) == torch.float16
    assert resolve_dtype(None, torch.device("mps")) == torch.float32
    assert resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("float8", torch.device("cpu"))
    with pytest.raises(ValueError, match="device"):
        resolve_device("warp-drive")


# --- speed knobs ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_each_scheduler_choice_runs(name, request_) -> None:
    loaded = load_pipeline("tiny", scheduler=name)
    assert type(loaded.pipeline.scheduler).__name__ == SCHEDULERS[name]
    assert loaded.pipeline.scheduler.config.beta_schedule == "scaled_linear"  # the checkpoint's config carried over
    latents = final_latents(loaded.pipeline, request_)
    assert torch.isfinite(latents).all() and latents.abs().max() > 0


def test_unknown_scheduler_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="scheduler"):
        load_pipeline("tiny", scheduler="warp")


def test_channels_last_gives_the_same_clip(request_, tiny_latents) -> None:
    loaded = load_pipeline("tiny", channels_last=True)
    conv = eager(loaded.pipeline.unet).conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    # other convolution kernels sum in another order: equal up to float32 rounding over a few steps
    assert float((final_latents(loaded.pipeline, request_) - tiny_latents).abs().max()) < 1e-3


def test_tiny_vae_replaces_the_vae(tmp_path, request_) -> None:
    torch.manual_seed(0)
    AutoencoderTiny(
        encoder_block_out_channels=(4, 4, 4, 4),
        decoder_block_out_channels=(4, 4, 4, 4),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
        latent_channels=4,
    ).save_pretrained(tmp_path / "taesd")
    loaded = load_pipeline("tiny", tiny_vae=str(tmp_path / "taesd"))
    assert isinstance(eager(loaded.pipeline.vae), AutoencoderTiny)
    image = loaded.pipeline.generate(request_)
    assert image.size == (512, 512)
    with pytest.raises(CheckpointError, match="nothing-here"):
        load_pipeline("tiny", tiny_vae=str(tmp_path / "nothing-here"))


def test_lora_is_loaded_and_fused(tmp_path) -> None:
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    adapted = build_tiny_components()["unet"]
    torch.manual_seed(1)
    config = LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False)
    adapted.add_adapter(config)
    lora_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(adapted))
    StableDiffusionPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=lora_layers)

    plain = load_pipeline("tiny").pipeline.unet
    fused = load_pipeline("tiny", lora=str(tmp_path / "lora")).pipeline.unet
    sample, timestep = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(0)), torch.tensor([500.0])
    context = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        outputs = [unet(sample, timestep, encoder_hidden_states=context, return_dict=False)[0]
                   for unet in (adapted, fused, plain)]  # the loaded ones run frozen graphs of the fused weights
    assert float((outputs[0] - outputs[1]).abs().max()) < 1e-5
    assert float((outputs[1] - outputs[2]).abs().max()) > 1e-3
    assert not any("lora" in name for name, _ in eager(fused).named_modules())  # fused: no per-call LoRA layers left
    with pytest.raises(CheckpointError, match="no-lora"):
        load_pipeline("tiny", lora=str(tmp_path / "no-lora"))


def test_compile_wraps_the_unet_and_the_clip_runs_through_dynamo(request_, tiny_latents) -> None:
    """Inductor's C++ codegen takes minutes on this 2-core CPU (measured > 280 s), so the wiring is checked here
    and the clip is traced by TorchDynamo with its eager backend: no graph breaks that fail, the same latents."""
    loaded = load_pipeline("tiny", compile=True)
    unet = loaded.pipeline.unet
    assert eager(unet) is unet  # compiled, hence not frozen
    assert unet._compiled_call_impl is not None and "UNet compiled with torch.compile" in loaded.notes
    unet.compile(backend="eager")
    torch._dynamo.reset()
    counters.clear()
    assert float((final_latents(loaded.pipeline, request_) - tiny_latents).abs().max()) < 1e-4
    assert counters["stats"]["unique_graphs"] >= 1  # the UNet really ran as a captured graph
