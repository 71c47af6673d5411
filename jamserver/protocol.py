"""The WebSocket protocol, version 1: client message validation and every server frame shape.

Frames are binary msgpack maps with a "type" key. Everything a client sends goes through
`decode_client_message`, which either returns a typed message or raises `ProtocolError` naming the
field and the reason; the server answers that with an "error" frame and keeps the connection open.
Unknown keys are refused rather than ignored so a misspelt field ("guidence") is reported instead
of silently doing nothing. Pure: no I/O, no clocks. docs/PROTOCOL.md is the reader's version.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Collection, Mapping, Sequence, Union

import msgpack

PROTOCOL_VERSION = 1

MAX_PROMPT_CHARS = 500
MAX_ID_CHARS = 64  # room, seed image and mask ids
MAX_TOKEN_CHARS = 128
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]+")  # room ids, tokens, image ids: URL- and filename-safe

ROLES = ("host", "listener")

# Decoding raises the first two lines' codes; the server sends the rest. docs/PROTOCOL.md says when.
ERROR_CODES = frozenset({
    "not_binary", "too_large", "bad_msgpack", "bad_message", "unknown_type", "unknown_field", "bad_field",
    "unsupported_protocol",
    "not_joined", "already_joined", "room_not_found", "bad_token", "room_full", "too_many_rooms", "not_host",
    "queue_full", "rate_limited", "server_error",
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


# -- value checks (shared with the session so both refuse the same things) ----------------------


def wire_kind(value: Any) -> str:
    """The msgpack name of a decoded value's type, for error messages a client author understands."""
    if value is None:
        return "nil"
    for kind, name in ((bool, "bool"), (int, "integer"), (float, "float"), (str, "string"),
                       ((bytes, bytearray), "bytes"), ((list, tuple), "array"), (dict, "map")):
        if isinstance(value, kind):
            return name
    return "extension"


def _bad(field: str, why: str) -> ProtocolError:
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

    def check(self, field: str, value: Any) -> Any:
        """`value` as int or float if it is in range; otherwise a bad_field error naming `field`."""
        accepted = (int,) if self.integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, accepted):
            raise _bad(field, f"must be {self.describe()}, got {wire_kind(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise _bad(field, f"must be a finite number, got {value}")
        above_low = value >= self.low if self.low_inclusive else value > self.low
        if not (above_low and value <= self.high):
            raise _bad(field, f"must be {self.describe()}, got {value}")
        return int(value) if self.integer else float(value)


SEED_RANGE = NumberRange(0, 2**32 - 1, integer=True)
STEPS_RANGE = NumberRange(1, 1000, integer=True)
DENOISING_RANGE = NumberRange(0.0, 1.0, low_inclusive=False)
GUIDANCE_RANGE = NumberRange(0.0, 30.0)
ALPHA_VELOCITY_RANGE = NumberRange(0.0, 1.0, low_inclusive=False)


def checked_text(field: str, value: Any, *, max_chars: int = MAX_PROMPT_CHARS) -> str:
    """A prompt-like string, stripped; refuses non-strings, empties, over-long and control chars."""
    if not isinstance(value, str):
        raise _bad(field, f"must be a string, got {wire_kind(value)}")
    text = value.strip()
    if not text:
        raise _bad(field, "must not be empty")
    if len(text) > max_chars:
        raise _bad(field, f"must be at most {max_chars} characters, got {len(text)}")
    if any(unicodedata.category(char) == "Cc" and char not in "\t\n" for char in text):
        raise _bad(field, "must not contain control characters")
    return text


def checked_id(field: str, value: Any, *, max_chars: int = MAX_ID_CHARS,
               known: Collection[str] | None = None) -> str:
    """An identifier of letters, digits, '_' and '-'; with `known`, it must also be one of those."""
    if not isinstance(value, str):
        raise _bad(field, f"must be a string, got {wire_kind(value)}")
    if not 1 <= len(value) <= max_chars or not ID_PATTERN.fullmatch(value):
        raise _bad(field, f"must be 1-{max_chars} letters, digits, '_' or '-'")
    if known is not None and value not in known:
        choices = ", ".join(sorted(known)) or "none"
        raise _bad(field, f"names no known image: {value!r} (known: {choices})")
    return value


# -- client messages ----------------------------------------------------------------------------


class _Unset:
    """Marks a settings field the client did not send (null means "no mask", not "unchanged")."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


@dataclass(frozen=True)
class Join:
    """First message: join `room`, or create a new room (and become its host) when room is None."""

    TYPE: ClassVar[str] = "join"
    HOST_ONLY: ClassVar[bool] = False
    room: str | None = None
    token: str | None = None
    protocol: int | None = None


@dataclass(frozen=True)
class PromptMessage:
    """Queue a prompt; None fields fall back to the start's seed and the room's settings."""

    TYPE: ClassVar[str] = "prompt"
    HOST_ONLY: ClassVar[bool] = True  # unless the room is an open jam
    prompt: str
    seed: int | None = None
    negative_prompt: str | None = None
    denoising: float | None = None
    guidance: float | None = None


@dataclass(frozen=True)
class SettingsMessage:
    """Change some room settings; only fields that are not UNSET change."""

    TYPE: ClassVar[str] = "settings"
    HOST_ONLY: ClassVar[bool] = True
    seed_image_id: str = UNSET
    mask_image_id: str | None = UNSET
    num_inference_steps: int = UNSET
    alpha_velocity: float = UNSET
    denoising: float = UNSET
    guidance: float = UNSET
    open_jam: bool = UNSET

    def changes(self) -> dict[str, Any]:
        """The fields the client sent, ready for `JamSession.update_settings(**changes)`."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not UNSET}


@dataclass(frozen=True)
class Pause:
    TYPE: ClassVar[str] = "pause"
    HOST_ONLY: ClassVar[bool] = True


@dataclass(frozen=True)
class Resume:
    TYPE: ClassVar[str] = "resume"
    HOST_ONLY: ClassVar[bool] = True


@dataclass(frozen=True)
class Ping:
    """Keepalive / latency probe; `t` is any client number, echoed back in the pong."""

    TYPE: ClassVar[str] = "ping"
    HOST_ONLY: ClassVar[bool] = False
    t: float | None = None


ClientMessage = Union[Join, PromptMessage, SettingsMessage, Pause, Resume, Ping]
CLIENT_MESSAGES: dict[str, type] = {cls.TYPE: cls for cls in ClientMessage.__args__}


def _parse_join(raw: Mapping[str, Any], _seeds: Any, _masks: Any) -> Join:
    protocol = raw.get("protocol")
    if protocol is not None:
        protocol = NumberRange(1, 2**31 - 1, integer=True).check("protocol", protocol)
        if protocol != PROTOCOL_VERSION:
            raise ProtocolError("unsupported_protocol",
                                f"protocol {protocol} is not supported; this server speaks {PROTOCOL_VERSION}",
                                "protocol")
    room, token = raw.get("room"), raw.get("token")
    return Join(
        room=None if room is None else checked_id("room", room),
        token=None if token is None else checked_id("token", token, max_chars=MAX_TOKEN_CHARS),
        protocol=protocol,
    )


def _parse_prompt(raw: Mapping[str, Any], _seeds: Any, _masks: Any) -> PromptMessage:
    if raw.get("prompt") is None:
        raise _bad("prompt", "is required")
    negative = raw.get("negative_prompt")
    negative = None if negative is None or (isinstance(negative, str) and not negative.strip()) else negative
    optional = {"seed": SEED_RANGE, "denoising": DENOISING_RANGE, "guidance": GUIDANCE_RANGE}
    return PromptMessage(
        prompt=checked_text("prompt", raw["prompt"]),
        negative_prompt=None if negative is None else checked_text("negative_prompt", negative),
        **{key: None if raw.get(key) is None else limits.check(key, raw[key]) for key, limits in optional.items()},
    )


def _parse_settings(raw: Mapping[str, Any], seeds: Collection[str] | None,
                    masks: Collection[str] | None) -> SettingsMessage:
    ranges = {"num_inference_steps": STEPS_RANGE, "alpha_velocity": ALPHA_VELOCITY_RANGE,
              "denoising": DENOISING_RANGE, "guidance": GUIDANCE_RANGE}
    changes: dict[str, Any] = {key: limits.check(key, raw[key])
                               for key, limits in ranges.items() if raw.get(key) is not None}
    if raw.get("seed_image_id") is not None:
        changes["seed_image_id"] = checked_id("seed_image_id", raw["seed_image_id"], known=seeds)
    if "mask_image_id" in raw:  # null is meaningful here: "no mask"
        mask = raw["mask_image_id"]
        changes["mask_image_id"] = None if mask is None else checked_id("mask_image_id", mask, known=masks)
    if raw.get("open_jam") is not None:
        if not isinstance(raw["open_jam"], bool):
            raise _bad("open_jam", f"must be a bool, got {wire_kind(raw['open_jam'])}")
        changes["open_jam"] = raw["open_jam"]
    return SettingsMessage(**changes)


def _parse_ping(raw: Mapping[str, Any], _seeds: Any, _masks: Any) -> Ping:
    t = raw.get("t")
    return Ping(t=None if t is None else NumberRange(-1e300, 1e300).check("t", t))


_PARSERS = {
    "join": _parse_join,
    "prompt": _parse_prompt,
    "settings": _parse_settings,
    "pause": lambda raw, _s, _m: Pause(),
    "resume": lambda raw, _s, _m: Resume(),
    "ping": _parse_ping,
}


def _unpack(data: Any, max_bytes: int) -> dict[str, Any]:
    if isinstance(data, str):
        raise ProtocolError("not_binary", "messages must be binary msgpack frames, not text")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise ProtocolError("too_large", f"message is {len(data)} bytes; the limit is {max_bytes}")
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=True, timestamp=0)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        reason = str(exc) or type(exc).__name__
        raise ProtocolError("bad_msgpack", f"message is not valid msgpack: {reason}") from None
    if not isinstance(raw, dict):
        raise ProtocolError("bad_message", f"message must be a map, got {wire_kind(raw)}")
    if not all(isinstance(key, str) for key in raw):
        raise ProtocolError("bad_message", "message keys must be strings")
    return raw


def decode_client_message(
    data: bytes,
    *,
    max_bytes: int,
    seed_image_ids: Collection[str] | None = None,
    mask_image_ids: Collection[str] | None = None,
) -> ClientMessage:
    """Validate one client frame. Image ids are checked against the given sets when they are passed."""
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
    raw = _unpack(data, max_bytes)
    kind = raw.get("type")
    if kind is None:
        raise _bad("type", "is required")
    if not isinstance(kind, str):
        raise _bad("type", f"must be a string, got {wire_kind(kind)}")
    if kind not in _PARSERS:
        known = ", ".join(_PARSERS)
        raise ProtocolError("unknown_type", f"unknown message type {kind[:40]!r} (known: {known})", "type")
    allowed = {f.name for f in fields(CLIENT_MESSAGES[kind])} | {"type"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ProtocolError("unknown_field", f"{kind} has no field {unknown[0][:40]!r}", unknown[0][:40])
    return _PARSERS[kind](raw, seed_image_ids, mask_image_ids)


def check_permission(message: ClientMessage, *, is_host: bool, open_jam: bool) -> None:
    """Refuse host-only messages from listeners; in an open jam anyone may queue prompts."""
    if is_host or not message.HOST_ONLY or (open_jam and isinstance(message, PromptMessage)):
        return
    raise ProtocolError("not_host", f"only the host may send {message.TYPE}", "type")


def client_message_to_wire(message: ClientMessage) -> dict[str, Any]:
    """The map a client would send for `message` (used by the recorder client and tests)."""
    wire: dict[str, Any] = {"type": message.TYPE}
    for f in fields(message):
        value = getattr(message, f.name)
        if value is not UNSET and (value is not None or isinstance(message, SettingsMessage)):
            wire[f.name] = value
    return wire


# -- server frames ------------------------------------------------------------------------------

PROMPT_KEYS = ("prompt", "seed", "negative_prompt", "denoising", "guidance")


def encode(message: Mapping[str, Any]) -> bytes:
    """One frame as msgpack; bytes stay bin, strings stay str."""
    if not isinstance(message, Mapping) or not isinstance(message.get("type"), str):
        raise ValueError("message must be a mapping with a string 'type'")
    return msgpack.packb(dict(message), use_bin_type=True)


def decode(data: bytes) -> dict[str, Any]:
    """Any frame back to a map (clients reading server frames; no field validation)."""
    frame = msgpack.unpackb(data, raw=False)
    if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
        raise ValueError("frame must be a map with a string 'type'")
    return frame


def _prompt_side(side: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    missing = [key for key in PROMPT_KEYS if key not in spec]
    if missing:
        raise ValueError(f"{side} is missing {', '.join(missing)}")
    return {"prompt": str(spec["prompt"]), "seed": int(spec["seed"]),
            "negative_prompt": None if spec["negative_prompt"] is None else str(spec["negative_prompt"]),
            "denoising": float(spec["denoising"]), "guidance": float(spec["guidance"])}


def welcome_frame(*, room: str, role: str, token: str | None, checkpoint: str, device: str, demo: bool,
                  settings: Mapping[str, Any], seed_images: Sequence[str],
                  mask_images: Sequence[str] = ()) -> dict[str, Any]:
    """The reply to a join. Only the host receives the room's control token."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    if (role == "host") != (token is not None):
        raise ValueError("token must be given for the host and only for the host")
    frame: dict[str, Any] = {
        "type": "welcome", "protocol": PROTOCOL_VERSION, "room": room, "role": role,
        "model": {"checkpoint": checkpoint, "device": device, "demo": bool(demo)},
        "settings": dict(settings), "seed_images": list(seed_images), "mask_images": list(mask_images),
    }
    if token is not None:
        frame["token"] = token
    return frame


def clip_frame(*, seq: int, stream_time: float, duration: float, alpha: float, start: Mapping[str, Any],
               end: Mapping[str, Any], image: bytes, audio: bytes, sample_rate: int,
               gen_seconds: float) -> dict[str, Any]:
    """One generated clip: `audio` is the next run of frames of the room's single MP3 stream."""
    return {
        "type": "clip", "seq": int(seq), "stream_time": float(stream_time), "duration": float(duration),
        "alpha": float(alpha), "start": _prompt_side("start", start), "end": _prompt_side("end", end),
        "image": bytes(image), "audio": bytes(audio), "sample_rate": int(sample_rate),
        "gen_seconds": float(gen_seconds),
    }


def state_frame(*, listeners: int, up_next: Sequence[str], paused: bool, behind: bool) -> dict[str, Any]:
    """Room status, sent to everyone when any of these change."""
    return {"type": "state", "listeners": int(listeners), "up_next": [str(p) for p in up_next],
            "paused": bool(paused), "behind": bool(behind)}


def settings_frame(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The room's settings after the host changed them, so every member's controls agree."""
    return {"type": "settings", "settings": dict(settings)}


def error_frame(code: str, message: str, *, field: str | None = None) -> dict[str, Any]:
    """A refusal; the connection stays open."""
    if code not in ERROR_CODES:
        raise ValueError(f"unknown error code {code!r}")
    frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if field is not None:
        frame["field"] = field
    return frame


def pong_frame(t: float | None) -> dict[str, Any]:
    """The answer to a ping, echoing its `t` so the client can measure the round trip."""
    return {"type": "pong", "t": t}
