"""The WebSocket protocol, version 1: client message validation and every server frame shape.

Frames are binary msgpack maps with a "type" key. Everything a client sends goes through
`decode_client_message`, which either returns a typed message or raises `ProtocolError` naming the
field and the reason; the server answers that with an "error" frame and keeps the connection open.
Unknown keys are refused rather than ignored so a misspelt field ("guidence") is reported instead
of silently doing nothing. Error codes and value checks live in `validation` (shared with the
session). Pure: no I/O, no clocks. docs/PROTOCOL.md is the reader's version.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import msgpack

# Error codes, limits and the error frame are part of the protocol's surface: re-exported for clients.
from jamserver.jam.prompt import Prompt
from jamserver.jam.validation import (  # noqa: F401
    ALPHA_VELOCITY_RANGE,
    DENOISING_RANGE,
    ERROR_CODES,
    GUIDANCE_RANGE,
    ID_PATTERN,
    MAX_ID_CHARS,
    MAX_PROMPT_CHARS,
    MAX_TOKEN_CHARS,
    SEED_RANGE,
    STEPS_RANGE,
    NumberRange,
    ProtocolError,
    bad_field,
    checked_id,
    checked_text,
    error_frame,
    wire_kind,
)

PROTOCOL_VERSION = 2  # 2: the playout clock (playhead, playout_delay) and cut-ins (replaces, mp3_frame, cut_in)
SUPPORTED_PROTOCOLS = (1, 2)  # a version-1 client gets the same frames; docs/PROTOCOL.md says what it misses

ROLES = ("host", "listener")


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
    cut_in: bool = UNSET

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


ClientMessage = Join | Prompt | SettingsMessage | Pause | Resume | Ping
CLIENT_MESSAGES: dict[str, type] = {cls.TYPE: cls for cls in ClientMessage.__args__}


def _parse_join(raw: Mapping[str, Any], _seeds: Any, _masks: Any) -> Join:
    protocol = raw.get("protocol")
    if protocol is not None:
        protocol = NumberRange(1, 2**31 - 1, integer=True).check("protocol", protocol)
        if protocol not in SUPPORTED_PROTOCOLS:
            raise ProtocolError("unsupported_protocol",
                                f"protocol {protocol} is not supported; this server speaks "
                                f"{' and '.join(map(str, SUPPORTED_PROTOCOLS))}",
                                "protocol")
    room, token = raw.get("room"), raw.get("token")
    join = Join(
        room=None if room is None else checked_id("room", room),
        token=None if token is None else checked_id("token", token, max_chars=MAX_TOKEN_CHARS),
        protocol=protocol,
    )
    if join.token is not None and join.room is None:  # a host coming back without its room must not get a new one
        raise bad_field("room", "is required with a token: a token only opens the room it came with")
    return join


def _parse_prompt(raw: Mapping[str, Any], _seeds: Any, _masks: Any) -> Prompt:
    return Prompt.from_wire(raw)


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
    for flag in ("open_jam", "cut_in"):
        if raw.get(flag) is not None:
            if not isinstance(raw[flag], bool):
                raise bad_field(flag, f"must be a bool, got {wire_kind(raw[flag])}")
            changes[flag] = raw[flag]
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
        raise bad_field("type", "is required")
    if not isinstance(kind, str):
        raise bad_field("type", f"must be a string, got {wire_kind(kind)}")
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
    if is_host or not message.HOST_ONLY or (open_jam and isinstance(message, Prompt)):
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


def _prompt_side(side: str, prompt: Prompt | Mapping[str, Any]) -> dict[str, Any]:
    """A clip's start or end as rendered: every key of a prompt, all set but the negative prompt."""
    if not isinstance(prompt, Prompt):
        missing = [key for key in Prompt.FIELDS if key not in prompt]
        if missing:
            raise ValueError(f"{side} is missing {', '.join(missing)}")
        prompt = Prompt.from_wire(prompt)
    if not prompt.complete:
        raise ValueError(f"{side} has unset fields: {prompt}")
    return prompt.to_wire()


def value_limits(*, max_up_next: int, max_message_bytes: int) -> dict[str, Any]:
    """Every limit a client message is checked against, for `welcome.limits` (the page's controls follow it)."""
    ranges = {"seed": SEED_RANGE, "num_inference_steps": STEPS_RANGE, "alpha_velocity": ALPHA_VELOCITY_RANGE,
              "denoising": DENOISING_RANGE, "guidance": GUIDANCE_RANGE}
    return {"prompt_chars": MAX_PROMPT_CHARS, "up_next": max_up_next, "message_bytes": max_message_bytes,
            **{name: limits.to_wire() for name, limits in ranges.items()}}


def welcome_frame(*, room: str, role: str, token: str | None, checkpoint: str, device: str, demo: bool,
                  settings: Mapping[str, Any], seed_images: Sequence[str], mask_images: Sequence[str] = (),
                  description: str | None = None, defaults: Mapping[str, Any] | None = None,
                  limits: Mapping[str, Any] | None = None, clip_seconds: float | None = None,
                  playout_delay: float = 0.0, playhead: float | None = None) -> dict[str, Any]:
    """The reply to a join. Only the host receives the room's control token.

    ``description`` says what a built-in model is (e.g. that ``mini`` is trained on synthesised music, not
    riffusion); `defaults` (a new room's settings), `limits` (see `value_limits`) and `clip_seconds` (the length
    of a clip) are sent whenever the server knows them, so clients need not hard-code any of them. Members play
    stream time S at t0 + S + `playout_delay`; `playhead` is the stream time they are playing as the frame leaves
    (None before the room's clock starts: nothing plays yet, and a frozen number would read as a running clock).
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    if (role == "host") != (token is not None):
        raise ValueError("token must be given for the host and only for the host")
    frame: dict[str, Any] = {
        "type": "welcome", "protocol": PROTOCOL_VERSION, "room": room, "role": role,
        "model": {"checkpoint": checkpoint, "device": device, "demo": bool(demo)},
        "settings": dict(settings), "seed_images": list(seed_images), "mask_images": list(mask_images),
        "playout_delay": float(playout_delay), "playhead": None if playhead is None else float(playhead),
    }
    if description is not None:
        frame["model"]["description"] = str(description)
    optional = {"defaults": defaults, "limits": limits, "clip_seconds": clip_seconds}
    frame.update({key: value for key, value in optional.items() if value is not None})
    if token is not None:
        frame["token"] = token
    return frame


def clip_frame(*, seq: int, stream_time: float, duration: float, alpha: float, start: Prompt | Mapping[str, Any],
               end: Prompt | Mapping[str, Any], image: bytes, audio: bytes, sample_rate: int, gen_seconds: float,
               mp3_frame: int = 0, playhead: float = 0.0, replaces: bool = False,
               loop_offset: float = 0.0) -> dict[str, Any]:
    """One generated clip: `audio` is a run of frames of the room's single MP3 stream, from frame `mp3_frame`.

    A cut-in (`replaces`) supersedes the frames sent before from `mp3_frame` on; its audio starts `loop_offset`
    seconds into the clip's loop. `playhead`: the stream time members are playing as the frame leaves.
    """
    return {
        "type": "clip", "seq": int(seq), "stream_time": float(stream_time), "duration": float(duration),
        "alpha": float(alpha), "start": _prompt_side("start", start), "end": _prompt_side("end", end),
        "image": bytes(image), "audio": bytes(audio), "sample_rate": int(sample_rate),
        "gen_seconds": float(gen_seconds), "mp3_frame": int(mp3_frame), "playhead": float(playhead),
        "replaces": bool(replaces), "loop_offset": float(loop_offset),
    }


def state_frame(*, listeners: int, up_next: Sequence[str], paused: bool, behind: bool,
                playhead: float | None = None) -> dict[str, Any]:
    """Room status, sent to everyone when any of these change; `playhead` is where members are as it leaves (None
    before the room's clock starts)."""
    return {"type": "state", "listeners": int(listeners), "up_next": [str(p) for p in up_next],
            "paused": bool(paused), "behind": bool(behind), "playhead": None if playhead is None else float(playhead)}


def settings_frame(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The room's settings after the host changed them, so every member's controls agree."""
    return {"type": "settings", "settings": dict(settings)}


def pong_frame(t: float | None) -> dict[str, Any]:
    """The answer to a ping, echoing its `t` so the client can measure the round trip."""
    return {"type": "pong", "t": t}
