"""The original riffusion REST API: request JSON -> ClipRequest, RenderedClip -> response JSON.

Field names, defaults and messages follow the original server so its clients work unchanged;
every refusal is a `CompatError` whose text names the field (the app answers it with HTTP 400).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from jamserver.jam.validation import ProtocolError, StepLimits
from pipeline.diffusion.requests import (
    DEFAULT_DENOISING,
    DEFAULT_GUIDANCE,
    DEFAULT_SEED_IMAGE,
    DEFAULT_STEPS,
    ClipRequest,
    PromptInput,
)
from pipeline.render import RenderedClip, data_url, jpeg_bytes, mp3_bytes
from pipeline.seeds import SeedLibrary, UnknownSeedImage

MAX_PROMPT_CHARS = 2000


class CompatError(ValueError):
    """A request the original API would refuse; the message is the HTTP 400 body."""


def _field(body: Mapping[str, Any], name: str, path: str, kind: type | tuple, default: Any = ...) -> Any:
    if name not in body or body[name] is None:
        if default is ...:
            raise CompatError(f"Missing field: {path}{name}")
        return default
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise CompatError(f"Invalid field: {path}{name} must be {_kind_name(kind)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise CompatError(f"Invalid field: {path}{name} must be finite")
    if isinstance(value, str) and len(value) > MAX_PROMPT_CHARS:
        raise CompatError(f"Invalid field: {path}{name} is longer than {MAX_PROMPT_CHARS} characters")
    return value


def _kind_name(kind: type | tuple) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {int: "an integer", float: "a number", str: "a string", dict: "an object"}
    return " or ".join(names.get(k, k.__name__) for k in kinds if k is not int or float not in kinds)


def _number(body: Mapping[str, Any], name: str, path: str, default: Any = ...) -> float:
    return float(_field(body, name, path, (int, float), default))


def parse_prompt_input(body: Any, path: str) -> PromptInput:
    if not isinstance(body, dict):
        raise CompatError(f"Invalid field: {path.rstrip('.')} must be an object")
    return PromptInput(
        prompt=_field(body, "prompt", path, str),
        seed=int(_field(body, "seed", path, int)),
        negative_prompt=_field(body, "negative_prompt", path, str, None),
        denoising=_number(body, "denoising", path, DEFAULT_DENOISING),
        guidance=_number(body, "guidance", path, DEFAULT_GUIDANCE),
    )


def parse_inference_input(body: Any, seeds: SeedLibrary,
                          check_size: Callable[[tuple[int, int], str], object] | None = None,
                          limits: StepLimits | None = None) -> ClipRequest:
    """The original InferenceInput, validated (and held to the server's step caps, if given); unknown seed or
    mask ids use the original messages.

    ``check_size(size, name)`` (the model's ``latent_shape``) refuses, by raising ValueError with a message that
    starts with ``name``, a seed image whose size the model cannot take: "Invalid seed image: ID: why".
    """
    if not isinstance(body, dict):
        raise CompatError("Request body must be a JSON object")
    seed_image_id = _field(body, "seed_image_id", "", str, DEFAULT_SEED_IMAGE)
    mask_image_id = _field(body, "mask_image_id", "", str, None)
    try:
        seed_image = seeds.load_seed(seed_image_id)
        mask_image = seeds.load_mask(mask_image_id) if mask_image_id is not None else None
    except UnknownSeedImage as error:  # "Invalid seed image: ID", as the original said
        raise CompatError(str(error)) from error
    if check_size is not None:
        try:
            check_size(seed_image.size, f"Invalid seed image: {seed_image_id}")
        except ValueError as error:
            raise CompatError(str(error)) from error
    request = ClipRequest(
        start=parse_prompt_input(body.get("start"), "start."),
        end=parse_prompt_input(body.get("end"), "end."),
        alpha=_number(body, "alpha", ""),
        num_inference_steps=int(_field(body, "num_inference_steps", "", int, DEFAULT_STEPS)),
        seed_image=seed_image,
        mask_image=mask_image,
    )
    try:
        request.validate()
    except ValueError as error:
        raise CompatError(str(error)) from error
    if limits is not None:
        try:
            limits.check(request.num_inference_steps, request.strength, "num_inference_steps")
        except ProtocolError as error:
            raise CompatError(f"Invalid field: {error.message}") from error
    return request


def inference_output(clip: RenderedClip) -> dict[str, Any]:
    """The original InferenceOutput: data URLs of a JPEG and an MP3, and the duration."""
    return {
        "image": data_url("image/jpeg", jpeg_bytes(clip.image)),
        "audio": data_url("audio/mpeg", mp3_bytes(clip)),
        "duration_s": clip.duration,
    }
