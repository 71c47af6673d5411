"""The engine: the one owner of the device, running clip jobs of every room in shared batches.

A device thread admits jobs (one at a time per room, earliest deadline first; REST jobs into a few
background slots) and advances active jobs together with one UNet call per step (continuous batching:
jobs join and leave between steps). Which jobs share each call is `FairShare`'s decision: every room
gets an equal share of UNet time, whatever step count it asks for, and REST jobs run when no room has a job
(`background=True`). Finished jobs are
decoded and turned to audio so that the next steps overlap with that work: on an accelerator the
device thread decodes them in one VAE batch and a DSP thread makes the audio; on a CPU, where the
device thread is one core's worth of work and a batched decode saves nothing, the DSP thread does
the decode too. Nothing here ever runs on the asyncio event loop.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import threading
import time
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from jamserver.server.device.fairshare import FairShare
from pipeline.audio.dsp import SpectrogramConverter
from pipeline.diffusion.requests import ClipRequest
from pipeline.diffusion.riffusion import RiffusionPipeline
from pipeline.render import RenderedClip, spectrogram_audio

log = logging.getLogger("jamserver.server.device.engine")


class ClipMaker(Protocol):
    """What rooms and the REST route need from an engine: this process's Engine, or workers through Redis
    (jamserver.cluster.remote.RemoteEngine). `deadline` is on the caller's monotonic clock."""

    async def render(self, request: ClipRequest, deadline: float = 0.0, *, owner: Any = None,
                     background: bool = False, urgent: bool = False) -> RenderedClip: ...


@dataclass(order=True)
class _Pending:
    background: bool
    deadline: float
    order: int
    request: ClipRequest = field(compare=False)
    future: Future = field(compare=False)
    owner: Any = field(compare=False)
    urgent: bool = field(compare=False, default=False)
    submitted: float = field(compare=False, default_factory=time.perf_counter)


@dataclass(eq=False)
class _Active:
    job: Any
    future: Future
    submitted: float
    owner: Any
    background: bool
    deadline: float
    order: int
    urgent: bool = False

    done_at: float = 0.0  # perf_counter when its last step was taken

    @property
    def rows(self) -> int:
        return 2 if getattr(self.job, "guided", False) else 1

    @property
    def steps_left(self) -> int:
        return self.job.steps_left


@dataclass
class EngineStats:
    """Counters the metrics endpoint and benchmarks read.

    The device thread counts steps, UNet calls and busy time; clips done and failed are counted by whichever
    thread finishes them (the DSP thread for audio). Each only grows, and readers take them without a lock.
    """

    clips_done: int = 0
    clips_failed: int = 0
    unet_calls: int = 0
    batched_rows: int = 0
    busy_seconds: float = 0.0


class Engine:
    """Owns the pipeline; `render()` is the only way anything else gets a clip made."""

    def __init__(
        self,
        pipeline: RiffusionPipeline,
        converter: SpectrogramConverter,
        *,
        max_batch: int = 8,
        background_jobs: int | None = None,
        decode_on_dsp: bool | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.pipeline = pipeline
        self.converter = converter
        self.max_batch = max_batch
        # REST jobs running at once, stepped only in calls no room has a job in
        self.background_jobs = max(1, max_batch // 4) if background_jobs is None else background_jobs
        self._fair = FairShare(max_batch, self.background_jobs)
        self.row_seconds = 0.0  # moving average of a UNet call's time per row
        self.finish_seconds = 0.0  # moving average of decode + audio after a job's last step
        # The converter lives on the model's device: a CPU there means the DSP thread may as well decode.
        self.decode_on_dsp = converter.device.type == "cpu" if decode_on_dsp is None else decode_on_dsp
        self.stats = EngineStats()
        self._pending: list[_Pending] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._stopping = False
        self._dsp = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jam-dsp")
        self._thread = threading.Thread(target=self._run, name="jam-engine", daemon=True)
        self._thread.start()

    # -- public API -------------------------------------------------------------------------

    def submit(self, request: ClipRequest, deadline: float = 0.0, *, owner: Any = None,
               background: bool = False, urgent: bool = False) -> Future:
        """Queue a clip; the future resolves to a RenderedClip or the job's exception.

        `owner` (a room) shares UNet time equally with other owners and runs one job at a time; None makes the
        job its own owner. `background` jobs (REST) run only in calls without live jobs, oldest first. `urgent` jobs
        (cut-ins: a listener is waiting to hear them) are stepped in calls of their own, as fast as the device can.
        """
        future: Future = Future()
        with self._wake:
            if self._stopping:
                raise RuntimeError("engine is stopped")
            order = next(self._order)
            heapq.heappush(self._pending, _Pending(background, deadline, order, request, future,
                                                   ("job", order) if owner is None else owner, urgent))
            self._wake.notify()
        return future

    async def render(self, request: ClipRequest, deadline: float = 0.0, *, owner: Any = None,
                     background: bool = False, urgent: bool = False) -> RenderedClip:
        """Awaitable `submit`; cancelling the await drops the job at the next step."""
        future = self.submit(request, deadline, owner=owner, background=background, urgent=urgent)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()
            raise

    def close(self) -> None:
        """Stop the device thread; pending and running jobs fail with RuntimeError."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout=30)
        self._dsp.shutdown(wait=True, cancel_futures=True)

    # -- device thread ----------------------------------------------------------------------

    def _run(self) -> None:
        active: list[_Active] = []
        while True:
            with self._wake:
                while not self._stopping and not active and not self._pending:
                    self._wake.wait()
                if self._stopping:
                    break
                admitted = self._admit(active)
            active.extend(self._prepare(admitted))
            active = self._drop_cancelled(active)
            if not active:
                continue
            started = time.perf_counter()
            chosen = self._fair.choose(active, time.monotonic(), self.row_seconds, self.finish_seconds)
            self._step(chosen)
            self._fair.charge(chosen)
            self.row_seconds = _average(self.row_seconds, (time.perf_counter() - started) / sum(e.rows for e in chosen))
            active = self._finish_done(active)
            self.stats.busy_seconds += time.perf_counter() - started
        self._fail_all(active)

    def _admit(self, active: list[_Active]) -> list[_Pending]:
        """Pending jobs that may start: one per owner, and background ones only into free background slots."""
        busy = {entry.owner for entry in active}
        background = sum(entry.background for entry in active)
        admitted, waiting = [], []
        while self._pending:
            entry = heapq.heappop(self._pending)
            if entry.future.cancelled():
                continue
            if entry.owner in busy or (entry.background and background >= self.background_jobs):
                waiting.append(entry)
                continue
            busy.add(entry.owner)
            background += entry.background
            admitted.append(entry)
        for entry in waiting:
            heapq.heappush(self._pending, entry)
        return admitted

    def _prepare(self, admitted: list[_Pending]) -> list[_Active]:
        ready = []
        for entry in admitted:
            try:
                job = self.pipeline.prepare(entry.request)
            except Exception as error:  # one bad job must not stop the others
                self._fail(entry.future, error)
                continue
            started = _Active(job, entry.future, entry.submitted, entry.owner, entry.background, entry.deadline,
                              entry.order, entry.urgent)
            self._fair.started(started)
            ready.append(started)
        return ready

    def _drop_cancelled(self, active: list[_Active]) -> list[_Active]:
        kept = [entry for entry in active if not entry.future.cancelled()]
        for entry in active:
            if entry.future.cancelled():
                self._fair.finished(entry, kept)
        return kept

    def _step(self, active: list[_Active]) -> None:
        """One shared UNet call; if it raises, step jobs one by one to find the culprit."""
        stepping = [entry for entry in active if not entry.job.done]
        if not stepping:
            return
        try:
            self.pipeline.step([entry.job for entry in stepping])
            self.stats.unet_calls += 1
            self.stats.batched_rows += len(stepping)
            return
        except Exception:
            log.exception("batched step of %d jobs failed; isolating", len(stepping))
        for entry in stepping:
            try:
                self.pipeline.step([entry.job])
            except Exception as error:
                self._fail(entry.future, error)
                continue
            self.stats.unet_calls += 1
            self.stats.batched_rows += 1

    def _finish_done(self, active: list[_Active]) -> list[_Active]:
        done = [e for e in active if e.job.done and not e.future.done()]
        still = [e for e in active if not e.job.done and not e.future.done()]
        for entry in active:
            if entry not in still:
                self._fair.finished(entry, still)
        for entry in done:
            entry.done_at = time.perf_counter()
        if done:
            finished = [(entry, None) for entry in done] if self.decode_on_dsp else self._decode(done)
            for entry, image in finished:
                work = self._dsp.submit(self._to_audio, entry, image)
                work.add_done_callback(lambda work, entry=entry: self._fail_if_dropped(work, entry))
        return still

    def _fail_if_dropped(self, work: Future, entry: _Active) -> None:
        """Audio work cancelled by `close()` must still resolve the caller's future."""
        if work.cancelled() and not entry.future.done():
            self._fail(entry.future, RuntimeError("engine stopped"))

    def _decode(self, done: list[_Active]) -> list[tuple[_Active, Any]]:
        try:
            return list(zip(done, self.pipeline.decode([entry.job for entry in done])))
        except Exception:
            log.exception("batched decode failed; isolating")
        decoded = []
        for entry in done:
            try:
                decoded.append((entry, self.pipeline.decode([entry.job])[0]))
            except Exception as error:
                self._fail(entry.future, error)
        return decoded

    def _to_audio(self, entry: _Active, image: Any | None) -> None:
        """DSP thread: (decode if not yet done,) spectrogram image -> PCM, then resolve the caller's future."""
        try:
            if image is None:
                image = self.pipeline.decode([entry.job])[0]
            audio, continuation = spectrogram_audio(image, self.converter)
        except Exception as error:
            self._fail(entry.future, error)
            return
        rate = self.converter.params.sample_rate
        self.finish_seconds = _average(self.finish_seconds, time.perf_counter() - entry.done_at)
        gen_seconds = time.perf_counter() - entry.submitted
        try:
            entry.future.set_result(RenderedClip(image, audio, rate, gen_seconds, continuation))
        except InvalidStateError:  # cancelled while the audio was being made
            return
        self.stats.clips_done += 1

    def _fail(self, future: Future, error: BaseException) -> None:
        self.stats.clips_failed += 1
        try:
            future.set_exception(error)
        except InvalidStateError:
            pass

    def _fail_all(self, active: list[_Active]) -> None:
        with self._wake:
            pending, self._pending = self._pending, []
        for entry in [*active, *pending]:
            if not entry.future.done():
                entry.future.set_exception(RuntimeError("engine stopped"))


def _average(current: float, sample: float, weight: float = 0.2) -> float:
    """An exponential moving average; the first sample stands alone."""
    return sample if current == 0.0 else current + weight * (sample - current)
