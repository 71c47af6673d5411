import io

import numpy as np
import PIL.Image
import pytest
import torch

from pipeline.audio.dsp import SpectrogramConverter
from pipeline.audio.image import audio_from_image, image_from_audio, image_from_mel, mel_from_image
from pipeline.audio.params import SpectrogramParams


def saved_and_reopened(image: PIL.Image.Image, fmt: str = "PNG") -> PIL.Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    buffer.seek(0)
    return PIL.Image.open(buffer)


def random_mel(channels: int = 1, frames: int = 512, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(channels, 512, frames, generator=generator) ** 4 * 2e6


def test_pixels_follow_the_original_formula_with_low_frequencies_at_the_bottom():
    mel = torch.zeros(1, 512, 4)
    mel[0, 0, 0] = 16.0  # loudest cell: lowest mel row, first frame
    mel[0, 511, 1] = 1.0  # (1/16) ** 0.25 = 0.5 of the max
    pixels = np.asarray(image_from_mel(mel, SpectrogramParams()))
    assert pixels.shape == (512, 4, 3) and pixels.dtype == np.uint8
    assert tuple(pixels[511, 0]) == (0, 0, 0)  # bottom row is black (loud)
    assert tuple(pixels[0, 1]) == (128, 128, 128)  # 255 - 255 * 0.5 = 127.5 -> 128
    assert pixels[100, 2, 0] == 255  # silence is white


def test_mel_image_mel_round_trip_error_is_within_8_bit_quantisation():
    mel = random_mel()
    decoded, params = mel_from_image(saved_and_reopened(image_from_mel(mel, SpectrogramParams())))
    assert params == SpectrogramParams()
    assert decoded.shape == (1, 512, 512)
    assert float((decoded - mel).norm() / mel.norm()) < 0.01


def test_exif_round_trip_carries_params_and_this_images_max():
    params = SpectrogramParams(max_frequency=9000, power_for_image=0.5)
    mel = random_mel()
    image = saved_and_reopened(image_from_mel(mel, params))
    exif = image.getexif()
    assert exif[11060] == 9000 and exif[11070] == pytest.approx(0.5)
    assert exif[11080] == pytest.approx(float(mel.max()), rel=1e-6)
    decoded, decoded_params = mel_from_image(image)
    assert decoded_params == params  # params from EXIF win over the default fallback
    assert float(decoded.max()) == pytest.approx(float(mel.max()), rel=1e-6)


def test_image_without_exif_uses_the_fixed_max_value():
    plain = PIL.Image.fromarray(np.full((512, 8, 3), 0, dtype=np.uint8))  # all black = max everywhere
    decoded, params = mel_from_image(plain, SpectrogramParams(max_value=1234.0))
    assert params.max_value == 1234.0
    torch.testing.assert_close(decoded, torch.full((1, 512, 8), 1234.0))


def test_stereo_puts_channels_in_green_and_blue():
    params = SpectrogramParams(stereo=True)
    mel = random_mel(channels=2, frames=64)
    mel[1] *= 0.1
    image = saved_and_reopened(image_from_mel(mel, params))
    pixels = np.asarray(image)
    assert pixels[..., 0].max() == 0
    assert pixels[..., 2].mean() > pixels[..., 1].mean()  # quieter channel is lighter
    decoded, decoded_params = mel_from_image(image)
    assert decoded_params.stereo and decoded.shape == (2, 512, 64)
    assert float((decoded - mel).norm() / mel.norm()) < 0.01


def test_other_heights_are_resized_and_bad_inputs_rejected():
    tall = PIL.Image.fromarray(np.full((1024, 32, 3), 128, dtype=np.uint8))
    decoded, _ = mel_from_image(tall)
    assert decoded.shape == (1, 512, 32)
    with pytest.raises(ValueError, match="channels"):
        image_from_mel(random_mel(channels=2), SpectrogramParams())
    with pytest.raises(ValueError, match="non-negative"):
        image_from_mel(-random_mel(), SpectrogramParams())
    with pytest.raises(ValueError, match="image"):
        mel_from_image(np.zeros((512, 512, 3)))


def test_audio_image_audio_keeps_the_mel_spectrogram():
    t = np.arange(512 * 441) / 44100
    tone = 0.3 * np.sin(2 * np.pi * 440 * t) * (1 + np.sin(2 * np.pi * 2 * t)) / 2
    audio = np.stack([tone]).astype(np.float32)
    image = saved_and_reopened(image_from_audio(audio))
    assert image.size == (512, 512)
    converter = SpectrogramConverter(SpectrogramParams())
    decoded = audio_from_image(image, converter=converter)
    assert decoded.shape == (1, 512 * 441) and decoded.dtype == np.float32
    target = converter.mel_from_audio(torch.from_numpy(audio))
    mel = converter.mel_from_audio(torch.from_numpy(decoded))
    gain = (mel * target).sum() / (mel * mel).sum()
    assert float((gain * mel - target).norm() / target.norm()) < 0.1
    assert float(gain) == pytest.approx(1.0, rel=0.1)  # EXIF max value restores the loudness
