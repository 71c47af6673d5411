"""Step-wise batching: jobs run together give what each gives alone, whatever joins or leaves in between."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler
from PIL import Image

from pipeline.diffusion.requests import ClipRequest, PromptInput
from pipeline.diffusion.riffusion import RiffusionPipeline
from pipeline.model.tiny import build_tiny_components

TOLERANCE = 1e-4
LONG_PROMPT = ", ".join(["slow ambient strings with warm analog pads"] * 6)  # > 75 tokens: two CLIP chunks


def pipeline_with(scheduler_class=None) -> RiffusionPipeline:
    components = build_tiny_components()
    if scheduler_class is not None:
        components["scheduler"] = scheduler_class.from_config(components["scheduler"].config)
    return RiffusionPipeline.from_components(components)


@pytest.fixture(scope="module")
def pipe() -> RiffusionPipeline:
    return pipeline_with()


@pytest.fixture(scope="module")
def images() -> tuple[Image.Image, Image.Image, Image.Image]:
    ramp = np.tile(np.linspace(0, 255, 512, dtype=np.uint8), (512, 1))
    mask = np.zeros((512, 512), dtype=np.uint8)
    mask[:200] = 255  # repaint the top (high frequencies), keep the rest
    return Image.fromarray(ramp).convert("RGB"), Image.fromarray(ramp.T.copy()).convert("RGB"), Image.fromarray(mask)


def varied_requests(images) -> list[ClipRequest]:
    """Different prompts, alphas, strengths, step counts, guidance on and off, a mask, and a long prompt."""
    seed_a, seed_b, mask = images
    return [
        ClipRequest(PromptInput("church bells", 1), PromptInput("jazz piano", 2), 0.25, seed_a, num_inference_steps=8),
        ClipRequest(
            PromptInput("techno", 3, denoising=0.5, guidance=4.0),
            PromptInput("reggae", 4, denoising=0.9, guidance=9.0),
            0.75,
            seed_b,
            num_inference_steps=10,
        ),
        ClipRequest(PromptInput("bass drop", 5), PromptInput("bass drop", 6), 0.5, seed_a, 6, mask_image=mask),
        ClipRequest(PromptInput("flute", 7, guidance=1.0), PromptInput("oboe", 8, guidance=1.0), 0.0, seed_b, 7),
        ClipRequest(PromptInput(LONG_PROMPT, 9), PromptInput("drums", 10), 0.5, seed_a, num_inference_steps=5),
    ]


def run_alone(pipe: RiffusionPipeline, request: ClipRequest) -> torch.Tensor:
    job = pipe.prepare(request)
    while not job.done:
        pipe.step([job])
    return job.latents


def run_together(pipe: RiffusionPipeline, requests: list[ClipRequest], join_at: dict[int, int]):
    """Step all jobs in shared batches; request i joins after ``join_at.get(i, 0)`` steps; finished jobs leave."""
    jobs: dict[int, object] = {}
    finished: dict[int, object] = {}
    step = 0
    while len(finished) < len(requests):
        for index, request in enumerate(requests):
            if index not in jobs and index not in finished and join_at.get(index, 0) <= step:
                jobs[index] = pipe.prepare(request)
        pipe.step(list(jobs.values()))
        for index in [i for i, job in jobs.items() if job.done]:
            finished[index] = jobs.pop(index)
        step += 1
    return [finished[index] for index in range(len(requests))]


def test_batched_jobs_match_each_job_run_alone_with_one_joining_midway(pipe, images) -> None:
    requests = varied_requests(images)
    alone = [run_alone(pipe, request) for request in requests]
    together = run_together(pipe, requests, join_at={1: 3})
    for index, (job, expected) in enumerate(zip(together, alone)):
        difference = float((job.latents - expected).abs().max())
        assert difference < TOLERANCE, f"job {index} differs by {difference}"
    batched_images = pipe.decode(together)
    single_image = pipe.decode([together[2]])[0]
    assert np.abs(np.asarray(batched_images[2], np.int16) - np.asarray(single_image, np.int16)).max() <= 1
    assert len({image.tobytes() for image in batched_images}) == len(requests)


def test_batch_rows_share_one_unet_call_per_conditioning_length(pipe, images) -> None:
    requests = varied_requests(images)
    jobs = [pipe.prepare(request) for request in requests]
    calls: list[tuple[int, int]] = []
    hook = pipe.unet.register_forward_hook(
        lambda module, args, kwargs, output: calls.append((args[0].shape[0], kwargs["encoder_hidden_states"].shape[1])),
        with_kwargs=True,
    )
    try:
        pipe.step(jobs)
    finally:
        hook.remove()
    # rows: 2 + 2 + 2 + 1 (guidance 1: no uncond half) at 77 tokens, then 2 for the long prompt's several chunks
    long_length = jobs[-1].prompt_embeds.shape[1]
    assert long_length > 77 and long_length % 77 == 0
    assert sorted(calls, reverse=True) == [(7, 77), (2, long_length)]
    assert [job.step_index for job in jobs] == [1] * len(jobs)


@pytest.mark.parametrize("scheduler_class", [DPMSolverMultistepScheduler, EulerDiscreteScheduler])
def test_each_job_keeps_its_own_scheduler_state(scheduler_class, images) -> None:
    pipe = pipeline_with(scheduler_class)
    requests = varied_requests(images)[:3]
    alone = [run_alone(pipe, request) for request in requests]
    together = run_together(pipe, requests, join_at={2: 2})
    for job, expected in zip(together, alone):
        assert job.scheduler is not pipe.scheduler
        assert float((job.latents - expected).abs().max()) < TOLERANCE


def test_the_same_job_twice_in_one_step_is_refused(pipe, images) -> None:
    job = pipe.prepare(varied_requests(images)[0])
    with pytest.raises(ValueError, match="jobs"):
        pipe.step([job, job])
    assert job.step_index == 0


def test_a_failing_unet_call_leaves_every_job_unmoved(pipe, images, monkeypatch) -> None:
    requests = varied_requests(images)
    jobs = [pipe.prepare(request) for request in requests]  # two conditioning lengths: two UNet calls
    before = [job.latents.clone() for job in jobs]
    real_unet, calls = pipe.unet, []

    def unet_failing_on_second_call(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return real_unet(*args, **kwargs)

    monkeypatch.setattr(pipe, "unet", unet_failing_on_second_call)
    with pytest.raises(RuntimeError, match="out of memory"):
        pipe.step(jobs)
    assert len(calls) == 2
    assert all(job.step_index == 0 and torch.equal(job.latents, old) for job, old in zip(jobs, before))


def test_guidance_rescale_brings_a_guided_prediction_to_the_text_predictions_spread() -> None:
    from pipeline.diffusion.batch import rescale_guidance

    generator = torch.Generator().manual_seed(0)
    uncond, text = torch.randn((2, 2, 4, 8, 8), generator=generator)
    guided = uncond + 7.0 * (text - uncond)  # guidance 7 inflates the spread ~9x
    matched = rescale_guidance(guided, text, 1.0)
    assert torch.allclose(matched.std(dim=(1, 2, 3)), text.std(dim=(1, 2, 3)), rtol=1e-5)
    assert torch.allclose(matched / matched.std(dim=(1, 2, 3), keepdim=True),
                          guided / guided.std(dim=(1, 2, 3), keepdim=True), atol=1e-5)  # same direction
    assert torch.equal(rescale_guidance(guided, text, 0.0), guided)
    halfway = rescale_guidance(guided, text, 0.5)
    assert torch.allclose(halfway, (matched + guided) / 2, atol=1e-5)


def test_a_pipelines_guidance_rescale_changes_guided_clips_only(images) -> None:
    seed, _, _ = images
    plain, rescaled = pipeline_with(), RiffusionPipeline.from_components(build_tiny_components(), guidance_rescale=0.7)
    guided = ClipRequest(PromptInput("church bells", 1), PromptInput("church bells", 1), 0.0, seed, 6)
    unguided = ClipRequest(PromptInput("flute", 7, guidance=1.0), PromptInput("flute", 7, guidance=1.0), 0.0, seed, 6)
    assert not torch.allclose(run_alone(plain, guided), run_alone(rescaled, guided), atol=TOLERANCE)
    assert torch.equal(run_alone(plain, unguided), run_alone(rescaled, unguided))
    with pytest.raises(ValueError, match=r"guidance_rescale: must be in \[0, 1\], got 1.5"):
        RiffusionPipeline.from_components(build_tiny_components(), guidance_rescale=1.5)
