"""Faults: broken clients, a failing clip job, a stalled reader, and SIGTERM, against real servers.

A fault must cost only the party that caused it: the other listeners keep their stream, the
server keeps its count of connections right, and a shutdown still leaves recordings playable.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import socket
import struct
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from jamserver.jam import protocol
from jamserver.recording.recorder import JamClient, Recorder, RecordingFiles
from jamserver.server.app import create_app
from jamserver.server.config import ServerConfig
from pipeline.audio.mp3 import decode_mp3
from pipeline.model.loading import load_pipeline
from tests.server_support import (
    client_frame,
    free_port,
    join,
    metric,
    raw_websocket,
    recv,
    recv_type,
    run,
    running_server,
    wait_for,
)

SAMPLE_RATE = 44100


# -- a client dropping its TCP connection half-way through a frame ------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # a small send buffer so a stalled reader backs up into its frame queue within a clip or two
    flags = ("--listener-queue-frames", "1", "--slow-listener-seconds", "3", "--send-buffer-bytes", "16384",
             "--idle-room-seconds", "2")
    with running_server(*flags, log_dir=tmp_path_factory.mktemp("faults")) as running:
        yield running


def reset(sock: socket.socket) -> None:
    """Drop the connection without a FIN: an RST, as when a phone loses its network."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_clients_vanishing_mid_frame_cost_nothing_but_their_connection(server):
    async def scenario():
        async with connect(server.ws_url, max_size=None) as host:
            welcome = await join(host)
            first = await recv_type(host, "clip", 90)
            for _ in range(3):
                sock = await asyncio.to_thread(raw_websocket, server.port)
                join_frame = client_frame(protocol.encode({"type": "join", "room": welcome["room"]}))
                prompt = client_frame(protocol.encode({"type": "ping", "t": 1, "pad": "x" * 300}))
                sock.sendall(join_frame + prompt[: len(prompt) // 2])  # half a frame, then gone
                reset(sock)
            half_handshake = socket.create_connection(("127.0.0.1", server.port))
            half_handshake.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: webso")
            reset(half_handshake)
            await host.send(protocol.encode({"type": "ping", "t": 2}))
            pong = await recv_type(host, "pong", 30)
            following = await recv_type(host, "clip", 90)
            connections = await asyncio.to_thread(
                wait_for, lambda: metric(server, "jam_connections") == 1, 30, "the dropped connections to go")
            return first, pong, following, connections

    first, pong, following, connections = run(scenario())
    assert pong["t"] == 2
    assert following["seq"] == first["seq"] + 1
    assert connections


# -- a reader that never reads -----------------------------------------------------------------------------


def read_until_close(sock: socket.socket, timeout: float) -> int | None:
    """Drain server frames; the close code if a close frame comes, None if the connection just ends."""
    sock.settimeout(timeout)
    buffer = b""

    def need(count: int) -> bool:
        nonlocal buffer
        while len(buffer) < count:
            chunk = sock.recv(1 << 16)
            if not chunk:
                return False
            buffer += chunk
        return True

    try:
        while need(2):
            opcode, length = buffer[0] & 0x0F, buffer[1] & 0x7F
            offset = 2
            if length == 126:
                if not need(4):
                    return None
                length, offset = int.from_bytes(buffer[2:4], "big"), 4
            elif length == 127:
                if not need(10):
                    return None
                length, offset = int.from_bytes(buffer[2:10], "big"), 10
            if not need(offset + length):
                return None
            payload, buffer = buffer[offset:offset + length], buffer[offset + length:]
            if opcode == 0x8:
                return int.from_bytes(payload[:2], "big")
    except (TimeoutError, ConnectionResetError):
        return None
    return None


def test_a_stalled_reader_is_closed_with_1013_and_the_others_play_on(server):
    async def scenario():
        async with connect(server.ws_url, max_size=None) as host:
            welcome = await join(host)
            stalled = await asyncio.to_thread(raw_websocket, server.port, receive_buffer=4096)
            stalled.sendall(client_frame(protocol.encode({"type": "join", "room": welcome["room"]})))
            clips = []
            while metric(server, "jam_listeners_closed_slow_total") < 1:
                clips.append(await recv_type(host, "clip", 90))
                assert len(clips) < 40, "the stalled reader was never closed"
            clips.append(await recv_type(host, "clip", 90))  # and the room plays on
            return clips, stalled

    clips, stalled = run(scenario())
    assert [clip["seq"] for clip in clips] == list(range(clips[0]["seq"], clips[0]["seq"] + len(clips)))
    # the close frame sits behind the unread data; the WebSocket layer may abort the TCP connection first
    assert read_until_close(stalled, 30) in (1013, None)
    wait_for(lambda: metric(server, "jam_connections") == 0, 60, "the stalled connection to be gone")
    stalled.close()


# -- a clip job that raises inside the engine ---------------------------------------------------------------


class FailingPipeline:
    """The tiny pipeline, except that a clip heading for "explode" fails its first two attempts."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.scheduler = inner.scheduler
        self.failed: list[Any] = []  # jobs made to fail (the engine may step a failing job twice)

    def prepare(self, request: Any) -> Any:
        return self.inner.prepare(request)

    def step(self, jobs: Sequence[Any]) -> None:
        for job in jobs:
            if job.request.end.prompt != "explode":
                continue
            if not any(job is failed for failed in self.failed):
                if len(self.failed) == 2:
                    continue  # the third attempt goes through
                self.failed.append(job)
            raise RuntimeError("injected device failure")
        self.inner.step(jobs)

    def decode(self, jobs: Sequence[Any]) -> list[Any]:
        return self.inner.decode(jobs)


@pytest.fixture(scope="module")
def failing_server() -> Iterator[str]:
    """An in-process server (the fault needs a pipeline wrapper), on uvicorn in a thread."""
    model = load_pipeline("tiny")
    app = create_app(ServerConfig(), dataclasses.replace(model, pipeline=FailingPipeline(model.pipeline)))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, ws="websockets-sansio",
                                           ws_per_message_deflate=False, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 60, "the in-process server to start")
    yield f"ws://127.0.0.1:{port}/ws"
    server.should_exit = True
    thread.join(30)


def test_a_failing_clip_job_is_reported_and_retried_while_other_rooms_stream(failing_server):
    async def other_room(stop: asyncio.Event) -> list[int]:
        async with connect(failing_server, max_size=None) as ws:
            await join(ws)
            seqs = []
            while not stop.is_set() or len(seqs) < 3:
                seqs.append((await recv_type(ws, "clip", 90))["seq"])
            return seqs

    async def failing_room() -> tuple[list[dict], dict]:
        async with connect(failing_server, max_size=None) as ws:
            await join(ws)
            await recv_type(ws, "clip", 90)
            await ws.send(protocol.encode({"type": "prompt", "prompt": "explode"}))
            errors = []
            while True:
                frame = await recv(ws, 90)
                if frame["type"] == "error":
                    errors.append(frame)
                elif frame["type"] == "clip" and frame["end"]["prompt"] == "explode":
                    return errors, frame

    async def scenario():
        stop = asyncio.Event()
        others = asyncio.create_task(other_room(stop))
        errors, carried = await failing_room()
        stop.set()
        return errors, carried, await others

    errors, carried, other_seqs = run(scenario())
    assert len(errors) == 2
    assert all(e["code"] == "server_error" and "retrying" in e["message"] for e in errors)
    assert f"clip {carried['seq']} failed" in errors[0]["message"]  # the same clip, remade
    assert other_seqs == list(range(len(other_seqs)))  # the other room never missed a clip


# -- SIGTERM ------------------------------------------------------------------------------------------------


def test_sigterm_closes_every_client_and_a_recording_stays_playable(tmp_path: Path):
    async def scenario(server):
        async with connect(server.ws_url, max_size=None) as host:
            welcome = await join(host)
            recording = tmp_path / "jam.mp3"
            recorder = Recorder(JamClient(server.ws_url), RecordingFiles(recording), duration=600)
            recording_task = asyncio.create_task(recorder.run(room=welcome["room"]))
            received = [await recv_type(host, "clip", 90) for _ in range(3)]
            server.process.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await recv(host, 60)
            result = await asyncio.wait_for(recording_task, 60)
            return received, closed.value, result, recording

    with running_server(log_dir=tmp_path) as server:
        received, closed, result, recording = run(scenario(server))
        server.process.wait(30)  # uvicorn re-raises the signal once shut down: the status is -15
        assert "Application shutdown complete" in server.log()
    assert closed.rcvd is not None and closed.rcvd.code in (1001, 1012)  # a close frame, not a dropped socket
    assert result.ended == "server_gone" and result.clips >= 2
    audio = decode_mp3(recording.read_bytes(), SAMPLE_RATE)
    assert audio.shape[-1] >= (result.clips - 0.5) * 5.12 * SAMPLE_RATE
    host_audio = decode_mp3(b"".join(clip["audio"] for clip in received), SAMPLE_RATE)
    assert host_audio.shape[-1] > 2.5 * 5.12 * SAMPLE_RATE
