"""Rendering a clip: request -> spectrogram image + PCM (+ MP3), the one path every entry point shares.

"Render" means this throughout the project: making a clip's image and sound. `render_clip` does it in the calling
thread (REST through Truss, `jamserver render`, which renders a whole jam clip by clip); `Engine.render` does it
batched with other rooms' clips, splitting it in two (image on the device thread, audio on a DSP thread) but
calling the same functions, so every entry point hears the same sound for the same request.
"""

from __future__ import annotations

import base64
import io
import time
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from pipeline.audio.dsp import SpectrogramConverter
from pipeline.audio.image import mel_from_image
from pipeline.audio.mp3 import encode_clip
from pipeline.diffusion.requests import ClipRequest
from pipeline.diffusion.riffusion import RiffusionPipeline

# The original normalised every clip to about -12 dBFS peak; a lone clip (REST) keeps that level.
ONE_SHOT_PEAK_DBFS = -12.0
# Spectrogram columns looped past the clip's end and resynthesised with it: 80 ms, so the 30 ms the joiner
# crossfades from lies clear of the reconstruction's edge effects in the last half window.
CONTINUATION_COLUMNS = 8


@dataclass(frozen=True)
class RenderedClip:
    """One generated clip: the spectrogram image, its audio and what would follow it, (channels, samples) float32.

    `continuation` is the audio right after the clip's last sample, phase-consistent with it; the stream's
    joiner crossfades the next clip in from it, so seams have no step even when a clip is not a perfect loop.
    """

    image: Image.Image
    audio: np.ndarray
    sample_rate: int
    gen_seconds: float
    continuation: np.ndarray | None = None

    @property
    def duration(self) -> float:
        return self.audio.shape[-1] / self.sample_rate


def spectrogram_audio(
    image: Image.Image, converter: SpectrogramConverter, continuation_columns: int = CONTINUATION_COLUMNS
) -> tuple[np.ndarray, np.ndarray]:
    """Audio of a generated spectrogram image and its continuation, in the converter's parameters.

    The image's first columns are appended after its last (the seed images loop) and the whole is resynthesised
    at once, so the continuation follows the clip's last sample without a discontinuity.
    """
    mel, _ = mel_from_image(image, converter.params)
    looped = torch.cat([mel, mel[..., :continuation_columns]], dim=-1)
    audio = converter.audio_from_mel(looped).cpu().numpy().astype(np.float32)
    clip_samples = mel.shape[-1] * converter.params.hop_length
    return np.ascontiguousarray(audio[..., :clip_samples]), np.ascontiguousarray(audio[..., clip_samples:])


def render_clip(
    pipeline: RiffusionPipeline, converter: SpectrogramConverter, request: ClipRequest
) -> RenderedClip:
    """Generate one clip start to finish in the calling thread."""
    started = time.perf_counter()
    image = pipeline.generate(request)
    audio, continuation = spectrogram_audio(image, converter)
    return RenderedClip(image, audio, converter.params.sample_rate, time.perf_counter() - started, continuation)


def normalize_peak(audio: np.ndarray, peak_dbfs: float = ONE_SHOT_PEAK_DBFS) -> np.ndarray:
    """Scale a lone clip so its peak sits at `peak_dbfs`; silence stays silence."""
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak < 1e-9:
        return audio
    return (audio * (10 ** (peak_dbfs / 20) / peak)).astype(np.float32)


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    """JPEG of a spectrogram image, as the original served and the page draws."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def mp3_bytes(clip: RenderedClip) -> bytes:
    """A lone clip as MP3 at the original's loudness."""
    return encode_clip(normalize_peak(clip.audio), clip.sample_rate)


def data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
