"""A room's clip loop: when the session wants a clip, have the engine make it, join it into the stream, fan it out.

`clip_request` and `clip_frame` (a planned clip -> the pipeline request that renders it -> its clip frame) are
shared with offline renders (`jamserver.recording.offline`), so both make the same sound and the same frames.

The session takes every decision (whether a clip is wanted, which one); this loop carries them out: the engine
renders the clip (batched with other rooms' on the device thread), the room's stream joins and encodes it off the
event loop, and the packed clip frame goes to the room's audience. A clip that fails is reported to the room and
made again after a growing pause.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import asdict
from typing import Any

from jamserver.jam import protocol
from jamserver.jam.prompt import Prompt
from jamserver.jam.session import ClipPlan, JamSession
from jamserver.server.device.engine import Engine
from jamserver.server.metrics import Metrics
from jamserver.server.room.fanout import Audience
from jamserver.server.room.stream import RoomStream
from pipeline.diffusion.requests import ClipRequest, PromptInput
from pipeline.render import jpeg_bytes
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


def clip_frame(plan: ClipPlan, *, stream_time: float, duration: float, image: bytes, audio: bytes,
               sample_rate: int, gen_seconds: float) -> dict[str, Any]:
    """The protocol's clip frame for a planned clip once it is rendered and joined into the stream."""
    return protocol.clip_frame(
        seq=plan.seq, stream_time=stream_time, duration=duration, alpha=plan.alpha,
        start=plan.start, end=plan.end, image=image, audio=audio,
        sample_rate=sample_rate, gen_seconds=gen_seconds)


class ClipLoop:
    """The task that keeps one room supplied with clips; `wake()` when anything the session decides on changed."""

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
        self._failures = 0
        self._created = time.monotonic()
        self._opened = False  # the first clip has been planned
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=f"room-{room_id}")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        # The flag as well as the cancel: Python 3.11's wait_for swallows a cancel that races with the wake-up.
        self._stopping = True
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while not self._stopping:
            self._publish_state()
            now = time.monotonic()
            if self.session.wants_clip(now) and self._may_open(now):
                self._opened = True
                await self._produce(self.session.plan_next_clip())
                continue
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), TICK_SECONDS)
            except TimeoutError:
                pass

    def _may_open(self, now: float) -> bool:
        return self._opened or bool(self.session.up_next) or now - self._created >= FIRST_PROMPT_GRACE

    async def _produce(self, plan: ClipPlan) -> None:
        """Make, join, pack and fan out one clip; a failure is reported and the clip retried."""
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        deadline = now + max(0.0, plan.stream_time - self.session.position(now))
        try:
            clip = await self._engine.render(clip_request(plan, self._seeds), deadline, owner=self.room_id)
            piece = await loop.run_in_executor(self._executor, self.stream.append, clip.audio, clip.continuation)
            image = await loop.run_in_executor(self._executor, jpeg_bytes, clip.image)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            await self._clip_failed(plan, error)
            return
        self._failures = 0
        self.audience.broadcast_clip(clip_frame(
            plan, stream_time=piece.stream_time, duration=piece.duration, image=image, audio=piece.audio,
            sample_rate=self.stream.sample_rate, gen_seconds=clip.gen_seconds))
        self.session.clip_delivered(plan, time.monotonic(), piece.duration)
        self._metrics.clips.inc()
        self._metrics.generation_seconds.observe(clip.gen_seconds)

    async def _clip_failed(self, plan: ClipPlan, error: Exception) -> None:
        """Tell the host, re-plan the clip from the settings of the moment (reset after repeated failures)."""
        log.warning("room %s: clip %d failed (attempt %d): %s", self.room_id, plan.seq, plan.attempt, error)
        self._metrics.clip_failures.inc()
        reset = self.session.clip_failed(plan)
        then = (f"the room's settings were reset to the defaults after {plan.attempt} failures" if reset
                else "retrying with the room's current settings")
        self._tell_hosts(protocol.error_frame(
            "server_error", f"clip {plan.seq} failed ({type(error).__name__}: {error}); {then}"))
        if reset:
            self.audience.broadcast(protocol.settings_frame(asdict(self.session.settings)), droppable=False,
                                    replaces="settings")
        self._failures += 1
        await asyncio.sleep(min(MAX_RETRY_DELAY, 0.25 * 2 ** (self._failures - 1)))
