"""POST /seed_images on a real server: formats, refusals, limits, persistence, and use from the WebSocket and REST."""

from __future__ import annotations

import base64
import http.client
import io
import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient
from websockets.asyncio.client import connect

from jamserver.cli import main as jamserver_main
from jamserver.jam import protocol
from jamserver.server.app import create_app
from jamserver.server.config import ServerConfig
from pipeline.model.loading import load_pipeline
from tests.server_support import join, recv_type, run, running_server
from tests.test_server import EXAMPLE_BODY
from tests.upload_support import encode, loop_upload

MAX_BYTES = 3_000_000


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def server(tmp_path_factory, data_dir):
    with running_server("--data-dir", str(data_dir), "--max-upload-bytes", str(MAX_BYTES),
                        "--uploads-per-minute", "600", log_dir=tmp_path_factory.mktemp("server")) as running:
        yield running


def post(server, body: bytes, content_type: str = "application/octet-stream", path: str = "/seed_images",
         origin: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": content_type, **({"Origin": origin} if origin else {})}
    request = urllib.request.Request(server.http_url + path, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def multipart(data: bytes, field: str = "file", filename: str = "loop.mp3") -> tuple[bytes, str]:
    """A form with the upload (the name lies about the format on purpose: content decides)."""
    boundary = "----jamtest7MA4YWxkTrZu0gW"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: audio/mpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float64)


def seed_index(server) -> list[dict]:
    with urllib.request.urlopen(server.http_url + "/seed_images", timeout=30) as response:
        return json.loads(response.read())


@pytest.mark.parametrize("kind", ["wav", "flac", "ogg", "mp3"])
def test_an_uploaded_loop_becomes_a_listed_custom_seed(server, kind):
    body, content_type = multipart(loop_upload(121.0, kind, seed=hash(kind) % 100))
    status, answer = post(server, body, content_type)
    assert status == 201, answer
    assert answer["source"] == kind and answer["duration"] == pytest.approx(5.12)
    assert answer["beats"] == 10 and answer["bpm"] == pytest.approx(117.1875)
    assert answer["source_bpm"] == pytest.approx(121.0, abs=0.5) and answer["fit"] == "stretched"
    listed = {entry["id"]: entry for entry in seed_index(server)}
    assert listed[answer["id"]]["custom"] is True and listed["og_beat"]["custom"] is False
    assert listed[answer["id"]]["bpm"] == answer["bpm"]
    with urllib.request.urlopen(server.http_url + answer["url"], timeout=30) as response:
        assert response.headers["content-type"] == "image/png" and response.read(8) == b"\x89PNG\r\n\x1a\n"


def test_the_same_upload_twice_is_one_seed(server):
    data = loop_upload(100.0, "wav", seed=5)
    first_status, first = post(server, data)  # raw body, no form
    again_status, again = post(server, *multipart(data))
    assert (first_status, again_status) == (201, 200)
    assert first["id"] == again["id"] and first["bpm"] == again["bpm"]
    assert sum(entry["id"] == first["id"] for entry in seed_index(server)) == 1


def test_a_riffusion_png_upload_keeps_its_tempo(server):
    with urllib.request.urlopen(server.http_url + "/seed_images/vibes.png", timeout=30) as response:
        png = response.read()
    status, answer = post(server, png, "image/png")
    assert status == 201, answer
    assert (answer["source"], answer["bpm"], answer["beats"], answer["fit"]) == ("png", 70.3125, 6, "as-is")


@pytest.mark.parametrize("body, status, problem", [
    (b"", 400, "empty"),
    (b"just some text, not audio at all" * 4, 415, "unsupported_format"),
    (b"RIFF\x24\x00\x00\x00WAVEfmt broken", 400, "undecodable"),
    (loop_upload(120.0, "wav")[:44] + bytes(44100 * 2), 400, "silent"),
    (loop_upload(120.0, "wav")[:44 + 8000], 400, "too_short"),
    (encode(np.full(601 * 1000, 0.1, np.float32), "wav", rate=1000), 400, "too_long"),  # 601 s at 1 kHz
])
def test_bad_uploads_are_refused_with_a_json_reason_and_nothing_stored(server, data_dir, body, status, problem):
    before = sorted(p.name for p in (data_dir / "seeds").glob("*")) if (data_dir / "seeds").exists() else []
    got, answer = post(server, body)
    assert got == status and answer["problem"] == problem and answer["error"]
    after = sorted(p.name for p in (data_dir / "seeds").glob("*")) if (data_dir / "seeds").exists() else []
    assert before == after


def test_a_form_without_a_file_field_is_refused(server):
    status, answer = post(server, *multipart(loop_upload(), field="audio"))
    assert status == 400 and "'file' field" in answer["error"]


def test_an_upload_over_the_limit_is_refused_with_413_before_it_is_sent(server):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    connection.putrequest("POST", "/seed_images")
    connection.putheader("Content-Length", str(MAX_BYTES + 1))
    connection.endheaders(b"RIFF" + bytes(4096))  # the rest never comes: the answer must not wait for it
    response = connection.getresponse()
    answer = json.loads(response.read())
    connection.close()
    assert response.status == 413 and answer["problem"] == "too_large" and str(MAX_BYTES) in answer["error"]


def test_a_chunked_upload_is_cut_off_once_it_passes_the_limit(server):
    def chunks():
        for _ in range(MAX_BYTES // 65536 + 2):
            yield bytes(65536)

    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        connection.request("POST", "/seed_images", body=chunks(), encode_chunked=True,
                           headers={"Transfer-Encoding": "chunked"})
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may answer and close while the last chunks are on their way
    response = connection.getresponse()
    assert response.status == 413 and json.loads(response.read())["problem"] == "too_large"
    connection.close()


def test_a_custom_seed_drives_a_room_over_the_websocket_and_the_rest_api(server):
    status, answer = post(server, loop_upload(96.0, "flac", seed=9))
    assert status == 201
    custom = answer["id"]

    async def scenario():
        async with connect(server.ws_url) as ws:
            welcome = await join(ws)
            assert custom in welcome["seed_images"]
            await ws.send(protocol.encode({"type": "settings", "seed_image_id": custom}))
            settings = await recv_type(ws, "settings")
            clips = [await recv_type(ws, "clip", timeout=120) for _ in range(3)]
            return settings, clips

    settings, clips = run(scenario())
    assert settings["settings"]["seed_image_id"] == custom
    assert all(len(clip["audio"]) > 1000 for clip in clips)

    def rest_image(seed_image_id: str) -> np.ndarray:
        status, output = post(server, json.dumps({**EXAMPLE_BODY, "seed_image_id": seed_image_id,
                                                   "num_inference_steps": 8}).encode(),
                              "application/json", path="/run_inference/")
        assert status == 200, output
        return _pixels(base64.b64decode(output["image"].split(",", 1)[1]))

    # The tiny model makes structured noise, not music, but the same request gives the same clip: the custom
    # seed is what changes it.
    made_from_upload = rest_image(custom)
    same = np.abs(rest_image(custom) - made_from_upload).mean()
    other = np.abs(rest_image("og_beat") - made_from_upload).mean()
    assert same < 0.1 and other > 0.5


def test_custom_seeds_survive_a_restart_and_uploads_can_be_limited_or_off(tmp_path, data_dir, server):
    status, answer = post(server, loop_upload(133.0, "wav", seed=21))
    assert status == 201
    with running_server("--data-dir", str(data_dir), "--uploads-per-minute", "1",
                        "--allowed-origin", "http://jam.example", log_dir=tmp_path) as second:
        foreign, refusal = post(second, b"RIFF", origin="http://elsewhere.example")
        assert foreign == 403 and refusal["problem"] == "origin_not_allowed"
        assert answer["id"] in {entry["id"] for entry in seed_index(second)}
        rest_status, _ = post(second, json.dumps({**EXAMPLE_BODY, "seed_image_id": answer["id"],
                                                   "num_inference_steps": 4}).encode(), "application/json",
                              path="/run_inference/")
        assert rest_status == 200
        assert post(second, b"not audio")[0] == 415  # uses the one upload a minute
        limited, refusal = post(second, b"RIFF and more")
        assert limited == 429 and refusal["problem"] == "rate_limited"
    with running_server("--data-dir", str(data_dir), "--no-uploads", log_dir=tmp_path) as closed:
        off, refusal = post(closed, b"RIFF")  # answered before the body is read: a large one would be cut off
        assert off == 403 and refusal["problem"] == "uploads_disabled"
        assert answer["id"] in {entry["id"] for entry in seed_index(closed)}


def test_an_app_without_a_seed_store_refuses_uploads_cleanly():
    with TestClient(create_app(ServerConfig(), load_pipeline("tiny"))) as client:
        response = client.post("/seed_images", content=loop_upload(120.0, "wav"))
        assert response.status_code == 403 and response.json()["problem"] == "uploads_disabled"
        assert all(entry["custom"] is False for entry in client.get("/seed_images").json())


def test_record_sets_an_uploaded_seed_for_its_room(server, tmp_path, capsys):
    status, answer = post(server, loop_upload(110.0, "ogg", seed=31))
    assert status in (200, 201)
    base = ["record", "--url", f"ws://127.0.0.1:{server.port}", "--duration", "5", "--prompt", "tabla"]
    assert jamserver_main([*base, "--out", str(tmp_path / "none.mp3"), "--seed-image", "custom-0000"]) == 2
    assert "no seed image 'custom-0000'" in capsys.readouterr().err and not (tmp_path / "none.mp3").exists()
    assert jamserver_main([*base, "--out", str(tmp_path / "mine.mp3"), "--seed-image", answer["id"]]) == 0
    report = capsys.readouterr().err
    assert "server:" not in report and f"room settings: seed image {answer['id']}" in report
    assert (tmp_path / "mine.mp3").stat().st_size > 10_000
