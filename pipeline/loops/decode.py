"""Uploaded bytes -> PCM: the format is sniffed from the content (never the file name or a Content-Type).

WAV, FLAC and Ogg/Vorbis decode through soundfile, MP3 through miniaudio; a PNG is recognised so the caller can
treat it as a spectrogram image. Lengths are read from the headers first, so a file longer than the limit is
refused before it is decoded. Every refusal is an ``UnusableUpload`` naming the problem.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np

MAX_SECONDS = 600.0  # ten minutes
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
AUDIO_FORMATS = ("wav", "flac", "ogg", "mp3")


class UnusableUpload(ValueError):
    """An upload that cannot become a seed. ``problem`` is a short code, ``status`` the HTTP status to answer."""

    def __init__(self, problem: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.problem = problem
        self.status = status


@dataclasses.dataclass(frozen=True)
class DecodedAudio:
    pcm: np.ndarray  # (channels, samples) float32 in [-1, 1]
    sample_rate: int
    format: str

    @property
    def seconds(self) -> float:
        return self.pcm.shape[1] / self.sample_rate


def sniff(data: bytes) -> str | None:
    """'wav', 'flac', 'ogg', 'mp3', 'png' from the first bytes, or None when none of them."""
    head = data[:64]
    if head.startswith(PNG_SIGNATURE):
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:3] == b"ID3" or _is_mp3_frame(head):
        return "mp3"
    return None


def _is_mp3_frame(head: bytes) -> bool:
    """An MPEG audio Layer III frame header: 11 sync bits, a valid version, layer III, a valid bit rate."""
    if len(head) < 4 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return False
    version, layer, bitrate = (head[1] >> 3) & 0x3, (head[1] >> 1) & 0x3, head[2] >> 4
    return version != 1 and layer == 1 and bitrate not in (0, 15)


def decode_audio(data: bytes, kind: str, max_seconds: float = MAX_SECONDS) -> DecodedAudio:
    """Decode sniffed audio bytes; refuse empty, undecodable and too long ones."""
    if kind not in AUDIO_FORMATS:
        raise UnusableUpload("unsupported_format", f"{kind} is not an audio format this server decodes", 415)
    if kind == "ogg" and b"\x01vorbis" not in data[:512]:
        raise UnusableUpload("unsupported_format", "only Ogg files holding Vorbis audio are accepted", 415)
    try:
        frames, rate = _mp3_length(data) if kind == "mp3" else _soundfile_length(data)
    except Exception as error:  # decoders raise many unrelated types for corrupt input
        raise UnusableUpload("undecodable", f"the {kind} data cannot be decoded ({_first_line(error)})") from None
    if rate > 0 and frames / rate > max_seconds:
        raise UnusableUpload("too_long", f"the audio is {frames / rate:.0f} s long; at most {max_seconds:.0f} s "
                                         f"({max_seconds / 60:g} minutes) are accepted")
    try:
        pcm, rate = _decode_mp3(data) if kind == "mp3" else _decode_soundfile(data)
    except Exception as error:
        raise UnusableUpload("undecodable", f"the {kind} data cannot be decoded ({_first_line(error)})") from None
    if pcm.shape[1] == 0 or rate <= 0:
        raise UnusableUpload("empty", f"the {kind} file holds no audio")
    if not np.all(np.isfinite(pcm)):
        raise UnusableUpload("undecodable", f"the {kind} data decodes to non-finite samples")
    if pcm.shape[1] / rate > max_seconds:  # headers can understate (e.g. a VBR MP3 without a length tag)
        raise UnusableUpload("too_long", f"the audio is {pcm.shape[1] / rate:.0f} s long; at most "
                                         f"{max_seconds:.0f} s are accepted")
    return DecodedAudio(pcm, rate, kind)


def _soundfile_length(data: bytes) -> tuple[int, int]:
    import soundfile

    info = soundfile.info(io.BytesIO(data))
    return int(info.frames), int(info.samplerate)


def _decode_soundfile(data: bytes) -> tuple[np.ndarray, int]:
    import soundfile

    pcm, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return np.ascontiguousarray(pcm.T), int(rate)


def _mp3_length(data: bytes) -> tuple[int, int]:
    import miniaudio

    info = miniaudio.mp3_get_info(data)
    return int(info.num_frames), int(info.sample_rate)


def _decode_mp3(data: bytes) -> tuple[np.ndarray, int]:
    import miniaudio

    decoded = miniaudio.decode(data, output_format=miniaudio.SampleFormat.FLOAT32)
    interleaved = np.frombuffer(decoded.samples, dtype=np.float32)
    return interleaved.reshape(-1, decoded.nchannels).T.copy(), int(decoded.sample_rate)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__
