"""Room leases and the lease-checked publish, against a real redis-server.

What a listener would notice if these broke: two front-ends both streaming one room (doubled or interleaved clips),
a clip heard twice after a failover, or a front-end that froze and woke up talking over the new owner.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from jamserver.cluster.keys import RoomKeys, checked_name
from jamserver.cluster.lease import DuplicateClip, Holder, Lease, LeaseLost, Leases
from tests.server_support import REPO


def run(coro):
    return asyncio.run(coro)


async def entries(redis: Redis, keys: RoomKeys) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in await redis.xrange(keys.out)]


def test_a_rooms_keys_share_one_cluster_slot_and_names_cannot_break_out_of_it():
    keys = RoomKeys("abc_DEF-123")
    assert len({key_slot(key.encode()) for key in keys.all()}) == 1
    assert all("{abc_DEF-123}" in key for key in keys.all())
    assert len({key_slot(k.encode()) for room in ("a", "b", "c", "d") for k in RoomKeys(room).all()}) > 1
    for bad in ("", "a}b", "{x}", "a:b", "a b", "x" * 65):
        with pytest.raises(ValueError, match="room id"):
            RoomKeys(bad)
    with pytest.raises(ValueError, match="owner"):
        checked_name("owner", "front end")


def test_one_owner_at_a_time_and_each_owner_a_larger_epoch(redis_server):
    async def scenario():
        async with Redis.from_url(redis_server.url) as redis:
            leases = Leases(redis, lease_seconds=5)
            keys = RoomKeys("room1")
            first = await leases.acquire(keys, "fe-a")
            refused = await leases.acquire(keys, "fe-b")
            again = await leases.acquire(keys, "fe-a")
            renewed = await leases.renew(first)
            released = await leases.release(first)
            second = await leases.acquire(keys, "fe-b")
            stale_release = await leases.release(first)
            holder = await leases.holder(keys)
            return first, refused, again, renewed, released, second, stale_release, holder

    first, refused, again, renewed, released, second, stale_release, holder = run(scenario())
    assert first == Lease(RoomKeys("room1"), "fe-a", 1)
    assert refused == Holder(1, "fe-a")
    assert again == first  # re-acquiring what one holds keeps the epoch
    assert renewed and released
    assert second == Lease(RoomKeys("room1"), "fe-b", 2)
    assert not stale_release  # an old owner cannot free the new owner's lease
    assert holder == Holder(2, "fe-b")


def test_an_owner_whose_lease_ran_out_can_never_publish_again(redis_server):
    """A SIGSTOPped or GC-paused owner, as Redis sees it: its lease expired while it was not looking."""
    async def scenario():
        async with Redis.from_url(redis_server.url) as redis:
            leases = Leases(redis, lease_seconds=0.3)
            keys = RoomKeys("paused")
            old = await leases.acquire(keys, "fe-a")
            await leases.publish(old, "clip", b"clip-0", seq=0, snapshot=b"snap-0")
            await asyncio.sleep(0.5)  # frozen past its lease
            with pytest.raises(LeaseLost):
                await leases.publish(old, "clip", b"late clip-1", seq=1, snapshot=b"late")
            new = await leases.acquire(keys, "fe-b")
            with pytest.raises(LeaseLost, match="fe-b"):
                await leases.publish(old, "clip", b"late clip-1", seq=1, snapshot=b"late")
            renewed = await leases.renew(old)
            await leases.publish(new, "clip", b"clip-1", seq=1, snapshot=b"snap-1")
            return new, renewed, await entries(redis, keys), await redis.get(keys.snapshot)

    new, renewed, published, snapshot = run(scenario())
    assert new.epoch == 2 and not renewed
    assert [(e[b"epoch"], e[b"seq"], e[b"frame"]) for e in published] == [
        (b"1", b"0", b"clip-0"), (b"2", b"1", b"clip-1")]
    assert snapshot == b"snap-1"


def test_a_clip_is_published_once_even_when_two_owners_made_it(redis_server):
    async def scenario():
        async with Redis.from_url(redis_server.url) as redis:
            leases = Leases(redis, lease_seconds=5, out_maxlen=4)
            keys = RoomKeys("dup")
            old = await leases.acquire(keys, "fe-a")
            for seq in range(3):
                await leases.publish(old, "clip", f"a{seq}".encode(), seq=seq)
            with pytest.raises(DuplicateClip):
                await leases.publish(old, "clip", b"a2 again", seq=2)
            await leases.publish(old, "state", b"state", snapshot=b"s")  # not a clip: no seq to check
            await leases.release(old)
            new = await leases.acquire(keys, "fe-b")
            with pytest.raises(DuplicateClip):  # the new owner remade clip 2 from an older snapshot
                await leases.publish(new, "clip", b"b2", seq=2)
            for seq in (3, 4):
                await leases.publish(new, "clip", f"b{seq}".encode(), seq=seq)
            return await entries(redis, keys)

    published = run(scenario())
    assert [e[b"frame"] for e in published] == [b"a2", b"state", b"b3", b"b4"]  # capped at 4, oldest gone
    assert [e[b"kind"] for e in published] == [b"clip", b"state", b"clip", b"clip"]


OWNER_SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from redis.asyncio import Redis
    from jamserver.cluster.keys import RoomKeys
    from jamserver.cluster.lease import Leases, LeaseLost

    async def main():
        async with Redis.from_url(sys.argv[1]) as redis:
            leases = Leases(redis, lease_seconds=0.5)
            lease = await leases.acquire(RoomKeys("stopped"), "fe-a")
            print("owner", lease.epoch, flush=True)
            seq = 0
            while True:
                try:
                    await leases.publish(lease, "clip", b"a", seq=seq)
                except LeaseLost as error:
                    print("lost", error, flush=True)
                    return
                seq += 1
                await asyncio.sleep(0.05)
                await leases.renew(lease)

    asyncio.run(main())
""")


def test_a_sigstopped_owner_resumes_into_a_lost_lease_and_publishes_nothing(redis_server):
    owner = subprocess.Popen([sys.executable, "-c", OWNER_SCRIPT, redis_server.url], stdout=subprocess.PIPE,
                             text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert owner.stdout.readline().split() == ["owner", "1"]
        time.sleep(0.5)
        owner.send_signal(signal.SIGSTOP)

        async def take_over():
            async with Redis.from_url(redis_server.url) as redis:
                leases = Leases(redis, lease_seconds=5)
                keys = RoomKeys("stopped")
                deadline = time.monotonic() + 5
                while not isinstance(lease := await leases.acquire(keys, "fe-b"), Lease):
                    assert time.monotonic() < deadline, "the stopped owner's lease never ran out"
                    await asyncio.sleep(0.05)
                last_seq = int(await redis.get(keys.published))
                await leases.publish(lease, "clip", b"b", seq=last_seq + 1)
                owner.send_signal(signal.SIGCONT)
                await asyncio.to_thread(owner.wait, 10)
                return lease, last_seq, await entries(redis, keys)

        lease, last_seq, published = run(take_over())
    finally:
        owner.kill()
        owner.wait()
    assert lease.epoch == 2
    assert owner.stdout.read().startswith("lost")
    assert last_seq > 0
    assert published[-1] == {b"epoch": b"2", b"seq": str(last_seq + 1).encode(), b"kind": b"clip", b"frame": b"b"}
    assert all(entry[b"epoch"] == b"1" for entry in published[:-1])
