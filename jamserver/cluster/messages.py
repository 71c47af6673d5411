"""Clip jobs and their results as msgpack, the form they take in Redis streams.

A job carries everything that determines its clip, images included (lossless PNG), so any worker makes the same clip
from it without sharing files with the front-end (uploaded seed images work too), and a job run twice gives the same
clip. Times cross machines as wall-clock seconds; each side converts to and from its own monotonic clock.
"""

from __future__ import annotations

import hashlib
import io
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any

import msgpack
import numpy as np
from PIL import Image

from pipeline.diffusion.latents import image_digest
from pipeline.diffusion.requests import ClipRequest, PromptInput
from pipeline.render import RenderedClip

FORMAT = 1
# The error kinds a result can carry: a request the pipeline refuses (HTTP 400 on the REST API), a failed run, or a
# job given up unrun because every worker that took it died running it (a poison job).
INVALID = "invalid"
FAILED = "failed"
GAVE_UP = "gave_up"


class MessageError(ValueError):
    """A stream entry that is not a job or result of this format; the text says what is wrong."""


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # lossless; level 1: fast, the stream is not the archive
    return buffer.getvalue()


def _image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


class PngCache:
    """PNG bytes of the few seed images and masks in use, by content, so each job does not re-encode them."""

    def __init__(self, size: int = 32) -> None:
        self._size = size
        self._entries: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def png(self, image: Image.Image) -> bytes:
        key = image_digest(image)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        data = _png(image)
        with self._lock:
            self._entries[key] = data
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return data


@dataclass(frozen=True)
class ClipJobMessage:
    """One clip job: who wants the result (`reply_to`), by when (`deadline`), until when it is worth making, and
    whose it is: `owner` (a room id) shares the worker's UNet rows fairly with other rooms; `background` (REST) runs
    only in rows rooms leave free."""

    job_id: str
    reply_to: str
    deadline: float  # wall clock: when the clip should be ready
    expires: float  # wall clock: after this nobody waits for it; a worker drops it unrun
    request: ClipRequest
    owner: str | None = None
    background: bool = False

    def pack(self, pngs: PngCache) -> bytes:
        request = self.request
        return msgpack.packb({
            "format": FORMAT, "job": self.job_id, "reply_to": self.reply_to, "deadline": self.deadline,
            "expires": self.expires, "owner": self.owner, "background": self.background,
            "start": asdict(request.start), "end": asdict(request.end),
            "alpha": float(request.alpha), "steps": int(request.num_inference_steps),
            "seed_image": pngs.png(request.seed_image),
            "mask_image": None if request.mask_image is None else pngs.png(request.mask_image),
        }, use_bin_type=True)

    @classmethod
    def unpack(cls, data: bytes) -> ClipJobMessage:
        raw = _unpacked(data, "job")
        try:
            request = ClipRequest(
                start=PromptInput(**raw["start"]), end=PromptInput(**raw["end"]), alpha=raw["alpha"],
                seed_image=_image(raw["seed_image"]), num_inference_steps=raw["steps"],
                mask_image=None if raw["mask_image"] is None else _image(raw["mask_image"]))
            owner = raw["owner"]
            return cls(str(raw["job"]), str(raw["reply_to"]), float(raw["deadline"]), float(raw["expires"]), request,
                       None if owner is None else str(owner), bool(raw["background"]))
        except (KeyError, TypeError, OSError) as error:
            raise MessageError(f"malformed clip job: {type(error).__name__}: {error}") from None

    def request_key(self) -> str:
        """What determines the clip (prompts, alpha, steps, images), without who asked or when: equal keys, equal
        clips. A front-end refuses at once a request whose job was given up as poison, rather than crash more
        workers with it."""
        request = self.request
        digest = hashlib.blake2b(digest_size=16)
        digest.update(msgpack.packb([asdict(request.start), asdict(request.end), float(request.alpha),
                                     int(request.num_inference_steps)]))
        for image in (request.seed_image, request.mask_image):
            digest.update(b"-" if image is None else image_digest(image).encode())
        return digest.hexdigest()

    def local_deadline(self) -> float:
        """The deadline on this process's monotonic clock, as the engine orders jobs."""
        return time.monotonic() + (self.deadline - time.time())


def _unpacked(data: bytes, what: str) -> dict[str, Any]:
    try:
        raw = msgpack.unpackb(data, raw=False)
    except (ValueError, TypeError) as error:  # msgpack's unpack errors are ValueErrors; not bytes: TypeError
        raise MessageError(f"{what} is not msgpack: {error}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise MessageError(f"{what} has an unknown format: {raw.get('format') if isinstance(raw, dict) else raw!r}")
    return raw


def pack_array(array: np.ndarray | None) -> dict[str, Any] | None:
    """A float32 array as msgpack-ready data (shape + raw bytes), None as None."""
    if array is None:
        return None
    array = np.ascontiguousarray(array, dtype=np.float32)
    return {"shape": list(array.shape), "data": array.tobytes()}


def unpack_array(data: dict[str, Any] | None) -> np.ndarray | None:
    if data is None:
        return None
    return np.frombuffer(data["data"], dtype=np.float32).reshape(data["shape"]).copy()


@dataclass(frozen=True)
class ClipResultMessage:
    """A finished job: the clip, or why there is none (`error_kind` INVALID or FAILED, and a message)."""

    job_id: str
    worker: str
    clip: RenderedClip | None = None
    error_kind: str | None = None
    error: str | None = None

    def pack(self) -> bytes:
        clip = self.clip
        body: dict[str, Any] = {"format": FORMAT, "job": self.job_id, "worker": self.worker,
                                "error_kind": self.error_kind, "error": self.error}
        if clip is not None:
            body.update(image=_png(clip.image), audio=pack_array(clip.audio), sample_rate=clip.sample_rate,
                        gen_seconds=clip.gen_seconds, continuation=pack_array(clip.continuation))
        return msgpack.packb(body, use_bin_type=True)

    @classmethod
    def unpack(cls, data: bytes) -> ClipResultMessage:
        raw = _unpacked(data, "result")
        try:
            clip = None
            if raw.get("image") is not None:
                clip = RenderedClip(_image(raw["image"]), unpack_array(raw["audio"]), int(raw["sample_rate"]),
                                    float(raw["gen_seconds"]), unpack_array(raw["continuation"]))
            return cls(str(raw["job"]), str(raw["worker"]), clip, raw.get("error_kind"), raw.get("error"))
        except (KeyError, TypeError, ValueError, OSError) as error:
            raise MessageError(f"malformed clip result: {type(error).__name__}: {error}") from None
