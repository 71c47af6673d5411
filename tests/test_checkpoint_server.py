"""`jamserver serve` on the real checkpoints' layouts (offline hub-cache fixtures): REST and WebSocket clips have the
seed image's geometry, and a seed image the model cannot take is refused by name."""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from PIL import Image
from websockets.asyncio.client import connect

from jamserver.jam import protocol
from pipeline.audio.mp3 import decode_mp3
from pipeline.seeds import SEED_IMAGES_ENV
from tests.hub_fixtures import FINETUNE, RIFFUSION_V1, build_hub_cache, offline_env, write_seed_library
from tests.server_support import join, recv_type, running_server

RATE = 44100
BODY = {"alpha": 0.75, "num_inference_steps": 8, "seed_image_id": "og_beat",
        "start": {"prompt": "church bells on sunday", "seed": 42}, "end": {"prompt": "jazz with piano", "seed": 123}}


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """One server per fixture repository, loaded offline from one hub cache, with seeds of three widths."""
    cache = tmp_path_factory.mktemp("hf") / "hub"
    build_hub_cache(cache)
    seeds = write_seed_library(tmp_path_factory.mktemp("seeds"), {"wide": 768, "odd": 516})
    env = {**offline_env(cache), SEED_IMAGES_ENV: str(seeds)}
    logs = tmp_path_factory.mktemp("logs")
    with running_server("--checkpoint", RIFFUSION_V1, "--no-fallback", log_dir=logs, env=env) as v1, \
            running_server("--checkpoint", FINETUNE, "--no-fallback", log_dir=logs, env=env) as finetune:
        yield {RIFFUSION_V1: v1, FINETUNE: finetune}


def post(server, body: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(server.http_url + "/run_inference/", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=180) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def data_url_bytes(url: str) -> bytes:
    return base64.b64decode(url.split(",", 1)[1])


@pytest.mark.parametrize("repo_id", [RIFFUSION_V1, FINETUNE])
def test_rest_clip_is_512px_and_5_12_s(servers, repo_id):
    status, output = post(servers[repo_id], BODY)
    assert status == 200, output
    assert Image.open(io.BytesIO(data_url_bytes(output["image"]))).size == (512, 512)
    assert output["duration_s"] == pytest.approx(5.12)
    audio = decode_mp3(data_url_bytes(output["audio"]), RATE)
    assert abs(audio.shape[-1] - 5.12 * RATE) < 4 * 1152


def test_rest_clip_length_follows_the_seed_width_and_a_bad_width_is_a_400(servers):
    status, output = post(servers[RIFFUSION_V1], {**BODY, "seed_image_id": "wide"})
    assert status == 200, output
    assert Image.open(io.BytesIO(data_url_bytes(output["image"]))).size == (768, 512)
    assert output["duration_s"] == pytest.approx(7.68)
    status, message = post(servers[RIFFUSION_V1], {**BODY, "seed_image_id": "odd"})
    assert status == 400
    assert message.startswith("Invalid seed image: odd: 516x512 pixels cannot be used by this model")


async def clips_after_settings(url: str, count: int, settings: dict[str, Any]) -> list[dict[str, Any]]:
    async with connect(url, max_size=None) as ws:
        await join(ws)
        await ws.send(protocol.encode({"type": "settings", **settings}))
        return [await recv_type(ws, "clip", 180) for _ in range(count)]


@pytest.mark.parametrize("repo_id", [RIFFUSION_V1, FINETUNE])
def test_websocket_clips_are_512px_and_5_12_s(servers, repo_id):
    clips = asyncio.run(clips_after_settings(servers[repo_id].ws_url, 2, {"num_inference_steps": 8}))
    for clip in clips:
        assert Image.open(io.BytesIO(clip["image"])).size == (512, 512)
        assert clip["duration"] == pytest.approx(5.12)
    assert clips[1]["stream_time"] == pytest.approx(5.12)


def test_websocket_refuses_a_seed_the_model_cannot_take_and_times_a_wider_one(servers):
    async def scenario():
        async with connect(servers[RIFFUSION_V1].ws_url, max_size=None) as ws:
            await join(ws)
            await ws.send(protocol.encode({"type": "settings", "num_inference_steps": 8, "seed_image_id": "odd"}))
            refusal = await recv_type(ws, "error", 60)
            await ws.send(protocol.encode({"type": "settings", "num_inference_steps": 8, "seed_image_id": "wide"}))
            clips = [await recv_type(ws, "clip", 180) for _ in range(3)]
            return refusal, clips

    refusal, clips = asyncio.run(scenario())
    assert refusal["code"] == "bad_field" and refusal["field"] == "seed_image_id"
    assert "seed image 'odd': 516x512 pixels cannot be used by this model" in refusal["message"]
    wide = [clip for clip in clips if Image.open(io.BytesIO(clip["image"])).size == (768, 512)]
    assert wide and all(clip["duration"] == pytest.approx(7.68) for clip in wide)
    for before, after in itertools.pairwise(clips):
        assert after["stream_time"] == pytest.approx(before["stream_time"] + before["duration"])
