"""MP3 encoding for a continuous stream, split exactly on frame boundaries.

A room's audio is one endless signal, but it is produced clip by clip. Encoding each clip as its own file would put
encoder delay and padding (silence) at every join, so one LAME encoder lives as long as the stream and is never flushed
until the stream ends. LAME hands out bytes in arbitrary pieces; this module cuts them on MPEG frame boundaries so each
chunk can be appended on its own to a browser's Media Source Extensions ``audio/mpeg`` SourceBuffer, and writes no
Xing/Info/ID3 header anywhere, so the concatenation of all chunks is a plain sequence of frames. A stream restarted
mid-way (a cut-in) continues with a second encoder: see mp3_restart.py.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import lameenc
import miniaudio
import numpy as np

__all__ = [
    "DECODED_DELAY_SAMPLES",
    "DECODER_DELAY_SAMPLES",
    "ENCODER_DELAY_SAMPLES",
    "FrameHeader",
    "Mp3StreamEncoder",
    "decode_mp3",
    "decoded_length",
    "encode_clip",
    "is_info_frame",
    "parse_frame_header",
    "split_frames",
]

# Measured with lameenc 1.7 + miniaudio (dr_mp3), identical for every sample rate, bitrate and channel count tried:
# the first input sample comes out of the decoder 1105 samples late (LAME's 576 plus the decoder's 529).
ENCODER_DELAY_SAMPLES = 576
DECODER_DELAY_SAMPLES = 529
DECODED_DELAY_SAMPLES = ENCODER_DELAY_SAMPLES + DECODER_DELAY_SAMPLES
# On flush LAME emits frames until the input plus 1152 samples (its delay and the MDCT look-ahead) are covered.
_FLUSH_TAIL_SAMPLES = 1152

_BITRATES_KBPS = {
    "mpeg1": (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    "mpeg2": (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_SAMPLE_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
_HEADER_BYTES = 4
_LAYER_III = 1


@dataclass(frozen=True)
class FrameHeader:
    """The fields of an MPEG-1/2/2.5 Layer III frame header that decide its length and duration."""

    mpeg_version: float  # 1, 2 or 2.5
    bitrate_kbps: int
    sample_rate: int
    channels: int
    has_crc: bool
    frame_length: int  # bytes, header included

    @property
    def samples_per_frame(self) -> int:
        return 1152 if self.mpeg_version == 1 else 576

    @property
    def duration(self) -> float:
        """Seconds of audio one frame carries."""
        return self.samples_per_frame / self.sample_rate


def parse_frame_header(data: bytes, offset: int = 0) -> FrameHeader | None:
    """Read the Layer III frame header at ``offset``; None if there is no valid one (or fewer than 4 bytes)."""
    if offset < 0 or len(data) - offset < _HEADER_BYTES:
        return None
    b1, b2, b3 = data[offset + 1], data[offset + 2], data[offset + 3]
    if data[offset] != 0xFF or b1 & 0xE0 != 0xE0:
        return None
    version_bits, layer_bits = (b1 >> 3) & 3, (b1 >> 1) & 3
    bitrate_index, rate_index = b2 >> 4, (b2 >> 2) & 3
    if version_bits == 1 or layer_bits != _LAYER_III or bitrate_index in (0, 15) or rate_index == 3:
        return None
    mpeg1 = version_bits == 3
    bitrate = _BITRATES_KBPS["mpeg1" if mpeg1 else "mpeg2"][bitrate_index]
    sample_rate = _SAMPLE_RATES[version_bits][rate_index]
    bytes_per_kbps = 144000 if mpeg1 else 72000
    return FrameHeader(
        mpeg_version={3: 1, 2: 2, 0: 2.5}[version_bits],
        bitrate_kbps=bitrate,
        sample_rate=sample_rate,
        channels=1 if (b3 >> 6) == 3 else 2,
        has_crc=not (b1 & 1),
        frame_length=bytes_per_kbps * bitrate // sample_rate + ((b2 >> 1) & 1),
    )


def _count_whole_frames(data: bytes) -> tuple[int, int]:
    """(bytes, frames) of the whole frames at the start of ``data``; what follows is a frame still being written."""
    offset = frames = 0
    while (header := parse_frame_header(data, offset)) is not None:
        if offset + header.frame_length > len(data):
            break
        offset += header.frame_length
        frames += 1
    if len(data) - offset >= _HEADER_BYTES and parse_frame_header(data, offset) is None:
        raise RuntimeError(f"encoder produced bytes that are not an MPEG frame at offset {offset}")
    return offset, frames


def split_frames(data: bytes) -> list[bytes]:
    """Split a byte string made only of whole Layer III frames into its frames (no tags, no partial frame)."""
    frames: list[bytes] = []
    offset = 0
    while offset < len(data):
        header = parse_frame_header(data, offset)
        if header is None:
            raise ValueError(f"data: no MPEG Layer III frame header at byte {offset}")
        end = offset + header.frame_length
        if end > len(data):
            raise ValueError(f"data: last frame at byte {offset} is cut short ({len(data) - offset} of {header.frame_length} bytes)")
        frames.append(data[offset:end])
        offset = end
    return frames


def is_info_frame(frame: bytes) -> bool:
    """True for a Xing/Info/VBRI metadata frame: it plays as silence and must not appear inside a live stream."""
    header = parse_frame_header(frame)
    if header is None:
        return False
    if header.mpeg_version == 1:
        side_info = 17 if header.channels == 1 else 32
    else:
        side_info = 9 if header.channels == 1 else 17
    start = _HEADER_BYTES + (2 if header.has_crc else 0) + side_info
    return frame[start : start + 4] in (b"Xing", b"Info") or frame[36:40] == b"VBRI"


def decoded_length(samples_fed: int, sample_rate: int = 44100) -> int:
    """Samples per channel a decoder returns for a finished stream fed ``samples_fed`` samples (delay and padding included)."""
    samples_per_frame = 1152 if sample_rate >= 32000 else 576
    return math.ceil((samples_fed + _FLUSH_TAIL_SAMPLES) / samples_per_frame) * samples_per_frame


def _validate_settings(sample_rate: int, channels: int, bitrate_kbps: int) -> None:
    if sample_rate not in {rate for rates in _SAMPLE_RATES.values() for rate in rates}:
        raise ValueError(f"sample_rate: {sample_rate} Hz is not an MP3 sample rate")
    if channels not in (1, 2):
        raise ValueError(f"channels: MP3 carries 1 or 2 channels, got {channels}")
    allowed = _BITRATES_KBPS["mpeg1" if sample_rate >= 32000 else "mpeg2"][1:]
    if bitrate_kbps not in allowed:
        raise ValueError(f"bitrate_kbps: {bitrate_kbps} is not valid at {sample_rate} Hz (choose from {allowed})")


def _to_interleaved_int16(pcm: np.ndarray, channels: int) -> bytes:
    """(channels, samples) floats in [-1, 1] -> little-endian interleaved int16, the layout LAME reads."""
    array = np.asarray(pcm)
    if array.ndim == 1 and channels == 1:
        array = array[np.newaxis, :]
    if array.ndim != 2 or array.shape[0] != channels:
        raise ValueError(f"pcm: expected shape ({channels}, samples), got {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"pcm: expected float samples in [-1, 1], got dtype {array.dtype}")
    if not np.all(np.isfinite(array)):
        raise ValueError("pcm: contains NaN or infinite samples")
    scaled = np.rint(np.clip(array, -1.0, 1.0) * 32767.0).astype("<i2")
    return scaled.T.tobytes()


class Mp3StreamEncoder:
    """One LAME encoder for the whole life of a stream; each ``encode`` returns whole frames only.

    Thread-safe: calls are serialised by a lock, so a worker thread may encode while another reads the counters.
    """

    def __init__(self, sample_rate: int = 44100, channels: int = 1, bitrate_kbps: int = 128, quality: int = 5, *,
                 first_frame: int = 0) -> None:
        """`first_frame`: the stream frame this encoder's first frame stands for (a stream restarted mid-way)."""
        _validate_settings(sample_rate, channels, bitrate_kbps)
        if isinstance(first_frame, bool) or not isinstance(first_frame, int) or first_frame < 0:
            raise ValueError(f"first_frame: must be an integer >= 0, got {first_frame!r}")
        if not 0 <= quality <= 9:
            raise ValueError(f"quality: LAME quality runs from 0 (best) to 9 (fastest), got {quality}")
        self.sample_rate = sample_rate
        self.channels = channels
        self.bitrate_kbps = bitrate_kbps
        self._encoder = lameenc.Encoder()
        self._encoder.set_bit_rate(bitrate_kbps)
        self._encoder.set_in_sample_rate(sample_rate)
        # Without this LAME may resample at low bitrates, and the stream would no longer be at ``sample_rate``.
        self._encoder.set_out_sample_rate(sample_rate)
        self._encoder.set_channels(channels)
        self._encoder.set_quality(quality)
        self._encoder.silence()
        self._pending = b""
        self._lock = threading.Lock()
        self._samples_fed = first_frame * self.samples_per_frame
        self._frames_out = first_frame
        self._finished = False

    @property
    def samples_per_frame(self) -> int:
        return 1152 if self.sample_rate >= 32000 else 576

    @property
    def frame_duration(self) -> float:
        """Seconds of audio in one frame (26.12 ms at 44.1 kHz)."""
        return self.samples_per_frame / self.sample_rate

    @property
    def delay_samples(self) -> int:
        """How late (in samples) the first fed sample appears in the decoded stream."""
        return DECODED_DELAY_SAMPLES

    @property
    def samples_fed(self) -> int:
        """Stream samples fed so far (counted from the stream's start, also for a restarted encoder)."""
        return self._samples_fed

    @property
    def frames_out(self) -> int:
        """Index of the next frame handed out (frames so far, counted from the stream's start); ``frames_out *
        frame_duration`` is the stream time they cover."""
        return self._frames_out

    @property
    def finished(self) -> bool:
        return self._finished

    def encode(self, pcm: np.ndarray) -> bytes:
        """Feed (channels, samples) float PCM; return the whole frames now ready (may be empty)."""
        data = _to_interleaved_int16(pcm, self.channels)
        with self._lock:
            if self._finished:
                raise RuntimeError("encode() called after finish(): start a new Mp3StreamEncoder")
            self._samples_fed += len(data) // (2 * self.channels)
            if data:
                self._pending += bytes(self._encoder.encode(data))
            return self._take_whole_frames()

    def finish(self) -> bytes:
        """Flush the encoder at the end of the stream and return the last frames."""
        with self._lock:
            if self._finished:
                return b""
            self._finished = True
            self._pending += bytes(self._encoder.flush())
            chunk = self._take_whole_frames()
            if self._pending:
                raise RuntimeError(f"encoder ended with {len(self._pending)} bytes that are not a whole frame")
            return chunk

    def _take_whole_frames(self) -> bytes:
        cut, frames = _count_whole_frames(self._pending)
        chunk, self._pending = self._pending[:cut], self._pending[cut:]
        self._frames_out += frames
        return chunk


def encode_clip(pcm: np.ndarray, sample_rate: int = 44100, bitrate_kbps: int = 128) -> bytes:
    """Encode one self-contained clip (a whole MP3 file), e.g. for the REST API's ``audio`` data URL."""
    channels = int(np.asarray(pcm).shape[0]) if np.ndim(pcm) == 2 else 1
    encoder = Mp3StreamEncoder(sample_rate=sample_rate, channels=channels, bitrate_kbps=bitrate_kbps)
    return encoder.encode(pcm) + encoder.finish()


def decode_mp3(data: bytes, sample_rate: int = 44100, channels: int = 1) -> np.ndarray:
    """Decode MP3 bytes to (channels, samples) float32, converting rate/channels if the file differs."""
    if not data:
        raise ValueError("data: empty, nothing to decode")
    if channels not in (1, 2):
        raise ValueError(f"channels: expected 1 or 2, got {channels}")
    try:
        decoded = miniaudio.decode(
            bytes(data), output_format=miniaudio.SampleFormat.FLOAT32, nchannels=channels, sample_rate=sample_rate
        )
    except miniaudio.DecodeError as error:
        raise ValueError(f"data: not decodable as MP3 ({error})") from error
    interleaved = np.frombuffer(decoded.samples, dtype=np.float32)
    return np.ascontiguousarray(interleaved.reshape(-1, channels).T)
