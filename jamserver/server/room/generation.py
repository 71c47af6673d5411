"""A room's clip loop: when the session wants a clip or a cut-in, have the engine make it, join it, fan it out.

`clip_request` and `clip_frame` (a planned clip -> the pipeline request that renders it -> its clip frame) are
shared with offline renders (`jamserver.recording.offline`), so both make the same sound and the same frames.

The session takes every decision (whether a clip or a cut is wanted, which one, where a late cut lands); this loop
carries them out: the engine renders (batched with other rooms' on the device thread), the room's stream joins and
encodes off the event loop, and the packed clip frame goes to the room's audience. A finished clip is held until
its steady release time (`jamserver.jam.pacing`), so clips leave one clip length apart whatever the device's
jitter; a room's first clip, cut-ins and clips of a room catching up are never held. Clips are made one at a time;
a cut-in is made beside them. When the session plans a cut, the clips in flight it supersedes are stopped (their
render dropped; one already being joined finishes but is not sent), and a cut still rendering is stopped when a
newer prompt arrives, so prompts close together coalesce. Everything that touches the stream runs under one lock,
in order, so the stream, the frames sent and the session agree; a piece joined but never sent leaves no hole
because a restart never begins after the last frame sent. A clip that fails is reported and made again after a
growing pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from jamserver.jam import protocol
from jamserver.jam.pacing import SteadyDelivery
from jamserver.jam.prompt import Prompt
from jamserver.jam.session import ClipPlan, JamSession
from jamserver.server.device.engine import Engine
from jamserver.server.metrics import Metrics
from jamserver.server.room.fanout import Audience
from jamserver.server.room.stream import RoomStream, StreamPiece
from pipeline.diffusion.requests import ClipRequest, PromptInput
from pipeline.render import RenderedClip, jpeg_bytes
from pipeline.seeds import SeedLibrary

log = logging.getLogger("jamserver.server.room.generation")

TICK_SECONDS = 0.1
# A new room waits this long for its host's first prompt (sent right behind the join) before it opens
# on the default prompt, so a scripted or typed-ahead first prompt is heard from the first clip.
FIRST_PROMPT_GRACE = 0.5
MAX_RETRY_DELAY = 5.0


def prompt_input(prompt: Prompt) -> PromptInput:
    """A planned clip's prompt (seed, denoising and guidance filled in) as the pipeline's input."""
    if not prompt.complete:
        raise ValueError(f"a prompt must be complete to be rendered: {prompt}")
    return PromptInput(prompt.prompt, prompt.seed, prompt.negative_prompt, prompt.denoising, prompt.guidance)


def clip_request(plan: ClipPlan, seeds: SeedLibrary) -> ClipRequest:
    """The pipeline request for a planned clip: its prompts, alpha, seed image, mask and steps."""
    return ClipRequest(
        start=prompt_input(plan.start),
        end=prompt_input(plan.end),
        alpha=plan.alpha,
        seed_image=seeds.load_seed(plan.seed_image_id),
        num_inference_steps=plan.num_inference_steps,
        mask_image=seeds.load_mask(plan.mask_image_id) if plan.mask_image_id else None,
    )


def clip_frame(plan: ClipPlan, piece: StreamPiece, *, image: bytes, sample_rate: int, gen_seconds: float,
               playhead: float) -> dict[str, Any]:
    """The protocol's clip frame for a planned clip once it is rendered and joined into the stream."""
    return protocol.clip_frame(
        seq=plan.seq, stream_time=piece.stream_time, duration=piece.duration, alpha=plan.alpha,
        start=plan.start, end=plan.end, image=image, audio=piece.audio, sample_rate=sample_rate,
        gen_seconds=gen_seconds, mp3_frame=piece.first_frame, playhead=playhead, replaces=piece.replaces,
        loop_offset=plan.loop_offset)


def cut_pieces(plan: ClipPlan, audio: np.ndarray, continuation: np.ndarray | None,
               sample_rate: int) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """The audio a cut-in splices from its stream time: the rendered loop from the same offset (so the beat grid
    stays put) to its end, then the whole loop again if the cut runs on for another one."""
    offset = round(plan.loop_offset * sample_rate)
    if not 0 <= offset < audio.shape[-1]:
        raise ValueError(f"loop_offset {plan.loop_offset} s lies outside the {audio.shape[-1]}-sample clip")
    pieces = [(audio[..., offset:], continuation)]
    if round(plan.duration * sample_rate) > audio.shape[-1] - offset:
        pieces.append((audio, continuation))
    return pieces


@dataclass
class _Job:
    plan: ClipPlan
    task: asyncio.Task | None = None
    joining: bool = False  # past the render: it holds the stream and cannot be stopped any more


class ClipLoop:
    """The task that keeps one room supplied with clips and cut-ins; `wake()` when anything the session decides on
    changed."""

    def __init__(self, room_id: str, session: JamSession, stream: RoomStream, audience: Audience, *,
                 engine: Engine, seeds: SeedLibrary, executor: Executor, metrics: Metrics,
                 publish_state: Callable[[], None], tell_hosts: Callable[[dict[str, Any]], None]) -> None:
        self.room_id = room_id
        self.session = session
        self.stream = stream
        self.audience = audience
        self._engine = engine
        self._seeds = seeds
        self._executor = executor
        self._metrics = metrics
        self._publish_state = publish_state
        self._tell_hosts = tell_hosts
        self._wake = asyncio.Event()
        self._jobs: list[_Job] = []
        self._stream_lock = asyncio.Lock()
        self._frames_sent = 0  # MP3 frames of the room's stream that went out
        self._failures = 0
        self._quiet_until = 0.0  # after a failure nothing new is started before this (a growing back-off)
        self._created = time.monotonic()
        self._opened = False  # the first clip has been planned
        self._stopping = False
        self._pacing = SteadyDelivery(session.clip_duration)
        self._task = asyncio.create_task(self._run(), name=f"room-{room_id}")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        # The flag as well as the cancel: Python 3.11's wait_for swallows a cancel that races with the wake-up.
        self._stopping = True
        tasks = [self._task, *(job.task for job in self._jobs if job.task is not None)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self) -> None:
        while not self._stopping:
            self._publish_state()
            self._look(time.monotonic())
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK_SECONDS)

    # -- deciding ---------------------------------------------------------------------------------

    def _look(self, now: float) -> None:
        session = self.session
        if now < self._quiet_until:
            return
        stale = session.stale_cut
        if stale is not None and self._stop_job(stale):
            session.drop(stale)
        if session.wants_cut(now):
            plan, superseded = session.plan_cut(now)
            for old in superseded:
                self._stop_job(old)
            if plan is not None:
                log.info("room %s: cut %d planned at %.2f s: playhead %.2f s + expected generation %.2f s + margin "
                         "%.2f s (of which delivery to the front-ends %.2f s), on the next beat", self.room_id,
                         plan.seq, plan.stream_time, session.position(now), session.cut_generation.seconds,
                         session.cut_reach(now), session.delivery.seconds(now))
                self._start(plan, self._make_cut)
        if not self._jobs and session.wants_clip(now) and self._may_open(now):
            self._opened = True
            self._start(session.plan_next_clip(), self._make_clip)

    def _may_open(self, now: float) -> bool:
        return self._opened or bool(self.session.up_next) or now - self._created >= FIRST_PROMPT_GRACE

    def _start(self, plan: ClipPlan, make: Callable[[_Job], Awaitable[None]]) -> None:
        job = _Job(plan)
        self._jobs.append(job)
        job.task = asyncio.create_task(self._run_job(job, make), name=f"room-{self.room_id}-clip-{plan.seq}")

    def _stop_job(self, plan: ClipPlan) -> bool:
        """Stop making `plan` if it is still rendering; False if it is already being joined into the stream."""
        job = next((job for job in self._jobs if job.plan == plan), None)
        if job is None:
            return True
        if job.joining:
            return False
        if job.task is not None:
            job.task.cancel()
        self._jobs.remove(job)
        return True

    async def _run_job(self, job: _Job, make: Callable[[_Job], Awaitable[None]]) -> None:
        try:
            await make(job)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self._clip_failed(job.plan, error)
        finally:
            if job in self._jobs:
                self._jobs.remove(job)
            self._wake.set()

    # -- making -----------------------------------------------------------------------------------

    async def _render(self, plan: ClipPlan, deadline_stream_time: float, *, urgent: bool = False) -> RenderedClip:
        now = time.monotonic()
        deadline = now + max(0.0, deadline_stream_time - self.session.position(now))
        return await self._engine.render(clip_request(plan, self._seeds), deadline, owner=self.room_id, urgent=urgent)

    async def _make_clip(self, job: _Job) -> None:
        """A clip at the end of the stream, held until its steady release time (never the room's first)."""
        planned = time.monotonic()
        loop = asyncio.get_running_loop()
        clip = await self._render(job.plan, job.plan.stream_time)
        ready = time.monotonic()
        # Never held while the room is catching up (it wants the next clip already): a hold would idle its share.
        steady = self._frames_sent > 0 and not self.session.wants_clip(ready)
        leaves = max(ready, self._pacing.release_at(planned)) if steady else ready
        if leaves > ready:
            await asyncio.sleep(leaves - ready)
        self._pacing.sent(planned, leaves, ready - planned, self.session.clip_duration)
        planned += leaves - ready  # the hold is not the clip's making: the session learns render times
        async with self._stream_lock:
            job.joining = True
            if not self.session.planned(job.plan):  # superseded by a cut while it waited for the stream
                return
            piece = await loop.run_in_executor(self._executor, self.stream.append, clip.audio, clip.continuation)
            if not self.session.planned(job.plan):  # superseded while it was joined: joined, never sent
                return
            await self._send(job.plan, piece, clip, planned)

    async def _make_cut(self, job: _Job) -> None:
        """A cut-in: rendered as the clip under its beat, spliced in from there (or its next reachable beat)."""
        planned = time.monotonic()
        loop = asyncio.get_running_loop()
        clip = await self._render(job.plan, job.plan.stream_time - self.session.cut_reach(planned), urgent=True)
        async with self._stream_lock:
            job.joining = True
            planned_at = job.plan.stream_time
            job.plan = self.session.land_cut(job.plan, time.monotonic())
            if job.plan.stream_time != planned_at:
                self._metrics.late_cuts.inc()
            if job.plan.replaces:
                pieces = cut_pieces(job.plan, clip.audio, clip.continuation, self.stream.sample_rate)
                piece = await loop.run_in_executor(self._executor, self._cut_stream, job.plan.stream_time, pieces)
            else:  # its beat ran past the generated audio: it simply joins at the end
                piece = await loop.run_in_executor(self._executor, self.stream.append, clip.audio, clip.continuation)
            await self._send(job.plan, piece, clip, planned)
        if job.plan.replaces:
            self._metrics.cuts.inc()
        log.info("room %s: cut %d spliced in at %.2f s (planned %.2f s), made in %.2f s (engine %.2f s), playhead now "
                 "%.2f s", self.room_id, job.plan.seq, job.plan.stream_time, planned_at, time.monotonic() - planned,
                 clip.gen_seconds, self.session.position(time.monotonic()))

    def _cut_stream(self, at: float, pieces: list[tuple[np.ndarray, np.ndarray | None]]) -> StreamPiece:
        return self.stream.cut(at, pieces, sent_frames=self._frames_sent)

    async def _send(self, plan: ClipPlan, piece: StreamPiece, clip: RenderedClip, planned: float) -> None:
        image = await asyncio.get_running_loop().run_in_executor(self._executor, jpeg_bytes, clip.image)
        now = time.monotonic()
        self.audience.broadcast_clip(clip_frame(
            plan, piece, image=image, sample_rate=self.stream.sample_rate, gen_seconds=clip.gen_seconds,
            playhead=self.session.position(now)))
        self._frames_sent = piece.end_frame
        # A room's first clip carries one-time costs (its prompt's embedding; on a fresh server, tracing the model):
        # not what the next cut will take.
        made_in = None if plan.seq == 0 and not piece.replaces else now - planned
        self.session.clip_delivered(plan, now, duration=piece.duration, made_in=made_in)
        self._failures = 0
        self._metrics.clips.inc()
        self._metrics.generation_seconds.observe(clip.gen_seconds)

    def _clip_failed(self, plan: ClipPlan, error: Exception) -> None:
        """Tell the host; the clip is re-planned from the settings of the moment (reset after repeated failures)."""
        log.warning("room %s: clip %d failed (attempt %d): %s", self.room_id, plan.seq, plan.attempt, error)
        self._metrics.clip_failures.inc()
        reset = self.session.clip_failed(plan) if self.session.planned(plan) else False
        then = (f"the room's settings were reset to the defaults after {plan.attempt} failures" if reset
                else "retrying with the room's current settings")
        self._tell_hosts(protocol.error_frame(
            "server_error", f"clip {plan.seq} failed ({type(error).__name__}: {error}); {then}"))
        if reset:
            self.audience.broadcast(protocol.settings_frame(asdict(self.session.settings)), droppable=False,
                                    replaces="settings")
        self._failures += 1
        self._quiet_until = time.monotonic() + min(MAX_RETRY_DELAY, 0.25 * 2 ** (self._failures - 1))
