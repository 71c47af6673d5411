"""Spectrogram parameters shared by the audio core, the image format and the model.

The defaults are the original riffusion ones: a 512x512 image is 5.12 s of 44.1 kHz audio. The same
numbers travel inside every spectrogram PNG as EXIF tags, so an image can be decoded without guessing.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping
from typing import Any


class ExifTag(enum.IntEnum):
    """EXIF tag numbers used by the original image format (kept for compatibility)."""

    SAMPLE_RATE = 11000
    STEREO = 11005
    STEP_SIZE_MS = 11010
    WINDOW_DURATION_MS = 11020
    PADDED_DURATION_MS = 11030
    NUM_FREQUENCIES = 11040
    MIN_FREQUENCY = 11050
    MAX_FREQUENCY = 11060
    POWER_FOR_IMAGE = 11070
    MAX_VALUE = 11080


# Tag -> (field name, type to coerce the stored value to). MAX_VALUE belongs to one image, not the
# params, but `max_value` is the fallback used when an image carries no such tag.
_EXIF_FIELDS: dict[ExifTag, tuple[str, type]] = {
    ExifTag.SAMPLE_RATE: ("sample_rate", int),
    ExifTag.STEREO: ("stereo", bool),
    ExifTag.STEP_SIZE_MS: ("step_size_ms", int),
    ExifTag.WINDOW_DURATION_MS: ("window_duration_ms", int),
    ExifTag.PADDED_DURATION_MS: ("padded_duration_ms", int),
    ExifTag.NUM_FREQUENCIES: ("num_frequencies", int),
    ExifTag.MIN_FREQUENCY: ("min_frequency", int),
    ExifTag.MAX_FREQUENCY: ("max_frequency", int),
    ExifTag.POWER_FOR_IMAGE: ("power_for_image", float),
    ExifTag.MAX_VALUE: ("max_value", float),
}


@dataclasses.dataclass(frozen=True)
class SpectrogramParams:
    """How audio maps to a mel spectrogram and how that spectrogram maps to pixels."""

    stereo: bool = False
    sample_rate: int = 44100
    step_size_ms: int = 10
    window_duration_ms: int = 100
    padded_duration_ms: int = 400
    num_frequencies: int = 512
    min_frequency: int = 0
    max_frequency: int = 10000
    num_griffin_lim_iters: int = 32
    power_for_image: float = 0.25
    max_value: float = 30e6

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            expected = bool if field.name == "stereo" else (int, float)
            is_number = isinstance(value, expected) and (field.name == "stereo" or not isinstance(value, bool))
            _require(is_number, field.name, value, f"must be {'a bool' if expected is bool else 'a number'}")
        _require(self.sample_rate > 0, "sample_rate", self.sample_rate, "must be positive")
        for name in ("step_size_ms", "window_duration_ms", "padded_duration_ms", "num_frequencies"):
            value = getattr(self, name)
            _require(value > 0, name, value, "must be positive")
        _require(
            self.window_duration_ms <= self.padded_duration_ms,
            "window_duration_ms",
            self.window_duration_ms,
            "must be at most padded_duration_ms",
        )
        _require(self.min_frequency >= 0, "min_frequency", self.min_frequency, "must be >= 0")
        _require(
            self.min_frequency < self.max_frequency <= self.sample_rate / 2,
            "max_frequency",
            self.max_frequency,
            "must be above min_frequency and at most sample_rate / 2",
        )
        _require(self.num_griffin_lim_iters >= 0, "num_griffin_lim_iters", self.num_griffin_lim_iters, "must be >= 0")
        for name in ("power_for_image", "max_value"):
            value = getattr(self, name)
            _require(math.isfinite(value) and value > 0, name, value, "must be a positive number")
        _require(self.hop_length >= 1, "step_size_ms", self.step_size_ms, "gives a hop below one sample")

    @property
    def num_channels(self) -> int:
        return 2 if self.stereo else 1

    @property
    def hop_length(self) -> int:
        """STFT hop in samples (441 at the defaults)."""
        return int(round(self.sample_rate * self.step_size_ms / 1000.0))

    @property
    def win_length(self) -> int:
        """Hann window length in samples (4410)."""
        return int(round(self.sample_rate * self.window_duration_ms / 1000.0))

    @property
    def n_fft(self) -> int:
        """FFT size after zero padding the window (17640)."""
        return int(round(self.sample_rate * self.padded_duration_ms / 1000.0))

    def clip_samples(self, width: int = 512) -> int:
        """Samples of audio an image `width` columns wide stands for (512 * 441 by default)."""
        if width < 0:
            raise ValueError(f"width must be >= 0, got {width}")
        return width * self.hop_length

    def to_exif(self) -> dict[int, int | float]:
        """The parameters as EXIF tag -> value, in the original tag numbering."""
        exif: dict[int, int | float] = {}
        for tag, (name, kind) in _EXIF_FIELDS.items():
            value = getattr(self, name)
            exif[int(tag)] = int(value) if kind in (int, bool) else float(value)
        return exif

    @classmethod
    def from_exif(cls, exif: Mapping[int, Any]) -> SpectrogramParams:
        """Parameters from EXIF tags; missing tags keep their defaults, unknown tags are ignored."""
        values: dict[str, Any] = {}
        for tag, (name, kind) in _EXIF_FIELDS.items():
            if int(tag) not in exif:
                continue
            raw = exif[int(tag)]
            try:
                number = float(raw)
            except (TypeError, ValueError):
                raise ValueError(f"EXIF tag {int(tag)} ({name}) is not a number: {raw!r}") from None
            values[name] = bool(number) if kind is bool else (int(round(number)) if kind is int else number)
        return cls(**values)


def _require(condition: bool, name: str, value: Any, reason: str) -> None:
    if not condition:
        raise ValueError(f"SpectrogramParams.{name} {reason}, got {value!r}")
