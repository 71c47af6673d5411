"""Frozen (TorchScript) UNet and VAE decoder: the same clips as the eager models, one trace for every batch size."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.diffusion.requests import ClipRequest, PromptInput
from pipeline.diffusion.riffusion import RiffusionPipeline
from pipeline.model.frozen import FrozenCall, FrozenUNet, FrozenVAE, eager, freeze_components
from pipeline.model.loading import load_pipeline
from pipeline.model.tiny import build_tiny_components


@pytest.fixture(scope="module")
def components():
    return build_tiny_components()


@pytest.fixture(scope="module")
def seed_image() -> Image.Image:
    ramp = np.tile(np.linspace(0, 255, 512, dtype=np.uint8), (512, 1))
    return Image.fromarray(ramp).convert("RGB")


def unet_inputs(rows: int, tokens: int = 77, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, 4, 64, 64, generator=generator),
            torch.randint(0, 1000, (rows,), generator=generator).float(),
            torch.randn(rows, tokens, 32, generator=generator))


def test_cpu_models_load_frozen_by_default_and_eager_on_request() -> None:
    frozen = load_pipeline("tiny")
    assert isinstance(frozen.pipeline.unet, FrozenUNet) and isinstance(frozen.pipeline.vae, FrozenVAE)
    assert any("frozen" in note for note in frozen.notes)
    plain = load_pipeline("tiny", freeze=False)
    assert eager(plain.pipeline.unet) is plain.pipeline.unet
    assert not any("frozen" in note for note in plain.notes)


@torch.inference_mode()
def test_one_trace_serves_every_batch_size(components) -> None:
    unet = FrozenUNet(components["unet"])
    for rows in (2, 7, 1, 16):
        sample, timesteps, context = unet_inputs(rows, seed=rows)
        expected = components["unet"](sample, timesteps, encoder_hidden_states=context).sample
        got = unet(sample, timesteps, context)[0]
        assert got.shape == expected.shape
        assert float((got - expected).abs().max()) < 1e-4, f"{rows} rows"
    assert unet.traced == 1
    sample, timesteps, context = unet_inputs(3, tokens=154)  # a long prompt's conditioning: a new signature
    expected = components["unet"](sample, timesteps, encoder_hidden_states=context).sample
    assert float((unet(sample, timesteps, context)[0] - expected).abs().max()) < 1e-4
    assert unet.traced == 2


def test_frozen_pipeline_renders_the_eager_pipelines_clip(components, seed_image) -> None:
    request = ClipRequest(PromptInput("church bells", 42), PromptInput("jazz", 7), 0.4, seed_image,
                          num_inference_steps=12)
    eager_pipe = RiffusionPipeline.from_components(components)
    frozen_pipe = RiffusionPipeline.from_components(freeze_components(components))
    results = []
    for pipe in (eager_pipe, frozen_pipe):
        job = pipe.prepare(request)
        while not job.done:
            pipe.step([job])
        results.append((job.latents, np.asarray(pipe.decode([job])[0], np.int16)))
    (eager_latents, eager_image), (frozen_latents, frozen_image) = results
    assert float((eager_latents - frozen_latents).abs().max()) < 1e-4
    assert np.abs(eager_image - frozen_image).max() <= 1  # pixel rounding at most
    assert frozen_pipe.vae.traced == 1


def test_a_call_that_cannot_be_traced_runs_eagerly_after_one_warning(caplog) -> None:
    linear = torch.nn.Linear(3, 3)
    call = FrozenCall(linear, lambda module, values: module(values).sum().item(), name="odd module")  # a float out
    values = torch.ones(2, 3)
    with caplog.at_level(logging.WARNING, logger="pipeline.model.frozen"):
        results = [call(values), call(values)]
    assert results == [pytest.approx(float(linear(values).sum()))] * 2
    assert call.traced == 0
    assert [record.message for record in caplog.records if "odd module" in record.message] != []
    assert len(caplog.records) == 1


def test_frozen_wrappers_refuse_return_dict(components) -> None:
    with pytest.raises(ValueError, match="return_dict"):
        FrozenUNet(components["unet"])(*unet_inputs(1), return_dict=True)
    with pytest.raises(ValueError, match="return_dict"):
        FrozenVAE(components["vae"]).decode(torch.zeros(1, 4, 64, 64), return_dict=True)
