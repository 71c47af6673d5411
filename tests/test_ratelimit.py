"""Limits: the prompt token bucket, then every `jamserver serve` limit flag against a real server.

One server with deliberately small limits serves the whole module; each test states the limit it
exercises and checks both sides of it (refused past the limit, working within it).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
from dataclasses import dataclass

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from jamserver.jam import protocol
from jamserver.jam.member.ratelimit import TokenBucket
from tests.server_support import join, metric, recv, recv_type, running_server, wait_for

ALLOWED_ORIGIN = "https://jam.example"
IDLE_ROOM_SECONDS = 8
LIMIT_FLAGS = (
    "--max-rooms", "3", "--max-listeners", "3", "--max-message-bytes", "512", "--prompts-per-minute", "60",
    "--allowed-origin", ALLOWED_ORIGIN, "--idle-room-seconds", str(IDLE_ROOM_SECONDS),
)
REAP_TIMEOUT = IDLE_ROOM_SECONDS + 25  # idle time + the reaper's 5 s period + a loaded machine


# -- the token bucket -------------------------------------------------------------------------------


def test_bucket_allows_a_burst_then_one_per_interval():
    bucket = TokenBucket(per_minute=60, burst=3)
    assert [bucket.allow(100.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.retry_after() == pytest.approx(1.0)
    assert not bucket.allow(100.5)
    assert bucket.allow(101.01)
    assert not bucket.allow(101.02)


def test_bucket_refills_no_further_than_its_burst():
    bucket = TokenBucket(per_minute=6)  # burst defaults to min(per_minute, 5)
    assert bucket.capacity == 5
    assert sum(bucket.allow(0.0) for _ in range(10)) == 5
    assert sum(bucket.allow(3600.0) for _ in range(10)) == 5  # an hour of quiet still buys only 5


def test_bucket_refuses_a_rate_below_one():
    with pytest.raises(ValueError, match="per_minute"):
        TokenBucket(per_minute=0)


# -- the real server ---------------------------------------------------------------------------------
# One paused room (its host connection kept open in the module's event loop) hosts the tests that need
# a room, so only the tests about room creation create rooms.


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(*LIMIT_FLAGS, log_dir=tmp_path_factory.mktemp("limits")) as running:
        yield running


@dataclass
class Jam:
    loop: asyncio.AbstractEventLoop
    host: ClientConnection
    room: str

    def run(self, coro):
        return self.loop.run_until_complete(coro)


@pytest.fixture(scope="module")
def jam(server):
    loop = asyncio.new_event_loop()

    async def open_room():
        host = await connect(server.ws_url, max_size=None)
        welcome = await join(host)
        await host.send(protocol.encode({"type": "pause"}))  # no clips: nothing to drain, no CPU spent
        return host, welcome["room"]

    host, room = loop.run_until_complete(open_room())
    yield Jam(loop, host, room)
    loop.run_until_complete(host.close())
    loop.close()


def live_rooms(server) -> int:
    with urllib.request.urlopen(server.http_url + "/healthz", timeout=10) as response:
        return json.loads(response.read())["rooms"]


def test_origin_outside_the_allowed_list_is_refused(server, jam):
    async def scenario():
        with pytest.raises(InvalidStatus) as refused:
            async with connect(server.ws_url, origin="https://evil.example"):
                pass
        async with connect(server.ws_url, origin=ALLOWED_ORIGIN) as browser:
            allowed = await join(browser, room=jam.room)
        async with connect(server.ws_url) as script:  # no Origin header: not a browser, allowed
            scripted = await join(script, room=jam.room)
        return refused.value.response.status_code, allowed, scripted

    status, allowed, scripted = jam.run(scenario())
    assert status == 403
    assert allowed["room"] == scripted["room"] == jam.room


def test_message_over_the_size_limit_is_refused_and_the_socket_lives_on(jam):
    async def scenario():
        await jam.host.send(protocol.encode({"type": "prompt", "prompt": "x" * 600}))
        refusal = await recv_type(jam.host, "error")
        await jam.host.send(protocol.encode({"type": "ping", "t": 3}))
        return refusal, await recv_type(jam.host, "pong")

    refusal, pong = jam.run(scenario())
    assert refusal["code"] == "too_large" and "512" in refusal["message"]
    assert pong["t"] == 3


def test_room_full_past_the_listener_limit(server, jam):
    async def scenario():
        async with connect(server.ws_url) as second, connect(server.ws_url) as third:
            joined = [await join(second, room=jam.room), await join(third, room=jam.room)]
            async with connect(server.ws_url) as fourth:
                await fourth.send(protocol.encode({"type": "join", "room": jam.room}))
                refusal = await recv_type(fourth, "error")
                with pytest.raises(ConnectionClosed):
                    while True:
                        await recv(fourth, 10)
                return joined, refusal, fourth.close_code

    joined, refusal, close_code = jam.run(scenario())
    assert [welcome["role"] for welcome in joined] == ["listener", "listener"]
    assert refusal["code"] == "room_full" and "3 listeners" in refusal["message"]
    assert close_code == 1008


def test_prompts_past_the_rate_are_refused_then_accepted_again(jam):
    async def prompt(text: str) -> dict:
        """Send a prompt; the answer is an error frame or the state frame that lists it up next."""
        await jam.host.send(protocol.encode({"type": "prompt", "prompt": text}))
        while True:
            frame = await recv(jam.host, 30)
            if frame["type"] == "error" or (frame["type"] == "state" and text in frame["up_next"]):
                return frame

    async def scenario():
        burst = [await prompt(f"prompt {n}") for n in range(5)]
        refused = await prompt("one too many")
        refused_at = time.monotonic()
        while (answer := await prompt("patient prompt"))["type"] == "error":
            assert answer["code"] == "rate_limited"
            await asyncio.sleep(0.2)
        return burst, refused, time.monotonic() - refused_at

    burst, refused, waited = jam.run(scenario())
    assert [frame["type"] for frame in burst] == ["state"] * 5
    assert refused["code"] == "rate_limited" and "try again in" in refused["message"]
    assert 0.5 < waited < 10  # one token a second at 60 a minute


def test_generation_stops_without_listeners_and_the_idle_room_ends(server, jam):
    async def host_then_leave():
        async with connect(server.ws_url, max_size=None) as ws:
            welcome = await join(ws)
            await recv_type(ws, "clip", 90)
            return welcome["room"]

    room = jam.run(host_then_leave())
    left_at = time.monotonic()

    def steady_unet_calls():
        before = metric(server, "jam_unet_calls_total")
        time.sleep(1.5)
        return before == metric(server, "jam_unet_calls_total") and before

    calls = wait_for(steady_unet_calls, 60, "the clip in flight to finish")
    assert live_rooms(server) == 2 and time.monotonic() - left_at < IDLE_ROOM_SECONDS, "reaped too early"
    time.sleep(5.5)  # longer than one clip of stream time: a room still playing would have made one
    assert metric(server, "jam_unet_calls_total") == calls
    wait_for(lambda: live_rooms(server) == 1, REAP_TIMEOUT, "the idle room to be reaped")

    async def rejoin():
        async with connect(server.ws_url) as ws:
            await ws.send(protocol.encode({"type": "join", "room": room}))
            return await recv_type(ws, "error")

    assert jam.run(rejoin())["code"] == "room_not_found"
    assert live_rooms(server) == 1  # the paused room with its host stays


def test_rooms_past_the_limit_are_refused_and_ids_are_unguessable(server, jam):
    wait_for(lambda: live_rooms(server) == 1, REAP_TIMEOUT, "earlier tests' rooms to be reaped")

    async def scenario():
        async with connect(server.ws_url) as first, connect(server.ws_url) as second:
            welcomes = [await join(first), await join(second)]
            async with connect(server.ws_url) as third:
                await third.send(protocol.encode({"type": "join"}))
                return welcomes, await recv_type(third, "error")

    welcomes, refusal = jam.run(scenario())
    assert refusal["code"] == "too_many_rooms" and "3 rooms" in refusal["message"]
    ids = [jam.room, *(welcome["room"] for welcome in welcomes)]
    tokens = [welcome["token"] for welcome in welcomes]
    assert len(set(ids)) == 3 and tokens[0] != tokens[1]
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{12,}", room) for room in ids)  # >= 72 random bits
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{32,}", token) for token in tokens)  # >= 192 random bits
