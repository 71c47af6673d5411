"""Refusals: the protocol's error codes, ProtocolError, and the value checks protocol and session share.

Both the message decoder and the room state machine validate with these, so a value the session would
refuse is refused with the same code and wording when it arrives over the wire. Pure.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from pipeline.diffusion.requests import MAX_INFERENCE_STEPS

MAX_PROMPT_CHARS = 500
MAX_ID_CHARS = 64  # room, seed image and mask ids
MAX_TOKEN_CHARS = 128
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]+")  # room ids, tokens, image ids: URL- and filename-safe

# Decoding raises the first two lines' codes; the server sends the rest. docs/PROTOCOL.md says when.
ERROR_CODES = frozenset({
    "not_binary", "too_large", "bad_msgpack", "bad_message", "unknown_type", "unknown_field", "bad_field",
    "unsupported_protocol",
    "not_joined", "already_joined", "room_not_found", "bad_token", "room_full", "too_many_rooms", "not_host",
    "queue_full", "rate_limited", "server_error", "busy",
})


class ProtocolError(ValueError):
    """A refused message: `code` is one of ERROR_CODES, `field` the offending key if there is one."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field

    def frame(self) -> dict[str, Any]:
        """The "error" frame that reports this refusal to the client."""
        return error_frame(self.code, self.message, field=self.field)


def wire_kind(value: Any) -> str:
    """The msgpack name of a decoded value's type, for error messages a client author understands."""
    if value is None:
        return "nil"
    for kind, name in ((bool, "bool"), (int, "integer"), (float, "float"), (str, "string"),
                       ((bytes, bytearray), "bytes"), ((list, tuple), "array"), (dict, "map")):
        if isinstance(value, kind):
            return name
    return "extension"


def bad_field(field: str, why: str) -> ProtocolError:
    return ProtocolError("bad_field", f"{field} {why}", field)


@dataclass(frozen=True)
class NumberRange:
    """An allowed numeric range; `integer` ranges refuse floats, all refuse bools, NaN and inf."""

    low: float
    high: float
    low_inclusive: bool = True
    integer: bool = False

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        left = "[" if self.low_inclusive else "("
        return f"{kind} in {left}{self.low:g}, {self.high:g}]"

    def to_wire(self) -> dict[str, Any]:
        """This range as `welcome.limits` reports it, so a client shapes its controls by the server's checks."""
        return {"min": self.low, "max": self.high, "min_inclusive": self.low_inclusive, "integer": self.integer}

    def check(self, field: str, value: Any) -> Any:
        """`value` as int or float if it is in range; otherwise a bad_field error naming `field`."""
        accepted = (int,) if self.integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, accepted):
            raise bad_field(field, f"must be {self.describe()}, got {wire_kind(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise bad_field(field, f"must be a finite number, got {value}")
        above_low = value >= self.low if self.low_inclusive else value > self.low
        if not (above_low and value <= self.high):
            raise bad_field(field, f"must be {self.describe()}, got {value}")
        return int(value) if self.integer else float(value)


SEED_RANGE = NumberRange(0, 2**32 - 1, integer=True)
STEPS_RANGE = NumberRange(1, MAX_INFERENCE_STEPS, integer=True)
DENOISING_RANGE = NumberRange(0.0, 1.0, low_inclusive=False)
GUIDANCE_RANGE = NumberRange(0.0, 30.0)
ALPHA_VELOCITY_RANGE = NumberRange(0.0, 1.0, low_inclusive=False)


def denoising_steps(steps: int, denoising: float) -> int:
    """UNet steps a clip runs: the last int(steps x denoising) of `steps`, at least one (img2img's rule)."""
    return min(max(int(steps * denoising), 1), steps)


@dataclass(frozen=True)
class StepLimits:
    """The server's cap on what one clip may cost: its num_inference_steps, and the steps it runs (x denoising)."""

    max_steps: int = 50
    max_denoising_steps: int = 50

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.max_denoising_steps < 1:
            raise ValueError("max_steps and max_denoising_steps must be at least 1")

    def check(self, steps: int, denoising: float, field: str) -> None:
        """Refuse (naming `field`) a combination above the caps."""
        if steps > self.max_steps:
            raise bad_field("num_inference_steps", f"must be at most {self.max_steps} on this server, got {steps}")
        cost = denoising_steps(steps, denoising)
        if cost > self.max_denoising_steps:
            raise bad_field(field, f"would make {steps} steps x denoising {denoising:g} = {cost} denoising steps "
                                   f"a clip; this server allows {self.max_denoising_steps}")


def checked_text(field: str, value: Any, *, max_chars: int = MAX_PROMPT_CHARS) -> str:
    """A prompt-like string, stripped; refuses non-strings, empties, over-long and control chars."""
    if not isinstance(value, str):
        raise bad_field(field, f"must be a string, got {wire_kind(value)}")
    text = value.strip()
    if not text:
        raise bad_field(field, "must not be empty")
    if len(text) > max_chars:
        raise bad_field(field, f"must be at most {max_chars} characters, got {len(text)}")
    if any(unicodedata.category(char) == "Cc" and char not in "\t\n" for char in text):
        raise bad_field(field, "must not contain control characters")
    return text


def checked_id(field: str, value: Any, *, max_chars: int = MAX_ID_CHARS,
               known: Collection[str] | None = None) -> str:
    """An identifier of letters, digits, '_' and '-'; with `known`, it must also be one of those."""
    if not isinstance(value, str):
        raise bad_field(field, f"must be a string, got {wire_kind(value)}")
    if not 1 <= len(value) <= max_chars or not ID_PATTERN.fullmatch(value):
        raise bad_field(field, f"must be 1-{max_chars} letters, digits, '_' or '-'")
    if known is not None and value not in known:
        choices = ", ".join(sorted(known)) or "none"
        raise bad_field(field, f"names no known image: {value!r} (known: {choices})")
    return value


def error_frame(code: str, message: str, *, field: str | None = None) -> dict[str, Any]:
    """A refusal; the connection stays open."""
    if code not in ERROR_CODES:
        raise ValueError(f"unknown error code {code!r}")
    frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if field is not None:
        frame["field"] = field
    return frame
