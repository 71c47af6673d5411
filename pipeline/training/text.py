"""Stage 3a: teach the small CLIP text encoder what a caption says before the UNet learns to listen to it.

Trained jointly from random weights, the encoder's outputs for different captions stayed nearly alike (their spread
across captions a tenth of their overall spread), and after 3,500 UNet steps the right caption predicted the noise
only 0.3% better than a wrong one: the UNet had nothing distinct to attend to, and the encoder got no useful
gradient from a UNet that ignored it. So the encoder first learns, from captions alone, to name what they describe:
small heads on its pooled output predict the clip's lead, style, mode, tonic, tempo and solo flag (a caption that
does not mention one can only give the prior for it). The UNet stage then keeps the encoder frozen, the way Stable
Diffusion keeps CLIP frozen.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.music.captions import caption
from pipeline.music.clip import INSTRUMENTS, ClipSpec
from pipeline.music.dataset import spec_from_labels
from pipeline.music.styles import STYLE_NAMES
from pipeline.training.checkpoints import load_state, save_state, step_generator
from pipeline.training.progress import Progress


@dataclasses.dataclass(frozen=True)
class TextSettings:
    steps: int = 1500
    batch: int = 64
    learning_rate: float = 1e-3
    seed: int = 13


# What a caption can say about its clip, as class indices of each head.
LABEL_CLASSES = {
    "lead": lambda spec: INSTRUMENTS.index(spec.lead),
    "style": lambda spec: STYLE_NAMES.index(spec.style),
    "mode": lambda spec: int(spec.key.mode == "minor"),
    "tonic": lambda spec: spec.key.tonic,
    "beats": lambda spec: spec.beats - 6,
    "solo": lambda spec: int(spec.solo),
}
HEAD_SIZES = {"lead": len(INSTRUMENTS), "style": len(STYLE_NAMES), "mode": 2, "tonic": 12, "beats": 11, "solo": 2}


class CaptionHeads(torch.nn.Module):
    """One linear classifier a label, on the encoder's pooled (end-of-text) output."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.heads = torch.nn.ModuleDict({name: torch.nn.Linear(width, size) for name, size in HEAD_SIZES.items()})

    def forward(self, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: head(pooled) for name, head in self.heads.items()}


def label_targets(specs: list[ClipSpec]) -> dict[str, torch.Tensor]:
    return {name: torch.tensor([label(spec) for spec in specs]) for name, label in LABEL_CLASSES.items()}


def caption_loss(logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(F.cross_entropy(logits[name], targets[name]) for name in HEAD_SIZES)


def lead_accuracy(text_encoder, heads: CaptionHeads, tokens, specs: list[ClipSpec], held_out: bool) -> float:
    """How often the heads name the lead of captions drawn from the training or the held-out templates."""
    rng = np.random.default_rng(0)
    ids = tokens([caption(spec, rng, held_out=held_out) for spec in specs])
    with torch.no_grad():
        logits = heads(text_encoder(ids).pooler_output)["lead"]
    return float((logits.argmax(-1) == label_targets(specs)["lead"]).float().mean())


def train_text_encoder(text_encoder, labels: list[dict], tokens, state_path: Path, settings: TextSettings):
    """Train (or load the finished) encoder; returns it frozen, with a summary of its lead accuracy on captions."""
    state = load_state(state_path)
    if state is not None:
        text_encoder.load_state_dict(state["text"])
        return text_encoder.eval().requires_grad_(False), state["summary"]
    torch.manual_seed(settings.seed)
    heads = CaptionHeads(text_encoder.config.hidden_size)
    parameters = list(text_encoder.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=1e-2)
    progress = Progress("text", settings.steps)
    text_encoder.train()
    for step in range(settings.steps):
        rng = np.random.default_rng([settings.seed, step])
        picks = torch.randint(len(labels), (settings.batch,), generator=step_generator(settings.seed, step)).tolist()
        specs = [spec_from_labels(labels[i]) for i in picks]
        ids = tokens([caption(spec, rng) for spec in specs])
        for group in optimizer.param_groups:
            group["lr"] = settings.learning_rate * 0.5 * (1 + np.cos(np.pi * step / settings.steps))
        loss = caption_loss(heads(text_encoder(ids).pooler_output), label_targets(specs))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        progress.update(step + 1, loss.item())
    text_encoder.eval()
    check = [spec_from_labels(labels[i]) for i in range(min(len(labels), 400))]
    summary = {
        "steps": settings.steps,
        "final_loss": loss.item(),
        "lead_accuracy_training_templates": lead_accuracy(text_encoder, heads, tokens, check, held_out=False),
        "lead_accuracy_held_out_templates": lead_accuracy(text_encoder, heads, tokens, check, held_out=True),
    }
    save_state(state_path, {"text": text_encoder.state_dict(), "summary": summary})
    return text_encoder.requires_grad_(False), summary
