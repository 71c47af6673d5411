"""Compute and REST abuse against a real server process (issue 16, findings 3, 5 and 6).

Whether a normal room keeps real time beside expensive ones is a speed figure: benchmarks/bench_abuse.py
measures it. These tests check what a client sees: refusals naming the field, status codes and headers.
"""

from __future__ import annotations

import asyncio
import json
import select
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from websockets.asyncio.client import connect

from jamserver.jam import protocol
from tests.server_support import join, recv_type, run, running_server

SMALL_BODY = {"alpha": 0.5, "num_inference_steps": 10, "seed_image_id": "og_beat",
              "start": {"prompt": "a", "seed": 1}, "end": {"prompt": "b", "seed": 2}}


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator:
    flags = ("--allowed-origin", "https://jam.example", "--max-steps", "1000", "--max-denoising-steps", "1000")
    with running_server(*flags, log_dir=tmp_path_factory.mktemp("abuse")) as running:
        yield running


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


# -- finding 3 and 5: settings the server will not run ------------------------------------------------------


def test_settings_the_scheduler_cannot_run_are_refused_and_the_room_plays_on(server):
    async def scenario():
        async with connect(server.ws_url, max_size=None) as ws:
            await join(ws)
            first = await recv_type(ws, "clip", 120)
            await ws.send(protocol.encode({"type": "settings", "num_inference_steps": 1000, "denoising": 1.0}))
            refusal = await recv_type(ws, "error", 30)
            await ws.send(protocol.encode({"type": "settings", "num_inference_steps": 12, "denoising": 1.0}))
            settings = await recv_type(ws, "settings", 30)
            following = [await recv_type(ws, "clip", 120) for _ in range(2)]
            return first, refusal, settings, following

    first, refusal, settings, following = run(scenario())
    # the tiny model's PNDM scheduler cannot take 1000 of its 1000 training steps: --max-steps became 999
    assert refusal["field"] == "num_inference_steps" and "at most 999" in refusal["message"]
    assert settings["settings"]["num_inference_steps"] == 12
    assert [clip["seq"] for clip in following] == [first["seq"] + 1, first["seq"] + 2]
    assert "failed (attempt" not in server.log()  # nothing accepted that the model cannot make


def test_rest_steps_above_the_cap_are_a_400_naming_the_field(server):
    body = {**SMALL_BODY, "num_inference_steps": 1000, "start": {"prompt": "a", "seed": 1, "denoising": 1.0},
            "end": {"prompt": "b", "seed": 2, "denoising": 1.0}}
    answer = httpx.post(server.http_url + "/run_inference/", json=body, timeout=60)
    assert answer.status_code == 400 and "num_inference_steps" in answer.text and "999" in answer.text


def test_the_default_cap_refuses_999_steps(tmp_path):
    with running_server(log_dir=tmp_path) as plain:
        async def scenario():
            async with connect(plain.ws_url, max_size=None) as ws:
                await join(ws)
                await ws.send(protocol.encode({"type": "settings", "num_inference_steps": 999, "denoising": 1.0}))
                return await recv_type(ws, "error", 30)

        refusal = run(scenario())
        answer = httpx.post(plain.http_url + "/run_inference/", json={**SMALL_BODY, "num_inference_steps": 999},
                            timeout=60)
    assert refusal["code"] == "bad_field" and "at most 50 on this server" in refusal["message"]
    assert answer.status_code == 400 and "at most 50" in answer.text


# -- finding 3: the REST API is no way around the browser's origin rules -------------------------------------


def test_rest_refuses_foreign_origins_and_non_json(server):
    url = server.http_url + "/run_inference/"
    foreign = httpx.post(url, json=SMALL_BODY, headers={"Origin": "https://evil.example"}, timeout=60)
    as_text = httpx.post(url, content=json.dumps(SMALL_BODY), headers={"Content-Type": "text/plain"}, timeout=60)
    allowed = httpx.post(url, json=SMALL_BODY, headers={"Origin": "https://jam.example"}, timeout=120)
    assert foreign.status_code == 403
    assert as_text.status_code == 415 and "application/json" in as_text.text
    assert allowed.status_code == 200 and allowed.json()["audio"].startswith("data:audio/mpeg;base64,")


# -- finding 3: REST runs below live rooms, with a bounded queue ---------------------------------------------


def test_rest_waits_below_busy_rooms_then_503_and_a_full_queue_answers_429(tmp_path):
    # One UNet slot and two rooms generating flat out (deep lookahead): a REST job gets a row only in the
    # moments when neither room has a job, far too few for its 50 steps within the 2 s it may wait.
    flags = ("--max-batch", "1", "--lookahead-clips", "50", "--rest-queue", "1", "--rest-timeout", "2")
    with running_server(*flags, log_dir=tmp_path) as busy:
        stop = threading.Event()
        ready = threading.Barrier(3)

        async def room():
            async with connect(busy.ws_url, max_size=None) as ws:
                await join(ws)
                await recv_type(ws, "clip", 120)
                await asyncio.to_thread(ready.wait, 240)
                while not stop.is_set():
                    await recv_type(ws, "clip", 120)

        rooms = [threading.Thread(target=lambda: run(room()), daemon=True) for _ in range(2)]
        for thread in rooms:
            thread.start()
        ready.wait(240)
        heavy = {**SMALL_BODY, "num_inference_steps": 50, "start": {"prompt": "a", "seed": 1, "denoising": 1.0},
                 "end": {"prompt": "b", "seed": 2, "denoising": 1.0}}
        results: dict[str, httpx.Response] = {}
        waiting = threading.Thread(target=lambda: results.setdefault(
            "first", httpx.post(busy.http_url + "/run_inference/", json=heavy, timeout=60)))
        waiting.start()
        time.sleep(0.3)
        second = httpx.post(busy.http_url + "/run_inference/", json=SMALL_BODY, timeout=60)
        waiting.join(60)
        stop.set()
        for thread in rooms:
            thread.join(60)
    first = results["first"]
    assert second.status_code == 429 and int(second.headers["Retry-After"]) > 0
    assert first.status_code == 503 and int(first.headers["Retry-After"]) > 0
    assert "live rooms" in first.text


# -- finding 6: request bodies are bounded -------------------------------------------------------------------


def post_raw(port: int, head: str, body_chunks: Iterator[bytes]) -> tuple[bytes, int]:
    """Send a request until the server answers; (its answer, body bytes sent)."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head.encode())
        for chunk in body_chunks:
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(chunk)
            except OSError:
                break
            sent += len(chunk)
        answer = b""
        try:
            while data := sock.recv(65536):
                answer += data
        except ConnectionResetError:
            pass
    return answer, sent


def test_a_huge_body_is_refused_with_413_without_being_read(server):
    before = rss_kib(server.process.pid)
    size = 100 * 1024 * 1024
    head = (f"POST /run_inference/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {size}\r\n\r\n")
    declared, declared_sent = post_raw(server.port, head, (b"[" * 65536 for _ in range(size // 65536)))
    chunked_head = "POST /run_inference/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" \
                   "Transfer-Encoding: chunked\r\n\r\n"
    chunk = b"10000\r\n" + b"[" * 65536 + b"\r\n"
    chunked, chunked_sent = post_raw(server.port, chunked_head, (chunk for _ in range(size // 65536)))
    grown = rss_kib(server.process.pid) - before
    assert declared.startswith(b"HTTP/1.1 413") and chunked.startswith(b"HTTP/1.1 413")
    assert declared_sent < size // 4 and chunked_sent < size // 4  # refused long before the end
    assert grown < 30 * 1024, f"RSS grew {grown} KiB"


def test_many_huge_bodies_at_once_cost_no_memory(server):
    before = rss_kib(server.process.pid)
    size = 100 * 1024 * 1024
    head = ("POST /run_inference/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"10000\r\n" + b"[" * 65536 + b"\r\n"

    async def one() -> bytes:
        answer, _ = await asyncio.to_thread(post_raw, server.port, head, (chunk for _ in range(size // 65536)))
        return answer

    async def four() -> list[bytes]:
        return await asyncio.gather(*(one() for _ in range(4)))

    answers = run(four())
    assert all(answer.startswith(b"HTTP/1.1 413") for answer in answers)
    assert rss_kib(server.process.pid) - before < 30 * 1024
