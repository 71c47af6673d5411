"""Start a real `jamserver serve` on 127.0.0.1 with a free port, for tests that need one."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from jamserver.jam import protocol

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    def __init__(self, process: subprocess.Popen, port: int, log_path: Path) -> None:
        self.process = process
        self.port = port
        self.log_path = log_path

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_healthy(server: ServerProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log()}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(server.http_url + "/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        time.sleep(0.2)
    raise RuntimeError(f"server did not become healthy in {timeout} s:\n{server.log()}")


def _open_files_limit(limit: int | None) -> Callable[[], None] | None:
    if limit is None:
        return None
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


@contextlib.contextmanager
def running_server(*args: str, log_dir: Path, env: dict[str, str] | None = None,
                   timeout: float = 120.0, open_files: int | None = None) -> Iterator[ServerProcess]:
    """`jamserver serve --checkpoint tiny` (unless args say otherwise), stopped with SIGTERM after.

    `open_files` sets the server process's RLIMIT_NOFILE (soft and hard), as a small machine would have it.
    """
    port = free_port()
    log_path = log_dir / f"server-{port}.log"
    command = [sys.executable, "-m", "jamserver", "serve", "--host", "127.0.0.1", "--port", str(port)]
    if "--checkpoint" not in args:
        command += ["--checkpoint", "tiny"]
    command += list(args)
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})},
                                   preexec_fn=_open_files_limit(open_files))  # noqa: PLW1509 (one syscall, no locks)
    server = ServerProcess(process, port, log_path)
    try:
        wait_healthy(server, timeout)
        yield server
    finally:
        stop_process(process, timeout=20)


# -- client helpers shared by the server tests ------------------------------------------------------


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def recv(ws: Any, timeout: float = 30.0) -> dict[str, Any]:
    """The next server frame, decoded."""
    return protocol.decode(await asyncio.wait_for(ws.recv(), timeout))


async def recv_type(ws: Any, kind: str, timeout: float = 30.0) -> dict[str, Any]:
    """The next frame of `kind`, skipping state/settings/clip frames that may come in between."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        frame = await recv(ws, max(0.1, deadline - loop.time()))
        if frame["type"] == kind:
            return frame
        assert frame["type"] in ("welcome", "state", "settings", "clip"), frame


async def join(ws: Any, **fields: Any) -> dict[str, Any]:
    """Send a join and return the welcome."""
    await ws.send(protocol.encode({"type": "join", **fields}))
    return await recv_type(ws, "welcome")


def metric(server: ServerProcess, name: str) -> float:
    """One unlabelled sample from /metrics (0 if absent)."""
    with urllib.request.urlopen(server.http_url + "/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def post(server: ServerProcess, path: str, body: bytes) -> tuple[int, bytes]:
    """POST a JSON body; the status and the body, whatever the status."""
    request = urllib.request.Request(server.http_url + path, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def checked(condition: Callable[[], Any], deadline: float, timeout: float, what: str) -> Any:
    """One poll of `condition()`: its value, or an AssertionError naming `what` once `deadline` has passed."""
    value = condition()
    if not value and time.monotonic() > deadline:
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")
    return value


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll `condition()` until it is truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := checked(condition, deadline, timeout, what)):
        time.sleep(interval)
    return value


# -- a bare-socket WebSocket client, for faults a real client library would never commit -------------


def client_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """One masked client frame (RFC 6455 section 5.2)."""
    header = bytes([0x80 | opcode])
    length = len(payload)
    if length < 126:
        header += bytes([0x80 | length])
    elif length < 1 << 16:
        header += bytes([0x80 | 126]) + length.to_bytes(2, "big")
    else:
        header += bytes([0x80 | 127]) + length.to_bytes(8, "big")
    mask = os.urandom(4)
    return header + mask + bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))


def raw_websocket(port: int, *, receive_buffer: int | None = None, timeout: float = 30.0) -> socket.socket:
    """A TCP socket that has completed the upgrade handshake on /ws and offered no extensions."""
    sock = socket.socket()
    if receive_buffer is not None:  # set before connect so the window stays small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(1)  # byte by byte: nothing after the headers may be consumed here
        if not chunk:
            raise ConnectionError("server closed during the handshake")
        response += chunk
    if not response.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(f"upgrade refused: {response!r}")
    return sock


def stop_process(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGCONT (it may be stopped), SIGTERM, SIGKILL if it has not exited after `timeout` seconds."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGCONT)
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
