"""Cut-ins through Redis workers: the urgent lane (`jam:jobs:urgent`), with real worker processes.

What a listener would notice if these broke: a new prompt heard only after every clip queued before it was made (a
cut-in missing its beat whenever the workers are busy), or a cut-in lost for good when its worker dies.
"""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
import redis

from jamserver.cluster.keys import JOBS_STREAM, URGENT_JOBS_STREAM
from jamserver.cluster.remote import RemoteEngine
from tests.cluster_support import assert_same_clip, clip_request, pending_owner, running_worker

pytestmark = pytest.mark.slow


async def wait_for_owner(client: redis.Redis, stream: str) -> str:
    while (owner := pending_owner(client, stream)) is None:
        await asyncio.sleep(0.05)
    return owner


def test_a_busy_worker_takes_a_cut_in_before_the_clips_queued_ahead_of_it(redis_server, tmp_path):
    """--max-batch 1: one long clip runs, two more wait in Redis; a cut-in sent after them is taken at once (one
    beyond the slots) and finished first, before even the running clip, as the engine steps it on its own."""
    client = redis.Redis.from_url(redis_server.url)
    with running_worker(redis_server.url, "w1", "--max-batch", "1", log_dir=tmp_path) as worker:
        async def scenario():
            engine = RemoteEngine(redis_server.url, name="fe1")
            await engine.start()
            finished: list[str] = []

            async def make(name: str, steps: int, **kind) -> None:
                await asyncio.wait_for(engine.render(clip_request(name, steps=steps), time.monotonic() + 5,
                                                     owner=f"room-{name}", **kind), 300)
                finished.append(name)

            try:
                running = asyncio.create_task(make("running", 300))
                await wait_for_owner(client, JOBS_STREAM)
                queued = [asyncio.create_task(make(f"queued{k}", 10)) for k in range(2)]
                await asyncio.sleep(0.5)
                waiting = client.xinfo_groups(JOBS_STREAM)[0]["lag"]
                await make("cut", 10, urgent=True)
                await asyncio.gather(running, *queued)
            finally:
                await engine.close()
            return finished, waiting

        finished, waiting = asyncio.run(scenario())
    assert waiting == 2  # the worker was full: the two clips waited in Redis, not in the worker
    assert finished[0] == "cut", finished
    assert sorted(finished) == ["cut", "queued0", "queued1", "running"]
    assert client.xlen(URGENT_JOBS_STREAM) == 0  # answered means acknowledged and deleted
    assert "Traceback" not in worker.log()


CLAIM_AFTER = 2.0


def test_a_cut_in_on_a_sigkilled_worker_is_claimed_and_finished_by_another(redis_server, tmp_path):
    flags = ("--max-batch", "1", "--claim-after", str(CLAIM_AFTER))
    client = redis.Redis.from_url(redis_server.url)
    with running_worker(redis_server.url, "a", *flags, log_dir=tmp_path) as a, \
            running_worker(redis_server.url, "b", *flags, log_dir=tmp_path) as b:
        request = clip_request(steps=999)  # long enough to be killed mid-way

        async def scenario():
            engine = RemoteEngine(redis_server.url, name="fe1")
            await engine.start()
            try:
                job = asyncio.create_task(engine.render(request, time.monotonic(), owner="room", urgent=True))
                owner = await wait_for_owner(client, URGENT_JOBS_STREAM)
                victim, survivor = (a, b) if owner == "a" else (b, a)
                victim.process.send_signal(signal.SIGKILL)
                killed_at = time.monotonic()
                clip = await asyncio.wait_for(job, 300)
                took = time.monotonic() - killed_at
                again = await asyncio.wait_for(engine.render(request, time.monotonic(), owner="room"), 300)
                return survivor, took, clip, again
            finally:
                await engine.close()

        survivor, took, clip, again = asyncio.run(scenario())
        claimed = int(client.hget(f"jam:worker:{survivor.name}", "jobs_claimed"))
    assert claimed == 1
    assert took > CLAIM_AFTER  # taken over once idle past the claim time, not while its worker lived
    assert_same_clip(clip, again)  # the same clip as the non-urgent path makes
    assert "claimed job" in survivor.log()
    assert client.xlen(URGENT_JOBS_STREAM) == 0
