"""The engine: the one owner of the device, running clip jobs of every room in shared batches.

A device thread admits jobs earliest-deadline-first and advances all active jobs together with one
UNet call per step (continuous batching: jobs join and leave between steps). Finished jobs are
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
from typing import Any

from pipeline.audio.dsp import SpectrogramConverter
from pipeline.model.riffusion import ClipRequest, RiffusionPipeline
from pipeline.render import RenderedClip, spectrogram_audio

log = logging.getLogger("jamserver.server.engine")


@dataclass(order=True)
class _Pending:
    deadline: float
    order: int
    request: ClipRequest = field(compare=False)
    future: Future = field(compare=False)
    submitted: float = field(compare=False, default_factory=time.perf_counter)


@dataclass
class _Active:
    job: Any
    future: Future
    submitted: float


@dataclass
class EngineStats:
    """Counters the metrics endpoint and benchmarks read (written by the device thread only)."""

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
        decode_on_dsp: bool | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.pipeline = pipeline
        self.converter = converter
        self.max_batch = max_batch
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

    def submit(self, request: ClipRequest, deadline: float) -> Future:
        """Queue a clip; the future resolves to a RenderedClip or the job's exception."""
        future: Future = Future()
        with self._wake:
            if self._stopping:
                raise RuntimeError("engine is stopped")
            heapq.heappush(self._pending, _Pending(deadline, next(self._order), request, future))
            self._wake.notify()
        return future

    async def render(self, request: ClipRequest, deadline: float) -> RenderedClip:
        """Awaitable `submit`; cancelling the await drops the job at the next step."""
        future = self.submit(request, deadline)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()
            raise

    @property
    def queued(self) -> int:
        with self._wake:
            return len(self._pending)

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
                admitted = self._pop_pending(self.max_batch - len(active))
            active.extend(self._prepare(admitted))
            active = [entry for entry in active if not entry.future.cancelled()]
            if not active:
                continue
            started = time.perf_counter()
            self._step(active)
            active = self._finish_done(active)
            self.stats.busy_seconds += time.perf_counter() - started
        self._fail_all(active)

    def _pop_pending(self, room: int) -> list[_Pending]:
        admitted = []
        while self._pending and len(admitted) < room:
            entry = heapq.heappop(self._pending)
            if not entry.future.cancelled():
                admitted.append(entry)
        return admitted

    def _prepare(self, admitted: list[_Pending]) -> list[_Active]:
        ready = []
        for entry in admitted:
            try:
                job = self.pipeline.prepare(entry.request)
            except Exception as error:  # one bad job must not stop the others
                self._fail(entry.future, error)
                continue
            ready.append(_Active(job, entry.future, entry.submitted))
        return ready

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
