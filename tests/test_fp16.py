"""fp16 safety: a half-precision VAE decode that overflows is redone in fp32, once per decode, with one warning."""

from __future__ import annotations

import copy
import logging

import numpy as np
import torch

from pipeline.diffusion.requests import ClipRequest, PromptInput
from pipeline.diffusion.riffusion import RiffusionPipeline, tensor_to_images
from pipeline.model.tiny import build_tiny_components
from pipeline.seeds import SeedLibrary


def half_pipeline(vae_gain: float) -> RiffusionPipeline:
    """The tiny model in fp16; ``vae_gain`` scales the decoder's first convolution (large: fp16 overflows)."""
    components = build_tiny_components()
    with torch.no_grad():
        components["vae"].post_quant_conv.weight.mul_(vae_gain)
    for name in ("unet", "vae", "text_encoder"):
        components[name] = components[name].half()
    return RiffusionPipeline.from_components(components)


def finished_job(pipe: RiffusionPipeline, seed: int):
    request = ClipRequest(PromptInput("church bells", seed), PromptInput("jazz", seed + 1), 0.5,
                          SeedLibrary().load_seed("og_beat"), num_inference_steps=4)
    job = pipe.prepare(request)
    while not job.done:
        pipe.step([job])
    return job


def test_an_overflowing_fp16_decode_is_redone_in_fp32_with_one_warning(caplog):
    pipe = half_pipeline(vae_gain=3e4)
    job = finished_job(pipe, 1)
    latents = job.latents / pipe.vae.config.scaling_factor
    with torch.inference_mode():
        assert not torch.isfinite(pipe.vae.decode(latents, return_dict=False)[0]).all()  # the overflow is real
        in_fp32 = copy.deepcopy(pipe.vae).float().decode(latents.float(), return_dict=False)[0]
    with caplog.at_level(logging.WARNING, logger="pipeline.diffusion.riffusion"):
        image = pipe.decode([job])[0]
        pipe.decode([finished_job(pipe, 2)])
    expected = np.asarray(tensor_to_images(in_fp32)[0], dtype=int)
    assert np.abs(np.asarray(image, dtype=int) - expected).max() <= 1
    assert np.asarray(image).std() > 1  # a real picture, not the black of a NaN decode
    warnings = [record for record in caplog.records if "overflowed" in record.getMessage()]
    assert len(warnings) == 1 and "float16 VAE decode" in warnings[0].getMessage()
    assert pipe.vae.dtype == torch.float16  # the pipeline's own VAE stays in fp16


def test_a_finite_fp16_decode_is_not_redone(caplog):
    pipe = half_pipeline(vae_gain=1.0)
    with caplog.at_level(logging.WARNING, logger="pipeline.diffusion.riffusion"):
        image = pipe.decode([finished_job(pipe, 1)])[0]
    assert image.size == (512, 512) and not caplog.records
    assert pipe._vae_fp32 is None
