"""The one prompt type: what a member asks the jam to play, from the wire to the clip frame that reports it.

A `Prompt` that exists is valid: construction runs the protocol's checks and raises `ProtocolError` naming the
field, so a prompt is validated once where it enters (a client message, a command line, a recorder script) and the
session, the rooms and the recorder trust it. It is the `prompt` client message itself (`TYPE`, `HOST_ONLY`).
Fields left None follow the room: the seed walks on from the start prompt's, denoising and guidance come from the
room's settings when a clip is planned (`with_defaults`). A planned clip's prompts have every field set, and the
pipeline's `PromptInput` is made from them (`jamserver.server.room.generation`). Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar

from jamserver.jam.validation import (
    DENOISING_RANGE,
    GUIDANCE_RANGE,
    SEED_RANGE,
    bad_field,
    checked_text,
)


@dataclass(frozen=True)
class Prompt:
    """A prompt; None seed: the start prompt's, None denoising/guidance: the room's settings."""

    TYPE: ClassVar[str] = "prompt"
    HOST_ONLY: ClassVar[bool] = True  # unless the room is an open jam
    FIELDS: ClassVar[tuple[str, ...]]  # the wire keys, in order; set below
    prompt: str
    seed: int | None = None
    negative_prompt: str | None = None
    denoising: float | None = None
    guidance: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt", checked_text("prompt", self.prompt))
        negative = self.negative_prompt
        if isinstance(negative, str) and not negative.strip():  # an empty negative prompt means none
            negative = None
        object.__setattr__(self, "negative_prompt", None if negative is None else checked_text("negative_prompt",
                                                                                                 negative))
        for name, limits in (("seed", SEED_RANGE), ("denoising", DENOISING_RANGE), ("guidance", GUIDANCE_RANGE)):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, limits.check(name, getattr(self, name)))

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> Prompt:
        """A prompt from a map with the wire's keys (absent or null: not set); other keys are the caller's."""
        if raw.get("prompt") is None:
            raise bad_field("prompt", "is required")
        return cls(**{name: raw.get(name) for name in cls.FIELDS})

    def to_wire(self) -> dict[str, Any]:
        """Every field by its wire key, None included (a clip frame's `start`/`end`, a timeline row)."""
        return {name: getattr(self, name) for name in self.FIELDS}

    @property
    def complete(self) -> bool:
        """Every field a clip is rendered with is set (the negative prompt may stay None)."""
        return None not in (self.seed, self.denoising, self.guidance)

    def with_defaults(self, *, denoising: float, guidance: float) -> Prompt:
        """Denoising and guidance filled in where this prompt left them to the room."""
        return replace(
            self,
            denoising=denoising if self.denoising is None else self.denoising,
            guidance=guidance if self.guidance is None else self.guidance,
        )

    def same_words(self, other: Prompt) -> bool:
        """The same prompt and negative prompt, whatever the numbers."""
        return self.prompt == other.prompt and self.negative_prompt == other.negative_prompt


Prompt.FIELDS = tuple(f.name for f in fields(Prompt))
