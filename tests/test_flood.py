"""Connection floods and hostile transports against a real server process (issue 16, findings 1, 4 and 8).

Loopback routes all of 127.0.0.0/8, so binding client sockets to 127.0.0.2, .3, ... gives a flood many
client addresses. The server runs with a small open-files limit (1024) so thousands of sockets are enough
to reach it on this machine.
"""

from __future__ import annotations

import asyncio
import os
import select
import signal
import socket
import time
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import connect

from jamserver.jam import protocol
from tests.server_support import (
    client_frame,
    join,
    metric,
    raw_websocket,
    recv_type,
    run,
    running_server,
    wait_for,
)

OPEN_FILES = 1024  # the server's RLIMIT_NOFILE: --max-connections defaults to 1024 - 256 = 768
PER_ADDRESS = 150


def open_idle(port: int, source: str, count: int) -> list[socket.socket]:
    """`count` TCP connections from `source` that send nothing."""
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind((source, 0))
        sock.settimeout(10)
        sock.connect(("127.0.0.1", port))
        sockets.append(sock)
    return sockets


def http_get(port: int, path: str, *, source: str = "127.0.0.1", timeout: float = 5.0) -> bytes:
    """One raw HTTP/1.1 GET; the whole answer (the server closes the connection)."""
    with socket.socket() as sock:
        sock.bind((source, 0))
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", port))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def closed_by_server(sockets: list[socket.socket]) -> int:
    """How many of `sockets` the server has closed (readable: EOF, a 408/503 answer, or a reset)."""
    poller = select.poll()
    for sock in sockets:
        poller.register(sock, select.POLLIN)
    return len(poller.poll(0))


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.fixture(scope="module")
def flooded(tmp_path_factory) -> Iterator:
    flags = ("--max-connections-per-address", str(PER_ADDRESS), "--request-timeout", "3")
    with running_server(*flags, log_dir=tmp_path_factory.mktemp("flood"), open_files=OPEN_FILES) as server:
        yield server


def test_idle_connection_flood_keeps_healthz_answering_and_is_cleared(flooded):
    sources = [f"127.0.0.{n}" for n in range(2, 18)]  # 16 addresses x 150 = 2,400 idle sockets, 3x the cap
    flood: list[socket.socket] = []
    base_fds = open_fds(flooded.process.pid)
    try:
        for source in sources:
            flood += open_idle(flooded.port, source, PER_ADDRESS)
            assert http_get(flooded.port, "/healthz").startswith(b"HTTP/1.1 200"), "healthz stopped answering"
        peak_fds = open_fds(flooded.process.pid)

        async def jam() -> dict:
            async with connect(flooded.ws_url, max_size=None) as ws:
                await join(ws)
                return await recv_type(ws, "clip", 120)

        clip = run(jam())  # a real client gets a room and its music in the middle of the flood
        cleared = wait_for(lambda: closed_by_server(flood) == len(flood), 30, "the idle connections to be closed")
        settled_fds = open_fds(flooded.process.pid)
    finally:
        for sock in flood:
            sock.close()
    log = flooded.log()
    assert peak_fds - base_fds <= OPEN_FILES - 256 + 8  # the cap held: the oldest idle connections made room
    assert clip["type"] == "clip" and cleared
    assert settled_fds < base_fds + 20
    assert "out of system resource" not in log and "Traceback" not in log


def test_one_address_is_capped_and_others_are_not(flooded):
    hog = open_idle(flooded.port, "127.0.0.40", PER_ADDRESS)
    try:
        refused = http_get(flooded.port, "/healthz", source="127.0.0.40")
        other = http_get(flooded.port, "/healthz", source="127.0.0.41")
    finally:
        for sock in hog:
            sock.close()
    assert refused.startswith(b"HTTP/1.1 503") and b"Retry-After:" in refused
    assert b"too many connections from your address" in refused
    assert other.startswith(b"HTTP/1.1 200")


def test_a_request_dribbled_line_by_line_is_cut_off(flooded):
    with socket.create_connection(("127.0.0.1", flooded.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not select.select([sock], [], [], 0.5)[0]:
            sock.sendall(b"X-Slow: 1\r\n")  # a slowloris: a header line now and then, never the end
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408")


def test_a_body_gets_time_by_its_declared_length(flooded):
    body = bytes(500_000)  # an upload: time allowed 3 s + 500 kB at 32 kB/s = 18 s
    head = (f"POST /seed_images HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", flooded.port), timeout=30) as sock:
        sock.sendall(head)
        for start in range(0, len(body), 25_000):  # 8 s in all, far past the bare 3 s request timeout
            time.sleep(0.4)
            sock.sendall(body[start:start + 25_000])
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 4") and not answer.startswith(b"HTTP/1.1 408"), answer[:200]


def test_accept_failures_are_one_log_line_not_a_storm(tmp_path):
    # Misconfigured on purpose: a connection cap far above what the open-files limit allows.
    flags = ("--max-connections", "5000", "--max-connections-per-address", "5000", "--request-timeout", "2")
    with running_server(*flags, log_dir=tmp_path, open_files=OPEN_FILES) as server:
        flood = open_idle(server.port, "127.0.0.60", 1500)  # the kernel backlog holds what accept() cannot take
        try:
            time.sleep(4)
            answer = wait_for(lambda: _try_healthz(server.port), 30, "healthz to answer once idle sockets time out")
        finally:
            for sock in flood:
                sock.close()
        log = server.log()
    assert answer.startswith(b"HTTP/1.1 200")
    assert 1 <= log.count("accept() failed") <= 4
    assert "Traceback" not in log and len(log) < 200_000


def _try_healthz(port: int) -> bytes | None:
    try:
        return http_get(port, "/healthz", timeout=2)
    except OSError:
        return None


# -- hostile frames ---------------------------------------------------------------------------------------


def read_close_code(sock: socket.socket, timeout: float = 10.0) -> int | None:
    """Skip server frames until a close frame; its code (None if the connection just ends)."""
    from tests.test_faults import read_until_close

    return read_until_close(sock, timeout)


def test_a_fragment_flood_is_closed_and_the_room_plays_on(flooded):
    async def scenario():
        async with connect(flooded.ws_url, max_size=None) as host:
            await join(host)
            sock = await asyncio.to_thread(raw_websocket, flooded.port)
            payload = protocol.encode({"type": "ping", "t": 1, "pad": "x" * 65_000})
            pieces = [payload[i:i + 16] for i in range(0, len(payload), 16)]
            frames = [_fragment(pieces[0], 0x2, fin=False)]
            frames += [_fragment(piece, 0x0, fin=index == len(pieces) - 2) for index, piece in enumerate(pieces[1:])]
            try:
                await asyncio.to_thread(sock.sendall, b"".join(frames))
            except OSError:
                pass  # the server may close before it has read everything
            code = await asyncio.to_thread(read_close_code, sock)
            sock.close()
            await host.send(protocol.encode({"type": "ping", "t": 2}))
            return code, await recv_type(host, "pong", 30)

    code, pong = run(scenario())
    assert code == 1009 and pong["t"] == 2


def _fragment(payload: bytes, opcode: int, *, fin: bool) -> bytes:
    frame = bytearray(client_frame(payload, opcode))
    if not fin:
        frame[0] &= 0x7F
    return bytes(frame)


def test_invalid_utf8_text_is_closed_with_1007_without_a_traceback(flooded):
    sock = raw_websocket(flooded.port)
    sock.sendall(client_frame(b"\xff\xfe not utf-8", opcode=0x1))
    code = read_close_code(sock)
    sock.close()
    assert code == 1007
    time.sleep(0.5)
    assert "Invalid UTF-8" not in flooded.log() and "Traceback" not in flooded.log()


# -- a reader that never reads, at shutdown ---------------------------------------------------------------


def test_shutdown_is_bounded_whatever_a_stalled_reader_does(tmp_path):
    flags = ("--slow-listener-seconds", "600", "--shutdown-seconds", "4")
    with running_server(*flags, log_dir=tmp_path) as server:
        stalled = raw_websocket(server.port, receive_buffer=4096)
        stalled.sendall(client_frame(protocol.encode({"type": "join"})))
        wait_for(lambda: metric(server, "jam_clips_total") >= 3, 120, "clips to back up in the stalled socket")
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(30)
        took = time.monotonic() - started
        stalled.close()
        log = server.log()
    assert took < 10, f"shutdown took {took:.1f} s"
    assert "Application shutdown complete" in log


def test_a_stalled_reader_cut_off_with_1013_is_gone_at_once(tmp_path):
    flags = ("--listener-queue-frames", "1", "--slow-listener-seconds", "3", "--send-buffer-bytes", "16384")
    with running_server(*flags, log_dir=tmp_path) as server:
        async def scenario() -> socket.socket:
            async with connect(server.ws_url, max_size=None) as host:
                welcome = await join(host)
                stalled = await asyncio.to_thread(raw_websocket, server.port, receive_buffer=4096)
                stalled.sendall(client_frame(protocol.encode({"type": "join", "room": welcome["room"]})))
                while metric(server, "jam_listeners_closed_slow_total") < 1:
                    await recv_type(host, "clip", 90)
                closed_at = time.monotonic()
                await asyncio.to_thread(wait_for, lambda: metric(server, "jam_connections") == 1, 60,
                                        "the stalled connection to be gone")
                return stalled, time.monotonic() - closed_at

        stalled, gone_after = run(scenario())
        stalled.close()
    assert gone_after < 8, f"the stalled socket stayed {gone_after:.1f} s after its 1013"
