"""A user's audio or spectrogram -> a seed loop: 5.12 s on the beat grid, as a riffusion image with its tempo.

Audio: find the tempo and beats, cut a whole number of beats (the number nearest 5.12 s) starting on a beat,
and time-stretch it to exactly 5.12 s (WSOLA, pitch kept), so the seed loops on its own beat grid. Audio shorter
than that many beats is looped on its whole beats first. The stretch is at most half a beat over 5.12 s (under 12 %
at the slowest tempo, 55 BPM; a few percent above 100 BPM); the seed's tempo is then ``beats * 60 / 5.12``. Audio without a steady beat is not
stretched: its first 5.12 s are cut, or it is padded with silence to 5.12 s when shorter (``fit`` says which).

Spectrogram PNG: accepted when it is 512x512 and its EXIF parameters are the server's (sample rate, hop, window,
FFT size, mel bins, frequency range); its tempo is found by decoding it and analysing it as a loop.
"""

from __future__ import annotations

import dataclasses
import functools
import io
from typing import Any, Literal

import numpy as np
import PIL.Image
import torch

from pipeline.audio.audio_io import resample
from pipeline.audio.dsp import SpectrogramConverter
from pipeline.audio.image import audio_from_image, image_from_mel
from pipeline.audio.params import ExifTag, SpectrogramParams
from pipeline.loops.decode import UnusableUpload, decode_audio, sniff
from pipeline.loops.stretch import time_stretch
from pipeline.loops.tempo import MAX_BPM, MIN_BPM, estimate_tempo

LOOP_COLUMNS = 512
SILENCE_PEAK = 1e-4  # -80 dBFS: quieter than this is silence
MIN_CONFIDENCE = 0.1  # a weaker beat than this (autocorrelation at the period) is "no steady beat"
PEAK_LEVEL = 0.9  # seeds are normalised to this peak, like the shipped ones
FADE_SECONDS = 0.002  # at the loop's ends, so the wrap does not click
_GEOMETRY = ("sample_rate", "step_size_ms", "window_duration_ms", "padded_duration_ms", "num_frequencies",
             "min_frequency", "max_frequency")

Fit = Literal["stretched", "cut", "padded", "as-is"]


@dataclasses.dataclass(frozen=True)
class SeedLoop:
    """A prepared seed: the image to store, its tempo (None without a steady beat) and how it was made."""

    image: PIL.Image.Image
    bpm: float | None
    beats: int | None
    source_format: str
    source_seconds: float
    source_bpm: float | None
    fit: Fit
    stretch: float  # output length / input length of the cut (1.0 when not stretched)

    def describe(self) -> str:
        """One line for the seed index."""
        tempo = "no steady beat" if self.bpm is None else f"{self.beats} beats at {self.bpm:.1f} BPM"
        return f"Uploaded {self.source_format.upper()} loop, {tempo} ({self.fit})"

    def source(self) -> dict[str, Any]:
        """What the seed was made from and how, as stored in the index and answered to the uploader."""
        return {"format": self.source_format, "seconds": round(self.source_seconds, 3),
                "bpm": None if self.source_bpm is None else round(self.source_bpm, 3), "fit": self.fit,
                "stretch": round(self.stretch, 4)}

    def png_bytes(self) -> bytes:
        """The image as PNG with its EXIF parameters (what the seed store keeps)."""
        buffer = io.BytesIO()
        self.image.save(buffer, format="PNG", exif=self.image.getexif())
        return buffer.getvalue()


def seed_from_upload(data: bytes, params: SpectrogramParams | None = None) -> SeedLoop:
    """Any accepted upload (audio or riffusion PNG) -> a seed loop, or ``UnusableUpload`` saying why not."""
    params = params or SpectrogramParams()
    if not data:
        raise UnusableUpload("empty", "the upload is empty")
    kind = sniff(data)
    if kind is None:
        raise UnusableUpload("unsupported_format", "the content is not WAV, FLAC, Ogg/Vorbis, MP3 or a riffusion "
                                                   "PNG (the format is read from the bytes, not the name)", 415)
    if kind == "png":
        return seed_from_png(data, params)
    decoded = decode_audio(data, kind)
    return seed_from_audio(decoded.pcm, decoded.sample_rate, params, source_format=kind)


def seed_from_audio(pcm: np.ndarray, sample_rate: int, params: SpectrogramParams | None = None, *,
                    source_format: str = "pcm") -> SeedLoop:
    """(channels, samples) or (samples,) PCM -> a 5.12 s seed loop on its beat grid."""
    params = params or SpectrogramParams()
    mono = np.asarray(pcm, dtype=np.float32)
    mono = mono.mean(axis=0) if mono.ndim == 2 else mono
    seconds = mono.size / sample_rate
    if mono.size == 0:
        raise UnusableUpload("empty", "the upload holds no audio")
    if float(np.max(np.abs(mono))) < SILENCE_PEAK:
        raise UnusableUpload("silent", "the audio is silent (its peak is below -80 dBFS)")
    if seconds < 60.0 / MAX_BPM:
        raise UnusableUpload("too_short", f"the audio is {seconds:.2f} s long, shorter than one beat at any tempo "
                                          f"up to {MAX_BPM:g} BPM")
    loop_samples = params.clip_samples(LOOP_COLUMNS)
    loop_seconds = loop_samples / params.sample_rate
    try:
        tempo = estimate_tempo(mono, sample_rate)
    except ValueError:
        tempo = None
    if tempo is None or tempo.confidence < MIN_CONFIDENCE or len(tempo.beats) < 2:
        if seconds < 60.0 / MIN_BPM:
            raise UnusableUpload("too_short", f"the audio is {seconds:.2f} s long, shorter than one beat at "
                                              f"{MIN_BPM:g} BPM, and holds no beat to measure")
        audio, fit = _without_beat(mono, sample_rate, params, loop_samples)
        return _finish(audio, params, None, None, source_format, seconds, None, fit, 1.0)
    period = tempo.period
    start = float(tempo.beats[0])
    if seconds - start < period:
        raise UnusableUpload("too_short", f"the audio holds less than one beat ({seconds:.2f} s, and a beat at "
                                          f"{tempo.bpm:.1f} BPM lasts {period:.2f} s)")
    cut, beats = _whole_beats(mono, sample_rate, start, period, loop_seconds)
    native = time_stretch(cut, int(round(loop_seconds * sample_rate)), sample_rate)
    audio = _exact_length(resample(native[None], sample_rate, params.sample_rate)[0], loop_samples)
    stretch = loop_seconds / (cut.size / sample_rate)
    return _finish(audio, params, beats * 60.0 / loop_seconds, beats, source_format, seconds, tempo.bpm,
                   "stretched", stretch)


def _whole_beats(mono: np.ndarray, rate: int, start: float, period: float, loop_seconds: float) -> tuple[np.ndarray, int]:
    """From ``start``, the whole number of beats nearest ``loop_seconds``, and that number. Shorter audio is looped
    on its whole beats first (the joins fall on beats, so they keep the grid)."""
    wanted = max(1, round(loop_seconds / period))
    first = round(start * rate)
    available = int((mono.size / rate - start) // period)
    if available >= wanted:
        return mono[first : first + round(wanted * period * rate)], wanted
    one = mono[first : first + round(available * period * rate)]
    looped = np.tile(one, -(-wanted // available))
    return looped[: round(wanted * period * rate)], wanted


def _without_beat(mono: np.ndarray, rate: int, params: SpectrogramParams, loop_samples: int) -> tuple[np.ndarray, Fit]:
    """No steady beat: the first 5.12 s from the first sound, or all of it padded with silence."""
    loud = np.flatnonzero(np.abs(mono) >= SILENCE_PEAK)
    excerpt = mono[loud[0] : loud[0] + int(np.ceil(loop_samples * rate / params.sample_rate)) + 1]
    audio = resample(excerpt[None], rate, params.sample_rate)[0]
    fit: Fit = "cut" if audio.size >= loop_samples else "padded"
    return _exact_length(audio, loop_samples), fit


def _exact_length(audio: np.ndarray, samples: int) -> np.ndarray:
    return np.pad(audio[:samples], (0, max(0, samples - audio.size))).astype(np.float32)


def _finish(audio: np.ndarray, params: SpectrogramParams, bpm: float | None, beats: int | None, source_format: str,
            seconds: float, source_bpm: float | None, fit: Fit, stretch: float) -> SeedLoop:
    fade = max(1, int(FADE_SECONDS * params.sample_rate))
    ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
    audio = audio.copy()
    audio[:fade] *= ramp
    audio[-fade:] *= ramp[::-1]
    peak = float(np.max(np.abs(audio)))
    audio = audio * (PEAK_LEVEL / peak) if peak > 0 else audio
    mono = dataclasses.replace(params, stereo=False)
    image = image_from_mel(_converter(mono).mel_from_audio(torch.from_numpy(audio[None])), mono)
    return SeedLoop(image, bpm, beats, source_format, seconds, source_bpm, fit, stretch)


def seed_from_png(data: bytes, params: SpectrogramParams | None = None) -> SeedLoop:
    """A riffusion spectrogram PNG -> a seed loop, after checking its size and EXIF spectrogram parameters."""
    params = params or SpectrogramParams()
    try:
        with PIL.Image.open(io.BytesIO(data), formats=["PNG"]) as opened:
            opened.load()
            exif = opened.getexif()
            image = opened.convert("RGB")
    except Exception as error:  # PIL raises many types for corrupt files
        raise UnusableUpload("undecodable", f"the PNG cannot be decoded ({str(error)[:200]})") from None
    if image.size != (LOOP_COLUMNS, params.num_frequencies):
        raise UnusableUpload("bad_image", f"a seed image must be {LOOP_COLUMNS}x{params.num_frequencies} pixels, "
                                          f"this one is {image.size[0]}x{image.size[1]}")
    image_params = _checked_exif(exif, params)
    image.info["exif"] = exif.tobytes()
    pcm = audio_from_image(image, image_params, _converter(image_params))
    if float(np.max(np.abs(pcm))) < SILENCE_PEAK:
        raise UnusableUpload("silent", "the spectrogram is silent (an all-white image)")
    try:
        tempo = estimate_tempo(pcm, image_params.sample_rate, loop=True)
        bpm, beats = tempo.bpm, len(tempo.beats)
    except ValueError:
        bpm, beats = None, None
    seconds = LOOP_COLUMNS * image_params.hop_length / image_params.sample_rate
    return SeedLoop(image, bpm, beats, "png", seconds, bpm, "as-is", 1.0)


@functools.lru_cache(maxsize=4)
def _converter(params: SpectrogramParams) -> SpectrogramConverter:
    """Building a converter costs ~1 s (mel bank, inverse); uploads share one per geometry."""
    return SpectrogramConverter(params)


def _checked_exif(exif: PIL.Image.Exif, params: SpectrogramParams) -> SpectrogramParams:
    """The image's parameters, refused unless present and equal to the server's geometry."""
    tags = {int(tag): exif[tag] for tag in exif if int(tag) in {int(t) for t in ExifTag}}
    if int(ExifTag.SAMPLE_RATE) not in tags:
        raise UnusableUpload("bad_image", "the PNG carries no riffusion spectrogram parameters (EXIF tags 11000-11080)")
    try:
        image_params = SpectrogramParams.from_exif({**params.to_exif(), **tags})
    except ValueError as error:
        raise UnusableUpload("bad_image", f"the PNG's spectrogram parameters are invalid: {error}") from None
    for name in _GEOMETRY:
        if getattr(image_params, name) != getattr(params, name):
            raise UnusableUpload("bad_image", f"the PNG's spectrogram {name.replace('_', ' ')} is "
                                              f"{getattr(image_params, name)}, the server's is {getattr(params, name)}")
    return image_params
