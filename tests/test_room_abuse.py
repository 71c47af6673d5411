"""Room-level abuse against a real server process (issue 16, findings 2, 7 and 8): room-slot lockout,
settings floods, and a join that names a token but no room."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from jamserver.jam import protocol
from tests.server_support import join, metric, recv, recv_type, run, running_server, wait_for

PER_ADDRESS_ROOMS = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator:
    flags = ("--max-rooms", "16", "--max-rooms-per-address", str(PER_ADDRESS_ROOMS), "--idle-room-seconds", "2")
    with running_server(*flags, log_dir=tmp_path_factory.mktemp("rooms")) as running:
        yield running


async def create_and_leave(url: str, source: str) -> dict:
    """Join without a room from `source` (a loopback address), then disconnect: the welcome or the refusal."""
    async with connect(url, max_size=None, local_addr=(source, 0)) as ws:
        await ws.send(protocol.encode({"type": "join"}))
        return await recv(ws, 30)


def test_empty_rooms_end_soon_and_one_address_cannot_take_every_slot(server):
    async def scenario():
        first = [await create_and_leave(server.ws_url, "127.0.0.20") for _ in range(10)]
        other = await create_and_leave(server.ws_url, "127.0.0.21")
        return first, other

    first, other = run(scenario())
    kinds = [frame["type"] for frame in first]
    assert kinds[:PER_ADDRESS_ROOMS] == ["welcome"] * PER_ADDRESS_ROOMS
    refusals = first[PER_ADDRESS_ROOMS:]
    assert all(frame["type"] == "error" and frame["code"] == "too_many_rooms" for frame in refusals)
    assert "your address" in refusals[0]["message"]
    assert other["type"] == "welcome"  # somebody else still gets a room
    wait_for(lambda: metric(server, "jam_rooms") == 0, 15, "the empty rooms to end")
    again = run(create_and_leave(server.ws_url, "127.0.0.20"))
    assert again["type"] == "welcome"  # and the address may make rooms again once its empty ones ended


def test_behind_a_proxy_the_cap_counts_the_forwarded_client_not_the_proxy(server):
    async def create(forwarded_for: str | None) -> str:
        headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
        async with connect(server.ws_url, max_size=None, additional_headers=headers) as ws:  # from 127.0.0.1
            await ws.send(protocol.encode({"type": "join"}))
            frame = await recv(ws, 30)
            return frame["type"] if frame["type"] == "welcome" else frame["code"]

    async def scenario():
        client = [await create("203.0.113.7") for _ in range(PER_ADDRESS_ROOMS + 1)]
        proxy_itself = [await create(None) for _ in range(PER_ADDRESS_ROOMS + 1)]
        return client, proxy_itself

    wait_for(lambda: metric(server, "jam_rooms") == 0, 15, "earlier rooms to end")
    client, proxy_itself = run(scenario())
    assert client == ["welcome"] * PER_ADDRESS_ROOMS + ["too_many_rooms"]
    assert proxy_itself == ["welcome"] * (PER_ADDRESS_ROOMS + 1)  # the proxy's own address speaks for many


def test_a_room_a_member_comes_back_to_within_the_grace_period_lives_on(server):
    async def scenario():
        async with connect(server.ws_url, max_size=None) as host:
            welcome = await join(host)
        await asyncio.sleep(0.5)
        async with connect(server.ws_url, max_size=None) as back:
            return welcome, await join(back, room=welcome["room"], token=welcome["token"])

    welcome, rejoined = run(scenario())
    assert rejoined["room"] == welcome["room"] and rejoined["role"] == "host"


def test_a_settings_flood_is_rate_limited_coalesced_and_costs_listeners_nothing(server):
    async def scenario():
        async with connect(server.ws_url, max_size=None) as host, \
                connect(server.ws_url, max_size=None) as listener:
            welcome = await join(host)
            await join(listener, room=welcome["room"])
            await recv_type(listener, "clip", 120)
            flood = [protocol.encode({"type": "settings", "guidance": float(n % 20)}) for n in range(2000)]
            for message in flood:
                await host.send(message)
            await host.send(protocol.encode({"type": "ping", "t": 7}))
            limited = 0
            while (frame := await recv(host, 60))["type"] != "pong":  # applied settings, then rate_limited errors
                if frame["type"] == "error":
                    assert frame["code"] == "rate_limited"
                    limited += 1
            settings_frames = 0
            while True:  # the listener: coalesced settings frames, then its music goes on
                frame = await recv(listener, 120)
                settings_frames += frame["type"] == "settings"
                if frame["type"] == "clip":
                    return limited, settings_frames

    limited, settings_frames = run(scenario())
    assert limited >= 1500
    assert settings_frames < 100
    assert metric(server, "jam_listeners_closed_slow_total") == 0


def test_a_join_with_a_token_but_no_room_is_refused(server):
    async def scenario():
        rooms_before = metric(server, "jam_rooms")
        async with connect(server.ws_url, max_size=None) as ws:
            await ws.send(protocol.encode({"type": "join", "token": "a" * 32}))
            refusal = await recv(ws, 30)
            with pytest.raises(ConnectionClosed):
                await recv(ws, 30)
            return refusal, ws.close_code, rooms_before

    refusal, code, rooms_before = run(scenario())
    assert refusal["type"] == "error" and refusal["field"] == "room"
    assert code == 1008
    assert metric(server, "jam_rooms") == rooms_before
