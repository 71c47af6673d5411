"""Fuzzing the WebSocket protocol and the REST API with hypothesis: refusals, never crashes.

Most generated messages go through the pure layers in-process (`decode_client_message`, then a member's
`MemberConnection` and `Room.apply` on a real room whose engine is never reached); a few thousand more go down one real
socket to a real server, and hypothesis bodies are POSTed to /run_inference. Together they make
well over 10,000 messages: wrong types, huge and nested values, NaN, bytes where strings go,
truncated msgpack, text frames.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Any

import httpx
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect

from jamserver.jam import protocol
from jamserver.jam.member.connection import Forward, MemberConnection, MemberLimits, Reply
from jamserver.server.config import ServerConfig
from jamserver.server.metrics import Metrics
from jamserver.server.room.fanout import FanoutCounters, Outbox
from jamserver.server.room.generation import clip_request
from jamserver.server.room.registry import Member, Room
from pipeline.seeds import SeedLibrary
from tests.server_support import join, recv, recv_type, run, running_server

SEEDS = SeedLibrary()
MAX_BYTES = ServerConfig.max_message_bytes


def fuzz_settings(examples: int) -> settings:
    """Reproducible runs (no example database, fixed seed), no per-example deadline on a loaded machine."""
    return settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- strategies ---------------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40), st.binary(max_size=40),
    st.sampled_from(["", " ", "\x00", "og_beat", "mask_top_third_75", "a" * 600, "x" * 20_000, "\u202e\U0001f3b9"]),
    st.sampled_from([0, 1, -1, 50, 1000, 1001, 2**32 - 1, 2**32, 0.0, 1e-300, 1.0, 30.0, 30.000001]),
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8)),
)
wire_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=8,
)
FIELD_NAMES = sorted({name for cls in protocol.CLIENT_MESSAGES.values()
                      for name in cls.__dataclass_fields__} | {"type", "t", "typ", ""})
message_maps = st.builds(
    lambda kind, known, extra: {**({"type": kind} if kind is not None else {}), **known, **extra},
    st.one_of(st.sampled_from([*protocol.CLIENT_MESSAGES, None]), scalars),
    st.dictionaries(st.sampled_from(FIELD_NAMES), wire_values, max_size=4),
    st.dictionaries(st.text(max_size=12), wire_values, max_size=2),
)


def packed(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


client_frames = st.one_of(
    message_maps.map(packed),
    wire_values.map(packed),
    st.tuples(message_maps.map(packed), st.floats(0, 1)).map(lambda pair: pair[0][: int(len(pair[0]) * pair[1])]),
    st.binary(max_size=64),
    st.integers(1, 3000).map(lambda depth: b"\x91" * depth + b"\xc0"),  # arrays nested thousands deep
    st.text(max_size=40),  # a text frame where binary is required
)


def decode(data: bytes | str) -> protocol.ClientMessage:
    return protocol.decode_client_message(data, max_bytes=MAX_BYTES, seed_image_ids=SEEDS.seed_ids(),
                                          mask_image_ids=SEEDS.mask_ids())


def collect(strategy: st.SearchStrategy, count: int) -> list[Any]:
    """`count` generated values, for sending where hypothesis cannot drive the test itself."""
    values: list[Any] = []

    @fuzz_settings(count)
    @given(strategy)
    def gather(value: Any) -> None:
        values.append(value)

    gather()
    return values


# -- in-process: the protocol decoder ------------------------------------------------------------------


def truncations(data: bytes | str) -> list[bytes | str]:
    """The frame and three cuts of it: every generated map also arrives truncated, as a broken client sends it."""
    return [data, *(data[: len(data) * k // 4] for k in (1, 2, 3))]


@fuzz_settings(2500)
@given(client_frames)
def test_decoder_returns_a_message_or_a_protocol_error(data):
    for variant in truncations(data):
        try:
            message = decode(variant)
        except protocol.ProtocolError as error:
            frame = protocol.decode(protocol.encode(error.frame()))  # the refusal itself must be sendable
            assert frame["code"] in protocol.ERROR_CODES and frame["message"]
            continue
        assert type(message) in protocol.CLIENT_MESSAGES.values()
        for value in vars(message).values():
            assert not (isinstance(value, float) and not math.isfinite(value))


# -- in-process: a real room handling what the decoder lets through ----------------------------------------


class Inbox:
    """A member's transport: keeps every frame the room offered, decoded."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []

    async def send(self, data: bytes) -> None:
        self.frames.append(protocol.decode(data))

    async def close(self, code: int, reason: str) -> None:
        pass


@pytest.fixture(scope="module")
def room_and_loop():
    loop = asyncio.new_event_loop()

    async def build() -> Room:
        # the engine and executor are never reached: the room's generation loop is not run here
        return Room("fuzzroom", engine=None, seeds=SEEDS, config=ServerConfig(), metrics=Metrics(), executor=None,
                    sample_rate=44100)

    room = loop.run_until_complete(build())
    yield room, loop
    loop.run_until_complete(room.close())
    loop.close()


def member(role: str, inbox: Inbox, room: Room) -> Member:
    outbox = Outbox(inbox.send, inbox.close, max_frames=10_000, stuck_seconds=1e9, counters=FanoutCounters())
    limits = MemberLimits(max_message_bytes=MAX_BYTES, prompts_per_minute=10_000, join_timeout_seconds=10)
    connection = MemberConnection(limits, SEEDS, now=0.0)
    connection.entered(role, room)
    return Member(connection, outbox)


@fuzz_settings(500)
@given(st.lists(st.tuples(st.sampled_from(["host", "listener"]), client_frames), min_size=1, max_size=4))
def test_room_refuses_or_applies_every_decoded_message_and_stays_playable(room_and_loop, batch):
    room, loop = room_and_loop
    inbox = Inbox()
    members = {role: member(role, inbox, room) for role in ("host", "listener")}
    for joined in members.values():
        room.add_member(joined)
    for role, data in batch:
        for action in members[role].connection.receive(data, time.monotonic()):
            if isinstance(action, Reply) and action.refusal:
                assert action.frame["code"] in protocol.ERROR_CODES
            elif isinstance(action, Forward):
                try:
                    room.apply(action.message)
                except protocol.ProtocolError as error:
                    assert error.code in protocol.ERROR_CODES
            else:
                assert isinstance(action, Reply) and action.frame["type"] == "pong", action
    for joined in members.values():  # flush what the room queued for them through the real sender
        joined.outbox.close_with(1000, "done")
        loop.run_until_complete(asyncio.wait_for(joined.outbox.run(), 10))
        room.remove_member(joined)
    assert {frame["type"] for frame in inbox.frames} <= {"state", "settings", "error", "pong"}
    while True:  # whatever was accepted, the next clips can still be made
        plan = room.session.plan_next_clip()
        clip_request(plan, SEEDS).validate()
        room.session.clip_delivered(plan, time.monotonic())
        if not room.session.up_next:
            break


# -- a real server ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server("--idle-room-seconds", "2", log_dir=tmp_path_factory.mktemp("fuzz")) as running:
        yield running


def without_resume(data: bytes | str) -> bool:
    """The barrage runs in a paused room (so it costs no generation): keep it paused."""
    try:
        return not isinstance(decode(data), protocol.Resume)
    except protocol.ProtocolError:
        return True


def test_a_socket_survives_thousands_of_fuzzed_messages_and_other_rooms_keep_playing(server):
    barrage = [cut for data in collect(client_frames, 1500) for cut in truncations(data)[::2]
               if without_resume(cut)]

    async def scenario():
        async with connect(server.ws_url, max_size=None) as other, connect(server.ws_url, max_size=None) as ws:
            await join(other)
            await join(ws)
            await ws.send(protocol.encode({"type": "pause"}))
            counts: dict[str, int] = {}

            async def drain() -> None:
                while True:
                    frame = await recv(ws, 120)
                    counts[frame["type"]] = counts.get(frame["type"], 0) + 1
                    if frame == {"type": "pong", "t": -42.5}:
                        return

            reader = asyncio.create_task(drain())
            for data in barrage:
                await ws.send(data)
            await ws.send(protocol.encode({"type": "ping", "t": -42.5}))
            await asyncio.wait_for(reader, 120)
            first = await recv_type(other, "clip", 120)
            second = await recv_type(other, "clip", 120)
            return counts, first, second, ws.close_code

    counts, first, second, close_code = run(scenario())
    assert len(barrage) > 2800
    assert close_code is None  # still open when the barrage was over
    assert counts.get("error", 0) > len(barrage) // 2  # most fuzz is refused, one error frame each
    assert second["seq"] == first["seq"] + 1


def rest_body_strategy() -> st.SearchStrategy:
    valid = {"alpha": 0.5, "num_inference_steps": 1, "seed_image_id": "og_beat",
             "start": {"prompt": "a", "seed": 1}, "end": {"prompt": "b", "seed": 2}}
    paths = [("alpha",), ("num_inference_steps",), ("seed_image_id",), ("mask_image_id",), ("start",),
             ("end",), ("start", "prompt"), ("start", "seed"), ("start", "denoising"), ("end", "guidance"),
             ("end", "negative_prompt")]

    def mutate(path: tuple[str, ...], value: Any) -> Any:
        body = json.loads(json.dumps(valid))
        target = body
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return body

    json_values = wire_values.filter(lambda v: not isinstance(v, (bytes, msgpack.ExtType))).map(
        lambda v: json.loads(json.dumps(v, default=repr)))
    return st.one_of(
        st.builds(mutate, st.sampled_from(paths), json_values).map(lambda body: json.dumps(body).encode()),
        json_values.map(lambda value: json.dumps(value).encode()),
        st.binary(max_size=100),
        st.sampled_from([b"[" * 100_000, b"1" * 5000, b'{"alpha": NaN}', b"\xff\xfe", b""]),
    )


def test_rest_api_answers_fuzzed_bodies_with_400_413_or_200_never_5xx(server):
    bodies = collect(rest_body_strategy(), 250)
    statuses: dict[int, int] = {}
    with httpx.Client(base_url=server.http_url, timeout=120) as client:
        for body in bodies:
            status = client.post("/run_inference", content=body,
                                 headers={"Content-Type": "application/json"}).status_code
            statuses[status] = statuses.get(status, 0) + 1
    assert set(statuses) <= {200, 400, 413}, statuses  # 413: the 100 kB bracket body is over 64 KiB
    assert statuses.get(400, 0) > len(bodies) // 2
