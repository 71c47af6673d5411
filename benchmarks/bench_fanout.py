"""Fan-out under load: 1,000 WebSocket listeners in one room of a real `jamserver serve --checkpoint tiny`.

For every clip it records when each listener received it and prints the spread between the first
and the last listener (p50/p99 over clips; goal p99 < 0.5 s), the server's CPU over the window
(from /proc/PID/stat), and drops (goal 0 for healthy listeners). It runs twice on one server, in
fresh rooms: without and with one stalled client (joins, never reads, tiny receive buffer), whose
presence must not change the others' figures. Bounded in time; stops by itself.

    .venv/bin/python benchmarks/bench_fanout.py [--listeners 1000] [--clips 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from websockets.asyncio.client import ClientConnection, connect  # noqa: E402

from jamserver.jam import protocol  # noqa: E402
from tests.server_support import ServerProcess, client_frame, join, metric, raw_websocket, running_server  # noqa: E402

CONNECT_CONCURRENCY = 50
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Arrivals:
    """seq -> listener index -> monotonic arrival time."""

    times: dict[int, dict[int, float]] = field(default_factory=dict)

    def add(self, seq: int, listener: int, at: float) -> None:
        self.times.setdefault(seq, {})[listener] = at


@dataclass
class Result:
    label: str
    listeners: int
    join_seconds: float
    spreads: list[float]
    missing: int
    server_dropped: float
    closed_slow: float
    cpu_percent: float
    per_server: list[float] = field(default_factory=list)  # with several servers: each one's worst spread
    first_gap: float = 0.0  # with several servers: the worst gap between the servers' first arrivals of a clip

    def report(self) -> str:
        spreads = sorted(self.spreads)
        p50 = statistics.median(spreads)
        p99 = spreads[min(len(spreads) - 1, round(0.99 * (len(spreads) - 1)))]
        split = (f" per_server_max={'/'.join(f'{s:.3f}' for s in self.per_server)}s "
                 f"first_arrival_gap={self.first_gap:.3f}s" if self.per_server else "")
        return (f"{self.label:<22} listeners={self.listeners} joined_in={self.join_seconds:.1f}s "
                f"clips={len(spreads)} spread_p50={p50:.3f}s spread_p99={p99:.3f}s max={spreads[-1]:.3f}s "
                f"missing_clip_frames={self.missing} server_frames_dropped={self.server_dropped:.0f} "
                f"closed_slow={self.closed_slow:.0f} server_cpu={self.cpu_percent:.0f}%{split}")


def split_by_server(arrivals: Arrivals, seqs: range, servers: int) -> tuple[list[float], float]:
    """Listener i is on server i % servers: each server's worst spread, and the worst gap between the servers'
    first arrivals of a clip (what Redis and the relays add, apart from each server's own fan-out)."""
    worst = [0.0] * servers
    gap = 0.0
    for seq in seqs:
        firsts = []
        for server in range(servers):
            times = [at for index, at in arrivals.times.get(seq, {}).items() if index % servers == server]
            if times:
                worst[server] = max(worst[server], max(times) - min(times))
                firsts.append(min(times))
        if len(firsts) > 1:
            gap = max(gap, max(firsts) - min(firsts))
    return worst, gap


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


async def listen(ws: ClientConnection, index: int, arrivals: Arrivals) -> None:
    async for data in ws:
        frame = protocol.decode(data)
        if frame["type"] == "clip":
            arrivals.add(frame["seq"], index, time.monotonic())


async def open_listener(server: ServerProcess, room: str, gate: asyncio.Semaphore) -> ClientConnection:
    async with gate:
        ws = await connect(server.ws_url, max_size=None, open_timeout=60, ping_interval=None)
        await join(ws, room=room)
        return ws


async def scenario(servers: Sequence[ServerProcess], label: str, listeners: int, clips: int, *,
                   stalled: bool) -> Result:
    """One room, its host (and the stalled client) on the first server, the listeners spread evenly over `servers`
    (several: cluster front-ends, see bench_cluster.py --frontends); CPU and drops are the servers' sums."""
    host = await connect(servers[0].ws_url, max_size=None, ping_interval=None)
    room = (await join(host))["room"]
    arrivals = Arrivals()
    tasks = [asyncio.create_task(listen(host, 0, arrivals))]
    stuck = None
    if stalled:
        stuck = await asyncio.to_thread(raw_websocket, servers[0].port, receive_buffer=4096)
        stuck.sendall(client_frame(protocol.encode({"type": "join", "room": room})))
    started = time.monotonic()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    sockets = [host, *await asyncio.gather(*(open_listener(servers[index % len(servers)], room, gate)
                                             for index in range(1, listeners)))]
    join_seconds = time.monotonic() - started
    tasks += [asyncio.create_task(listen(ws, index, arrivals)) for index, ws in enumerate(sockets) if index]
    first_seq = max(arrivals.times, default=-1) + 2  # from the second clip after everyone is in
    dropped, closed = total(servers, "jam_frames_dropped_total"), total(servers, "jam_listeners_closed_slow_total")
    cpu_started, wall_started = sum(cpu_seconds(server.process.pid) for server in servers), time.monotonic()
    wanted = range(first_seq, first_seq + clips)
    deadline = time.monotonic() + 60 + clips * 5.12 * 3
    while time.monotonic() < deadline and len(arrivals.times.get(wanted[-1], {})) < listeners:
        await asyncio.sleep(0.25)
    await asyncio.sleep(1.0)  # stragglers of the last clip
    cpu = (sum(cpu_seconds(server.process.pid) for server in servers) - cpu_started) \
        / (time.monotonic() - wall_started) * 100
    spreads, missing = [], 0
    for seq in wanted:
        times = arrivals.times.get(seq, {})
        missing += listeners - len(times)
        if times:
            spreads.append(max(times.values()) - min(times.values()))
    result = Result(label, listeners, join_seconds, spreads or [float("nan")], missing,
                    total(servers, "jam_frames_dropped_total") - dropped,
                    total(servers, "jam_listeners_closed_slow_total") - closed, cpu)
    if len(servers) > 1:
        result.per_server, result.first_gap = split_by_server(arrivals, wanted, len(servers))
    for task in tasks:
        task.cancel()
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    if stuck is not None:
        stuck.close()
    return result


def total(servers: Sequence[ServerProcess], name: str) -> float:
    return sum(metric(server, name) for server in servers)


async def main(listeners: int, clips: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, max(soft, 4 * listeners + 256))  # both ends of every socket, plus the server's own
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))  # inherited by the server process
    with tempfile.TemporaryDirectory() as logs:
        flags = ("--max-listeners", str(listeners + 10), "--idle-room-seconds", "5", "--log-level", "warning")
        with running_server(*flags, log_dir=Path(logs)) as server:
            results = []
            for label, stalled in (("healthy only", False), ("with a stalled client", True)):
                results.append(await asyncio.wait_for(scenario([server], label, listeners, clips, stalled=stalled),
                                                      timeout=600))
                print(results[-1].report(), flush=True)
    print(f"command: .venv/bin/python benchmarks/bench_fanout.py --listeners {listeners} --clips {clips}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listeners", type=int, default=1000)
    parser.add_argument("--clips", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.listeners, args.clips))
