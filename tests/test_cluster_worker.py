"""Generation workers as real processes: jobs through Redis, a worker SIGKILLed mid-clip, Redis restarted.

What a listener would notice if these broke: a room that stops for good when one GPU machine dies, a different clip
after a failover than before it, or a cluster that needs a manual restart after Redis did.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import time
import urllib.request

import pytest
import redis

from jamserver.cluster.remote import PoisonJob, RemoteEngine
from tests.cluster_support import (
    assert_same_clip,
    clip_request,
    pending_owner,
    running_worker,
    wait_until_alive,
)
from tests.server_support import free_port

pytestmark = pytest.mark.slow


def test_a_worker_makes_clips_for_a_front_end_and_the_same_job_gives_the_same_clip(redis_server, tmp_path):
    with running_worker(redis_server.url, "w1", log_dir=tmp_path) as worker:
        async def scenario():
            engine = RemoteEngine(redis_server.url, name="fe1")
            await engine.start()
            try:
                first, again, other = await asyncio.gather(
                    engine.render(clip_request(), time.monotonic()),
                    engine.render(clip_request(), time.monotonic() + 1),
                    engine.render(clip_request("rain on a tin roof", seed=1234), time.monotonic()))
                with pytest.raises(ValueError, match="alpha"):  # refused by the worker's pipeline: a 400 on REST
                    await engine.render(dataclasses.replace(clip_request(steps=3), alpha=1.5), time.monotonic())
                return first, again, other, await engine.workers()
            finally:
                await engine.close()

        first, again, other, workers = asyncio.run(scenario())
    assert first.audio.shape == (1, 225792) and first.sample_rate == 44100
    assert_same_clip(first, again)
    with pytest.raises(AssertionError):  # and another job another clip
        assert_same_clip(first, other)
    assert [(w.name, w.slots) for w in workers] == [("w1", 8)]
    assert "Traceback" not in worker.log()


CLAIM_AFTER = 2.0


def test_a_job_on_a_sigkilled_worker_is_finished_by_another_and_not_stolen_from_a_live_one(redis_server, tmp_path):
    flags = ("--max-batch", "1", "--claim-after", str(CLAIM_AFTER))
    with running_worker(redis_server.url, "a", *flags, log_dir=tmp_path) as a, \
            running_worker(redis_server.url, "b", *flags, log_dir=tmp_path) as b:
        client = redis.Redis.from_url(redis_server.url)
        request = clip_request(steps=999)  # the longest clip PNDM runs: its worker outlives several claim periods

        async def scenario():
            engine = RemoteEngine(redis_server.url, name="fe1")
            await engine.start()
            try:
                job = asyncio.create_task(engine.render(request, time.monotonic()))
                owner = None
                while owner is None:
                    await asyncio.sleep(0.05)
                    owner = pending_owner(client)
                victim, survivor = (a, b) if owner == "a" else (b, a)
                await asyncio.sleep(2 * CLAIM_AFTER + 1.5)  # a live worker's job is not taken from it
                still_running = not job.done()
                still_owner = pending_owner(client)
                victim.process.send_signal(signal.SIGKILL)
                killed_at = time.monotonic()
                clip = await asyncio.wait_for(job, 300)
                took = time.monotonic() - killed_at
                again = await asyncio.wait_for(engine.render(request, time.monotonic()), 300)  # once more
                return victim, survivor, still_running, still_owner, took, clip, again
            finally:
                await engine.close()

        victim, survivor, still_running, still_owner, took, clip, again = asyncio.run(scenario())
        claimed = int(client.hget(f"jam:worker:{survivor.name}", "jobs_claimed"))
    assert still_running and still_owner == victim.name
    assert claimed == 1
    assert took > CLAIM_AFTER
    assert_same_clip(clip, again)
    assert "claimed job" in survivor.log()


def test_redis_restarted_empty_mid_job_workers_and_front_ends_carry_on(redis_server, tmp_path):
    with running_worker(redis_server.url, "w1", log_dir=tmp_path) as worker:
        async def scenario():
            engine = RemoteEngine(redis_server.url, name="fe1")
            await engine.start()
            try:
                job = asyncio.create_task(engine.render(clip_request(steps=200), time.monotonic()))
                client = redis.Redis.from_url(redis_server.url)
                while pending_owner(client) is None:
                    await asyncio.sleep(0.05)
                await asyncio.to_thread(redis_server.restart, 1.0)  # no persistence: the job is gone
                clip = await asyncio.wait_for(job, 300)
                after = await asyncio.wait_for(engine.render(clip_request("after"), time.monotonic()), 120)
                return clip, after, engine.jobs_resubmitted
            finally:
                await engine.close()

        clip, after, resubmitted = asyncio.run(scenario())
        assert worker.process.poll() is None
    assert clip.audio.shape == after.audio.shape == (1, 225792)
    assert resubmitted == 1


def test_rest_jobs_have_their_own_slots_so_a_worker_full_of_them_still_takes_room_clips(redis_server, tmp_path):
    """--max-batch 2 gives REST (background) jobs one slot: three long REST jobs queue in Redis, a room's clip
    sent after them is taken at once and finished before the second REST job (which waits for the first)."""
    with running_worker(redis_server.url, "w1", "--max-batch", "2", log_dir=tmp_path):
        async def scenario():
            engine = RemoteEngine(redis_server.url, name="fe1")
            await engine.start()
            finished: list[str] = []

            async def make(name: str, steps: int, **kind) -> None:
                await asyncio.wait_for(engine.render(clip_request(name, steps=steps), time.monotonic(), **kind), 300)
                finished.append(name)

            try:
                rest = [asyncio.create_task(make(f"rest{k}", 150, background=True)) for k in range(3)]
                await asyncio.sleep(0.5)
                await make("room", 10, owner="room-a")
                await asyncio.gather(*rest)
            finally:
                await engine.close()
            return finished

        finished = asyncio.run(scenario())
    assert finished.index("room") < 2, finished
    assert sorted(finished) == ["rest0", "rest1", "rest2", "room"]


def _metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        lines = response.read().decode().splitlines()
    return {line.split()[0]: float(line.split()[1]) for line in lines if line and not line.startswith("#")}


def test_a_job_that_kills_every_worker_running_it_is_given_up_and_its_front_end_told(redis_server, tmp_path):
    """--max-attempts 2: the job's first two workers are SIGKILLed while they run it (as a job that crashes its
    worker would have them), the third gives it up unrun; the front-end gets an error, and refuses the same request
    at once afterwards instead of crashing more workers. The survivor's metrics, over HTTP, say so."""
    ports = {name: free_port() for name in "abc"}
    client = redis.Redis.from_url(redis_server.url)
    with contextlib.ExitStack() as stack:
        workers = {name: stack.enter_context(running_worker(
            redis_server.url, name, "--max-batch", "1", "--claim-after", "1", "--max-attempts", "2",
            "--metrics-port", str(port), log_dir=tmp_path, wait=False)) for name, port in ports.items()}
        for worker in workers.values():
            wait_until_alive(client, worker, 240)

        async def scenario():
            engine = RemoteEngine(redis_server.url, name="fe1")
            await engine.start()
            try:
                poison = clip_request(steps=999)
                job = asyncio.create_task(engine.render(poison, time.monotonic()))
                killed: list[str] = []
                for _ in range(2):
                    while (owner := pending_owner(client)) is None or owner in killed:
                        assert not job.done()
                        await asyncio.sleep(0.05)
                    workers[owner].process.send_signal(signal.SIGKILL)
                    killed.append(owner)
                with pytest.raises(PoisonJob, match="gave up after 2 workers died"):
                    await asyncio.wait_for(job, 120)
                with pytest.raises(PoisonJob, match="not sent again"):
                    await engine.render(dataclasses.replace(poison), time.monotonic())
                await asyncio.wait_for(engine.render(clip_request(steps=8), time.monotonic()), 120)  # others go on
                return killed
            finally:
                await engine.close()

        killed = asyncio.run(scenario())
        (survivor,) = set(workers) - set(killed)
        metrics = _metrics(ports[survivor])
        queued = client.xlen("jam:jobs")
    assert metrics["jam_worker_jobs_given_up_total"] == 1
    assert metrics["jam_worker_clips_done_total"] == 1 and metrics["jam_worker_slots"] == 1
    assert metrics["jam_unet_calls_total"] >= 8
    assert queued == 0  # given up means acknowledged and deleted, not left for the next worker
    assert "given up: 2 workers died running it" in workers[survivor].log()
