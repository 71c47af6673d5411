"""Stage 3b: train the UNet on pre-encoded latents and fresh captions, read by the frozen text encoder of stage 3a.

Each step draws clips, samples their latents from the VAE posterior, captions them with a random training template
(the empty prompt 10% of the time, which is what classifier-free guidance subtracts), and learns to predict the noise
added at a random timestep, as v = sqrt(alpha_bar) noise - sqrt(1 - alpha_bar) latent (the scheduler's
``prediction_type``). The loss is Min-SNR weighted (Hang et al., 2023): nearly clean timesteps, whose errors are about
fine texture, count for less, so the steps go to the noisy ones where a clip's instrument and style are decided. An exponential moving average of the weights is what gets exported.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from pipeline.diffusion.prompts import PromptEncoder
from pipeline.model.mini import (
    build_mini_scheduler,
    build_mini_unet,
)
from pipeline.music.captions import caption
from pipeline.music.dataset import spec_from_labels
from pipeline.training.checkpoints import Saver, load_state, save_state, step_generator
from pipeline.training.progress import Progress

CAPTION_DROPOUT = 0.1
MIN_SNR_GAMMA = 5.0


@dataclasses.dataclass(frozen=True)
class UnetSettings:
    steps: int = 7630  # the shipped weights' steps: ~80 min of the 3-hour budget at 0.6 s a step on 2 cores
    batch: int = 16
    learning_rate: float = 3e-4
    warmup: int = 500
    ema_decay: float = 0.999
    seed: int = 11


class CaptionTokens:
    """Token ids exactly as the pipeline's PromptEncoder builds them (BOS, words, EOS, padding to 77)."""

    def __init__(self, tokenizer, text_encoder) -> None:
        self.encoder = PromptEncoder(tokenizer, text_encoder)
        self.cache: dict[str, list[int]] = {}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        rows = []
        for text in captions:
            if text not in self.cache:
                self.cache[text] = self.encoder.tokenize(text)[0].input_ids
            rows.append(self.cache[text])
        return torch.tensor(rows, dtype=torch.long)


def learning_rate(step: int, settings: UnetSettings) -> float:
    """Warm-up, then constant: the state at step N is the same whatever the planned total, so any checkpoint can be
    exported and reproduced with ``--unet-steps N`` (the EMA does the averaging a decay would)."""
    return settings.learning_rate * min(1.0, (step + 1) / settings.warmup)


def min_snr_weights(alpha_bars: torch.Tensor, gamma: float = MIN_SNR_GAMMA) -> torch.Tensor:
    """Per-sample weights of the v-prediction loss, min(SNR, gamma) / (SNR + 1), SNR = alpha_bar / (1 - alpha_bar):
    the weighted v error is then min(SNR, gamma) times the error of the clean latent it implies."""
    snr = alpha_bars / (1 - alpha_bars)
    return torch.clamp(snr, max=gamma) / (snr + 1)


def batch_captions(labels: list[dict], picks: list[int], rng: np.random.Generator) -> list[str]:
    return ["" if rng.random() < CAPTION_DROPOUT else caption(spec_from_labels(labels[i]), rng) for i in picks]


def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for ema_param, param in zip(ema.parameters(), model.parameters(), strict=True):
            ema_param.lerp_(param, 1.0 - decay)


def average_gradients(parameters: list[torch.nn.Parameter], world: int) -> None:
    """Sum the ranks' gradients in one all-reduce and divide: each rank then holds the whole batch's mean gradient."""
    grads = [parameter.grad for parameter in parameters if parameter.grad is not None]
    flat = torch.cat([grad.flatten() for grad in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def train_unet(
    means: torch.Tensor, stds: torch.Tensor, scale: float, labels: list[dict], tokens: CaptionTokens,
    text_encoder: torch.nn.Module, state_path: Path, settings: UnetSettings, rank: int = 0, world: int = 1,
) -> tuple[torch.nn.Module, dict]:
    """Train (or resume); returns the EMA UNet and a summary (step, loss) once done. ``text_encoder`` stays frozen.

    With ``world`` > 1 (a torch.distributed group), each rank computes its share of every batch and the gradients
    are averaged, so the ranks take the same steps as one process would on the whole batch, in parallel. Rank 0
    saves the checkpoints and prints the progress.
    """
    if settings.batch % world:
        raise ValueError(f"batch {settings.batch} does not split over {world} ranks")
    own = slice(rank * settings.batch // world, (rank + 1) * settings.batch // world)
    torch.manual_seed(settings.seed)
    unet = build_mini_unet()
    ema_unet = copy.deepcopy(unet)
    parameters = list(unet.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=1e-2)
    scheduler = build_mini_scheduler()
    alphas = scheduler.alphas_cumprod.float()
    state = load_state(state_path)
    step, history = 0, []
    if state is not None:
        unet.load_state_dict(state["unet"])
        ema_unet.load_state_dict(state["ema_unet"])
        optimizer.load_state_dict(state["optimizer"])
        step, history = state["step"], state["history"]
    progress, saver = Progress("unet", settings.steps, step), Saver()
    unet.train()
    losses: list[float] = []
    while step < settings.steps:
        generator = step_generator(settings.seed, step)
        rng = np.random.default_rng([settings.seed, step])
        picks = torch.randint(len(means), (settings.batch,), generator=generator).tolist()
        latents = (means[picks].float() + stds[picks].float() * torch.randn(means[picks].shape, generator=generator))
        latents = latents * scale
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, len(alphas), (settings.batch,), generator=generator)
        alpha = alphas[timesteps].view(-1, 1, 1, 1)
        noisy = alpha.sqrt() * latents + (1 - alpha).sqrt() * noise
        ids = tokens(batch_captions(labels, picks, rng))
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, settings)
        with torch.no_grad():
            hidden = text_encoder(ids[own])[0]
        prediction = unet(noisy[own], timesteps[own], encoder_hidden_states=hidden).sample
        velocity = alpha.sqrt() * noise - (1 - alpha).sqrt() * latents
        errors = F.mse_loss(prediction, velocity[own], reduction="none").mean(dim=(1, 2, 3))
        loss = (min_snr_weights(alphas[timesteps[own]]) * errors).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if world > 1:
            average_gradients(parameters, world)
            loss = loss.detach().clone()
            dist.all_reduce(loss)
            loss /= world
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        update_ema(ema_unet, unet, settings.ema_decay if step > settings.warmup else 0.0)
        step += 1
        losses.append(loss.item())
        if rank == 0:
            progress.update(step, losses[-1])
        if step % 500 == 0:
            history.append((step, float(np.mean(losses[-500:]))))
        if rank == 0 and (saver.due() or step == settings.steps):
            save_state(state_path, {"unet": unet.state_dict(), "ema_unet": ema_unet.state_dict(),
                                    "optimizer": optimizer.state_dict(), "step": step, "history": history})
    summary = {"steps": step, "loss_history": history}
    return ema_unet.eval().requires_grad_(False), summary
