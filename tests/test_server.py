"""The jam server for real: uvicorn on 127.0.0.1, the tiny model, websockets clients."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import urllib.error
import urllib.request
from typing import Any

import msgpack
import pytest
from PIL import Image
from websockets.asyncio.client import connect

from jamserver.jam import protocol
from pipeline.audio.mp3 import decode_mp3
from tests.server_support import post, recv, recv_type, running_server

SAMPLE_RATE = 44100
EXAMPLE_BODY = {  # the seed README's example, as-is
    "alpha": 0.75, "num_inference_steps": 50, "seed_image_id": "og_beat",
    "start": {"prompt": "church bells on sunday", "seed": 42, "denoising": 0.75, "guidance": 7.0},
    "end": {"prompt": "jazz with piano", "seed": 123, "denoising": 0.75, "guidance": 7.0},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(log_dir=tmp_path_factory.mktemp("server")) as running:
        yield running


async def join(ws, **fields: Any) -> dict[str, Any]:
    await ws.send(protocol.encode({"type": "join", **fields}))
    return await recv_type(ws, "welcome")


def run(coro):
    return asyncio.run(coro)


def test_host_gets_consecutive_clips_of_one_gapless_stream(server):
    async def scenario():
        async with connect(server.ws_url, max_size=None) as ws:
            welcome = await join(ws)
            clips = [await recv_type(ws, "clip", 60) for _ in range(3)]
            return welcome, clips

    welcome, clips = run(scenario())
    assert welcome["role"] == "host" and welcome["token"] and welcome["protocol"] == 2
    assert welcome["model"]["demo"] is True and "og_beat" in welcome["seed_images"]
    assert [clip["seq"] for clip in clips] == [0, 1, 2]
    for before, after in zip(clips, clips[1:]):
        assert after["stream_time"] == pytest.approx(before["stream_time"] + before["duration"])
    assert clips[0]["stream_time"] == 0.0 and clips[0]["duration"] == pytest.approx(5.12)
    image = Image.open(io.BytesIO(clips[0]["image"]))
    assert image.format == "JPEG" and image.size == (512, 512)
    audio = decode_mp3(b"".join(clip["audio"] for clip in clips), SAMPLE_RATE)
    expected = sum(clip["duration"] for clip in clips) * SAMPLE_RATE
    # the encoder holds back at most ~2 frames until the stream ends, and adds its fixed delay
    assert abs(audio.shape[-1] - expected) < 4 * 1152, (audio.shape, expected)
    assert float(abs(audio).max()) > 0.01  # not silence


def test_welcome_tells_the_client_every_limit_and_default_it_is_held_to(server):
    async def scenario():
        async with connect(server.ws_url, max_size=None) as ws:
            welcome = await join(ws)
            too_long = "x" * (welcome["limits"]["prompt_chars"] + 1)
            await ws.send(protocol.encode({"type": "prompt", "prompt": too_long}))
            refusal = await recv_type(ws, "error")
            steps = welcome["limits"]["num_inference_steps"]["max"] + 1
            await ws.send(protocol.encode({"type": "settings", "num_inference_steps": steps}))
            return welcome, refusal, await recv_type(ws, "error")

    welcome, long_prompt, too_many_steps = run(scenario())
    assert welcome["defaults"] == welcome["settings"]  # a new room starts on the defaults
    assert welcome["defaults"]["denoising"] == 0.75 and welcome["defaults"]["num_inference_steps"] == 50
    assert welcome["clip_seconds"] == pytest.approx(5.12)
    assert welcome["limits"]["denoising"] == {"min": 0.0, "max": 1.0, "min_inclusive": False, "integer": False}
    assert (long_prompt["field"], too_many_steps["field"]) == ("prompt", "num_inference_steps")


def test_without_cut_ins_a_prompt_sent_mid_stream_is_carried_within_one_clip(server):
    async def scenario():
        async with connect(server.ws_url, max_size=None) as ws:
            await join(ws)
            await ws.send(protocol.encode({"type": "settings", "cut_in": False}))
            first = await recv_type(ws, "clip", 60)
            await ws.send(protocol.encode({"type": "prompt", "prompt": "jazz with piano"}))
            for _ in range(4):
                clip = await recv_type(ws, "clip", 60)
                if clip["end"]["prompt"] == "jazz with piano":
                    return first, clip
            raise AssertionError("the prompt never arrived")

    first, carrier = run(scenario())
    # the clip generated after the one already in flight must carry it, at the end of the stream
    assert carrier["seq"] <= first["seq"] + 2 and not carrier["replaces"]
    assert carrier["start"]["prompt"] != "jazz with piano"


def test_first_prompt_sent_behind_the_join_is_heard_from_the_first_clip(server):
    async def scenario():
        async with connect(server.ws_url, max_size=None) as ws:
            await ws.send(protocol.encode({"type": "join"}))
            await ws.send(protocol.encode({"type": "prompt", "prompt": "church bells on sunday", "seed": 7}))
            return await recv_type(ws, "clip", 60)

    first = run(scenario())
    assert first["seq"] == 0
    assert first["start"]["prompt"] == "church bells on sunday" and first["start"]["seed"] == 7


def test_listener_hears_the_room_but_cannot_control_it(server):
    async def scenario():
        async with connect(server.ws_url, max_size=None) as host:
            welcome = await join(host)
            host_clip = await recv_type(host, "clip", 60)
            async with connect(server.ws_url, max_size=None) as listener:
                joined = await join(listener, room=welcome["room"])
                caught_up = await recv_type(listener, "clip", 30)
                await listener.send(protocol.encode({"type": "prompt", "prompt": "take over"}))
                refusal = await recv_type(listener, "error")
                await listener.send(protocol.encode({"type": "ping", "t": 7}))
                pong = await recv_type(listener, "pong")
                return welcome, host_clip, joined, caught_up, refusal, pong

    welcome, host_clip, joined, caught_up, refusal, pong = run(scenario())
    assert joined["role"] == "listener" and "token" not in joined and joined["room"] == welcome["room"]
    assert caught_up["seq"] >= host_clip["seq"]  # catch-up: a clip to start from at once
    assert refusal["code"] == "not_host"
    assert pong["t"] == 7


def test_bad_messages_get_error_frames_and_the_socket_keeps_working(server):
    bad = {
        "bad_msgpack": b"\x93\x01",  # truncated array
        "unknown_type": protocol.encode({"type": "dance"}),
        "bad_field": msgpack.packb({"type": "prompt", "prompt": "x", "denoising": math.nan}),
        "too_large": protocol.encode({"type": "prompt", "prompt": "x" * 40_000}),
    }

    async def scenario():
        async with connect(server.ws_url, max_size=None) as ws:
            await join(ws)
            codes = {}
            for expected, data in bad.items():
                await ws.send(data)
                codes[expected] = (await recv_type(ws, "error"))["code"]
            await ws.send("not binary")
            codes["not_binary"] = (await recv_type(ws, "error"))["code"]
            await ws.send(protocol.encode({"type": "ping", "t": 1}))
            return codes, await recv_type(ws, "pong")

    codes, pong = run(scenario())
    assert codes == {code: code for code in codes}
    assert pong["t"] == 1


def test_wrong_room_or_token_is_refused_with_a_reason(server):
    async def scenario():
        async with connect(server.ws_url) as ws:
            await ws.send(protocol.encode({"type": "join", "room": "no-such-room"}))
            return await recv(ws)

    frame = run(scenario())
    assert frame["type"] == "error" and frame["code"] == "room_not_found"


def test_two_rooms_stream_at_once(server):
    async def one_room():
        async with connect(server.ws_url, max_size=None) as ws:
            welcome = await join(ws)
            clip = await recv_type(ws, "clip", 60)
            return welcome["room"], clip

    async def scenario():
        return await asyncio.gather(one_room(), one_room())

    (room_a, clip_a), (room_b, clip_b) = run(scenario())
    assert room_a != room_b
    assert clip_a["seq"] == clip_b["seq"] == 0


def test_original_rest_api_answers_the_seed_readme_example(server):
    status, body = post(server, "/run_inference/", json.dumps(EXAMPLE_BODY).encode())
    assert status == 200, body
    output = json.loads(body)
    assert output["duration_s"] == pytest.approx(5.12)
    assert output["image"].startswith("data:image/jpeg;base64,")
    assert output["audio"].startswith("data:audio/mpeg;base64,")
    audio = decode_mp3(base64.b64decode(output["audio"].split(",", 1)[1]), SAMPLE_RATE)
    assert abs(audio.shape[-1] / SAMPLE_RATE - 5.12) < 0.1


@pytest.mark.parametrize("body, reason", [
    (b"{not json", "Invalid JSON"),
    (json.dumps({**EXAMPLE_BODY, "seed_image_id": "nope"}).encode(), "Invalid seed image: nope"),
    (json.dumps({**EXAMPLE_BODY, "mask_image_id": "nope"}).encode(), "Invalid mask image: nope"),
    (json.dumps({k: v for k, v in EXAMPLE_BODY.items() if k != "start"}).encode(), "start"),
    (json.dumps({**EXAMPLE_BODY, "alpha": 1.5}).encode(), "alpha"),
    (json.dumps({**EXAMPLE_BODY, "num_inference_steps": "many"}).encode(), "num_inference_steps"),
    (json.dumps({**EXAMPLE_BODY, "end": {"prompt": "x", "seed": 1, "denoising": 0}}).encode(), "denoising"),
])
def test_rest_api_refuses_bad_input_with_400_and_the_reason(server, body, reason):
    status, text = post(server, "/run_inference", body)
    assert status == 400
    assert reason in text.decode()


def test_seed_images_health_and_metrics(server):
    with urllib.request.urlopen(server.http_url + "/seed_images") as response:
        index = json.loads(response.read())
    ids = {entry["id"] for entry in index}
    assert {"og_beat", "agile", "marim", "motorway", "vibes", "mask_top_third_75"} <= ids
    with urllib.request.urlopen(server.http_url + "/seed_images/og_beat.png") as response:
        assert Image.open(io.BytesIO(response.read())).size == (512, 512)
    with urllib.request.urlopen(server.http_url + "/healthz") as response:
        assert json.loads(response.read())["ok"] is True
    with urllib.request.urlopen(server.http_url + "/metrics") as response:
        metrics = response.read().decode()
    assert "jam_clips_total" in metrics and "jam_bytes_sent_total" in metrics


def test_open_jam_lets_listeners_queue_one_prompt_at_a_time(server):
    async def scenario():
        async with connect(server.ws_url, max_size=None) as host:
            welcome = await join(host)
            await host.send(protocol.encode({"type": "settings", "open_jam": True}))
            settings = await recv_type(host, "settings")
            async with connect(server.ws_url, max_size=None) as guest:
                await join(guest, room=welcome["room"])
                await recv_type(guest, "clip", 60)  # steady state: the next clip is planned seconds from now
                await guest.send(protocol.encode({"type": "prompt", "prompt": "guest groove"}))
                await guest.send(protocol.encode({"type": "prompt", "prompt": "guest again"}))
                refusal = await recv_type(guest, "error")
                for _ in range(4):
                    clip = await recv_type(guest, "clip", 60)
                    if clip["end"]["prompt"] == "guest groove":
                        return settings, refusal, clip
                raise AssertionError("the guest's prompt was never played")

    settings, refusal, clip = run(scenario())
    assert settings["settings"]["open_jam"] is True
    assert refusal["code"] == "rate_limited" and "one at a time" in refusal["message"]
    assert clip["end"]["prompt"] == "guest groove"
