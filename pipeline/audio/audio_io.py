"""Reading and writing audio files as (channels, samples) float32 PCM.

WAV/FLAC/OGG go through soundfile, MP3 through miniaudio (decode) and lameenc (encode). Any failure
to read becomes an `AudioFileError` whose message names the file, so command lines can print one line.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

MP3_BITRATE_KBPS = 192


class AudioFileError(Exception):
    """An audio file could not be read or written; the message names the file."""


def read_audio(path: str | os.PathLike[str], sample_rate: int = 44100, channels: int = 1) -> np.ndarray:
    """The whole file as (channels, samples) float32 in [-1, 1] at `sample_rate`."""
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, got {channels}")
    path = Path(path)
    try:
        if path.suffix.lower() == ".mp3":
            audio, file_rate = _decode_mp3(path)
        else:
            audio, file_rate = _decode_soundfile(path)
    except FileNotFoundError:
        raise AudioFileError(f"{path}: no such file") from None
    except AudioFileError:
        raise
    except Exception as error:  # decoders raise many unrelated types for corrupt input
        raise AudioFileError(f"{path}: cannot decode audio ({_first_line(error)})") from None
    if audio.shape[1] == 0:
        raise AudioFileError(f"{path}: contains no audio")
    return resample(_mix_to(audio, channels), file_rate, sample_rate)


def write_audio(path: str | os.PathLike[str], audio: np.ndarray, sample_rate: int) -> None:
    """Write (channels, samples) float PCM; the extension picks the format (.wav, .flac, .mp3)."""
    path = Path(path)
    pcm = np.asarray(audio, dtype=np.float32)
    if pcm.ndim == 1:
        pcm = pcm[None]
    if pcm.ndim != 2 or pcm.shape[0] not in (1, 2):
        raise ValueError(f"audio must be shaped (channels, samples) with 1 or 2 channels, got {pcm.shape}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    pcm = np.clip(pcm, -1.0, 1.0)
    try:
        if path.suffix.lower() == ".mp3":
            path.write_bytes(_encode_mp3(pcm, sample_rate))
        else:
            import soundfile

            soundfile.write(str(path), pcm.T, sample_rate)
    except (OSError, RuntimeError, TypeError, ValueError) as error:
        raise AudioFileError(f"{path}: cannot write audio ({_first_line(error)})") from None


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Band-limited resampling of (channels, samples) by FFT (exact for periodic signals, fine for clips)."""
    if from_rate == to_rate:
        return audio.astype(np.float32, copy=False)
    samples = audio.shape[1]
    target = max(1, int(round(samples * to_rate / from_rate)))
    spectrum = np.fft.rfft(audio, axis=1)
    kept = min(spectrum.shape[1], target // 2 + 1)
    resized = np.zeros((audio.shape[0], target // 2 + 1), dtype=spectrum.dtype)
    resized[:, :kept] = spectrum[:, :kept]
    if target % 2 == 0 and kept == target // 2 + 1:
        resized[:, -1] = resized[:, -1].real  # Nyquist bin of the shorter signal must be real
    return (np.fft.irfft(resized, n=target, axis=1) * (target / samples)).astype(np.float32)


def _decode_soundfile(path: Path) -> tuple[np.ndarray, int]:
    import soundfile

    data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    return data.T, int(rate)


def _decode_mp3(path: Path) -> tuple[np.ndarray, int]:
    import miniaudio

    decoded = miniaudio.decode_file(str(path), output_format=miniaudio.SampleFormat.FLOAT32)
    interleaved = np.frombuffer(decoded.samples, dtype=np.float32)
    return interleaved.reshape(-1, decoded.nchannels).T.copy(), int(decoded.sample_rate)


def _encode_mp3(pcm: np.ndarray, sample_rate: int) -> bytes:
    import lameenc

    encoder = lameenc.Encoder()
    encoder.set_bit_rate(MP3_BITRATE_KBPS)
    encoder.set_in_sample_rate(sample_rate)
    encoder.set_channels(pcm.shape[0])
    encoder.set_quality(2)
    interleaved = (pcm.T * 32767.0).round().astype("<i2").tobytes()
    return bytes(encoder.encode(interleaved) + encoder.flush())


def _mix_to(audio: np.ndarray, channels: int) -> np.ndarray:
    if audio.shape[0] == channels:
        return audio
    if channels == 1:
        return audio.mean(axis=0, keepdims=True)
    return np.repeat(audio[:1], 2, axis=0) if audio.shape[0] == 1 else audio[:2]


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__

