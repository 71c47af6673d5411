"""Listeners for a benchmark's room, in a process of their own: they join, read every frame, and stay until killed.

A room's host measuring prompt-to-ear in the same process as a few hundred listeners would read its own frames
late (its event loop busy with theirs) and see cut-ins as late that reached its socket in time. Here the listeners
load the servers as members do, and the measuring process reads only its own socket.

    .venv/bin/python benchmarks/crowd.py ROOM LISTENERS WS_URL [WS_URL ...]   (prints "ready" once all joined)
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from websockets.asyncio.client import ClientConnection, connect  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

from tests.server_support import join  # noqa: E402

CONNECT_CONCURRENCY = 50


async def listener(url: str, room: str, gate: asyncio.Semaphore) -> ClientConnection:
    async with gate:
        ws = await connect(url, max_size=None, open_timeout=60, ping_interval=None)
        await join(ws, room=room)
        return ws


async def drain(ws: ClientConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for _data in ws:
            pass


async def main(room: str, listeners: int, urls: list[str]) -> None:
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    sockets = await asyncio.gather(*(listener(urls[index % len(urls)], room, gate) for index in range(listeners)))
    print("ready", flush=True)
    await asyncio.gather(*(drain(ws) for ws in sockets))


if __name__ == "__main__":
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 2 * int(sys.argv[2]) + 256)), hard))
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3:]))
