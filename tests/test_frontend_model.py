"""A front-end loads no weights, yet refuses a seed image the workers' model cannot take, and names that model:
its geometry must be the real model's, or a room would send jobs every worker refuses (or refuse good seeds)."""

from __future__ import annotations

import pytest

from jamserver.cluster.frontend import RemoteModel
from pipeline.diffusion.riffusion import SeedImageSizeError
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
    assert not mini.demo and mini.recommended_steps == 20
    assert RemoteModel.named("riffusion/riffusion-model-v1").description is None
