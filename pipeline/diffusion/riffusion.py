"""Interpolated img2img: riffusion's way of turning two prompts and a seed spectrogram into one clip.

A clip sits at ``alpha`` between a start and an end prompt: text conditioning, guidance and strength are lerped,
the noise is slerped between the two seeds' noise, and the seed image is partially re-noised and denoised like
diffusers' img2img. :class:`RiffusionPipeline` exposes that as one call (:meth:`~RiffusionPipeline.generate`) and
as a step-wise API (:meth:`~RiffusionPipeline.prepare`, :meth:`~RiffusionPipeline.step`,
:meth:`~RiffusionPipeline.decode`) that lets a server denoise many clips in one UNet batch.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any, TypedDict

import numpy as np
import torch
from PIL import Image

from pipeline.diffusion.batch import ClipJob, denoise_step, scheduler_step_kwargs
from pipeline.diffusion.latents import (
    LatentDistributionCache,
    image_digest,
    image_to_tensor,
    mask_to_keep,
    sample_latent,
    seeded_generator,
    seeded_noise,
    slerp,
)
from pipeline.diffusion.prompts import PromptEncoder
from pipeline.diffusion.requests import ClipRequest, lerp
from pipeline.model.frozen import eager

logger = logging.getLogger(__name__)


class PipelineComponents(TypedDict):
    """The diffusers/transformers modules a :class:`RiffusionPipeline` is built from."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any


class SeedImageSizeError(ValueError):
    """A seed image whose size the model cannot take. The message names the image and the rule it breaks."""


def img2img_timesteps(
    scheduler: Any, num_inference_steps: int, strength: float, device: torch.device | str | None = None
) -> torch.Tensor:
    """Set up ``scheduler`` for ``num_inference_steps`` and return the timesteps img2img runs at ``strength``.

    Same rule as diffusers' img2img (the last ``int(N * strength)`` of N steps, times the scheduler's order), except
    that at least one step always runs: a tiny strength means "barely change the seed", not "fail".
    """
    scheduler.set_timesteps(num_inference_steps, device=device)
    init_steps = min(max(int(num_inference_steps * strength), 1), num_inference_steps)
    skipped = (num_inference_steps - init_steps) * scheduler.order
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(skipped)
    timesteps = scheduler.timesteps[skipped:]
    trained = scheduler.config.num_train_timesteps
    if len(timesteps) and int(timesteps.max()) >= trained:  # PNDM at 1000 of 1000 steps asks for timestep 1000
        raise ValueError(f"num_inference_steps: the {type(scheduler).__name__} scheduler cannot run "
                         f"{num_inference_steps} steps at denoising {strength:g} (timestep {int(timesteps.max())} "
                         f"of {trained})")
    return timesteps


def supported_steps(scheduler: Any, upto: int) -> int:
    """The most inference steps, at most `upto`, that `scheduler` can run at any denoising (checked at 1.0,
    whose timesteps include every other strength's)."""
    for steps in range(upto, 0, -1):
        try:
            img2img_timesteps(copy.deepcopy(scheduler), steps, 1.0)
        except ValueError:
            continue
        return steps
    raise ValueError(f"the {type(scheduler).__name__} scheduler cannot run any step count up to {upto}")


def latent_shape_for(image_size: tuple[int, int], factor: int, channels: int,
                     name: str = "seed_image") -> tuple[int, int, int, int]:
    """Latent shape of a seed image of `image_size` (width, height) for a VAE with scale `factor` (see
    RiffusionPipeline.latent_shape); also what a cluster front-end checks, having no pipeline of its own."""
    width, height = image_size
    if width < factor or height < factor or width % factor or height % factor:
        raise SeedImageSizeError(
            f"{name}: {width}x{height} pixels cannot be used by this model: width and height must be "
            f"positive multiples of {factor} (its VAE's scale factor)"
        )
    return (1, channels, height // factor, width // factor)


class RiffusionPipeline:
    """Riffusion's interpolated img2img over ordinary diffusers components, with a step-wise batching API.

    Text embeddings are cached by the :class:`~pipeline.diffusion.prompts.PromptEncoder` and seed-image encodings by a
    bounded :class:`~pipeline.diffusion.latents.LatentDistributionCache`, so a steady stream of clips pays for neither twice.
    The pipeline runs on the UNet's device and dtype. ``prepare`` and ``step`` must come from one thread at a
    time; ``decode`` of finished jobs only reads those jobs and the VAE, so it may run on another (the engine's DSP
    thread does on CPUs).
    """

    def __init__(
        self,
        unet: Any,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        scheduler: Any,
        *,
        prompt_encoder: PromptEncoder | None = None,
        latent_cache_size: int = 16,
        guidance_rescale: float = 0.0,
    ) -> None:
        if not 0.0 <= guidance_rescale <= 1.0:
            raise ValueError(f"guidance_rescale: must be in [0, 1], got {guidance_rescale}")
        self.unet = unet
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.guidance_rescale = guidance_rescale  # how far guided predictions keep the text one's spread (batch.py)
        parameter = next(unet.parameters())
        self.device = parameter.device
        self.dtype = parameter.dtype
        self.prompt_encoder = prompt_encoder or PromptEncoder(
            tokenizer, text_encoder, device=self.device, dtype=self.dtype
        )
        self.latent_cache = LatentDistributionCache(latent_cache_size)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.latent_channels = int(unet.config.in_channels)
        self._vae_fp32: Any = None  # made on the first fp16 decode that overflows

    @classmethod
    def from_components(cls, components: PipelineComponents, **kwargs: Any) -> RiffusionPipeline:
        return cls(**components, **kwargs)

    @property
    def components(self) -> PipelineComponents:
        return PipelineComponents(
            unet=self.unet,
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            scheduler=self.scheduler,
        )

    def latent_shape(self, image_size: tuple[int, int], name: str = "seed_image") -> tuple[int, int, int, int]:
        """Latent shape for a seed image of ``image_size`` (width, height): its size / the VAE's scale factor.

        The geometry comes from the seed image, as in the original riffusion, never from ``unet.config.sample_size``
        (riffusion-model-v1 says 32 there, a diffusers 0.4.0 leftover). A 512x512 seed gives 64x64 latents and a
        5.12 s clip; any width that is a multiple of the scale factor gives width x 10 ms.

        Raises:
            SeedImageSizeError: a side is not a positive multiple of the scale factor (the decode would come back at
                another size than the seed, and the audio would not line up). ``name`` says which image in the message.
        """
        return latent_shape_for(image_size, self.vae_scale_factor, self.latent_channels, name)

    # One clip ---------------------------------------------------------------------------------------------------

    def generate(self, request: ClipRequest) -> Image.Image:
        """Render one clip's spectrogram image: prepare, step until done, decode."""
        job = self.prepare(request)
        while not job.done:
            self.step([job])
        return self.decode([job])[0]

    # Step-wise API ----------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def prepare(self, request: ClipRequest) -> ClipJob:
        """Validate ``request`` and build its job, in diffusers' img2img order (the loop is in ``step``)."""
        request.validate()
        alpha = float(request.alpha)
        guidance = request.guidance
        strength = request.strength

        # geometry: the latent shape the seed image sets (refused here if the model cannot take it)
        shape = self.latent_shape(request.seed_image.size)

        # conditioning: the two prompts' embeddings lerped by alpha (with the negatives' row when guided)
        prompt_embeds = self.interpolated_embeddings(request, guided=guidance > 1.0)

        # timesteps: the job's own scheduler, set up for the last int(N * strength) of N steps
        scheduler = copy.deepcopy(self.scheduler)
        timesteps = img2img_timesteps(scheduler, request.num_inference_steps, strength, self.device)

        # latents: the seed image encoded, noised to the first timestep with the two seeds' noise slerped by alpha
        noise = slerp(
            alpha,
            seeded_noise(request.start.seed, shape),
            seeded_noise(request.end.seed, shape),
        ).to(device=self.device, dtype=self.dtype)
        init_latents = self.encode_seed_image(request.seed_image, request.start.seed)
        latents = scheduler.add_noise(init_latents, noise, timesteps[:1])

        # mask: which latent pixels keep the seed image (step 5 of every step)
        keep = None
        if request.mask_image is not None:
            latent_wh = (shape[3], shape[2])
            keep = mask_to_keep(request.mask_image, request.seed_image.size, latent_wh)
            keep = keep.to(device=self.device, dtype=self.dtype)

        return ClipJob(
            request=request,
            scheduler=scheduler,
            timesteps=timesteps,
            latents=latents,
            init_latents=init_latents,
            noise=noise,
            keep=keep,
            prompt_embeds=prompt_embeds,
            guidance=guidance,
            strength=strength,
            guidance_rescale=self.guidance_rescale,
            step_kwargs=scheduler_step_kwargs(scheduler, seeded_generator(request.start.seed)),
        )

    @torch.inference_mode()
    def step(self, jobs: Sequence[ClipJob]) -> None:
        """Advance every unfinished job by one denoising step, all in one UNet batch. Finished jobs are skipped.

        Each step: 1. scale the input, 2. the UNet, 3. guidance, 4. the scheduler step, 5. the mask
        (:func:`~pipeline.diffusion.batch.denoise_step`).
        """
        denoise_step(self.unet, jobs)

    @torch.inference_mode()
    def decode(self, jobs: Sequence[ClipJob]) -> list[Image.Image]:
        """Decode finished jobs' latents to RGB images: one VAE batch on an accelerator, one by one on a CPU.

        A CPU gains nothing from batching the 512x512 decode (its activations outgrow the caches: 8 at once took
        1.27 s against 8 x 0.12 s one by one), while a GPU runs the batch at little more than one decode's cost.
        Jobs of different geometries (seed images of other widths) are decoded in separate batches.
        """
        if not jobs:
            return []
        unfinished = [index for index, job in enumerate(jobs) if not job.done]
        if unfinished:
            raise ValueError(f"jobs: job(s) at index {unfinished} still have steps left")
        images: list[Image.Image | None] = [None] * len(jobs)
        for indices in _indices_by_shape(jobs).values():
            latents = torch.cat([jobs[index].latents for index in indices]).to(self.vae.dtype)
            latents = latents / self.vae.config.scaling_factor
            chunks = latents.split(1) if latents.device.type == "cpu" else (latents,)
            pixels = torch.cat([self._decode_finite(chunk) for chunk in chunks])
            for index, image in zip(indices, tensor_to_images(pixels)):
                images[index] = image
        return [image for image in images if image is not None]

    # Pieces -----------------------------------------------------------------------------------------------------

    def _decode_finite(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE decode; a half-precision decode that overflows (inf/NaN: a black or broken clip) is redone in fp32.

        SD's VAE is known to overflow in fp16 on some latents; diffusers upcasts it (``force_upcast``). Here only
        the decodes that actually overflow pay for fp32, on a float32 copy of the VAE made the first time (so the
        device thread may keep encoding with the fp16 one meanwhile), with one warning for the pipeline's life.
        """
        pixels = self.vae.decode(latents, return_dict=False)[0]
        if latents.dtype == torch.float32 or bool(torch.isfinite(pixels).all()):
            return pixels
        if self._vae_fp32 is None:
            logger.warning("a %s VAE decode overflowed (non-finite pixels): decoding it again in float32, as every "
                           "such decode will be from now on", str(latents.dtype).removeprefix("torch."))
            self._vae_fp32 = copy.deepcopy(eager(self.vae)).float()
        return self._vae_fp32.decode(latents.float(), return_dict=False)[0].to(pixels.dtype)

    def interpolated_embeddings(self, request: ClipRequest, *, guided: bool) -> torch.Tensor:
        """Conditioning rows for ``request``: ``[uncond, text]`` if ``guided`` else ``[text]``, lerped by alpha."""
        alpha = float(request.alpha)
        prompts = [request.start.prompt, request.end.prompt]
        if guided:
            prompts = [request.start.negative_prompt or "", request.end.negative_prompt or "", *prompts]
        embeddings = self.prompt_encoder.encode_many(prompts)
        rows = [lerp(embeddings[i], embeddings[i + 1], alpha) for i in range(0, len(embeddings), 2)]
        return torch.cat(rows).to(device=self.device, dtype=self.dtype)

    @torch.inference_mode()
    def encode_seed_image(self, image: Image.Image, seed: int) -> torch.Tensor:
        """VAE-encode ``image`` (cached by content) and sample it with ``seed``, scaled into UNet latent units."""
        key = image_digest(image)
        entry = self.latent_cache.get(key)
        if entry is None:
            self.latent_shape(image.size)
            pixels = image_to_tensor(image, image.size)
            entry = self._latent_distribution(pixels.to(device=self.device, dtype=self.vae.dtype))
            self.latent_cache.put(key, entry)
        mean, std = entry
        latents = sample_latent(mean, std, seed) * self.vae.config.scaling_factor
        return latents.to(dtype=self.dtype)

    def _latent_distribution(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        encoded = self.vae.encode(pixels)
        distribution = getattr(encoded, "latent_dist", None)
        if distribution is not None:
            return distribution.mean, distribution.std
        return encoded.latents, None  # AutoencoderTiny: a deterministic encoder


def _indices_by_shape(jobs: Sequence[ClipJob]) -> dict[tuple[int, ...], list[int]]:
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, job in enumerate(jobs):
        groups.setdefault(tuple(job.latents.shape[1:]), []).append(index)
    return groups


def tensor_to_images(pixels: torch.Tensor) -> list[Image.Image]:
    """VAE output in [-1, 1], ``(batch, 3, h, w)`` -> RGB PIL images (rounded like diffusers' ``numpy_to_pil``)."""
    array = (pixels / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()
    array = (array * 255).round().astype(np.uint8)
    return [Image.fromarray(frame) for frame in array]
