"""The stream encoder must hand out whole frames that decode as one gapless signal."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.audio.mp3 import (
    DECODED_DELAY_SAMPLES,
    Mp3StreamEncoder,
    decode_mp3,
    decoded_length,
    encode_clip,
    is_info_frame,
    parse_frame_header,
    split_frames,
)

RATE = 44100
CLIP = 225792  # 5.12 s


def sine(samples: int, frequency: float = 440.0, amplitude: float = 0.5, rate: int = RATE) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * frequency * np.arange(samples) / rate)).astype(np.float32)[np.newaxis, :]


def feed_in_pieces(encoder: Mp3StreamEncoder, pcm: np.ndarray, sizes: list[int]) -> list[bytes]:
    chunks, start = [], 0
    for size in sizes:
        chunks.append(encoder.encode(pcm[:, start : start + size]))
        start += size
    assert start == pcm.shape[1]
    return chunks + [encoder.finish()]


def test_every_chunk_is_whole_frames_without_metadata_frames() -> None:
    encoder = Mp3StreamEncoder()
    chunks = feed_in_pieces(encoder, sine(3 * CLIP), [CLIP, 1000, 7, CLIP - 1007, CLIP])
    non_empty = [chunk for chunk in chunks if chunk]
    assert len(non_empty) >= 4
    total_frames = 0
    for chunk in non_empty:
        frames = split_frames(chunk)  # raises if the chunk starts or ends mid-frame
        assert b"".join(frames) == chunk
        assert not any(is_info_frame(frame) for frame in frames)
        total_frames += len(frames)
    stream = b"".join(chunks)
    assert not stream.startswith(b"ID3") and b"Xing" not in stream and b"Info" not in stream
    assert encoder.frames_out == total_frames
    assert total_frames * encoder.samples_per_frame == decoded_length(3 * CLIP)


def test_chunked_stream_is_byte_identical_to_one_shot_encoding() -> None:
    pcm = sine(CLIP + 4321, frequency=300.0)
    streamed = b"".join(feed_in_pieces(Mp3StreamEncoder(), pcm, [1, 4320, CLIP - 5000, 5000]))
    assert streamed == encode_clip(pcm)


@pytest.mark.parametrize("samples", [1, 1000, 1152, 44100, CLIP])
def test_decoded_length_is_input_plus_delay_and_padding(samples: int) -> None:
    decoded = decode_mp3(encode_clip(sine(samples)))
    assert decoded.shape == (1, decoded_length(samples))
    padding = decoded.shape[1] - samples - DECODED_DELAY_SAMPLES
    assert 0 < padding <= 1152 + 47  # at most one frame plus what the 1152-sample tail leaves over


def test_sine_across_chunk_boundaries_stays_continuous() -> None:
    pcm = sine(2 * CLIP, frequency=523.25)
    encoder = Mp3StreamEncoder()
    boundaries = [CLIP // 3, CLIP, CLIP + 12345]
    sizes = np.diff([0, *boundaries, 2 * CLIP]).tolist()
    decoded = decode_mp3(b"".join(feed_in_pieces(encoder, pcm, sizes)))[0]
    aligned = decoded[encoder.delay_samples : encoder.delay_samples + pcm.shape[1]]
    error = aligned - pcm[0]
    snr_db = 10 * np.log10(np.mean(pcm[0] ** 2) / np.mean(error**2))
    assert snr_db > 20.0  # a pure tone loses ~26 dB to scalefactor steps (its level is quantised), not to gaps
    typical = np.sqrt(np.mean(error[2000:-2000] ** 2))
    for boundary in boundaries:
        local = error[boundary - 300 : boundary + 300]
        assert np.sqrt(np.mean(local**2)) < 3 * typical
        assert np.max(np.abs(np.diff(aligned[boundary - 50 : boundary + 50]))) < 0.06  # a 523 Hz, 0.5 sine moves <= 0.037


def test_stereo_keeps_channels_apart() -> None:
    pcm = np.concatenate([sine(RATE, 440.0), sine(RATE, 1000.0, amplitude=0.2)])
    encoder = Mp3StreamEncoder(channels=2)
    decoded = decode_mp3(b"".join(feed_in_pieces(encoder, pcm, [20000, RATE - 20000])), channels=2)
    aligned = decoded[:, DECODED_DELAY_SAMPLES : DECODED_DELAY_SAMPLES + RATE]
    for channel in range(2):
        assert np.sqrt(np.mean((aligned[channel] - pcm[channel]) ** 2)) < 0.02
    assert split_frames(encode_clip(pcm))[0] and parse_frame_header(encode_clip(pcm)).channels == 2


def test_frame_header_fields() -> None:
    header = parse_frame_header(bytes.fromhex("fffb90c4"))
    assert header is not None
    assert (header.mpeg_version, header.bitrate_kbps, header.sample_rate, header.channels) == (1, 128, 44100, 1)
    assert header.frame_length == 417 and header.samples_per_frame == 1152
    padded = parse_frame_header(bytes.fromhex("fffb92c4"))
    assert padded is not None and padded.frame_length == 418
    mpeg2 = parse_frame_header(bytes.fromhex("fff380c4"))
    assert mpeg2 is not None and (mpeg2.sample_rate, mpeg2.samples_per_frame, mpeg2.frame_length) == (22050, 576, 208)
    assert parse_frame_header(b"ID3\x04") is None
    assert parse_frame_header(bytes.fromhex("fffd90c4")) is None  # Layer II


def test_frame_timing_properties() -> None:
    assert Mp3StreamEncoder().frame_duration == pytest.approx(1152 / 44100)
    low = Mp3StreamEncoder(sample_rate=22050, bitrate_kbps=64)
    assert low.samples_per_frame == 576
    frames = split_frames(low.encode(sine(22050, rate=22050)) + low.finish())
    assert len(frames) * 576 == decoded_length(22050, 22050)
    assert all(parse_frame_header(frame).sample_rate == 22050 for frame in frames)


def test_info_frame_is_recognised() -> None:
    frame = bytearray(split_frames(encode_clip(sine(4000)))[0])
    assert not is_info_frame(bytes(frame))
    frame[4 + 17 : 4 + 21] = b"Info"
    assert is_info_frame(bytes(frame))


def test_split_frames_rejects_partial_and_foreign_bytes() -> None:
    stream = encode_clip(sine(5000))
    with pytest.raises(ValueError, match="data"):
        split_frames(stream[:-10])
    with pytest.raises(ValueError, match="data"):
        split_frames(b"ID3" + stream)


@pytest.mark.parametrize(
    ("pcm", "field"),
    [
        (np.zeros((2, 100), np.float32), "pcm"),
        (np.zeros((1, 100), np.int16), "pcm"),
        (np.full((1, 100), np.nan, np.float32), "pcm"),
    ],
)
def test_bad_pcm_is_rejected(pcm: np.ndarray, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Mp3StreamEncoder().encode(pcm)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"bitrate_kbps": 100}, "bitrate_kbps"), ({"sample_rate": 44000}, "sample_rate"), ({"channels": 3}, "channels")],
)
def test_bad_settings_are_rejected(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Mp3StreamEncoder(**kwargs)


def test_encode_after_finish_is_an_error_and_finish_is_idempotent() -> None:
    encoder = Mp3StreamEncoder()
    encoder.encode(sine(5000))
    assert encoder.finish()
    assert encoder.finish() == b""
    with pytest.raises(RuntimeError):
        encoder.encode(sine(10))


def test_out_of_range_samples_are_clipped_not_wrapped() -> None:
    loud = np.full((1, 20000), 1.7, np.float32)
    decoded = decode_mp3(encode_clip(loud))[0, DECODED_DELAY_SAMPLES + 2000 : DECODED_DELAY_SAMPLES + 18000]
    assert np.all(decoded > 0.8)


def test_decode_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="data"):
        decode_mp3(b"")
    with pytest.raises(ValueError, match="data"):
        decode_mp3(b"not an mp3 at all" * 10)
