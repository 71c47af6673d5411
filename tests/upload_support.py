"""Uploads for the tests: a drum loop at a known tempo encoded as each accepted format, and broken variants."""

from __future__ import annotations

import io

import numpy as np
import soundfile

from tests.test_tempo import RATE, drum_loop


def encode(audio: np.ndarray, kind: str, rate: int = RATE) -> bytes:
    """(samples,) float audio as the bytes of a WAV, FLAC, OGG (Vorbis) or MP3 file."""
    if kind == "mp3":
        import lameenc

        encoder = lameenc.Encoder()
        encoder.set_bit_rate(192)
        encoder.set_in_sample_rate(rate)
        encoder.set_channels(1)
        encoder.set_quality(2)
        pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
        return bytes(encoder.encode(pcm) + encoder.flush())
    buffer = io.BytesIO()
    soundfile.write(buffer, audio, rate, format={"wav": "WAV", "flac": "FLAC", "ogg": "OGG"}[kind],
                    subtype="VORBIS" if kind == "ogg" else None)
    return buffer.getvalue()


def loop_upload(bpm: float = 120.0, kind: str = "wav", seconds: float = 8.0, seed: int = 0) -> bytes:
    return encode(drum_loop(bpm, seconds=seconds, seed=seed), kind)
