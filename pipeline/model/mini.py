"""The built-in ``mini`` model: riffusion's components at small size, trained here on the project's synthesised music.

Same interfaces as riffusion-model-v1 (a 512x512 spectrogram image, an AutoencoderKL, a CLIP text encoder conditioning
a UNet2DConditionModel by cross-attention, a diffusers scheduler), but the VAE downsamples 16x instead of 8x, so the
UNet works on 32x32 latents and a CFG step costs milliseconds on a CPU. The weights are a diffusers directory inside
this package (``pipeline/model/mini/``), loaded through the same code as any local checkpoint.
``scripts/train_mini.py`` reproduces them from scratch; ``docs/MINI_MODEL.md`` is the model card.
"""

from __future__ import annotations

from pathlib import Path

from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from pipeline.model.tiny import small_clip_text_encoder
from pipeline.model.tokenizer import build_offline_clip_tokenizer, whole_word_merges

MINI_CHECKPOINT = "mini"
MINI_DIRECTORY = Path(__file__).resolve().parent / "mini"
MINI_NOTE = "the built-in 'mini' model: small, trained on the project's synthesised music, not riffusion"
# A room's default scheduler steps on mini: 20 x denoising 0.75 = 15 guided UNet calls keep a full clip (image, audio,
# MP3) real-time 3x on one CPU core; riffusion's 50 would take ~2.5x longer (docs/PERFORMANCE.md, "Mini model").
MINI_DEFAULT_STEPS = 20
# And a new room's denoising: at riffusion's 0.75 the seed's drum loop still drowns mini's prompted instrument (the
# judge names the prompt's lead far less often than at 0.9; docs/MINI_MODEL.md, "Metrics").
MINI_DEFAULT_DENOISING = 0.9
# Guided predictions pulled 70% of the way back to the text prediction's spread (pipeline.diffusion.batch): at
# guidance 7 mini otherwise paints loud, static tones where real clips have notes (docs/MINI_MODEL.md,
# "Guidance rescale").
MINI_GUIDANCE_RESCALE = 0.7
LATENT_CHANNELS = 16
LATENT_SIZE = 32
# Thin at full resolution (decode cost grows with pixels x channels^2), wide at the coarse levels, where the
# spectrogram's harmonics and noise textures must be coded (docs/MINI_MODEL.md, "VAE trials").
VAE_CHANNELS = (8, 16, 32, 64, 128)
TEXT_DIM = 64

# SD 1.5's noise schedule, sampled by Euler ancestral steps (fresh noise each step, drawn from the clip's seed). The
# UNet predicts v (as SD 2 does), not the noise: at the noisiest timesteps, where img2img starts and a clip's
# instrument is decided, a noise prediction's small error becomes a large error in the clip, and a small UNet trained
# briefly on noise prediction made clips there worse than a blank guess. With deterministic DDIM steps the seed's
# groove still masked the lead: with the same weights the ancestral sampler's clips follow the prompted lead 90% of
# the time against 71%, and sit closer to real ones (docs/MINI_MODEL.md, "Seeds and sampler").
SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "prediction_type": "v_prediction",
}


def build_mini_vae(
    channels: tuple[int, ...] = VAE_CHANNELS, latent_channels: int = LATENT_CHANNELS,
) -> AutoencoderKL:
    """Five levels: 512x512x3 -> 32x32x16. Fully convolutional (no attention), so it trains on crops."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 5,
        up_block_types=("UpDecoderBlock2D",) * 5,
        block_out_channels=channels,
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=512,
        mid_block_add_attention=False,
    )


def build_mini_unet() -> UNet2DConditionModel:
    """32x32 latents, channels (32, 64, 128); text cross-attention at 16x16 and 8x8, and the caption pooled into the
    timestep embedding, which reaches every ResNet block: instrument and style are properties of the whole clip, and
    through cross-attention alone a model this small had not learned them after 3,200 steps (wrong and right
    captions scored within 0.5% of each other)."""
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        block_out_channels=(32, 64, 128),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=8,
        addition_embed_type="text",
        addition_embed_type_num_heads=4,
    )


def build_mini_text_encoder(vocab_size: int) -> CLIPTextModel:
    """Three layers of width 64: captions are short and their vocabulary small."""
    return small_clip_text_encoder(vocab_size, TEXT_DIM, layers=3, heads=4, intermediate=4 * TEXT_DIM)


def build_mini_tokenizer(directory: Path) -> CLIPTokenizer:
    """The offline CLIP tokenizer plus whole-word merges for every caption word, written into ``directory``."""
    from pipeline.music.captions import vocabulary

    return build_offline_clip_tokenizer(directory, whole_word_merges(vocabulary()))


def build_mini_scheduler() -> EulerAncestralDiscreteScheduler:
    return EulerAncestralDiscreteScheduler(**SCHEDULER_CONFIG)
