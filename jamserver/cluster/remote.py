"""The front-end's side of the workers: an engine with the local Engine's `render(request, deadline)`, whose work is
done by generation workers through Redis.

The generation loop does not know which one it has (see `ClipMaker` in jamserver/server/device/engine.py). Jobs go on the
`jam:jobs` stream (cut-ins on `jam:jobs:urgent`, REST clips on `jam:jobs:rest`); results come back on this front-end's own results stream, read by one task from the last id it
saw. When Redis comes back after a restart that lost its data, jobs still waited for are queued again: a job is
deterministic, so whichever copy finishes first gives the same clip.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass

from redis.exceptions import ResponseError

from jamserver.cluster.connection import BLOCK_MS, UNREACHABLE, Backoff, connect, finish
from jamserver.cluster.keys import (
    JOBS_MAXLEN,
    JOBS_STREAM,
    REST_JOBS_STREAM,
    URGENT_JOBS_STREAM,
    WORKERS_SET,
    results_stream,
    worker_key,
)
from jamserver.cluster.messages import (
    GAVE_UP,
    INVALID,
    ClipJobMessage,
    ClipResultMessage,
    MessageError,
    PngCache,
)
from pipeline.diffusion.requests import ClipRequest
from pipeline.render import RenderedClip

log = logging.getLogger("jamserver.cluster.remote")

DEFAULT_JOB_TIMEOUT = 60.0  # past its deadline, a job nobody finished in this long is failed (and the room retries)


class RemoteJobFailed(RuntimeError):
    """A worker ran the job and it failed; the message is the worker's."""


class PoisonJob(RemoteJobFailed):
    """The job (or an equal one before it) killed every worker that ran it, and the workers gave it up."""


@dataclass
class _Waiting:
    message: ClipJobMessage
    packed: bytes
    stream: str
    entry_id: str
    future: asyncio.Future


@dataclass(frozen=True)
class WorkerStatus:
    name: str
    slots: int
    running: int
    p99_seconds: float | None


def job_stream(*, background: bool, urgent: bool) -> str:
    """The stream a job goes on: REST clips wait for rows rooms leave free, cut-ins jump the room clips' queue."""
    if background:
        return REST_JOBS_STREAM
    return URGENT_JOBS_STREAM if urgent else JOBS_STREAM


class RemoteEngine:
    """Clip jobs for workers; `start()` before the first `render`, `close()` at the end."""

    def __init__(self, redis_url: str, *, name: str, job_timeout: float = DEFAULT_JOB_TIMEOUT,
                 heartbeat_seconds: float = 1.0) -> None:
        self.redis_url = redis_url
        self.name = name
        self.results = results_stream(name)
        self.job_timeout = job_timeout
        self.heartbeat_seconds = heartbeat_seconds
        self.jobs_resubmitted = 0
        self._poisoned: set[str] = set()  # request keys of jobs given up as poison: refused at once from then on
        self._redis = connect(redis_url)
        self._pngs = PngCache()
        self._waiting: dict[str, _Waiting] = {}
        self._reader: asyncio.Task | None = None
        self._closing = False

    async def start(self) -> None:
        self._reader = asyncio.create_task(self._read_results(), name=f"results-{self.name}")

    async def close(self) -> None:
        self._closing = True
        if self._reader is not None:
            await finish(self._reader)
        await self._redis.aclose()

    # -- the engine interface -------------------------------------------------------------------------

    async def render(self, request: ClipRequest, deadline: float = 0.0, *, owner: object = None,
                     background: bool = False, urgent: bool = False) -> RenderedClip:
        """Have a worker make the clip. As for Engine: `deadline` on this process's monotonic clock, `owner` (a room
        id) shares UNet rows fairly with other rooms, `background` (REST) runs in rows rooms leave free.
        `urgent` (a cut-in) goes on the urgent stream, which every worker reads beside its clip jobs, taking one
        even when its slots are full, and steps in UNet calls of its own."""
        loop = asyncio.get_running_loop()
        wall_deadline = time.time() + (deadline - time.monotonic())
        message = ClipJobMessage(uuid.uuid4().hex, self.results, wall_deadline,
                                 max(wall_deadline, time.time()) + self.job_timeout, request,
                                 None if owner is None else str(owner), background)
        key = await loop.run_in_executor(None, message.request_key)
        if key in self._poisoned:
            raise PoisonJob("this clip request crashed every worker that ran it before; not sent again")
        packed = await loop.run_in_executor(None, message.pack, self._pngs)
        stream = job_stream(background=background, urgent=urgent)
        entry_id = await self._queue(stream, packed)
        waiting = self._waiting[message.job_id] = _Waiting(message, packed, stream, entry_id, loop.create_future())
        try:
            result = await asyncio.wait_for(waiting.future, max(0.0, message.expires - time.time()))
        except asyncio.TimeoutError:
            raise TimeoutError(f"no worker finished clip job {message.job_id} in time") from None
        except asyncio.CancelledError:
            await self._withdraw(waiting)
            raise
        finally:
            self._waiting.pop(message.job_id, None)
        if result.clip is not None:
            return result.clip
        if result.error_kind == INVALID:
            raise ValueError(result.error)
        if result.error_kind == GAVE_UP:
            self._poisoned.add(key)
            raise PoisonJob(f"worker {result.worker}: {result.error}")
        raise RemoteJobFailed(f"worker {result.worker}: {result.error}")

    async def _queue(self, stream: str, packed: bytes) -> str:
        entry_id = await self._redis.xadd(stream, {"job": packed}, maxlen=JOBS_MAXLEN, approximate=True)
        return entry_id.decode()

    async def _withdraw(self, waiting: _Waiting) -> None:
        """A job nobody waits for any more: take it off the stream so no worker starts it (best effort)."""
        try:
            await self._redis.xdel(waiting.stream, waiting.entry_id)
        except UNREACHABLE:
            pass

    # -- results --------------------------------------------------------------------------------------

    async def _read_results(self) -> None:
        reader = connect(self.redis_url, blocking_reader=True)
        backoff = Backoff()
        last_id = "0-0"  # this stream is this process's own: everything on it is for us
        reconnected = False
        try:
            while not self._closing:
                try:
                    reply = await reader.xread({self.results: last_id}, count=64, block=BLOCK_MS)
                    if reconnected:
                        await self._requeue_lost()
                        reconnected = False
                except UNREACHABLE as error:
                    log.warning("front-end %s: reading results failed (%s); reconnecting", self.name, error)
                    reconnected = True
                    await backoff.wait()
                    continue
                backoff.reset()
                for _stream, entries in reply or []:
                    for entry_id, fields in entries:
                        last_id = entry_id.decode()
                        self._resolve(fields.get(b"result", b""))
        finally:
            await reader.aclose()

    def _resolve(self, data: bytes) -> None:
        try:
            result = ClipResultMessage.unpack(data)
        except MessageError as error:
            log.error("front-end %s: unreadable result: %s", self.name, error)
            return
        waiting = self._waiting.get(result.job_id)
        if waiting is not None and not waiting.future.done():  # a job run twice: the first result wins
            waiting.future.set_result(result)

    async def _requeue_lost(self) -> None:
        """After an outage: queue again each job still waited for that Redis no longer has (it restarted empty)."""
        for waiting in list(self._waiting.values()):
            if waiting.future.done():
                continue
            if await self._redis.xrange(waiting.stream, waiting.entry_id, waiting.entry_id):
                continue
            waiting.entry_id = await self._queue(waiting.stream, waiting.packed)
            self.jobs_resubmitted += 1
            log.warning("front-end %s: job %s was lost with Redis's data; queued again", self.name,
                        waiting.message.job_id)

    # -- capacity -------------------------------------------------------------------------------------

    async def workers(self) -> list[WorkerStatus]:
        """The workers whose heartbeat is fresh."""
        names = await self._redis.zrangebyscore(WORKERS_SET, time.time() - 3 * self.heartbeat_seconds, "+inf")
        statuses = []
        for raw_name in names:
            name = raw_name.decode()
            try:
                fields = await self._redis.hgetall(worker_key(name))
            except ResponseError:
                continue
            if not fields:
                continue
            p99 = float(fields[b"p99_seconds"])
            statuses.append(WorkerStatus(name, int(fields[b"slots"]), int(fields[b"running"]),
                                         None if p99 < 0 else p99))
        return statuses
