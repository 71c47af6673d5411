"""Step-wise batching: many clip jobs, each at its own timestep, advanced by one UNet call per step.

A server with several rooms has several clips in flight, each started at a different moment and with its own
prompts, guidance, strength and step count. Running them one after another wastes the device (a batch of 2 rows
barely loads a GPU); running them together needs every job to carry its own state, including its own scheduler
(multistep schedulers remember past model outputs). :class:`ClipJob` is that state; :func:`denoise_step` advances
any set of jobs by one step each, with the UNet evaluated once per distinct conditioning length (usually once).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from pipeline.diffusion.requests import ClipRequest

if TYPE_CHECKING:
    from diffusers.schedulers.scheduling_utils import SchedulerMixin


@dataclass(eq=False)
class ClipJob:
    """One clip being denoised. Created by ``RiffusionPipeline.prepare``; advanced by ``RiffusionPipeline.step``.

    ``prompt_embeds`` holds the conditioning rows the UNet sees for this job: ``[uncond, text]`` when classifier-free
    guidance is on, ``[text]`` alone when ``guidance <= 1``. ``keep`` (or None) is the mask at latent resolution:
    1 where the init image is kept, 0 where it is repainted.
    """

    request: ClipRequest
    scheduler: SchedulerMixin
    timesteps: torch.Tensor
    latents: torch.Tensor
    init_latents: torch.Tensor
    noise: torch.Tensor
    keep: torch.Tensor | None
    prompt_embeds: torch.Tensor
    guidance: float
    strength: float
    guidance_rescale: float = 0.0
    step_kwargs: dict[str, Any] = field(default_factory=dict)
    step_index: int = 0

    @property
    def guided(self) -> bool:
        return self.prompt_embeds.shape[0] == 2

    @property
    def total_steps(self) -> int:
        """UNet evaluations this job needs in all (the scheduler's last ``int(N * strength)`` timesteps)."""
        return len(self.timesteps)

    @property
    def steps_left(self) -> int:
        return self.total_steps - self.step_index

    @property
    def done(self) -> bool:
        return self.step_index >= self.total_steps

    @property
    def timestep(self) -> torch.Tensor:
        """The timestep the next UNet evaluation runs at."""
        return self.timesteps[self.step_index]

    def model_input(self) -> torch.Tensor:
        """The UNet input rows for this job: the latents once per conditioning row, scaled by the scheduler."""
        rows = self.prompt_embeds.shape[0]
        latents = torch.cat([self.latents] * rows) if rows > 1 else self.latents
        return self.scheduler.scale_model_input(latents, self.timestep)

    def advance(self, noise_pred: torch.Tensor) -> None:
        """Steps 3-5 for this job's UNet output rows: guidance, the scheduler step, the mask."""
        if self.done:
            raise ValueError("jobs: this job is already done; remove finished jobs before stepping")
        # 3. guidance: push the text row away from the unconditional one
        if self.guided:
            noise_uncond, noise_text = noise_pred.chunk(2)
            noise_pred = noise_uncond + self.guidance * (noise_text - noise_uncond)
            if self.guidance_rescale:
                noise_pred = rescale_guidance(noise_pred, noise_text, self.guidance_rescale)
        # 4. scheduler step: x_t -> x_t-1
        t = self.timestep
        latents = self.scheduler.step(noise_pred, t, self.latents, **self.step_kwargs, return_dict=False)[0]
        # 5. mask: where the init image is kept, put it back, noised to this step's level
        if self.keep is not None:
            renoised_init = self.scheduler.add_noise(self.init_latents, self.noise, t.reshape(1))
            latents = renoised_init * self.keep + latents * (1 - self.keep)
        self.latents = latents
        self.step_index += 1


def rescale_guidance(guided: torch.Tensor, text: torch.Tensor, factor: float) -> torch.Tensor:
    """Pull each row's spread back towards the text prediction's, by ``factor`` in [0, 1].

    A large guidance scale inflates the prediction's standard deviation, which with v prediction overexposes the
    clip: loud, static tones instead of notes. Lin et al. (2023, "Common diffusion noise schedules and sample steps
    are flawed", section 3.4) rescale the guided prediction to the text prediction's standard deviation and blend by
    ``factor``; diffusers calls it ``guidance_rescale``.
    """
    dims = tuple(range(1, guided.ndim))
    matched = guided * (text.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return factor * matched + (1.0 - factor) * guided


def scheduler_step_kwargs(scheduler: SchedulerMixin, generator: torch.Generator) -> dict[str, Any]:
    """Pass the job's own generator to schedulers that draw noise while stepping (LCM, ancestral samplers)."""
    parameters = inspect.signature(scheduler.step).parameters
    return {"generator": generator} if "generator" in parameters else {}


def denoise_step(unet: torch.nn.Module, jobs: Sequence[ClipJob]) -> None:
    """Advance every unfinished job in ``jobs`` by one step, batching their UNet rows together.

    Each job contributes its own rows, timesteps and conditioning; the UNet sees one per-row timestep tensor. Jobs
    whose conditioning lengths differ (long prompts use 154 or 231 tokens) or whose latents differ in size (seed
    images of other widths) are evaluated in separate calls rather than padded, so a job's result never depends on
    what it was batched with. All UNet calls finish before any job
    moves: if the UNet raises (out of memory, say), every job is left as it was and can be retried alone.
    """
    pending = [job for job in jobs if not job.done]
    if len({id(job) for job in pending}) != len(pending):
        raise ValueError("jobs: the same job appears more than once")
    predictions: list[tuple[ClipJob, torch.Tensor]] = []
    for group in _group_by_input_shape(pending).values():
        # 1. scale input: each job's latents, once per conditioning row, scaled for its own timestep
        model_input = torch.cat([job.model_input() for job in group])
        # 2. UNet: one call for the group, every row at its own timestep with its own conditioning
        rows = [job.prompt_embeds.shape[0] for job in group]
        timesteps = torch.cat([job.timestep.to(torch.float32).expand(count) for job, count in zip(group, rows)])
        conditioning = torch.cat([job.prompt_embeds for job in group])
        noise_pred = unet(model_input, timesteps, encoder_hidden_states=conditioning, return_dict=False)[0]
        predictions += zip(group, noise_pred.split(rows))
    # 3-5. guidance, scheduler step, mask: job by job, once every UNet call has succeeded
    for job, noise_pred in predictions:
        job.advance(noise_pred)


def _group_by_input_shape(jobs: Sequence[ClipJob]) -> dict[tuple[int, ...], list[ClipJob]]:
    groups: dict[tuple[int, ...], list[ClipJob]] = {}
    for job in jobs:
        groups.setdefault((job.prompt_embeds.shape[1], *job.latents.shape[1:]), []).append(job)
    return groups
