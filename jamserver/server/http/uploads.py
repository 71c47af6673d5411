"""POST /seed_images: a user's loop (WAV, FLAC, Ogg/Vorbis, MP3) or riffusion PNG becomes a custom seed.

The body is a multipart form with a ``file`` field, or the raw file. It is read with the REST API's bounded reader
(413 as soon as it passes ``max_upload_bytes``, at once when Content-Length says so), so an oversized upload is
never held. Like the REST API it honours ``--allowed-origin``: a page elsewhere may post a form here unasked.
Multipart is parsed here rather than through Starlette's form parser: the body is already bounded and in memory,
only one field matters, and it saves a dependency (python-multipart) whose spooling we would not use. Analysis
runs on a worker thread, one upload at a time. Every refusal is JSON ``{"error", "problem"}`` with a 4xx status
and stores nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from jamserver.jam.member.ratelimit import TokenBucket
from jamserver.server.http.rest import BodyTooLarge, read_body
from pipeline.audio.params import SpectrogramParams
from pipeline.loops.decode import UnusableUpload
from pipeline.loops.seed_loop import LOOP_COLUMNS, seed_from_upload
from pipeline.seed_store import content_id

log = logging.getLogger("jamserver.server.http.uploads")
MAX_TRACKED_CLIENTS = 10_000
BURST = 3  # uploads a client may make back to back (or a tenth of the minute's) before the rate applies
_PARAMS = SpectrogramParams()
LOOP_SECONDS = _PARAMS.clip_samples(LOOP_COLUMNS) / _PARAMS.sample_rate


@dataclasses.dataclass
class UploadGate:
    """Per-app upload state: one bucket per client address, one analysis at a time on a thread of its own (not the
    rooms' stream threads, which must never wait behind seconds of analysis)."""

    per_minute: int
    buckets: dict[str, TokenBucket] = dataclasses.field(default_factory=dict)
    analysing: asyncio.Semaphore = dataclasses.field(default_factory=lambda: asyncio.Semaphore(1))
    executor: ThreadPoolExecutor = dataclasses.field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="jam-upload"))

    def allow(self, client: str, now: float) -> float | None:
        """None when the client may upload now, else the seconds until it may."""
        bucket = self.buckets.get(client)
        if bucket is None:
            if len(self.buckets) >= MAX_TRACKED_CLIENTS:
                self.buckets.clear()  # forgetting buckets only ever lets clients through sooner
            burst = min(self.per_minute, max(BURST, self.per_minute // 10))
            bucket = self.buckets[client] = TokenBucket(self.per_minute, burst=burst)
        return None if bucket.allow(now) else bucket.retry_after()


def refusal(status: int, problem: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": message, "problem": problem}, status_code=status, headers=headers)


async def upload_seed(request: Request) -> Response:
    state = request.app.state.jam
    config = state.config
    if not config.origin_allowed(request.headers.get("origin")):
        return refusal(403, "origin_not_allowed", "uploads from this page's origin are not allowed (--allowed-origin)")
    if not config.uploads_enabled:
        return refusal(403, "uploads_disabled", "uploads are turned off on this server (--no-uploads)")
    if state.seeds.store is None:
        return refusal(403, "uploads_disabled", "this server has no store for custom seeds")
    gate: UploadGate = state.uploads
    wait = gate.allow(request.client.host if request.client else "unknown", time.monotonic())
    if wait is not None:
        return refusal(429, "rate_limited", f"too many uploads; try again in {wait:.0f} s",
                       {"Retry-After": str(max(1, round(wait)))})
    try:
        body = await read_body(request, config.max_upload_bytes)
        data = file_from_body(body, request.headers.get("content-type", ""))
    except BodyTooLarge:
        return refusal(413, "too_large", f"uploads are limited to {config.max_upload_bytes} bytes")
    except UnusableUpload as error:
        return refusal(error.status, error.problem, str(error))
    except ClientDisconnect:
        return refusal(400, "incomplete", "the client went away during the upload")
    image_id = content_id(data)
    known = state.seeds.store.get(image_id)
    if known is not None:
        state.seeds.store.touch(image_id)
        return JSONResponse(answer(known.entry, known.source))
    async with gate.analysing:
        try:
            loop = await asyncio.get_running_loop().run_in_executor(gate.executor, seed_from_upload, data)
        except UnusableUpload as error:
            return refusal(error.status, error.problem, str(error))
        except Exception as error:  # a decoder bug must not become a 500 or kill the server
            log.exception("analysing an upload failed")
            return refusal(400, "undecodable", f"the upload could not be analysed ({type(error).__name__})")
    source = loop.source()
    entry = state.seeds.add_custom(image_id, loop.png_bytes(), bpm=loop.bpm, beats=loop.beats,
                                   description=loop.describe(), source=source)
    log.info("custom seed %s: %s, %s BPM", image_id, loop.source_format, loop.bpm)
    return JSONResponse(answer(entry, source), status_code=201)


def answer(entry: Any, source: dict[str, Any]) -> dict[str, Any]:
    """The JSON answer: the seed's id, tempo, beats and loop length, and what it was made from."""
    return {"id": entry.id, "bpm": entry.bpm, "beats": entry.beats, "duration": LOOP_SECONDS,
            "source": source["format"], "custom": True, "url": f"/seed_images/{entry.id}.png",
            "description": entry.description, "fit": source["fit"], "stretch": source["stretch"],
            "source_bpm": source["bpm"], "source_seconds": source["seconds"]}


def file_from_body(body: bytes, content_type: str) -> bytes:
    """The ``file`` field of a multipart/form-data body, or the body itself for any other content type."""
    media_type, _, parameters = content_type.partition(";")
    if media_type.strip().lower() != "multipart/form-data":
        return body
    boundary = _parameter(parameters, "boundary")
    if not boundary:
        raise UnusableUpload("bad_form", "multipart/form-data without a boundary")
    delimiter = b"--" + boundary.encode("latin-1")
    for part in body.split(delimiter)[1:]:
        if part.startswith(b"--"):
            break
        head, separator, content = part.partition(b"\r\n\r\n")
        if not separator:
            raise UnusableUpload("bad_form", "a multipart part has no header/body separator")
        disposition = next((line for line in head.decode("latin-1").split("\r\n")
                            if line.lower().startswith("content-disposition:")), "")
        if _parameter(disposition.partition(";")[2], "name") == "file":
            return content[:-2] if content.endswith(b"\r\n") else content
    raise UnusableUpload("bad_form", "the form has no 'file' field")


def _parameter(parameters: str, name: str) -> str | None:
    """A ``name=value`` (or ``name="value"``) parameter of a header."""
    for item in parameters.split(";"):
        key, _, value = item.strip().partition("=")
        if key.strip().lower() == name:
            return value.strip().strip('"')
    return None
