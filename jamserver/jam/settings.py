"""A room's settings: what every clip is generated with unless its prompt says otherwise. Pure.

Changes of the ones in SOUND_SETTINGS can be heard at once as cut-ins (cutins.py); the others (how fast the
transition moves, guidance defaults, who may prompt) take effect from the next clip.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from jamserver.jam.validation import (
    ALPHA_VELOCITY_RANGE,
    DENOISING_RANGE,
    GUIDANCE_RANGE,
    STEPS_RANGE,
    ProtocolError,
    StepLimits,
    checked_id,
    denoising_steps,
)
from pipeline.diffusion.requests import DEFAULT_DENOISING, DEFAULT_GUIDANCE, DEFAULT_SEED_IMAGE, DEFAULT_STEPS

SOUND_SETTINGS = ("seed_image_id", "mask_image_id", "denoising", "num_inference_steps")  # changes worth a cut


@dataclass(frozen=True)
class Settings:
    """Room-wide generation settings; denoising and guidance are defaults for prompts without them."""

    seed_image_id: str = DEFAULT_SEED_IMAGE
    mask_image_id: str | None = None
    num_inference_steps: int = DEFAULT_STEPS
    alpha_velocity: float = 0.25
    denoising: float = DEFAULT_DENOISING
    guidance: float = DEFAULT_GUIDANCE
    open_jam: bool = False
    # prompts (and sound changes) cut in on the next reachable beat; False: heard from the next clip boundary
    cut_in: bool = True

    def __post_init__(self) -> None:
        checked_id("seed_image_id", self.seed_image_id)
        if self.mask_image_id is not None:
            checked_id("mask_image_id", self.mask_image_id)
        for name in ("open_jam", "cut_in"):
            if not isinstance(getattr(self, name), bool):
                raise ProtocolError("bad_field", f"{name} must be a bool", name)
        for name, limits in (("num_inference_steps", STEPS_RANGE), ("alpha_velocity", ALPHA_VELOCITY_RANGE),
                             ("denoising", DENOISING_RANGE), ("guidance", GUIDANCE_RANGE)):
            object.__setattr__(self, name, limits.check(name, getattr(self, name)))

    def updated(self, **changes: object) -> Settings:
        """A copy with `changes` applied; an unknown name is a ValueError naming it."""
        known = {f.name for f in fields(self)}
        for name in changes:
            if name not in known:
                raise ProtocolError("unknown_field", f"settings has no field {name!r}", name)
        return replace(self, **changes)


def fit_settings(settings: Settings, limits: StepLimits) -> Settings:
    """`settings` with its step count lowered as far as the caps require (for defaults, not for requests)."""
    steps = min(settings.num_inference_steps, limits.max_steps)
    while steps > 1 and denoising_steps(steps, settings.denoising) > limits.max_denoising_steps:
        steps -= 1
    return replace(settings, num_inference_steps=steps)
