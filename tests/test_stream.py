"""A room's stream at a cut-in: what a listener decodes (old frames, then the new) is seamless and on time."""

from __future__ import annotations

import numpy as np
import pytest

from jamserver.server.room.stream import RoomStream
from pipeline.audio.mp3 import DECODED_DELAY_SAMPLES, decode_mp3, split_frames

RATE = 44100
CLIP = 225792
BEAT = CLIP // 8


def beat_loop(seed: int, pitch: float, amplitude: float = 0.3) -> np.ndarray:
    """A looping clip: a chord with a kick on every beat (each clip is a whole number of periods, like a seed)."""
    t = np.arange(CLIP) / RATE
    cycles = np.round(np.array([pitch, pitch * 1.25, pitch * 1.5]) * CLIP / RATE)
    audio = sum(np.sin(2 * np.pi * c * np.arange(CLIP) / CLIP + seed) for c in cycles) / 3
    kick = np.exp(-np.arange(BEAT) / 1500) * np.sin(2 * np.pi * 60 * t[:BEAT])
    audio = 0.6 * audio + 0.4 * np.tile(kick, 8)
    return (amplitude * audio).astype(np.float32)[np.newaxis, :]


def heard(pieces: list, tail: bytes = b"") -> np.ndarray:
    """What one listener decodes: frames in order, each cut replacing the frames from its first_frame on."""
    frames: list[bytes] = []
    for piece in pieces:
        if piece.replaces:
            del frames[piece.first_frame:]
        assert piece.first_frame == len(frames)
        frames += split_frames(piece.audio)
    return decode_mp3(b"".join(frames) + tail)[:, DECODED_DELAY_SAMPLES:]


def curvature(audio: np.ndarray) -> float:
    return float(np.max(np.abs(np.diff(audio, n=2, axis=-1))))


def levels_db(audio: np.ndarray, window: int = 4410) -> np.ndarray:
    trimmed = audio[0, : audio.shape[1] // window * window].astype(np.float64).reshape(-1, window)
    return 20 * np.log10(np.sqrt(np.mean(np.square(trimmed), axis=1)))


@pytest.mark.parametrize("beat", [1, 5, 7])
def test_a_cut_in_plays_from_its_beat_without_a_click_or_a_level_step(beat: int) -> None:
    stream = RoomStream(RATE)
    old, new = beat_loop(0, 220.0), beat_loop(1.3, 330.0)
    pieces = [stream.append(old) for _ in range(3)]
    at = (CLIP + beat * BEAT) / RATE
    cut = stream.cut(at, [(new[:, beat * BEAT:], None)])
    assert cut.replaces and cut.stream_time == pytest.approx(at) and cut.duration == pytest.approx((CLIP - beat * BEAT) / RATE)
    assert cut.first_frame * 1152 <= CLIP + beat * BEAT - 1152  # the restart begins before the cut
    after = stream.append(new)
    assert after.stream_time == pytest.approx(2 * CLIP / RATE) and not after.replaces
    audio = heard([*pieces, cut, after])
    position = CLIP + beat * BEAT
    # The old clip plays up to the cut, the new clip's same beat from it: the loop offset is kept.
    old_part = audio[:, position - 20000:position - 2000]
    new_part = audio[:, position + 2000:position + 20000]
    assert np.corrcoef(old_part[0], np.tile(old, 2)[0, position - 20000:position - 2000])[0, 1] > 0.95
    assert np.corrcoef(new_part[0], new[0, beat * BEAT + 2000:beat * BEAT + 20000])[0, 1] > 0.95
    near = curvature(audio[:, position - 882:position + 882])  # within 20 ms of the cut
    inside = max(curvature(audio[:, 10000:CLIP - 10000]), curvature(audio[:, position + 5000:2 * CLIP - 5000]))
    assert near <= inside
    beat_before, beat_after = levels_db(audio[:, position - BEAT:position + BEAT], window=BEAT)
    assert abs(beat_after - beat_before) < 1.0


def test_a_cut_may_run_on_for_another_loop_and_cuts_may_follow_cuts() -> None:
    stream = RoomStream(RATE)
    pieces = [stream.append(beat_loop(0, 220.0)) for _ in range(2)]
    loop = beat_loop(2.0, 262.0)
    first = stream.cut((CLIP + 7 * BEAT) / RATE, [(loop[:, 7 * BEAT:], None), (loop, None)])
    assert first.duration == pytest.approx((CLIP + BEAT) / RATE)
    second = stream.cut((CLIP + 7 * BEAT + BEAT) / RATE, [(beat_loop(0.5, 196.0), None)])
    audio = heard([*pieces, first, second], stream.finish())
    assert audio.shape[1] >= 3 * CLIP
    assert stream.stream_seconds == pytest.approx(3 * CLIP / RATE)


def test_a_cut_outside_the_stream_is_refused() -> None:
    stream = RoomStream(RATE)
    stream.append(beat_loop(0, 220.0))
    with pytest.raises(ValueError, match="position"):
        stream.cut(CLIP / RATE + 0.5, [(beat_loop(1, 220.0), None)])
    with pytest.raises(ValueError, match="pieces"):
        stream.cut(1.0, [])


@pytest.mark.parametrize("resumed_clips", [1, 2])
def test_a_cut_in_after_a_takeover_lands_on_its_beat_in_the_resumed_stream(resumed_clips: int) -> None:
    """A front-end that took the room over resumes the stream with a fresh encoder (its frames numbered from 0 at
    the resume point); a cut there must restart that encoder at the frame before T, not at T's frame counted from
    the stream's start."""
    old_owner = RoomStream(RATE)
    for _ in range(3):
        old_owner.append(beat_loop(0, 220.0))
    stream = RoomStream(RATE)
    stream.resume(old_owner.joiner_state())
    old, new = beat_loop(0, 220.0), beat_loop(1.3, 330.0)
    pieces = [stream.append(old) for _ in range(resumed_clips)]
    assert pieces[0].first_frame == 0 and pieces[0].stream_time == pytest.approx(3 * CLIP / RATE)
    position = 3 * CLIP + (resumed_clips - 1) * CLIP + 3 * BEAT
    cut = stream.cut(position / RATE, [(new[:, 3 * BEAT:], None)])
    resumed_at = position - 3 * CLIP  # where T lies in the new MP3 stream
    assert cut.replaces and (resumed_at - 1152 * 5) <= cut.first_frame * 1152 <= resumed_at - 1152
    audio = heard([*pieces, cut])  # a listener decoding the new stream from its first frame
    old_part = audio[:, resumed_at - 20000:resumed_at - 2000]
    new_part = audio[:, resumed_at + 2000:resumed_at + 20000]
    assert np.corrcoef(old_part[0], np.tile(old, 2)[0, resumed_at - 20000:resumed_at - 2000])[0, 1] > 0.95
    assert np.corrcoef(new_part[0], new[0, 3 * BEAT + 2000:3 * BEAT + 20000])[0, 1] > 0.95
