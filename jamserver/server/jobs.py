"""A planned clip -> the pipeline request that renders it -> its clip frame; shared by live rooms and offline renders."""

from __future__ import annotations

from typing import Any

from jamserver.jam import protocol
from jamserver.jam.prompt import Prompt
from jamserver.jam.session import ClipPlan
from pipeline.model.requests import ClipRequest, PromptInput
from pipeline.seeds import SeedLibrary


def prompt_input(prompt: Prompt) -> PromptInput:
    """A planned clip's prompt (seed, denoising and guidance filled in) as the pipeline's input."""
    if not prompt.complete:
        raise ValueError(f"a prompt must be complete to be rendered: {prompt}")
    return PromptInput(prompt.prompt, prompt.seed, prompt.negative_prompt, prompt.denoising, prompt.guidance)


def clip_request(plan: ClipPlan, seeds: SeedLibrary) -> ClipRequest:
    """The pipeline request for a planned clip: its prompts, alpha, seed image, mask and steps."""
    return ClipRequest(
        start=prompt_input(plan.start),
        end=prompt_input(plan.end),
        alpha=plan.alpha,
        seed_image=seeds.load_seed(plan.seed_image_id),
        num_inference_steps=plan.num_inference_steps,
        mask_image=seeds.load_mask(plan.mask_image_id) if plan.mask_image_id else None,
    )


def clip_frame(plan: ClipPlan, *, stream_time: float, duration: float, image: bytes, audio: bytes,
               sample_rate: int, gen_seconds: float) -> dict[str, Any]:
    """The protocol's clip frame for a planned clip once it is rendered and joined into the stream."""
    return protocol.clip_frame(
        seq=plan.seq, stream_time=stream_time, duration=duration, alpha=plan.alpha,
        start=plan.start, end=plan.end, image=image, audio=audio,
        sample_rate=sample_rate, gen_seconds=gen_seconds)
