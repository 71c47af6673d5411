"""POST /run_inference: the original riffusion API, run below live rooms and bounded like them.

A request is refused before any work when it comes from an origin the server does not allow (403), is
not `application/json` (415: a page on another site can post `text/plain` without asking the browser's
permission, `application/json` it cannot), or is larger than `max_request_bytes` (413, answered without
reading past the limit). Requests waiting or running are capped at `rest_queue` (429 beyond it); their
clips run as background jobs when no live room has a job, and one not done within `rest_timeout_seconds`
gets 503. Both carry Retry-After.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from jamserver.server.http.compat import CompatError, inference_output, parse_inference_input
from pipeline.seeds import UnknownSeedImage

if TYPE_CHECKING:
    from jamserver.server.state import JamState

log = logging.getLogger("jamserver.server.http.rest")
BUSY_RETRY_SECONDS = 5  # Retry-After when the queue is full
TIMEOUT_RETRY_SECONDS = 30  # Retry-After when a request waited too long below the rooms


class BodyTooLarge(Exception):
    pass


class RestQueue:
    """How many REST requests are waiting or running, against the cap."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.taken = 0

    def try_take(self) -> bool:
        if self.taken >= self.capacity:
            return False
        self.taken += 1
        return True

    def give_back(self) -> None:
        self.taken -= 1


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (BodyTooLarge) a declared or actual size above `limit` without reading past it."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge
    return bytes(body)


def _is_json(content_type: str | None) -> bool:
    return (content_type or "").split(";")[0].strip().lower() == "application/json"


async def run_inference(request: Request) -> Response:
    """The original API: one clip for one request, made by the same engine the rooms use."""
    state: JamState = request.app.state.jam
    config = state.config
    if not config.origin_allowed(request.headers.get("origin")):
        return _answer(state, 403, "Origin not allowed")
    if not _is_json(request.headers.get("content-type")):
        return _answer(state, 415, "Content-Type must be application/json")
    try:
        raw = await read_body(request, config.max_request_bytes)
    except BodyTooLarge:
        return _answer(state, 413, f"Request body is larger than {config.max_request_bytes} bytes")
    except ClientDisconnect:
        return _answer(state, 400, "Client disconnected")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as error:  # bad UTF-8 or JSON, too deep, integers too long
        return _answer(state, 400, f"Invalid JSON: {error}")
    try:
        clip_request = parse_inference_input(body, state.seeds, state.model.pipeline.latent_shape, config.step_limits)
    except (CompatError, UnknownSeedImage) as error:
        return _answer(state, 400, str(error))
    if not state.rest_queue.try_take():
        return _answer(state, 429, f"Too many requests queued ({config.rest_queue}); try again later",
                       retry_after=BUSY_RETRY_SECONDS)
    try:
        return await _render(state, clip_request)
    finally:
        state.rest_queue.give_back()


async def _render(state: JamState, clip_request: object) -> Response:
    try:
        clip = await asyncio.wait_for(state.engine.render(clip_request, background=True),
                                      state.config.rest_timeout_seconds)
        output = await asyncio.get_running_loop().run_in_executor(state.executor, inference_output, clip)
    except asyncio.TimeoutError:
        return _answer(state, 503, f"The server is busy with live rooms: no clip within "
                                   f"{state.config.rest_timeout_seconds:g} s", retry_after=TIMEOUT_RETRY_SECONDS)
    except ValueError as error:
        return _answer(state, 400, str(error))
    except Exception as error:  # the device failed: say so, never a bare 500
        log.exception("run_inference failed")
        return _answer(state, 503, f"Generation failed: {type(error).__name__}: {error}")
    state.metrics.rest_requests.labels(status="200").inc()
    return JSONResponse(output)


def _answer(state: JamState, status: int, message: str, *, retry_after: int | None = None) -> Response:
    state.metrics.rest_requests.labels(status=str(status)).inc()
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return PlainTextResponse(message, status_code=status, headers=headers)
