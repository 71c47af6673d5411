"""Room leases with epochs, and the one way to publish a room's frames: a Lua script that checks the lease first.

A front-end runs a room only while it holds the room's lease: `EPOCH OWNER` under the room's lease key with a TTL it
keeps renewing. Every acquisition bumps the room's epoch, so a later owner's frames always carry a larger epoch. The
lease is checked inside the script that publishes (Redis runs a script atomically), so an owner that lost its lease
while it could not see it (a long GC pause, SIGSTOP, a partition) can never publish again: its next publish fails
with LeaseLost, and it stops. The same script refuses a clip whose seq was already published, so a clip reaches the
out stream once, whichever owner or worker made it twice; and it stores the room's snapshot with the clip, so the
snapshot always matches what listeners heard.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from jamserver.cluster.keys import (
    IDLE_KEY_SECONDS,
    OUT_STREAM_MAXLEN,
    RoomKeys,
    checked_name,
)

DEFAULT_LEASE_SECONDS = 2.0  # an owner renews about three times a lease; a dead owner's room moves within ~3 s

_ACQUIRE = """
local current = redis.call('GET', KEYS[1])
if current then
  local epoch, owner = string.match(current, '^(%d+) (.+)$')
  if owner == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {1, tonumber(epoch), owner}
  end
  return {0, tonumber(epoch), owner}
end
local epoch = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], epoch .. ' ' .. ARGV[1], 'PX', ARGV[2])
return {1, epoch, ARGV[1]}
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS: lease, out, published, snapshot. ARGV: token, seq (-1: not a clip), maxlen, ttl, snapshot ('' keeps it),
# kind, frame, sent (the owner's wall clock as it sent the frame, '' if not stamped).
_PUBLISH = """
local holder = redis.call('GET', KEYS[1])
if holder ~= ARGV[1] then
  return redis.error_reply('LEASELOST held by ' .. tostring(holder))
end
local seq = tonumber(ARGV[2])
if seq >= 0 then
  local last = tonumber(redis.call('GET', KEYS[3]) or '-1')
  if seq <= last then
    return redis.error_reply('DUPLICATE clip ' .. seq .. ' after ' .. last)
  end
  redis.call('SET', KEYS[3], seq, 'EX', ARGV[4])
end
local epoch = string.match(ARGV[1], '^(%d+) ')
local fields = {'epoch', epoch, 'seq', ARGV[2], 'kind', ARGV[6], 'frame', ARGV[7]}
if ARGV[8] ~= '' then
  table.insert(fields, 'sent')
  table.insert(fields, ARGV[8])
end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], '*', unpack(fields))
redis.call('EXPIRE', KEYS[2], ARGV[4])
if ARGV[5] ~= '' then
  redis.call('SET', KEYS[4], ARGV[5], 'EX', ARGV[4])
end
return id
"""


class LeaseLost(Exception):
    """This process no longer owns the room: someone else took it, or the lease ran out unseen."""


class DuplicateClip(Exception):
    """A clip with this seq (or a later one) is already published: the frame was dropped, not sent twice."""


@dataclass(frozen=True)
class Lease:
    """Ownership of one room for one epoch."""

    keys: RoomKeys
    owner: str
    epoch: int

    @property
    def token(self) -> str:
        return f"{self.epoch} {self.owner}"


@dataclass(frozen=True)
class Holder:
    """Who holds a room now (as seen by a process that does not)."""

    epoch: int
    owner: str


class Leases:
    """The lease scripts, registered once on a client. All calls are single round trips."""

    def __init__(self, redis: Redis, *, lease_seconds: float = DEFAULT_LEASE_SECONDS,
                 out_maxlen: int = OUT_STREAM_MAXLEN) -> None:
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        self.redis = redis
        self.lease_ms = max(1, round(lease_seconds * 1000))
        self.out_maxlen = out_maxlen
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self._publish = redis.register_script(_PUBLISH)

    async def acquire(self, keys: RoomKeys, owner: str) -> Lease | Holder:
        """The lease if it was free (new epoch) or already ours; else who holds it."""
        checked_name("owner", owner)
        won, epoch, holder = await self._acquire(keys=[keys.lease, keys.epoch], args=[owner, self.lease_ms])
        holder = holder.decode() if isinstance(holder, bytes) else holder
        return Lease(keys, owner, int(epoch)) if won else Holder(int(epoch), holder)

    async def renew(self, lease: Lease) -> bool:
        """Extend the lease by a full term; False once it is lost (expired or taken)."""
        return bool(await self._renew(keys=[lease.keys.lease], args=[lease.token, self.lease_ms]))

    async def release(self, lease: Lease) -> bool:
        """Give the room up at once (clean shutdown), so another front-end need not wait for the TTL."""
        return bool(await self._release(keys=[lease.keys.lease], args=[lease.token]))

    async def holder(self, keys: RoomKeys) -> Holder | None:
        value = await self.redis.get(keys.lease)
        if value is None:
            return None
        epoch, owner = (value.decode() if isinstance(value, bytes) else value).split(" ", 1)
        return Holder(int(epoch), owner)

    async def publish(self, lease: Lease, kind: str, frame: bytes, *, seq: int | None = None,
                      snapshot: bytes | None = None, sent: float | None = None) -> str:
        """Append one packed frame to the room's out stream if, and only if, `lease` still holds; its stream id.

        `seq` (clips only) must exceed every seq published before; `snapshot` is stored with the frame; `sent`
        (time.time() as the owner sent it) lets the relays measure how long frames take to reach them.
        """
        keys = lease.keys
        args = [lease.token, -1 if seq is None else int(seq), self.out_maxlen, IDLE_KEY_SECONDS,
                snapshot or b"", kind, frame, "" if sent is None else repr(float(sent))]
        try:
            stream_id = await self._publish(keys=[keys.lease, keys.out, keys.published, keys.snapshot], args=args)
        except ResponseError as error:
            message = str(error)
            if message.startswith("LEASELOST"):
                raise LeaseLost(f"room {keys.room_id}, epoch {lease.epoch}: lease {message[10:]}") from None
            if message.startswith("DUPLICATE"):
                raise DuplicateClip(f"room {keys.room_id}: {message[10:]}") from None
            raise
        return stream_id.decode() if isinstance(stream_id, bytes) else stream_id
