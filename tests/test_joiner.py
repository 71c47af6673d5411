"""The joiner must make seams inaudible and keep the level steady without ever clipping."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.audio.joiner import ClipJoiner

CLIP = 225792  # 5.12 s at 44.1 kHz
CEILING = 10 ** (-1.0 / 20)


def looping_tone(cycles: int, amplitude: float, phase: float = 0.0, samples: int = CLIP) -> np.ndarray:
    """A tone with a whole number of cycles per clip, so (like a seed image) the clip loops seamlessly."""
    t = np.arange(samples) / samples
    return (amplitude * np.sin(2 * np.pi * cycles * t + phase)).astype(np.float32)[np.newaxis, :]


def rms_db(audio: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))))


def largest_step(audio: np.ndarray) -> float:
    return float(np.max(np.abs(np.diff(audio, axis=-1))))


def test_output_lengths_add_up_to_input_lengths() -> None:
    joiner = ClipJoiner()
    lengths = [CLIP, 1000, 7, 50000, CLIP]
    outputs = [joiner.push(looping_tone(50, 0.3, samples=n)) for n in lengths]
    assert [out.shape for out in outputs] == [(1, n) for n in lengths]
    assert all(out.dtype == np.float32 for out in outputs)


def test_identical_looping_clips_join_into_the_unbroken_tone() -> None:
    tone = looping_tone(2253, 0.5)  # ~440 Hz
    joiner = ClipJoiner()
    stream = np.concatenate([joiner.push(tone) for _ in range(3)], axis=1)
    gain = joiner.last_gain[0]
    np.testing.assert_allclose(stream, np.tile(tone, 3) * gain, atol=1e-5)


def test_seam_between_different_clips_has_no_jump() -> None:
    first, second = looping_tone(2253, 0.5), looping_tone(2300, 0.5, phase=2.0)
    naive_seam = abs(float(first[0, -1] - second[0, 0]))
    assert naive_seam > 2 * largest_step(first)  # plain concatenation would click
    joiner = ClipJoiner()
    stream = np.concatenate([joiner.push(first), joiner.push(second)], axis=1)
    seam = stream[:, CLIP - 200 : CLIP + joiner.crossfade_samples + 200]
    inside = max(largest_step(stream[:, 100 : CLIP - 200]), largest_step(stream[:, CLIP + 2000 :]))
    assert largest_step(seam) <= inside


def test_loud_clip_then_quiet_clips_change_level_smoothly_and_never_clip() -> None:
    joiner = ClipJoiner()
    clips = [looping_tone(2253, 0.9)] + [looping_tone(2253, 0.05)] * 4
    outputs, gains, levels = [], [], []
    for clip in clips:
        outputs.append(joiner.push(clip))
        gains.append(joiner.last_gain)
        levels.append(joiner.gain_db)
    stream = np.concatenate(outputs, axis=1)
    assert np.max(np.abs(stream)) <= CEILING + 1e-6
    gain_db = 20 * np.log10(np.concatenate(gains))
    assert np.max(np.abs(np.diff(gain_db))) < 1e-3  # a glide over seconds, not a jump
    assert all(abs(b - a) <= joiner.max_step_db + 1e-9 for a, b in zip(levels, levels[1:]))
    assert levels[1] > levels[0]  # the quiet clip is brought up...
    assert levels[1] - levels[0] < 10.0  # ...but not all at once (the proposal is +24 dB)
    # Past the crossfade the quiet tone's envelope rises smoothly: 10 ms windows differ by well under 0.1 dB.
    quiet = stream[0, CLIP + joiner.crossfade_samples :]
    window_peaks = np.abs(quiet[: len(quiet) // 441 * 441]).reshape(-1, 441).max(axis=1)
    assert np.max(np.abs(np.diff(20 * np.log10(window_peaks)))) < 0.1


def test_quiet_clip_then_loud_clip_is_limited_without_clicks() -> None:
    joiner = ClipJoiner()
    quiet = joiner.push(looping_tone(2253, 0.02))
    boosted_db = joiner.gain_db
    loud = joiner.push(looping_tone(2300, 0.95, phase=1.0))
    assert boosted_db == pytest.approx(joiner.max_gain_db)
    assert np.max(np.abs(loud)) <= CEILING + 1e-6
    stream = np.concatenate([quiet, loud], axis=1)
    assert largest_step(stream[:, CLIP - 100 : CLIP + 100]) <= largest_step(stream[:, CLIP + 5000 :])
    gain_db = 20 * np.log10(joiner.last_gain)
    assert np.max(np.abs(np.diff(gain_db))) <= 12.0 / (0.005 * 44100) * 1.001  # the limiter's attack slope


def test_single_spike_is_held_under_the_ceiling() -> None:
    clip = looping_tone(2253, 0.1)
    clip[0, CLIP // 2 : CLIP // 2 + 50] = 1.0
    out = ClipJoiner().push(clip)
    assert np.max(np.abs(out)) <= CEILING + 1e-6
    assert rms_db(out[:, : CLIP // 4]) > -22.0  # the rest of the clip is not pushed down with it


def test_level_settles_at_the_target() -> None:
    joiner = ClipJoiner(target_rms_dbfs=-16.0)
    clip = looping_tone(2253, 0.06)  # about -27 dBFS: needs +11 dB, within the cap
    outputs = [joiner.push(clip) for _ in range(3)]
    assert rms_db(outputs[-1]) == pytest.approx(-16.0, abs=0.1)


def test_silence_stays_silent_and_faint_noise_is_not_boosted() -> None:
    joiner = ClipJoiner()
    assert not np.any(joiner.push(np.zeros((1, CLIP), np.float32)))
    noise = (np.random.default_rng(0).standard_normal((1, CLIP)) * 1e-4).astype(np.float32)  # -80 dBFS
    assert rms_db(joiner.push(noise)) <= rms_db(noise) + 0.01


def test_gain_is_held_through_a_silent_gap() -> None:
    joiner = ClipJoiner()
    joiner.push(looping_tone(2253, 0.3))
    before = joiner.gain_db
    joiner.push(np.zeros((1, CLIP), np.float32))
    assert joiner.gain_db == before
    assert joiner.push(np.zeros((1, CLIP), np.float32)).max() == 0.0


def test_boost_is_capped() -> None:
    joiner = ClipJoiner(max_gain_db=12.0)
    faint = looping_tone(2253, 0.002)  # about -57 dBFS, above the silence gate
    out = joiner.push(faint)
    assert rms_db(out) == pytest.approx(rms_db(faint) + 12.0, abs=0.05)


def test_stereo_keeps_the_balance_between_channels() -> None:
    stereo = np.concatenate([looping_tone(2253, 0.4), looping_tone(1500, 0.1)])
    joiner = ClipJoiner(channels=2)
    outputs = [joiner.push(stereo), joiner.push(stereo[:, ::-1].copy())]
    for out, clip in zip(outputs, [stereo, stereo[:, ::-1]]):
        assert out.shape == (2, CLIP)
        body = slice(joiner.crossfade_samples, None)
        ratio = out[:, body] / np.where(clip[:, body] == 0, np.nan, clip[:, body])
        assert np.nanmax(np.abs(ratio[0] - ratio[1])) < 1e-4  # one gain for both channels


def test_reset_forgets_the_previous_clip() -> None:
    joiner = ClipJoiner()
    joiner.push(looping_tone(2253, 0.9))
    joiner.reset()
    clip = looping_tone(1000, 0.2, phase=1.0)
    np.testing.assert_array_equal(joiner.push(clip), ClipJoiner().push(clip))


@pytest.mark.parametrize(
    "clip",
    [
        np.zeros((2, 100), np.float32),
        np.zeros((1, 0), np.float32),
        np.zeros((1, 100), np.int16),
        np.full((1, 100), np.inf, np.float32),
    ],
)
def test_bad_clips_are_rejected(clip: np.ndarray) -> None:
    with pytest.raises(ValueError, match="clip"):
        ClipJoiner().push(clip)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"crossfade_seconds": -0.1}, "crossfade_seconds"),
        ({"ceiling_dbfs": 1.0}, "ceiling_dbfs"),
        ({"smoothing": 0.0}, "smoothing"),
        ({"channels": 0}, "channels"),
    ],
)
def test_bad_settings_are_rejected(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ClipJoiner(**kwargs)


def test_clip_that_does_not_loop_joins_smoothly_from_its_rendered_continuation() -> None:
    # A tone whose clip length is not a whole number of cycles: its head does not follow its tail, so the loop
    # assumption would leave a step at the seam. Given the true continuation, the seam is as smooth as the inside.
    frequency = 2261.25 / 5.12  # a quarter cycle left over: the head is a quarter period off the tail
    total = np.sin(2 * np.pi * frequency * np.arange(3 * CLIP + 2000) / 44100).astype(np.float32) * 0.3
    clips = [total[k * CLIP:(k + 1) * CLIP][None, :] for k in range(3)]
    continuations = [total[(k + 1) * CLIP:(k + 1) * CLIP + 2000][None, :] for k in range(3)]

    looped = ClipJoiner()
    assumed = np.concatenate([looped.push(clip) for clip in clips], axis=1)
    rendered = ClipJoiner()
    joined = np.concatenate([rendered.push(c, n) for c, n in zip(clips, continuations)], axis=1)

    inside = largest_step(joined[:, 100:CLIP - 100])
    seam = max(largest_step(joined[:, k * CLIP - 3:k * CLIP + 3]) for k in (1, 2))
    assert seam <= inside * 1.01
    assert max(largest_step(assumed[:, k * CLIP - 3:k * CLIP + 3]) for k in (1, 2)) > 2 * inside


def test_continuation_shorter_than_the_crossfade_is_refused() -> None:
    joiner = ClipJoiner(crossfade_seconds=0.03)
    with pytest.raises(ValueError, match="continuation"):
        joiner.push(looping_tone(100, 0.3), np.zeros((1, 10), np.float32))


# -- cut-ins: splicing new audio into the stream at a sample already pushed ------------------------------------


def largest_curvature(audio: np.ndarray) -> float:
    """Largest |second difference|: a click shows up here even when the first difference looks tame."""
    return float(np.max(np.abs(np.diff(audio, n=2, axis=-1))))


def window_levels_db(audio: np.ndarray, window: int = 4410) -> np.ndarray:
    trimmed = audio[0, : audio.shape[1] // window * window].astype(np.float64).reshape(-1, window)
    return 20 * np.log10(np.sqrt(np.mean(np.square(trimmed), axis=1)))


def test_splicing_the_audio_that_was_there_changes_nothing() -> None:
    tone = looping_tone(2253, 0.3)
    joiner = ClipJoiner()
    stream = np.concatenate([joiner.push(tone) for _ in range(4)], axis=1)
    cut = 3 * CLIP + 28224  # a beat into the fourth clip
    spliced = joiner.splice(cut, tone[:, 28224:])
    assert spliced.shape == (1, CLIP - 28224) and joiner.samples_out == 4 * CLIP
    np.testing.assert_allclose(spliced, stream[:, cut:], atol=1e-5)


def test_a_cut_in_is_as_smooth_as_the_inside_of_the_clips_and_keeps_the_level() -> None:
    old, new = looping_tone(2253, 0.3), looping_tone(3011, 0.3, phase=2.5)
    joiner = ClipJoiner()
    stream = np.concatenate([joiner.push(old) for _ in range(3)], axis=1)
    cut = 2 * CLIP + 5 * 28224 + 17
    tail = joiner.splice(cut, new[:, cut - 2 * CLIP:])
    heard = np.concatenate([stream[:, :cut], tail], axis=1)
    assert abs(float(stream[0, cut] - new[0, cut - 2 * CLIP] * joiner.last_gain[0])) > 0.05  # a hard cut clicks
    near = largest_curvature(heard[:, cut - 882:cut + 882])  # within 20 ms of the cut
    inside = max(largest_curvature(heard[:, CLIP + 1000:2 * CLIP - 1000]), largest_curvature(heard[:, cut + 2000:]))
    assert near <= inside * 1.01
    levels = window_levels_db(heard[:, cut - 22050:cut + 22050])
    assert np.max(np.abs(np.diff(levels))) < 1.0


def test_a_loud_cut_in_stays_under_the_ceiling_and_the_gain_moves_at_the_limiter_slope() -> None:
    joiner = ClipJoiner()
    for _ in range(2):
        joiner.push(looping_tone(2253, 0.03))
    gains_before = joiner.last_gain
    cut = CLIP + 10000
    out = joiner.splice(cut, looping_tone(2300, 0.95)[:, 10000:])
    assert np.max(np.abs(out)) <= CEILING + 1e-6
    gain_db = 20 * np.log10(np.concatenate([gains_before[:10000], joiner.last_gain]))
    assert np.max(np.abs(np.diff(gain_db))) <= 12.0 / (0.005 * 44100) * 1.001


def test_a_cut_may_rewind_across_several_pushes_and_onto_a_join() -> None:
    joiner = ClipJoiner()
    pieces = [looping_tone(2253, 0.3) for _ in range(3)]
    stream = np.concatenate([joiner.push(piece) for piece in pieces], axis=1)
    out = joiner.splice(CLIP, pieces[1])  # exactly on the first join
    np.testing.assert_allclose(out, stream[:, CLIP:2 * CLIP], atol=1e-5)
    assert joiner.samples_out == 2 * CLIP


def test_a_cut_outside_the_history_is_refused() -> None:
    joiner = ClipJoiner(history_seconds=6.0)
    for _ in range(3):
        joiner.push(looping_tone(2253, 0.3))
    with pytest.raises(ValueError, match="position"):
        joiner.rewind(CLIP - 1)
    with pytest.raises(ValueError, match="position"):
        joiner.rewind(3 * CLIP + 1)
    joiner.rewind(3 * CLIP - 6 * 44100)  # the last six seconds are kept
