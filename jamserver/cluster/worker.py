"""A generation worker: today's engine fed from the `jam:jobs` consumer group instead of from local rooms.

It reads only as many jobs as it has free batch slots, so jobs wait in Redis (where any worker can take them) rather
than in one worker's queue, and the engine keeps its deadline order and step-level batching over what it holds.
Each finished job goes back on the stream its front-end named and is then acknowledged and deleted. Room clips,
cut-ins and REST clips come on three streams (lanes) with slots of their own, as the engine runs them: REST clips
only in rows rooms leave free, so a worker full of REST jobs still takes room clips; a cut-in (a listener waits to
hear a new prompt on the next beat) in UNet calls of its own, so a worker busy with clips still takes one at once,
one beyond its slots, rather than leaving it queued behind clips. Each lane has its own blocking reader, so a lane
with room never waits on another lane's read.

Failover: while a job runs, the heartbeat re-claims it for this worker every second (XCLAIM ... JUSTID resets its
idle time), so only a dead worker's jobs stay idle. Every worker sweeps the group with XAUTOCLAIM for jobs idle longer
than about twice its p99 generation time and runs them; a job is deterministic, so running it twice gives the same
clip, and the front-end takes the first result.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field, replace

from redis.exceptions import ResponseError

from jamserver.cluster.connection import BLOCK_MS, UNREACHABLE, Backoff, connect, finish
from jamserver.cluster.keys import (
    IDLE_KEY_SECONDS,
    JOBS_STREAM,
    REST_JOBS_STREAM,
    RESULTS_MAXLEN,
    URGENT_JOBS_STREAM,
    WORKERS_GROUP,
    WORKERS_SET,
    worker_key,
)
from jamserver.cluster.messages import (
    FAILED,
    GAVE_UP,
    INVALID,
    ClipJobMessage,
    ClipResultMessage,
    MessageError,
)
from jamserver.jam.session import DEFAULT_PROMPT, DEFAULT_SEED
from jamserver.jam.settings import Settings
from jamserver.server.device.engine import Engine
from pipeline.diffusion.requests import ClipRequest, PromptInput
from pipeline.seeds import SeedLibrary

log = logging.getLogger("jamserver.cluster.worker")

MIN_CLAIM_SECONDS = 1.0
GENERATION_WINDOW = 50  # recent clips the p99 is taken over
DRAIN_SECONDS = 30.0  # on a clean stop, finish what is running for at most this long
DEFAULT_MAX_ATTEMPTS = 3  # workers a job may be handed to; one handed to more killed all of those (a poison job)
URGENT_SLOTS = 1  # cut-ins a worker runs at once beyond its slots (the engine steps them in calls of their own)


def p99(samples: deque[float] | list[float]) -> float | None:
    """The 99th percentile (nearest rank) of recent generation times; None before the first clip."""
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


async def ensure_groups(redis) -> None:
    """Create the workers' groups (and streams) if missing; from id 0, so jobs queued before are not skipped."""
    for stream in (URGENT_JOBS_STREAM, JOBS_STREAM, REST_JOBS_STREAM):
        with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists
            await redis.xgroup_create(stream, WORKERS_GROUP, id="0", mkstream=True)


@dataclass
class _Lane:
    """One job stream, the engine slots this worker gives it, and how the engine runs its jobs."""

    stream: str
    slots: int
    urgent: bool = False  # cut-ins: stepped in calls of their own
    running: set[str] = field(default_factory=set)  # stream ids in the engine
    claim_cursor: str = "0-0"
    has_room: asyncio.Event = field(default_factory=asyncio.Event)  # set while it may take a job (or is stopping)

    @property
    def free(self) -> int:
        return max(0, self.slots - len(self.running))


def warm_up_request() -> ClipRequest:
    """A room's first clip with the default settings: what a worker will mostly be asked for."""
    settings = Settings()
    start = PromptInput(DEFAULT_PROMPT, DEFAULT_SEED, None, settings.denoising, settings.guidance)
    return ClipRequest(start, replace(start, seed=DEFAULT_SEED + 1), 0.0,
                       SeedLibrary().load_seed(settings.seed_image_id), settings.num_inference_steps)


class GenerationWorker:
    """Runs clip jobs from Redis on one Engine until `stop` is set."""

    def __init__(self, redis_url: str, engine: Engine, *, name: str, slots: int | None = None,
                 heartbeat_seconds: float = 1.0, claim_after: float | None = None,
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> None:
        self.redis_url = redis_url
        self.engine = engine
        self.name = name
        self.key = worker_key(name)
        self.slots = slots or engine.max_batch
        self.heartbeat_seconds = heartbeat_seconds
        self.fixed_claim_after = claim_after
        self.generation_seconds: deque[float] = deque(maxlen=GENERATION_WINDOW)
        self.max_attempts = max_attempts
        self.clips_done = 0
        self.jobs_claimed = 0
        self.jobs_given_up = 0
        self.lanes = {URGENT_JOBS_STREAM: _Lane(URGENT_JOBS_STREAM, URGENT_SLOTS, urgent=True),
                      JOBS_STREAM: _Lane(JOBS_STREAM, self.slots),
                      REST_JOBS_STREAM: _Lane(REST_JOBS_STREAM, engine.background_jobs)}
        self._unacked: set[tuple[str, str]] = set()  # (stream, id) taken and not yet answered
        self._finished: asyncio.Queue[tuple[_Lane, str, ClipJobMessage, Future]] = asyncio.Queue()
        self._taking = True  # cleared on stop: take no more jobs
        self._living = True  # cleared once the running jobs are delivered: stop the heartbeat
        self._redis = connect(redis_url)

    @property
    def running(self) -> int:
        return sum(len(lane.running) for lane in self.lanes.values())

    def _open_lanes(self) -> list[_Lane]:
        return [lane for lane in self.lanes.values() if lane.free] if self._taking else []

    def p99_seconds(self) -> float | None:
        return p99(self.generation_seconds)

    def claim_after(self) -> float:
        """How long a job may sit idle in another worker's hands before this one takes it."""
        if self.fixed_claim_after is not None:
            return self.fixed_claim_after
        slowest = p99(self.generation_seconds)
        return MIN_CLAIM_SECONDS if slowest is None else max(MIN_CLAIM_SECONDS, 2.0 * slowest)

    def warm_up(self) -> float:
        """Make one clip before taking jobs (first calls are slow), which also gives `claim_after()` a first p99."""
        future = self.engine.submit(warm_up_request(), deadline=time.monotonic())
        seconds = future.result().gen_seconds
        self.generation_seconds.append(seconds)
        return seconds

    # -- main ---------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self._update_slots()
        await self._until_reachable(lambda: ensure_groups(self._redis))
        readers = [asyncio.create_task(self._take_jobs(lane), name=f"worker-take-{lane.stream}")
                   for lane in self.lanes.values()]
        claimer, heartbeat, deliverer = (asyncio.create_task(coro, name=f"worker-{coro.__name__}") for coro in (
            self._claim_stale(), self._heartbeat(), self._deliver()))
        log.info("worker %s: %d slots (+%d for cut-ins), taking jobs from %s", self.name, self.slots, URGENT_SLOTS,
                 self.redis_url)
        try:
            await stop.wait()
        finally:
            self._taking = False
            self._update_slots()  # wake the readers so they see the flag
            for reader in readers:
                await finish(reader)
            await finish(claimer)
            await self._drain()
            self._living = False
            await finish(deliverer, grace=0.01)  # the deliverer waits on its queue: nothing left to deliver
            await finish(heartbeat, grace=self.heartbeat_seconds + 1.0)
            with contextlib.suppress(*UNREACHABLE):
                await self._redis.delete(self.key)
                await self._redis.zrem(WORKERS_SET, self.name)
            await self._redis.aclose()

    async def _drain(self) -> None:
        """Let running jobs finish and be delivered, so a clean stop costs no one a clip."""
        deadline = time.monotonic() + DRAIN_SECONDS
        while self._unacked and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def _until_reachable(self, attempt) -> None:
        backoff = Backoff()
        while True:
            try:
                return await attempt()
            except UNREACHABLE as error:
                log.warning("worker %s: redis unreachable (%s); retrying", self.name, error)
                await backoff.wait()

    # -- taking jobs ----------------------------------------------------------------------------------

    async def _take_jobs(self, lane: _Lane) -> None:
        """One lane's reader: while the lane has free slots, new jobs from its stream."""
        reader = connect(self.redis_url, blocking_reader=True)  # its own connection: it blocks
        backoff = Backoff()
        try:
            while self._taking:
                await lane.has_room.wait()
                if not self._taking or not lane.free:
                    continue
                try:
                    reply = await reader.xreadgroup(WORKERS_GROUP, self.name, {lane.stream: ">"}, count=lane.free,
                                                    block=BLOCK_MS)
                except ResponseError as error:
                    if "NOGROUP" not in str(error):
                        raise
                    await ensure_groups(reader)  # Redis restarted empty
                    continue
                except UNREACHABLE as error:
                    log.warning("worker %s: reading jobs failed (%s); reconnecting", self.name, error)
                    await backoff.wait()
                    continue
                backoff.reset()
                for _stream, entries in reply or []:
                    for entry_id, fields in entries:
                        self._start(lane, entry_id.decode(), fields)
        finally:
            await reader.aclose()

    def _start(self, lane: _Lane, entry_id: str, fields: dict[bytes, bytes] | None) -> None:
        """Hand one job to the engine; a job that cannot run is dropped (acknowledged)."""
        self._unacked.add((lane.stream, entry_id))
        try:
            job = ClipJobMessage.unpack((fields or {}).get(b"job", b""))
        except MessageError as error:
            log.error("worker %s: dropping job %s: %s", self.name, entry_id, error)
            asyncio.get_running_loop().create_task(self._acknowledge(lane, entry_id))
            return
        if job.expires < time.time():
            log.info("worker %s: job %s expired before it ran; dropped", self.name, job.job_id)
            asyncio.get_running_loop().create_task(self._acknowledge(lane, entry_id))
            return
        try:
            future = self.engine.submit(job.request, job.local_deadline(), owner=job.owner,
                                        background=job.background, urgent=lane.urgent)
        except RuntimeError:  # the engine is stopping: leave the job pending for another worker
            self._unacked.discard((lane.stream, entry_id))
            return
        lane.running.add(entry_id)
        self._update_slots()
        loop = asyncio.get_running_loop()
        future.add_done_callback(
            lambda done: loop.call_soon_threadsafe(self._finished.put_nowait, (lane, entry_id, job, done)))

    def _update_slots(self) -> None:
        for lane in self.lanes.values():
            if lane.free or not self._taking:
                lane.has_room.set()
            else:
                lane.has_room.clear()

    # -- results --------------------------------------------------------------------------------------

    async def _deliver(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            lane, entry_id, job, future = await self._finished.get()
            lane.running.discard(entry_id)
            self._update_slots()
            self._count(future)
            packed = await loop.run_in_executor(None, self._packed_result, job, future)
            await self._until_reachable(functools.partial(self._reply, job, packed))
            await self._acknowledge(lane, entry_id)

    def _count(self, future: Future) -> None:
        if future.exception() is None:
            self.generation_seconds.append(future.result().gen_seconds)
            self.clips_done += 1

    def _packed_result(self, job: ClipJobMessage, future: Future) -> bytes:
        """The result message (PNG-encoding the image is real work: off the event loop)."""
        error = future.exception()
        if error is None:
            return ClipResultMessage(job.job_id, self.name, future.result()).pack()
        kind = INVALID if isinstance(error, ValueError) else FAILED
        log.warning("worker %s: job %s failed: %s: %s", self.name, job.job_id, type(error).__name__, error)
        return ClipResultMessage(job.job_id, self.name, None, kind, f"{type(error).__name__}: {error}").pack()

    async def _reply(self, job: ClipJobMessage, packed: bytes) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.xadd(job.reply_to, {"result": packed}, maxlen=RESULTS_MAXLEN, approximate=True)
            pipe.expire(job.reply_to, IDLE_KEY_SECONDS)
            await pipe.execute()

    async def _acknowledge(self, lane: _Lane, entry_id: str) -> None:
        """Done with a job: out of the group's pending list and out of the stream."""
        async def ack() -> None:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xack(lane.stream, WORKERS_GROUP, entry_id)
                pipe.xdel(lane.stream, entry_id)
                await pipe.execute(raise_on_error=False)  # NOGROUP after an empty restart: nothing to ack
        await self._until_reachable(ack)
        self._unacked.discard((lane.stream, entry_id))

    # -- failover -------------------------------------------------------------------------------------

    async def _claim_stale(self) -> None:
        """Take over jobs that a dead worker left pending for longer than `claim_after()`."""
        while self._taking:
            await asyncio.sleep(max(0.2, min(1.0, self.claim_after() / 4)))
            for lane in self._open_lanes():
                try:
                    await self._claim_from(lane)
                except ResponseError as error:
                    if "NOGROUP" not in str(error):
                        raise
                    await ensure_groups(self._redis)
                except UNREACHABLE:
                    break

    async def _claim_from(self, lane: _Lane) -> None:
        cursor, entries, *_ = await self._redis.xautoclaim(
            lane.stream, WORKERS_GROUP, self.name, int(self.claim_after() * 1000), start_id=lane.claim_cursor,
            count=lane.free)
        lane.claim_cursor = cursor.decode() if isinstance(cursor, bytes) else cursor
        for entry_id, fields in entries:
            entry_id = entry_id.decode()
            if (lane.stream, entry_id) in self._unacked:
                continue
            attempts = await self._attempts(lane, entry_id)
            if attempts > self.max_attempts:
                await self._give_up(lane, entry_id, fields, attempts - 1)
                continue
            self.jobs_claimed += 1
            log.warning("worker %s: claimed job %s from a worker that stopped answering", self.name, entry_id)
            self._start(lane, entry_id, fields)

    async def _attempts(self, lane: _Lane, entry_id: str) -> int:
        """How many times the group has handed this job out, this claim included (the heartbeat's re-claims, JUSTID,
        do not count): a job claimed again and again is one whose workers keep dying."""
        rows = await self._redis.xpending_range(lane.stream, WORKERS_GROUP, min=entry_id, max=entry_id, count=1)
        return int(rows[0]["times_delivered"]) if rows else 1

    async def _give_up(self, lane: _Lane, entry_id: str, fields: dict[bytes, bytes] | None, died: int) -> None:
        """A poison job: answer its front-end with an error (so the room moves on) instead of running it again."""
        self.jobs_given_up += 1
        self._unacked.add((lane.stream, entry_id))
        try:
            job = ClipJobMessage.unpack((fields or {}).get(b"job", b""))
        except MessageError:
            job = None
        if job is not None:
            log.error("worker %s: job %s given up: %d workers died running it", self.name, job.job_id, died)
            message = f"gave up after {died} workers died running this clip job"
            await self._until_reachable(functools.partial(
                self._reply, job, ClipResultMessage(job.job_id, self.name, None, GAVE_UP, message).pack()))
        await self._acknowledge(lane, entry_id)

    async def _heartbeat(self) -> None:
        """Say this worker lives (and how busy it is), and keep its running jobs from looking abandoned."""
        while self._living:
            slowest = p99(self.generation_seconds)
            status = {"slots": self.slots, "running": self.running, "clips_done": self.clips_done,
                      "jobs_claimed": self.jobs_claimed, "jobs_given_up": self.jobs_given_up, "p99_seconds": -1.0 if slowest is None else slowest,
                      "pid": os.getpid(), "at": time.time()}
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.hset(self.key, mapping=status)
                    pipe.pexpire(self.key, int(3000 * self.heartbeat_seconds))
                    pipe.zadd(WORKERS_SET, {self.name: status["at"]})
                    for stream in self.lanes:
                        ids = sorted(entry_id for lane_stream, entry_id in self._unacked if lane_stream == stream)
                        if ids:
                            pipe.xclaim(stream, WORKERS_GROUP, self.name, 0, ids, justid=True)
                    await pipe.execute(raise_on_error=False)
            except UNREACHABLE as error:
                log.warning("worker %s: heartbeat failed (%s)", self.name, error)
            await asyncio.sleep(self.heartbeat_seconds)
