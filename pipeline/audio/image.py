"""Mel spectrogram <-> PIL image in the original riffusion format.

Rows are mel bins with low frequencies at the bottom, columns are STFT frames. A pixel is
255 - 255 * (S / max S) ** power, so loud is dark. Mono images repeat the value in R, G and B; stereo
images keep R at zero and put the channels in G and B. EXIF carries the parameters and this image's
max S, which is what makes the decoding exact up to 8-bit quantisation.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import PIL.Image
import torch

from pipeline.audio.dsp import SpectrogramConverter
from pipeline.audio.params import ExifTag, SpectrogramParams


def image_from_mel(mel: torch.Tensor | np.ndarray, params: SpectrogramParams) -> PIL.Image.Image:
    """(channels, num_frequencies, frames) or (num_frequencies, frames) magnitudes -> RGB image."""
    data = _as_numpy_mel(mel)
    if data.shape[0] != params.num_channels:
        raise ValueError(f"mel has {data.shape[0]} channels but params.stereo={params.stereo} expects {params.num_channels}")
    if data.shape[1] != params.num_frequencies:
        raise ValueError(f"mel must have {params.num_frequencies} frequency rows, got {data.shape[1]}")
    max_value = float(data.max())
    scaled = data / max_value if max_value > 0 else np.zeros_like(data)
    pixels = np.rint(255.0 - 255.0 * np.power(scaled, params.power_for_image)).astype(np.uint8)
    pixels = pixels[:, ::-1, :]  # low frequencies at the bottom
    if params.stereo:
        rgb = np.stack([np.zeros_like(pixels[0]), pixels[0], pixels[1]], axis=-1)
    else:
        rgb = np.repeat(pixels[0][..., None], 3, axis=-1)
    image = PIL.Image.fromarray(np.ascontiguousarray(rgb), mode="RGB")
    exif = image.getexif()
    for tag, value in params.to_exif().items():
        exif[tag] = value
    exif[int(ExifTag.MAX_VALUE)] = max_value if max_value > 0 else params.max_value
    # `encoderinfo` makes a plain image.save(...) embed the tags, as the original's files did.
    image.info["exif"] = exif.tobytes()
    image.encoderinfo = {"exif": image.info["exif"]}
    return image


def mel_from_image(
    image: PIL.Image.Image, params: SpectrogramParams | None = None
) -> tuple[torch.Tensor, SpectrogramParams]:
    """RGB image -> ((channels, num_frequencies, width) float32 mel, the params it was made with).

    Params come from the image's EXIF when present, else `params`, else the defaults. Images of
    another height (e.g. from a model at another resolution) are resized to num_frequencies rows.
    """
    if not isinstance(image, PIL.Image.Image):
        raise ValueError(f"image must be a PIL.Image.Image, got {type(image).__name__}")
    exif = image.getexif()
    known = {int(tag) for tag in ExifTag}
    tags = {int(tag): exif[tag] for tag in exif if int(tag) in known}
    params = params or SpectrogramParams()
    image_max = tags.pop(int(ExifTag.MAX_VALUE), None)
    if tags:  # the image's own geometry wins; the caller's max_value stays the fallback
        params = SpectrogramParams.from_exif({**params.to_exif(), **tags, int(ExifTag.MAX_VALUE): params.max_value})
    max_value = _exif_number(image_max, "max value") if image_max is not None else params.max_value
    if not max_value > 0:
        raise ValueError(f"image EXIF max value (tag {int(ExifTag.MAX_VALUE)}) must be positive, got {max_value}")

    rgb = image.convert("RGB")
    if rgb.height != params.num_frequencies:
        rgb = rgb.resize((rgb.width, params.num_frequencies), PIL.Image.Resampling.BICUBIC)
    pixels = np.asarray(rgb, dtype=np.float32)[::-1]  # (rows, width, 3), low frequencies first
    channels = [pixels[..., 1], pixels[..., 2]] if params.stereo else [pixels.mean(axis=-1)]
    darkness = (255.0 - np.stack(channels)) / 255.0
    mel = np.power(np.clip(darkness, 0.0, 1.0), 1.0 / params.power_for_image) * max_value
    return torch.from_numpy(np.ascontiguousarray(mel, dtype=np.float32)), params


def image_from_audio(audio: np.ndarray, params: SpectrogramParams | None = None) -> PIL.Image.Image:
    """(channels, samples) PCM -> image of all full frames (512 columns for 5.12 s)."""
    params = params or SpectrogramParams()
    pcm = np.asarray(audio, dtype=np.float32)
    if pcm.ndim == 1:
        pcm = pcm[None]
    if pcm.ndim != 2 or pcm.shape[0] != params.num_channels:
        raise ValueError(f"audio must be shaped ({params.num_channels}, samples), got {pcm.shape}")
    mel = SpectrogramConverter(params).mel_from_audio(torch.from_numpy(pcm))
    return image_from_mel(mel, params)


def audio_from_image(
    image: PIL.Image.Image,
    params: SpectrogramParams | None = None,
    converter: SpectrogramConverter | None = None,
) -> np.ndarray:
    """Image -> (channels, width * hop) float32 PCM, not loudness-normalised."""
    mel, params = mel_from_image(image, params or (converter.params if converter else None))
    if converter is None or not _same_geometry(converter.params, params):
        converter = SpectrogramConverter(params, device=converter.device if converter else "cpu")
    audio = converter.audio_from_mel(mel)
    return audio.cpu().numpy().astype(np.float32, copy=False)


def _same_geometry(a: SpectrogramParams, b: SpectrogramParams) -> bool:
    """Whether a converter built for `a` can decode mels made with `b` (channels are batched)."""
    keep = {"stereo": b.stereo, "max_value": b.max_value, "power_for_image": b.power_for_image}
    return dataclasses.replace(a, **keep) == dataclasses.replace(b, num_griffin_lim_iters=a.num_griffin_lim_iters)


def _exif_number(value: object, name: str) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"image EXIF {name} is not a number: {value!r}") from None


def _as_numpy_mel(mel: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(mel, torch.Tensor):
        data = mel.detach().to("cpu", torch.float32).numpy()
    elif isinstance(mel, np.ndarray):
        data = mel.astype(np.float32, copy=False)
    else:
        raise ValueError(f"mel must be a torch.Tensor or numpy array, got {type(mel).__name__}")
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise ValueError(f"mel must be shaped (channels, frequencies, frames), got {data.shape}")
    if not np.all(np.isfinite(data)) or data.min() < 0:
        raise ValueError("mel must be finite and non-negative")
    return data
