"""Redis connections for the cluster's roles, and the backoff they reconnect with.

Pitfalls designed for: a blocking read (XREAD/XREADGROUP BLOCK) holds its connection for the whole block, so every
blocking reader gets a client of its own, and it blocks for less than the client's socket timeout, or an idle
stream would look like a dead server. Readers resume from explicit stream ids they remember, never from `$`, so a
reconnect loses nothing that was added while they were away.
"""

from __future__ import annotations

import asyncio
import random

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

SOCKET_TIMEOUT = 5.0
CONNECT_TIMEOUT = 2.0
BLOCK_MS = 1000  # every blocking read; well under SOCKET_TIMEOUT
# What a restarting or unreachable Redis raises; anything else is a bug or a refusal and is not retried blindly.
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)

assert BLOCK_MS / 1000 < SOCKET_TIMEOUT / 2


def connect(url: str, *, blocking_reader: bool = False) -> Redis:
    """A client for `url`. `blocking_reader`: one connection, for one task's blocking reads and nothing else."""
    options = {"socket_timeout": SOCKET_TIMEOUT, "socket_connect_timeout": CONNECT_TIMEOUT,
               "health_check_interval": 30, "decode_responses": False}
    if blocking_reader:
        options["max_connections"] = 1
    return Redis.from_url(url, **options)


class Backoff:
    """Exponential backoff with jitter for reconnecting: 0.1 s doubling to `ceiling`, reset after a success."""

    def __init__(self, first: float = 0.1, ceiling: float = 2.0) -> None:
        self.first = first
        self.ceiling = ceiling
        self.failures = 0

    def delay(self) -> float:
        return min(self.ceiling, self.first * 2 ** self.failures) * random.uniform(0.5, 1.0)

    async def wait(self) -> None:
        """Sleep before the next attempt, a little longer each time."""
        delay = self.delay()
        self.failures += 1
        await asyncio.sleep(delay)

    def reset(self) -> None:
        self.failures = 0


async def finish(task: asyncio.Task, *, grace: float = BLOCK_MS / 1000 + 1.0) -> None:
    """End a loop that was told to stop (by a flag it checks): wait out its current blocking read, then cancel.

    Not cancellation first: redis-py may turn a cancellation during a read into a retried timeout, and the loop
    would go on reading.
    """
    done, _ = await asyncio.wait({task}, timeout=grace)
    if not done:
        task.cancel()
        await asyncio.wait({task}, timeout=grace)
