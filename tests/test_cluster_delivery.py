"""How long clips take from a room's owner to the front-ends relaying it, reported back so cut-ins allow for it.

In one process a cut-in reaches members as soon as it is made; on a cluster it first goes through Redis to every
front-end. If the owner did not know that hop's time, a cut could reach the members of a slow front-end after its
beat (they would hear the old audio past the beat, then a jump). A relay against a real redis-server, in process.
"""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from jamserver.cluster.keys import RoomKeys
from jamserver.cluster.lease import Leases
from jamserver.cluster.ownership import DELIVERY
from jamserver.cluster.relay import RelayedRoom
from jamserver.jam import protocol
from jamserver.server.config import ServerConfig


def clip_frame(seq: int) -> bytes:
    return protocol.encode({"type": "clip", "seq": seq, "stream_time": 5.12 * seq, "duration": 5.12})


async def inbox_reports(redis: Redis, keys: RoomKeys, kind: str) -> list[dict[bytes, bytes]]:
    return [fields for _id, fields in await redis.xrange(keys.inbox) if fields[b"kind"] == kind.encode()]


def test_a_relay_reports_each_live_clip_s_delay_from_its_owner_but_not_the_catch_up(redis_server):
    keys = RoomKeys("slow")

    async def scenario():
        async with Redis.from_url(redis_server.url) as redis:
            leases = Leases(redis)
            lease = await leases.acquire(keys, "owner")
            await leases.publish(lease, "clip", clip_frame(0), seq=0, sent=time.time() - 30.0)  # before it opened

            async def take_over(_room_id: str) -> None:
                raise AssertionError("the owner holds the lease")

            relay = RelayedRoom("slow", "token", frontend="fb", redis=redis, redis_url=redis_server.url,
                                leases=leases, config=ServerConfig(), take_over=take_over, on_closed=lambda _: None)
            try:
                deadline = time.monotonic() + 10
                while not relay.audience.recent_clips:
                    assert time.monotonic() < deadline, "the catch-up clip never came"
                    await asyncio.sleep(0.02)
                await leases.publish(lease, "clip", clip_frame(1), seq=1, sent=time.time() - 0.4)  # a slow hop
                await leases.publish(lease, "clip", clip_frame(2), seq=2)  # an owner that does not stamp
                while relay.audience.recent_clips[-1][0] < 2 * 5.12 or not await inbox_reports(redis, keys, DELIVERY):
                    assert time.monotonic() < deadline, "no delivery report"
                    await asyncio.sleep(0.02)
                await asyncio.sleep(0.2)
                return await inbox_reports(redis, keys, DELIVERY)
            finally:
                await relay.stop()

    (report,) = asyncio.run(scenario())
    assert report[b"frontend"] == b"fb" and report[b"seq"] == b"1"
    assert 0.4 <= float(report[b"seconds"]) < 1.4
