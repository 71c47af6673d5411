"""What one clip is made from: the request types of the pipeline and the original request's defaults and limits.

Kept apart from the pipeline (and free of torch) so that the step-wise batch code, the pipeline and the servers that
build requests all import them without importing each other, and a command line can show the defaults quickly.
The defaults are the original riffusion InferenceInput's: 50 steps, the ``og_beat`` seed image, denoising 0.75,
guidance 7.0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from PIL import Image

DEFAULT_STEPS = 50
MAX_INFERENCE_STEPS = 1000
DEFAULT_SEED_IMAGE = "og_beat"
DEFAULT_DENOISING = 0.75
DEFAULT_GUIDANCE = 7.0
# Any int a torch generator accepts (negative ones wrap around like torch does).
SEED_MIN = -(2**63)
SEED_MAX = 2**64 - 1

Value = TypeVar("Value")


def lerp(start: Value, end: Value, alpha: float) -> Value:
    """``start + alpha * (end - start)``: exactly ``start`` at alpha 0, the form the original used for embeddings."""
    return start + alpha * (end - start)


def validate_seed(seed: object, field: str) -> int:
    """The seed as an int, or ValueError naming ``field``."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"{field}: expected an int, got {type(seed).__name__}")
    if not SEED_MIN <= int(seed) <= SEED_MAX:
        raise ValueError(f"{field}: {seed} is outside {SEED_MIN}..{SEED_MAX}")
    return int(seed)


def _require_finite(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"{field}: expected a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{field}: must be finite, got {value}")
    return float(value)


@dataclass(frozen=True)
class PromptInput:
    """One end of an interpolation, as in the original riffusion request."""

    prompt: str
    seed: int
    negative_prompt: str | None = None
    denoising: float = DEFAULT_DENOISING
    guidance: float = DEFAULT_GUIDANCE

    def validate(self, field: str = "prompt_input") -> None:
        """Raise ValueError naming the offending field (``start.denoising`` ...) for anything unusable."""
        if not isinstance(self.prompt, str):
            raise ValueError(f"{field}.prompt: expected a str, got {type(self.prompt).__name__}")
        if self.negative_prompt is not None and not isinstance(self.negative_prompt, str):
            raise ValueError(f"{field}.negative_prompt: expected a str or None")
        validate_seed(self.seed, f"{field}.seed")
        denoising = _require_finite(self.denoising, f"{field}.denoising")
        if not 0.0 < denoising <= 1.0:
            raise ValueError(f"{field}.denoising: must be in (0, 1], got {denoising}")
        _require_finite(self.guidance, f"{field}.guidance")


@dataclass(frozen=True)
class ClipRequest:
    """Everything that determines one clip. Equal requests give identical images."""

    start: PromptInput
    end: PromptInput
    alpha: float
    seed_image: Image.Image
    num_inference_steps: int = DEFAULT_STEPS
    mask_image: Image.Image | None = None

    def validate(self) -> None:
        """Raise ValueError naming the field. The seed image's size sets the clip's geometry (the pipeline checks
        the model can take it); a mask of another size is resized to the seed image's."""
        for name in ("start", "end"):
            value = getattr(self, name)
            if not isinstance(value, PromptInput):
                raise ValueError(f"{name}: expected a PromptInput, got {type(value).__name__}")
            value.validate(name)
        alpha = _require_finite(self.alpha, "alpha")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha: must be in [0, 1], got {alpha}")
        steps = self.num_inference_steps
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
            raise ValueError(f"num_inference_steps: expected an int, got {type(steps).__name__}")
        if not 1 <= steps <= MAX_INFERENCE_STEPS:
            raise ValueError(f"num_inference_steps: must be in 1..{MAX_INFERENCE_STEPS}, got {steps}")
        if not isinstance(self.seed_image, Image.Image):
            raise ValueError(f"seed_image: expected a PIL image, got {type(self.seed_image).__name__}")
        if self.mask_image is not None and not isinstance(self.mask_image, Image.Image):
            raise ValueError(f"mask_image: expected a PIL image or None, got {type(self.mask_image).__name__}")

    @property
    def guidance(self) -> float:
        return lerp(float(self.start.guidance), float(self.end.guidance), float(self.alpha))

    @property
    def strength(self) -> float:
        """How much of the seed image is re-noised: the lerped denoising."""
        return lerp(float(self.start.denoising), float(self.end.denoising), float(self.alpha))
