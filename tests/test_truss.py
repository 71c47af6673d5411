"""The Truss template: deploy/truss/model/model.py imported by path, as Truss would, on the tiny model."""

from __future__ import annotations

import base64
import copy
import importlib.util
import io
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from pipeline.audio.mp3 import decode_mp3

TRUSS_DIR = Path(__file__).resolve().parent.parent / "deploy" / "truss"
SAMPLE_RATE = 44100
EXAMPLE_BODY = {  # the seed README's example, as-is
    "alpha": 0.75, "num_inference_steps": 50, "seed_image_id": "og_beat",
    "start": {"prompt": "church bells on sunday", "seed": 42, "denoising": 0.75, "guidance": 7.0},
    "end": {"prompt": "jazz with piano", "seed": 123, "denoising": 0.75, "guidance": 7.0},
}
MODEL_ENV = ("RIFFUSION_CHECKPOINT", "RIFFUSION_FALLBACK_TO_TINY", "RIFFUSION_DEVICE", "RIFFUSION_SCHEDULER")


def import_truss_module():
    spec = importlib.util.spec_from_file_location("truss_model_under_test", TRUSS_DIR / "model" / "model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def truss_config(**environment: str) -> dict[str, Any]:
    """config.yaml as Truss passes it to Model, with some environment variables replaced."""
    config = yaml.safe_load((TRUSS_DIR / "config.yaml").read_text())
    config["environment_variables"].update(environment)
    return config


def decode_data_url(url: str, mime: str) -> bytes:
    prefix = f"data:{mime};base64,"
    assert url.startswith(prefix), url[:40]
    return base64.b64decode(url[len(prefix):], validate=True)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in MODEL_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def model_module():
    return import_truss_module()


@pytest.fixture(scope="module")
def tiny_model(model_module):
    model = model_module.Model(config=truss_config(RIFFUSION_CHECKPOINT="tiny"), data_dir=None, secrets={})
    model.load()
    return model


def test_config_declares_a_gpu_and_the_checkpoint_variables():
    config = yaml.safe_load((TRUSS_DIR / "config.yaml").read_text())
    assert config["model_class_name"] == "Model" and config["python_version"].startswith("py3")
    assert config["resources"]["use_gpu"] is True and config["resources"]["accelerator"]
    assert config["environment_variables"]["RIFFUSION_CHECKPOINT"] == "riffusion/riffusion-model-v1"
    assert any(req.startswith("diffusers") for req in config["requirements"])
    assert config["model_metadata"]["example_model_input"] == EXAMPLE_BODY


def test_example_request_gives_a_jpeg_and_a_5_second_mp3(tiny_model):
    output = tiny_model.predict(copy.deepcopy(EXAMPLE_BODY))
    assert set(output) == {"image", "audio", "duration_s"}, output.get("error")
    image = Image.open(io.BytesIO(decode_data_url(output["image"], "image/jpeg")))
    assert image.format == "JPEG" and image.size == (512, 512)
    audio = decode_mp3(decode_data_url(output["audio"], "audio/mpeg"), SAMPLE_RATE)
    assert output["duration_s"] == pytest.approx(5.12, abs=0.01)
    # a whole MP3 file: encoder delay and padding add at most a few frames
    assert 5.12 <= audio.shape[-1] / SAMPLE_RATE < 5.12 + 4 * 1152 / SAMPLE_RATE
    assert float(abs(audio).max()) > 0.01  # not silence


def test_bad_seed_image_answers_the_original_message(tiny_model):
    body = {**copy.deepcopy(EXAMPLE_BODY), "seed_image_id": "no_such_loop"}
    assert tiny_model.predict(body) == {"error": "Invalid seed image: no_such_loop"}


@pytest.mark.parametrize("body, named", [
    ({k: v for k, v in EXAMPLE_BODY.items() if k != "alpha"}, "alpha"),
    ({**EXAMPLE_BODY, "alpha": 1.5}, "alpha"),
    ({**EXAMPLE_BODY, "start": {"prompt": "x"}}, "start.seed"),
    ("not a json object", "object"),
])
def test_bad_input_is_an_error_dict_naming_the_field(tiny_model, body, named):
    output = tiny_model.predict(copy.deepcopy(body))
    assert set(output) == {"error"} and named in output["error"], output


def test_predict_before_load_is_an_error_not_a_crash(model_module):
    model = model_module.Model(config=truss_config(RIFFUSION_CHECKPOINT="tiny"))
    assert "load()" in model.predict(copy.deepcopy(EXAMPLE_BODY))["error"]


def test_environment_overrides_config_and_bad_flags_are_refused(model_module, monkeypatch):
    monkeypatch.setenv("RIFFUSION_CHECKPOINT", "/models/my-riffusion")
    monkeypatch.setenv("RIFFUSION_FALLBACK_TO_TINY", "yes")
    settings = model_module.Model(config=truss_config(RIFFUSION_CHECKPOINT="tiny")).settings
    assert settings.checkpoint == "/models/my-riffusion" and settings.fallback_to_tiny is True
    assert settings.device is None and settings.scheduler is None
    monkeypatch.setenv("RIFFUSION_FALLBACK_TO_TINY", "maybe")
    with pytest.raises(ValueError, match="RIFFUSION_FALLBACK_TO_TINY"):
        model_module.Model(config=truss_config())


def test_missing_checkpoint_falls_back_to_the_built_in_model_only_when_allowed(model_module, tmp_path):
    from pipeline.model.loading import CheckpointError

    missing = str(tmp_path / "no-checkpoint-here")
    strict = model_module.Model(config=truss_config(RIFFUSION_CHECKPOINT=missing))
    with pytest.raises(CheckpointError):
        strict.load()
    lenient = model_module.Model(config=truss_config(RIFFUSION_CHECKPOINT=missing,
                                                     RIFFUSION_FALLBACK_TO_TINY="true"))
    lenient.load()
    assert not lenient.loaded.demo and lenient.loaded.checkpoint == "mini"  # the shipped built-in model
