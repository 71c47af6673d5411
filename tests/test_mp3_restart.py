"""Restarting the MP3 stream at a cut: the new frames must decode to the right samples after the old ones."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.audio.mp3 import (
    DECODED_DELAY_SAMPLES,
    Mp3StreamEncoder,
    decode_mp3,
    parse_frame_header,
    split_frames,
)
from pipeline.audio.mp3_restart import (
    main_data_begin,
    main_data_bytes,
    restarted_encoder,
    self_contained,
)

RATE = 44100
FRAME = 1152


def drum_loop(samples: int, seed: int, amplitude: float = 0.4) -> np.ndarray:
    """A tone under noise bursts every 0.32 s: transients make LAME switch blocks and lean on its reservoir."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / RATE
    audio = 0.3 * np.sin(2 * np.pi * (110 + 40 * seed) * t)
    for start in range(0, samples, 14112):
        length = min(4000, samples - start)
        audio[start:start + length] += rng.standard_normal(length) * np.exp(-np.arange(length) / 600)
    return (amplitude * audio / np.max(np.abs(audio))).astype(np.float32)[np.newaxis, :]


def encode_all(pcm: np.ndarray) -> list[bytes]:
    encoder = Mp3StreamEncoder()
    return split_frames(encoder.encode(pcm) + encoder.finish())


def error_db(decoded: np.ndarray, pcm: np.ndarray, start: int, stop: int) -> float:
    """RMS of decoded minus the signal over [start, stop) stream samples, in dB."""
    stop = min(stop, pcm.shape[1])
    diff = decoded[0, start + DECODED_DELAY_SAMPLES:stop + DECODED_DELAY_SAMPLES] - pcm[0, start:stop]
    return float(20 * np.log10(np.sqrt(np.mean(np.square(diff.astype(np.float64)))) + 1e-12))


@pytest.mark.parametrize("cut", [2 * RATE + 12345, 3 * RATE + 777, 2 * RATE + 3 * 14112, 4 * RATE + 500])
def test_old_frames_then_restarted_frames_decode_as_well_as_one_encoding(cut: int) -> None:
    old = drum_loop(5 * RATE, 1)
    new = old.copy()
    new[:, cut:] = drum_loop(5 * RATE, 2)[:, cut:]
    first = cut // FRAME - 3
    old_frames = encode_all(old)
    encoder, data = restarted_encoder(new, 0, first)
    tail = encoder.finish()
    heard = decode_mp3(b"".join(old_frames[:first]) + data + tail)
    reference = decode_mp3(b"".join(encode_all(new)))
    around = (first * FRAME - 3000, first * FRAME + 6000)
    assert error_db(heard, new, *around) <= error_db(reference, new, *around) + 1.0
    later = (first * FRAME + 6000, first * FRAME + 50000)
    assert error_db(heard, new, *later) <= error_db(reference, new, *later) + 1.0
    assert main_data_begin(split_frames(data)[0]) == 0
    assert encoder.frames_out == first + len(split_frames(data + tail))


def test_without_the_rewrite_the_first_new_frame_reads_the_wrong_reservoir() -> None:
    old = drum_loop(4 * RATE, 1)
    new = old.copy()
    new[:, 2 * RATE:] = drum_loop(4 * RATE, 2)[:, 2 * RATE:]
    first = 2 * RATE // FRAME - 3
    encoder = Mp3StreamEncoder(first_frame=first - 8)
    frames = split_frames(encoder.encode(new[:, (first - 8) * FRAME:]) + encoder.finish())
    assert main_data_begin(frames[8]) > 0
    naive = decode_mp3(b"".join(encode_all(old)[:first] + frames[8:]))
    fixed_encoder, data = restarted_encoder(new, 0, first)
    fixed = decode_mp3(b"".join(encode_all(old)[:first]) + data + fixed_encoder.finish())
    around = (first * FRAME - 1000, first * FRAME + 3000)
    assert error_db(naive, new, *around) > error_db(fixed, new, *around) + 6.0


def test_a_self_contained_frame_keeps_its_data_and_what_later_frames_borrow() -> None:
    frames = encode_all(drum_loop(RATE, 1))
    index = next(i for i, frame in enumerate(frames) if main_data_begin(frame) > 200)
    rewritten = self_contained(frames[:index], frames[index])
    header = parse_frame_header(rewritten)
    assert header is not None and header.frame_length == len(rewritten) > len(frames[index])
    assert main_data_begin(rewritten) == 0 and main_data_bytes(rewritten) == main_data_bytes(frames[index])
    assert rewritten.endswith(frames[index][-100:])  # the next frame's borrowed head stays at the end
    assert self_contained([], frames[0]) == frames[0]  # the first frame of a stream borrows nothing


def test_a_restart_needs_its_pre_roll_and_whole_frames() -> None:
    pcm = drum_loop(2 * RATE, 1)
    with pytest.raises(ValueError, match="pre-roll"):
        restarted_encoder(pcm[:, 40 * FRAME:], 40 * FRAME, 45)
    with pytest.raises(ValueError, match="before"):
        frames = encode_all(pcm)
        index = next(i for i, frame in enumerate(frames) if main_data_begin(frame) > 0)
        self_contained([], frames[index])
    with pytest.raises(ValueError, match="first_frame"):
        Mp3StreamEncoder(first_frame=-1)
