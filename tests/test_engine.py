"""The engine with the tiny model: shared batches, deadline order, cancellation, and one bad job among good ones.

`ScriptedPipeline` wraps the real tiny pipeline and misbehaves on cue, keyed by a clip's start prompt:
"explode" makes every UNet step that includes it raise, "hold" blocks the step until the test lets go.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np
import pytest

from jamserver.server.device.engine import Engine
from pipeline.audio.dsp import SpectrogramConverter
from pipeline.audio.params import SpectrogramParams
from pipeline.diffusion.requests import ClipRequest, PromptInput
from pipeline.model.loading import load_pipeline
from pipeline.render import RenderedClip
from pipeline.seeds import SeedLibrary

STEPS = 4  # a few UNet steps per clip, so each test stays quick
RESULT_TIMEOUT = 120


class QuickConverter(SpectrogramConverter):
    """The real converter with one phase-reconstruction iteration: these tests are about scheduling."""

    def audio_from_mel(self, mel: Any, **options: Any) -> Any:
        return super().audio_from_mel(mel, iterations=1)


class ScriptedPipeline:
    """The real pipeline, plus faults and a gate chosen by each job's start prompt."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.gate.set()
        self.held = threading.Event()
        self.stepped: list[list[str]] = []  # the prompts of each step call, in order

    def prepare(self, request: ClipRequest) -> Any:
        if request.start.prompt == "unpreparable":
            raise ValueError("start.prompt: refused by the test")
        return self.inner.prepare(request)

    def step(self, jobs: Sequence[Any]) -> None:
        prompts = [job.request.start.prompt for job in jobs]
        self.stepped.append(prompts)
        if "hold" in prompts:
            self.held.set()
            self.gate.wait(RESULT_TIMEOUT)
        if "explode" in prompts:
            raise RuntimeError("injected UNet failure")
        self.inner.step(jobs)

    def decode(self, jobs: Sequence[Any]) -> list[Any]:
        return self.inner.decode(jobs)


@pytest.fixture(scope="module")
def tiny():
    return load_pipeline("tiny")


@pytest.fixture(scope="module")
def seed_image():
    return SeedLibrary().load_seed("og_beat")


@pytest.fixture
def scripted(tiny):
    return ScriptedPipeline(tiny.pipeline)


@pytest.fixture(scope="module")
def quick_converter(tiny) -> QuickConverter:
    return QuickConverter(SpectrogramParams(), device=tiny.device)  # building one costs seconds: share it


@pytest.fixture(scope="module")
def steps_per_clip(tiny, seed_image) -> int:
    return tiny.pipeline.prepare(request(seed_image, "count")).total_steps


@pytest.fixture
def engine(scripted, quick_converter):
    engine = Engine(scripted, quick_converter, max_batch=8)
    yield engine
    scripted.gate.set()
    engine.close()


def request(seed_image, prompt: str, seed: int = 1) -> ClipRequest:
    side = PromptInput(prompt, seed)
    return ClipRequest(start=side, end=PromptInput(prompt, seed + 1), alpha=0.5, seed_image=seed_image,
                       num_inference_steps=STEPS)


def wait_until(condition: Any, what: str, timeout: float = RESULT_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def hold_engine(engine: Engine, scripted: ScriptedPipeline, seed_image) -> Future:
    """Block the device thread inside a step so the test can line up the queue behind it."""
    scripted.gate.clear()
    future = engine.submit(request(seed_image, "hold"), deadline=0.0)
    assert scripted.held.wait(RESULT_TIMEOUT), "the engine never started the holding job"
    return future


def test_a_clip_comes_back_as_an_image_and_audio(tiny, seed_image):
    engine = Engine(tiny.pipeline, SpectrogramConverter(SpectrogramParams(), device=tiny.device))
    try:
        clip = engine.submit(request(seed_image, "warm pads"), deadline=0.0).result(RESULT_TIMEOUT)
    finally:
        engine.close()
    assert isinstance(clip, RenderedClip)
    assert clip.image.size == (512, 512)
    assert clip.audio.dtype == np.float32 and clip.audio.ndim == 2
    assert clip.duration == pytest.approx(5.12, abs=0.02)
    assert np.isfinite(clip.audio).all() and clip.gen_seconds > 0
    assert engine.stats.clips_done == 1 and engine.stats.clips_failed == 0


def test_decoding_on_the_device_thread_or_the_dsp_thread_gives_the_same_clip(engine, scripted, quick_converter,
                                                                             seed_image):
    on_device = Engine(scripted, quick_converter, decode_on_dsp=False)
    try:
        batched = on_device.submit(request(seed_image, "same clip"), deadline=0.0).result(RESULT_TIMEOUT)
    finally:
        on_device.close()
    assert engine.decode_on_dsp  # the default on a CPU
    alone = engine.submit(request(seed_image, "same clip"), deadline=0.0).result(RESULT_TIMEOUT)
    assert np.array_equal(np.asarray(batched.image), np.asarray(alone.image))
    np.testing.assert_allclose(batched.audio, alone.audio, atol=1e-6)


def test_jobs_queued_together_share_unet_calls(engine, scripted, seed_image, steps_per_clip):
    holding = hold_engine(engine, scripted, seed_image)
    futures = [engine.submit(request(seed_image, f"room {n}", seed=n), deadline=1.0) for n in range(3)]
    scripted.gate.set()
    for future in [holding, *futures]:
        future.result(RESULT_TIMEOUT)
    steps_needed = 4 * steps_per_clip
    assert engine.stats.batched_rows == steps_needed
    assert engine.stats.unet_calls < steps_needed
    assert max(len(prompts) for prompts in scripted.stepped) >= 3


def test_one_failing_job_fails_alone_and_the_others_finish(engine, scripted, seed_image):
    holding = hold_engine(engine, scripted, seed_image)
    good = [engine.submit(request(seed_image, f"good {n}", seed=n), deadline=1.0) for n in range(2)]
    bad = engine.submit(request(seed_image, "explode"), deadline=1.0)
    scripted.gate.set()
    with pytest.raises(RuntimeError, match="injected UNet failure"):
        bad.result(RESULT_TIMEOUT)
    for future in [holding, *good]:
        assert isinstance(future.result(RESULT_TIMEOUT), RenderedClip)
    assert engine.stats.clips_failed == 1 and engine.stats.clips_done == 3
    # the shared step that failed was retried job by job, so the good ones never lost a step
    assert any(len(prompts) == 1 and prompts[0].startswith("good") for prompts in scripted.stepped)


def test_a_job_refused_by_prepare_fails_with_its_own_error(engine, seed_image):
    bad = engine.submit(request(seed_image, "unpreparable"), deadline=0.0)
    good = engine.submit(request(seed_image, "fine"), deadline=0.0)
    with pytest.raises(ValueError, match="start.prompt"):
        bad.result(RESULT_TIMEOUT)
    assert isinstance(good.result(RESULT_TIMEOUT), RenderedClip)


def test_earliest_deadline_is_admitted_first(quick_converter, scripted, seed_image):
    engine = Engine(scripted, quick_converter, max_batch=1)
    try:
        holding = hold_engine(engine, scripted, seed_image)
        finished: list[str] = []
        for prompt, deadline in (("relaxed", 100.0), ("urgent", 1.0), ("soon", 10.0)):
            future = engine.submit(request(seed_image, prompt), deadline=deadline)
            future.add_done_callback(lambda _, prompt=prompt: finished.append(prompt))
        scripted.gate.set()
        holding.result(RESULT_TIMEOUT)
        engine.submit(request(seed_image, "last", seed=9), deadline=1000.0).result(RESULT_TIMEOUT)
    finally:
        scripted.gate.set()
        engine.close()
    assert finished == ["urgent", "soon", "relaxed"]


def test_a_background_job_gets_no_row_while_live_jobs_fill_the_batch(quick_converter, scripted, seed_image):
    engine = Engine(scripted, quick_converter, max_batch=1)
    try:
        holding = hold_engine(engine, scripted, seed_image)
        rest = engine.submit(request(seed_image, "rest job"), background=True)
        live = engine.submit(request(seed_image, "live room"), deadline=1.0, owner="room")
        scripted.gate.set()
        for future in (holding, rest, live):
            future.result(RESULT_TIMEOUT)
    finally:
        scripted.gate.set()
        engine.close()
    calls = scripted.stepped
    first_rest = next(index for index, prompts in enumerate(calls) if "rest job" in prompts)
    last_live = max(index for index, prompts in enumerate(calls) if {"live room", "hold"} & set(prompts))
    assert first_rest > last_live  # submitted before the live job, and still stepped only after it


def test_a_cancelled_job_is_never_stepped(engine, scripted, seed_image):
    holding = hold_engine(engine, scripted, seed_image)
    dropped = engine.submit(request(seed_image, "nobody listens"), deadline=1.0)
    dropped.cancel()
    kept = engine.submit(request(seed_image, "still wanted"), deadline=2.0)
    scripted.gate.set()
    holding.result(RESULT_TIMEOUT)
    kept.result(RESULT_TIMEOUT)
    assert not any("nobody listens" in prompts for prompts in scripted.stepped)


def test_close_fails_pending_jobs_and_refuses_new_ones(quick_converter, scripted, seed_image):
    engine = Engine(scripted, quick_converter)
    holding = hold_engine(engine, scripted, seed_image)
    pending = engine.submit(request(seed_image, "queued"), deadline=1.0)
    closer = threading.Thread(target=engine.close)
    closer.start()
    wait_until(lambda: engine._stopping, "close() to take effect")  # the device thread is still held
    scripted.gate.set()
    closer.join(RESULT_TIMEOUT)
    assert not closer.is_alive()
    for future in (holding, pending):
        with pytest.raises(RuntimeError, match="engine stopped"):
            future.result(RESULT_TIMEOUT)
    with pytest.raises(RuntimeError, match="engine is stopped"):
        engine.submit(request(seed_image, "too late"), deadline=0.0)


def test_max_batch_below_one_is_refused(scripted, quick_converter):
    with pytest.raises(ValueError, match="max_batch"):
        Engine(scripted, quick_converter, max_batch=0)
