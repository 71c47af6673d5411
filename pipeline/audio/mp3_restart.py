"""Restarting a continuous MP3 stream at a frame boundary, so a decoder goes on from the old frames into the new.

A cut-in replaces a room's audio from a time T on. The room's encoder has already encoded (and sent) frames past T,
and LAME's state cannot be rewound, so a second encoder takes over at a frame F just before T. It is fed a few frames
of the audio before F first (pre-roll: LAME's look-ahead, psychoacoustic state and MDCT overlap then match the first
encoder's), and those frames are dropped. Its first kept frame is rewritten not to use the bit reservoir:

A Layer III frame's audio data may begin up to 511 bytes *before* the frame, in the spare room of earlier frames
(`main_data_begin` in its side info). A stream restarted at frame F by a second encoder cannot be spliced onto the
first encoder's frames as is: a decoder that played the first encoder's frame F-1 would read the borrowed bytes from
the wrong stream. `self_contained` rewrites frame F so it borrows nothing: its own audio data moves into the frame,
which becomes as long as a higher bitrate allows (bitrate may change from frame to frame), and the bytes the
following frames borrow from it stay at its end, where they expect them.
"""

from __future__ import annotations

import numpy as np

from pipeline.audio.mp3 import (
    FrameHeader,
    Mp3StreamEncoder,
    parse_frame_header,
    split_frames,
)

__all__ = ["PREROLL_FRAMES", "main_data_begin", "main_data_bytes", "restarted_encoder", "self_contained"]

# Pre-roll measured on drum loops: with 8 frames the restarted stream decodes as close to the signal as one
# continuous encoding does; with 1-4 the first frames after F were audibly worse.
PREROLL_FRAMES = 8

_HEADER_BYTES = 4
_BITRATES_KBPS = {
    1: (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    2: (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}


class _Bits:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._position = 0

    def read(self, count: int) -> int:
        value = 0
        for _ in range(count):
            byte = self._data[self._position >> 3]
            value = (value << 1) | ((byte >> (7 - (self._position & 7))) & 1)
            self._position += 1
        return value


def _parsed(frame: bytes) -> FrameHeader:
    header = parse_frame_header(frame)
    if header is None or len(frame) != header.frame_length:
        raise ValueError("frame: not one whole MPEG Layer III frame")
    if header.has_crc:
        raise ValueError("frame: frames with a CRC are not supported")
    return header


def _side_info_bytes(header: FrameHeader) -> int:
    if header.mpeg_version == 1:
        return 17 if header.channels == 1 else 32
    return 9 if header.channels == 1 else 17


def main_data_begin(frame: bytes) -> int:
    """Bytes of this frame's audio data that lie in the frames before it."""
    header = _parsed(frame)
    bits = _Bits(frame[_HEADER_BYTES:])
    return bits.read(9 if header.mpeg_version == 1 else 8)


def main_data_bytes(frame: bytes) -> int:
    """Length of this frame's own audio data (scale factors + Huffman data of every granule and channel)."""
    header = _parsed(frame)
    mpeg1, channels = header.mpeg_version == 1, header.channels
    bits = _Bits(frame[_HEADER_BYTES:])
    if mpeg1:
        bits.read(9 + (5 if channels == 1 else 3) + 4 * channels)  # main_data_begin, private bits, scfsi
    else:
        bits.read(8 + (1 if channels == 1 else 2))
    total = 0
    for _granule in range(2 if mpeg1 else 1):
        for _channel in range(channels):
            total += bits.read(12)  # part2_3_length
            bits.read(47 if mpeg1 else 51)  # the rest of this granule/channel's side info
    return (total + 7) // 8


def self_contained(before: list[bytes], frame: bytes) -> bytes:
    """`frame` rewritten to borrow nothing from `before` (the frames that preceded it from the same encoder)."""
    header = _parsed(frame)
    side = _side_info_bytes(header)
    borrowed = main_data_begin(frame)
    if borrowed == 0:
        return frame
    reservoir = b"".join(f[_HEADER_BYTES + _side_info_bytes(_parsed(f)):] for f in before)
    if len(reservoir) < borrowed:
        raise ValueError(f"before: the frame borrows {borrowed} bytes, the frames before it hold {len(reservoir)}")
    data = reservoir[len(reservoir) - borrowed:] + frame[_HEADER_BYTES + side:]
    own = main_data_bytes(frame)
    needed = _HEADER_BYTES + side + len(data)
    bitrate_index, padding, length = _smallest_frame_of(header, needed)
    head = bytearray(frame[:_HEADER_BYTES])
    head[2] = (bitrate_index << 4) | (padding << 1) | (head[2] & 0x0D)
    side_info = bytearray(frame[_HEADER_BYTES:_HEADER_BYTES + side])
    if header.mpeg_version == 1:  # main_data_begin := 0 (9 bits, MPEG-1; 8 bits otherwise)
        side_info[0], side_info[1] = 0, side_info[1] & 0x7F
    else:
        side_info[0] = 0
    filler = bytes(length - needed)  # ancillary bytes between this frame's data and what later frames borrow
    rewritten = bytes(head) + bytes(side_info) + data[:own] + filler + data[own:]
    if parse_frame_header(rewritten).frame_length != len(rewritten):  # type: ignore[union-attr]
        raise AssertionError("rewritten frame has the wrong length")
    return rewritten


def _smallest_frame_of(header: FrameHeader, needed: int) -> tuple[int, int, int]:
    """(bitrate index, padding bit, frame length) of the shortest frame of this kind holding `needed` bytes."""
    mpeg1 = header.mpeg_version == 1
    per_kbps = 144000 if mpeg1 else 72000
    for index, kbps in enumerate(_BITRATES_KBPS[1 if mpeg1 else 2], start=1):
        for padding in (0, 1):
            length = per_kbps * kbps // header.sample_rate + padding
            if length >= needed:
                return index, padding, length
    raise ValueError(f"frame: {needed} bytes do not fit in any frame at {header.sample_rate} Hz")


def restarted_encoder(stream_pcm: np.ndarray, stream_start: int, first_frame: int, *, sample_rate: int = 44100,
                      bitrate_kbps: int = 128) -> tuple[Mp3StreamEncoder, bytes]:
    """A new encoder for a stream from frame `first_frame` on, and the frames it makes of the audio given.

    `stream_pcm` is the stream's (channels, samples) audio from stream sample `stream_start` on: the old audio that
    the pre-roll needs (it must reach back PREROLL_FRAMES frames before `first_frame`, or to the stream's start),
    then the new. The returned bytes are whole frames from `first_frame` on, the first one borrowing nothing.
    """
    pcm = np.asarray(stream_pcm)
    pcm = pcm[np.newaxis, :] if pcm.ndim == 1 else pcm
    probe = Mp3StreamEncoder(sample_rate=sample_rate, channels=pcm.shape[0], bitrate_kbps=bitrate_kbps)
    per_frame = probe.samples_per_frame
    preroll = min(PREROLL_FRAMES, first_frame)
    begin = (first_frame - preroll) * per_frame
    if not 0 <= begin - stream_start < pcm.shape[1]:
        raise ValueError(f"stream_pcm: starts at sample {stream_start}, the pre-roll needs it from {begin}")
    encoder = Mp3StreamEncoder(sample_rate=sample_rate, channels=pcm.shape[0], bitrate_kbps=bitrate_kbps,
                               first_frame=first_frame - preroll)
    frames = split_frames(encoder.encode(pcm[:, begin - stream_start:]))
    if len(frames) <= preroll:
        raise ValueError("stream_pcm: too little new audio to restart the stream on")
    kept = [self_contained(frames[:preroll], frames[preroll]), *frames[preroll + 1:]]
    return encoder, b"".join(kept)
