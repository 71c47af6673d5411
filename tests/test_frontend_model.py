"""A front-end loads no weights, yet refuses a seed image the workers' model cannot take, and names that model:
its geometry must be the real model's, or a room would send jobs every worker refuses (or refuse good seeds)."""

from __future__ import annotations

import json

import pytest

from jamserver.cluster.frontend import RemoteModel
from pipeline.diffusion.riffusion import SeedImageSizeError
from pipeline.model.geometry import checkpoint_geometry
from pipeline.model.mini import build_mini_unet, build_mini_vae
from pipeline.model.tiny import build_tiny_unet, build_tiny_vae


@pytest.mark.parametrize(("checkpoint", "build_vae", "build_unet"), [
    ("tiny", build_tiny_vae, build_tiny_unet),
    ("mini", build_mini_vae, build_mini_unet),
])
def test_a_front_ends_geometry_is_the_models_own(checkpoint, build_vae, build_unet):
    geometry = RemoteModel.named(checkpoint).pipeline
    assert geometry.scale_factor == 2 ** (len(build_vae().config.block_out_channels) - 1)
    assert geometry.latent_channels == build_unet().config.in_channels
    assert geometry.latent_shape((512, 512))[1:] == (geometry.latent_channels, 512 // geometry.scale_factor,
                                                     512 // geometry.scale_factor)
    with pytest.raises(SeedImageSizeError, match="multiples of"):
        geometry.latent_shape((512 + geometry.scale_factor // 2, 512), "seed image 'odd'")


def test_a_front_end_names_the_workers_model_without_loading_it():
    tiny, mini = RemoteModel.named("tiny"), RemoteModel.named("mini")
    assert tiny.demo and "NO music" in tiny.description and tiny.device == "workers"
    assert not mini.demo and mini.recommended_settings == {"num_inference_steps": 20, "denoising": 0.9}
    assert RemoteModel.named("riffusion/riffusion-model-v1").description is None


def write_configs(directory, vae: dict, unet: dict) -> str:
    for name, config in (("vae", vae), ("unet", unet)):
        (directory / name).mkdir(parents=True, exist_ok=True)
        (directory / name / "config.json").write_text(json.dumps(config))
    return str(directory)


def test_a_local_checkpoint_s_geometry_comes_from_its_config_files(tmp_path):
    """A checkpoint directory whose VAE downsamples 16x and whose UNet takes 8 channels (not SD's 8x and 4): the
    front-end refuses a seed its workers would refuse, and takes one they take, without loading a weight."""
    mini_like = tmp_path / "mini-copy"
    build_mini_vae().save_config(mini_like / "vae")
    build_mini_unet().save_config(mini_like / "unet")
    geometry = RemoteModel.named(str(mini_like)).pipeline
    assert (geometry.scale_factor, geometry.latent_channels) == (
        2 ** (len(build_mini_vae().config.block_out_channels) - 1), build_mini_unet().config.in_channels)
    wide = write_configs(tmp_path / "wide", {"block_out_channels": [32, 64, 128, 128, 256]}, {"in_channels": 8})
    geometry = RemoteModel.named(wide).pipeline
    assert geometry.latent_shape((512, 512)) == (1, 8, 32, 32)
    with pytest.raises(SeedImageSizeError, match="multiples of 16"):
        geometry.latent_shape((520, 512), "seed image 'sd-sized'")  # a multiple of 8 only: fine for SD, not here


def test_a_hub_checkpoint_not_cached_is_taken_as_stable_diffusion_and_a_broken_config_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    assert checkpoint_geometry("riffusion/riffusion-model-v1", cache_dir=str(tmp_path / "empty-cache")) is None
    assert RemoteModel.named("riffusion/riffusion-model-v1").pipeline.scale_factor == 8
    broken = write_configs(tmp_path / "broken", {"block_out_channels": []}, {"in_channels": 4})
    with pytest.raises(ValueError, match="vae/config.json has no block_out_channels"):
        RemoteModel.named(broken)
