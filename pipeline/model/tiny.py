"""The built-in ``tiny`` model: riffusion's architecture and geometry at toy size, with fixed random weights.

The real checkpoint cannot be downloaded everywhere (CI, this workplace, a laptop offline), yet the server, the tests
and the benchmarks need a model with the same interfaces: a 512x512 image goes to a 4x64x64 latent with scaling
factor 0.18215, a CLIP text encoder conditions a UNet2DConditionModel through cross-attention, and an SD 1.5-style
PNDM scheduler drives the loop. This one is built from a fixed seed in well under a second and is sized so a whole
50-step clip renders in about a second on a 2-core CPU. It makes no music: its output is structured noise.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from pipeline.diffusion.riffusion import PipelineComponents
from pipeline.model.tokenizer import build_offline_clip_tokenizer

TINY_SEED = 20221215  # riffusion's release date; any fixed value would do
TINY_TEXT_DIM = 32
VAE_SCALING_FACTOR = 0.18215

# SD 1.5's scheduler configuration (what riffusion-model-v1 ships).
SD15_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "skip_prk_steps": True,
    "steps_offset": 1,
    "set_alpha_to_one": False,
}


def build_tiny_unet() -> UNet2DConditionModel:
    """64x64x4 latents, three levels (64, 32, 16); text cross-attention only in the 16x16 middle block.

    Channels (4, 8, 16) and a single attention block keep a step at CFG batch 2 near 19 ms of one CPU core; cross-
    attention in the 16x16 down/up blocks too would cost ~50% more, at 32x32 ~5x more.
    """
    return UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        block_out_channels=(4, 8, 16),
        down_block_types=("DownBlock2D",) * 3,
        up_block_types=("UpBlock2D",) * 3,
        mid_block_type="UNetMidBlock2DCrossAttn",
        layers_per_block=1,
        norm_num_groups=4,
        cross_attention_dim=TINY_TEXT_DIM,
        attention_head_dim=2,
    )


def build_tiny_vae() -> AutoencoderKL:
    """Four blocks give the 8x down/upsampling of SD's VAE; 4-8 channels keep a 512x512 decode under 0.1 s."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(4, 4, 8, 8),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=512,
        scaling_factor=VAE_SCALING_FACTOR,
    )


def small_clip_text_encoder(vocab_size: int, width: int, layers: int, heads: int, intermediate: int) -> CLIPTextModel:
    """A CLIP text transformer of the given size over the offline tokenizer's vocabulary (BOS, EOS = last two ids)."""
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        projection_dim=width,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    return CLIPTextModel(config)


def build_tiny_text_encoder(vocab_size: int) -> CLIPTextModel:
    return small_clip_text_encoder(vocab_size, TINY_TEXT_DIM, layers=2, heads=2, intermediate=64)


def build_tiny_components() -> PipelineComponents:
    """Build the tiny model's components. Deterministic: every call gives bit-identical weights.

    The global torch RNG is left untouched, so building the model never shifts anyone else's random stream.
    """
    with tempfile.TemporaryDirectory(prefix="tiny-tokenizer-") as directory:
        tokenizer = build_offline_clip_tokenizer(Path(directory))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        unet = build_tiny_unet()
        vae = build_tiny_vae()
        text_encoder = build_tiny_text_encoder(len(tokenizer))
    for module in (unet, vae, text_encoder):
        module.eval().requires_grad_(False)
    return PipelineComponents(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=PNDMScheduler(**SD15_SCHEDULER_CONFIG),
    )


def save_tiny_model(directory: str | Path) -> Path:
    """Write the tiny model in diffusers layout (unet/, vae/, text_encoder/, tokenizer/, scheduler/, model_index.json).

    The result loads like any local checkpoint (``load_pipeline(str(directory))``), which is how the checkpoint
    loading paths are tested without a download. No safety checker is written.
    """
    # Imported here: the pipeline module pulls in transformers' image processors (and their "requires
    # torchvision" warnings), which nothing else of the tiny model needs.
    from diffusers import StableDiffusionPipeline

    directory = Path(directory)
    StableDiffusionPipeline(
        **build_tiny_components(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(directory)
    return directory
