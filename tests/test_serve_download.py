"""`jamserver serve` fetching a checkpoint from a hub (a local stand-in speaking the hub's HTTP API to the real
huggingface_hub): the bytes first, a line per file, only the files it loads; a gated repository is one line."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import urllib.request

import pytest
from PIL import Image

from pipeline.model.hub import format_bytes
from tests.fake_hub import FakeHubServer
from tests.hub_fixtures import RIFFUSION_V1, build_hub_cache
from tests.server_support import REPO, free_port, running_server
from tests.test_hub import V1_NEEDED

GATED = "riffusion/gated-model"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with FakeHubServer(build_hub_cache(tmp_path_factory.mktemp("remote") / "hub"), gated=[GATED]) as server:
        yield server


def hub_env(hub: FakeHubServer, home) -> dict[str, str]:
    return {"HF_ENDPOINT": hub.url, "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HF_HUB_OFFLINE": "0",
            "HF_HUB_DISABLE_TELEMETRY": "1"}


def test_serve_downloads_only_what_it_loads_showing_bytes_then_progress(hub, tmp_path):
    remote = hub.repos[RIFFUSION_V1]
    needed = sum(remote.sizes[path] for path in V1_NEEDED)
    with running_server("--checkpoint", RIFFUSION_V1, "--no-fallback", log_dir=tmp_path,
                        env=hub_env(hub, tmp_path / "home")) as server:
        body = {"alpha": 0.5, "num_inference_steps": 6, "start": {"prompt": "a", "seed": 1},
                "end": {"prompt": "b", "seed": 2}}
        request = urllib.request.Request(server.http_url + "/run_inference/", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=180) as response:
            output = json.loads(response.read())
        log = server.log()
    assert sorted(hub.downloaded()) == V1_NEEDED  # no .ckpt, safety checker, traced UNet, seed images, README
    announce = log.index(f"{RIFFUSION_V1}: 12 of 12 files to fetch, {format_bytes(needed)}")
    progress = [log.index(f"{RIFFUSION_V1}: fetching [{number}/12] ") for number in range(1, 13)]
    assert announce < progress[0] and progress == sorted(progress)
    image = base64.b64decode(output["image"].split(",", 1)[1])
    assert Image.open(io.BytesIO(image)).size == (512, 512) and output["duration_s"] == pytest.approx(5.12)


def test_serve_on_a_gated_repository_says_to_set_hf_token_in_one_line(hub, tmp_path):
    command = [sys.executable, "-m", "jamserver", "serve", "--checkpoint", GATED, "--no-fallback",
               "--port", str(free_port())]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, **hub_env(hub, tmp_path / "home")})
    assert result.returncode == 2
    lines = [line for line in (result.stdout + result.stderr).splitlines() if GATED in line]
    assert len(lines) == 1 and "gated on the hub" in lines[0] and "set HF_TOKEN" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
