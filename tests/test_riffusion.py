"""One clip through the riffusion pipeline on the built-in tiny model: maths, parity with diffusers, validation."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline
from PIL import Image

from pipeline.diffusion.latents import seeded_generator, seeded_noise, slerp
from pipeline.diffusion.requests import ClipRequest, PromptInput
from pipeline.diffusion.riffusion import RiffusionPipeline, SeedImageSizeError
from pipeline.model.tiny import build_tiny_components


@pytest.fixture(scope="module")
def pipe() -> RiffusionPipeline:
    return RiffusionPipeline.from_components(build_tiny_components())


@pytest.fixture(scope="module")
def seed_image() -> Image.Image:
    """A striped spectrogram-like picture: smooth enough that the tiny VAE's encoding is not degenerate."""
    rows = np.linspace(0, 255, 512, dtype=np.float32)[:, None]
    cols = (np.sin(np.arange(512) / 9.0)[None, :] + 1) * 60
    grey = np.clip(rows * 0.6 + cols, 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def make_request(image: Image.Image, **overrides) -> ClipRequest:
    fields = {
        "start": PromptInput("church bells on sunday", seed=42, negative_prompt="noise"),
        "end": PromptInput("jazz with piano", seed=123),
        "alpha": 0.25,
        "seed_image": image,
        "num_inference_steps": 12,
    }
    fields.update(overrides)
    return ClipRequest(**fields)


def run_to_end(pipe: RiffusionPipeline, request: ClipRequest):
    job = pipe.prepare(request)
    while not job.done:
        pipe.step([job])
    return job


# --- slerp ---------------------------------------------------------------------------------------------------------


def test_slerp_endpoints_are_exact_and_norm_is_preserved() -> None:
    a = seeded_noise(1, (1, 4, 64, 64))
    b = seeded_noise(2, (1, 4, 64, 64))
    assert torch.equal(slerp(0.0, a, b), a)
    assert torch.allclose(slerp(1.0, a, b), b, atol=1e-6)
    b_same_norm = b * (a.norm() / b.norm())
    for alpha in (0.25, 0.5, 0.75):
        mixed = slerp(alpha, a, b_same_norm)
        assert math.isclose(float(mixed.norm()), float(a.norm()), rel_tol=1e-5)
    # a plain lerp would lose ~30% of the norm halfway between independent noises: slerp must not
    assert float(slerp(0.5, a, b).norm()) > 0.95 * float(a.norm())


def test_slerp_of_parallel_vectors_falls_back_to_lerp() -> None:
    a = seeded_noise(3, (16,))
    assert torch.allclose(slerp(0.5, a, 2 * a), 1.5 * a, atol=1e-6)


def test_slerp_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="end"):
        slerp(0.5, torch.zeros(3), torch.zeros(4))


# --- validation ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"num_inference_steps": 1001}, "num_inference_steps"),
        ({"num_inference_steps": 2.5}, "num_inference_steps"),
        ({"alpha": -0.01}, "alpha"),
        ({"alpha": 1.5}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"start": PromptInput("a", 1, denoising=0.0)}, "start.denoising"),
        ({"end": PromptInput("a", 1, denoising=1.01)}, "end.denoising"),
        ({"end": PromptInput("a", 1, denoising=float("nan"))}, "end.denoising"),
        ({"start": PromptInput("a", 1, guidance=float("inf"))}, "start.guidance"),
        ({"start": PromptInput("a", 1, guidance=float("nan"))}, "start.guidance"),
        ({"start": PromptInput("a", "7")}, "start.seed"),
        ({"end": PromptInput("a", 2**64)}, "end.seed"),
        ({"start": PromptInput(None, 1)}, "start.prompt"),
        ({"seed_image": "og_beat"}, "seed_image"),
        ({"mask_image": np.zeros((8, 8))}, "mask_image"),
    ],
)
def test_validate_names_the_bad_field(seed_image, overrides, field) -> None:
    request = make_request(seed_image, **overrides)
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        request.validate()


def test_prepare_validates(pipe, seed_image) -> None:
    with pytest.raises(ValueError, match="alpha"):
        pipe.prepare(make_request(seed_image, alpha=2.0))


def test_the_seed_image_sets_the_geometry_not_the_unet_config(seed_image) -> None:
    components = build_tiny_components()
    components["unet"].register_to_config(sample_size=32)  # what riffusion-model-v1's diffusers 0.4.0 config says
    pipe = RiffusionPipeline.from_components(components)
    mask = Image.new("L", (100, 100), 255)  # masks of another size are resized to the seed image's
    assert pipe.generate(make_request(seed_image, mask_image=mask, num_inference_steps=3)).size == (512, 512)
    wide = seed_image.resize((776, 512))  # any multiple of 8: 97 latent columns, an odd number
    job = run_to_end(pipe, make_request(wide, mask_image=mask, num_inference_steps=3))
    assert job.latents.shape == (1, 4, 64, 97)
    assert pipe.decode([job])[0].size == (776, 512)


@pytest.mark.parametrize("size", [(516, 512), (512, 500), (4, 512)])
def test_a_seed_image_the_model_cannot_take_is_refused_by_size(pipe, seed_image, size) -> None:
    with pytest.raises(SeedImageSizeError, match=rf"seed_image: {size[0]}x{size[1]} pixels .* multiples of 8"):
        pipe.prepare(make_request(seed_image.resize(size)))
    assert pipe.latent_shape((1024, 512)) == (1, 4, 64, 128)


def test_clips_of_different_widths_share_a_step_and_decode_as_if_alone(pipe, seed_image) -> None:
    requests = [make_request(seed_image, num_inference_steps=4), make_request(seed_image.resize((256, 512)),
                                                                              num_inference_steps=4)]
    alone = [pipe.decode([run_to_end(pipe, request)])[0] for request in requests]
    jobs = [pipe.prepare(request) for request in requests]
    while not all(job.done for job in jobs):
        pipe.step(jobs)
    together = pipe.decode(jobs)
    assert [image.size for image in together] == [(512, 512), (256, 512)]
    for one, other in zip(alone, together):
        assert np.abs(np.asarray(one, dtype=int) - np.asarray(other, dtype=int)).max() <= 1


# --- the interpolation maths ---------------------------------------------------------------------------------------


def test_init_latents_are_the_vae_sample_with_the_start_seed(pipe, seed_image) -> None:
    pixels = torch.from_numpy(np.asarray(seed_image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.inference_mode():
        expected = pipe.vae.encode(pixels).latent_dist.sample(seeded_generator(42)) * 0.18215
    first = pipe.encode_seed_image(seed_image, 42)
    cached = pipe.encode_seed_image(seed_image.copy(), 42)  # equal content, other object: a cache hit
    assert torch.equal(first, expected) and torch.equal(cached, expected)
    assert not torch.equal(pipe.encode_seed_image(seed_image, 43), expected)


def test_latent_cache_is_bounded(seed_image) -> None:
    small = RiffusionPipeline.from_components(build_tiny_components(), latent_cache_size=2)
    for shade in range(4):
        small.encode_seed_image(Image.new("RGB", (512, 512), (shade, shade, shade)), 0)
    assert len(small.latent_cache) == 2


def test_job_interpolates_guidance_strength_noise_and_text(pipe, seed_image) -> None:
    request = make_request(
        seed_image,
        start=PromptInput("bells", 5, denoising=0.5, guidance=3.0),
        end=PromptInput("piano", 6, denoising=1.0, guidance=9.0),
        alpha=0.5,
        num_inference_steps=20,
    )
    job = pipe.prepare(request)
    assert job.guidance == pytest.approx(6.0) and job.strength == pytest.approx(0.75)
    assert job.total_steps == int(20 * 0.75) + 1  # PNDM (skip_prk_steps) repeats one timestep
    expected_noise = slerp(0.5, seeded_noise(5, (1, 4, 64, 64)), seeded_noise(6, (1, 4, 64, 64)))
    assert torch.equal(job.noise, expected_noise)
    bells, piano, empty = (pipe.prompt_encoder.encode(p) for p in ("bells", "piano", ""))
    assert torch.allclose(job.prompt_embeds[1:], (bells + piano) / 2, atol=1e-6)
    assert torch.allclose(job.prompt_embeds[:1], empty, atol=1e-6)


def test_tiny_strength_still_runs_one_step(pipe, seed_image) -> None:
    job = pipe.prepare(make_request(seed_image, start=PromptInput("a", 1, denoising=0.01), alpha=0.0))
    assert job.total_steps >= 1


def diffusers_img2img_latents(pipe, request, init_latents, guidance, strength):
    reference = StableDiffusionImg2ImgPipeline(
        **pipe.components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    reference.set_progress_bar_config(disable=True)
    embeds = pipe.prompt_encoder
    return reference(
        prompt_embeds=embeds.encode(request.start.prompt),
        negative_prompt_embeds=embeds.encode(request.start.negative_prompt or ""),
        image=init_latents,  # 4 channels: diffusers takes it as latents, then draws noise from the generator
        strength=strength,
        guidance_scale=guidance,
        num_inference_steps=request.num_inference_steps,
        generator=seeded_generator(request.start.seed),
        output_type="latent",
    ).images


@pytest.mark.parametrize("guidance", [7.0, 1.0])
def test_alpha_zero_matches_diffusers_img2img(pipe, seed_image, guidance) -> None:
    start = PromptInput("church bells on sunday", 42, negative_prompt="hiss", guidance=guidance)
    request = make_request(seed_image, start=start, alpha=0.0, num_inference_steps=20)
    job = run_to_end(pipe, request)
    assert job.guided == (guidance > 1)
    expected = diffusers_img2img_latents(pipe, request, job.init_latents, guidance, 0.75)
    assert float((job.latents - expected).abs().max()) < 1e-5
    assert float(job.latents.abs().max()) > 0.1  # a real comparison, not two zero tensors


def test_same_request_gives_identical_image_even_from_a_fresh_model(pipe, seed_image) -> None:
    request = make_request(seed_image, num_inference_steps=6)
    first = np.asarray(pipe.generate(request))
    again = np.asarray(pipe.generate(request))
    fresh = np.asarray(RiffusionPipeline.from_components(build_tiny_components()).generate(request))
    assert np.array_equal(first, again) and np.array_equal(first, fresh)
    other_alpha = np.asarray(pipe.generate(replace(request, alpha=0.75)))
    assert not np.array_equal(first, other_alpha)


def test_mask_keeps_black_regions_on_the_renoised_init_path(pipe, seed_image) -> None:
    mask = np.zeros((512, 512), dtype=np.uint8)
    mask[:, 256:] = 255  # repaint the right half, keep the left half
    request = make_request(seed_image, mask_image=Image.fromarray(mask), num_inference_steps=10)
    masked = run_to_end(pipe, request)
    unmasked = run_to_end(pipe, replace(request, mask_image=None))
    last_t = masked.timesteps[-1].reshape(1)
    init_path = masked.scheduler.add_noise(masked.init_latents, masked.noise, last_t)
    assert torch.equal(masked.latents[..., :32], init_path[..., :32])
    assert not torch.allclose(unmasked.latents[..., :32], init_path[..., :32], atol=1e-3)
    assert not torch.allclose(masked.latents[..., 32:], init_path[..., 32:], atol=1e-3)


def test_decode_refuses_unfinished_jobs_and_step_skips_finished_ones(pipe, seed_image) -> None:
    job = pipe.prepare(make_request(seed_image, num_inference_steps=2))
    with pytest.raises(ValueError, match="jobs"):
        pipe.decode([job])
    while not job.done:
        pipe.step([job])
    latents = job.latents.clone()
    pipe.step([job])
    assert torch.equal(job.latents, latents) and job.steps_left == 0
    assert pipe.decode([]) == []
