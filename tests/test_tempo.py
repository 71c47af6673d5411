"""Tempo and beats from pipeline/loops/tempo.py: known tempos, the octave question, the shipped seeds, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.audio.image import audio_from_image
from pipeline.loops.tempo import (
    FRAME_RATE,
    autocorrelation,
    estimate_tempo,
    onset_envelope,
)
from pipeline.seeds import SeedLibrary

RATE = 44100


def _hit(kind: str, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(0.25 * RATE)) / RATE
    if kind == "kick":
        return np.sin(2 * np.pi * np.cumsum(50 + 100 * np.exp(-t / 0.03)) / RATE) * np.exp(-t / 0.1)
    noise = rng.standard_normal(t.size)
    if kind == "snare":
        return 0.5 * np.sin(2 * np.pi * 190 * t) * np.exp(-t / 0.04) + 0.4 * noise * np.exp(-t / 0.07)
    bright = np.diff(noise, prepend=0.0)  # hats: noise tilted to the top of the spectrum
    return 0.15 * bright * np.exp(-t / 0.02)


def drum_loop(bpm: float, seconds: float = 12.0, *, hats_per_beat: int = 2, swing: float = 0.0,
              start: float = 0.0, seed: int = 0) -> np.ndarray:
    """Kick on 1 and 3, snare on 2 and 4, hats on every subdivision (off-beats delayed by ``swing``)."""
    rng = np.random.default_rng(seed)
    beat = 60.0 / bpm
    audio = np.zeros(int((seconds + start + 1) * RATE))

    def place(when: float, sound: np.ndarray) -> None:
        first = round((start + when) * RATE)
        end = min(audio.size, first + sound.size)
        audio[first:end] += sound[: end - first]

    for index in range(int(seconds / beat)):
        place(index * beat, _hit("kick" if index % 2 == 0 else "snare", rng))
        for sub in range(hats_per_beat):
            delay = swing / hats_per_beat if sub % 2 else 0.0
            place((index + sub / hats_per_beat + delay) * beat, _hit("hat", rng) * (1.0 if sub == 0 else 0.6))
    return (0.9 * audio / np.abs(audio).max()).astype(np.float32)


@pytest.mark.parametrize("bpm", [62.0, 87.5, 121.3, 150.0, 183.0])
def test_tempo_of_a_drum_loop_is_found_within_a_tenth_of_a_bpm(bpm):
    tempo = estimate_tempo(drum_loop(bpm, hats_per_beat=4 if bpm < 100 else 2), RATE)
    assert tempo.bpm == pytest.approx(bpm, abs=0.1)
    assert tempo.confidence > 0.2


def test_eighth_note_hats_and_swing_do_not_double_or_halve_the_tempo():
    for bpm, swing in ((96.0, 0.0), (96.0, 0.3), (132.0, 0.25)):
        assert estimate_tempo(drum_loop(bpm, swing=swing), RATE).bpm == pytest.approx(bpm, abs=0.5)


def test_beats_fall_on_the_kicks_and_snares():
    bpm, start = 120.0, 0.73
    tempo = estimate_tempo(drum_loop(bpm, seconds=10.0, start=start), RATE)
    expected = start + np.arange(20) * 60.0 / bpm
    nearest = np.abs(tempo.beats[:, None] - expected[None, :]).min(axis=1)
    assert len(tempo.beats) >= 18
    assert np.all(nearest < 0.02)
    assert np.allclose(np.diff(tempo.beats), 0.5, atol=0.02)


def test_leading_silence_does_not_shift_the_beats():
    quiet = np.concatenate([np.zeros(3 * RATE, np.float32), drum_loop(100.0, seconds=8.0)])
    tempo = estimate_tempo(quiet, RATE)
    assert tempo.bpm == pytest.approx(100.0, abs=0.2)
    assert tempo.beats[0] == pytest.approx(3.0, abs=0.02)


def test_other_sample_rates_and_stereo_give_the_same_tempo():
    mono = drum_loop(110.0, seconds=8.0)
    stereo = np.stack([mono, 0.5 * mono])
    half_rate = mono[::2]  # the hits have little energy above 11 kHz; aliasing does not move onsets
    assert estimate_tempo(stereo, RATE).bpm == pytest.approx(110.0, abs=0.2)
    assert estimate_tempo(half_rate, RATE // 2).bpm == pytest.approx(110.0, abs=0.2)


@pytest.mark.parametrize("seed_id", ["og_beat", "agile", "marim", "motorway", "vibes"])
def test_the_shipped_seed_images_give_their_index_tempo_and_beat_count(seed_id):
    library = SeedLibrary()
    entry = library.entry(seed_id)
    audio = audio_from_image(library.load_seed(seed_id))
    tempo = estimate_tempo(audio, RATE, loop=True)
    assert tempo.bpm == pytest.approx(entry.bpm, abs=1e-9)
    assert len(tempo.beats) == entry.beats
    assert np.allclose(np.diff(tempo.beats), 60.0 / entry.bpm)


def test_onset_envelope_peaks_at_the_hits():
    audio = np.zeros(2 * RATE, np.float32)
    for when in (0.5, 1.25):
        audio[int(when * RATE) : int(when * RATE) + 2000] = np.random.default_rng(1).standard_normal(2000)
    envelope = onset_envelope(audio, RATE)
    assert envelope.frame_rate == FRAME_RATE
    peaks = np.sort(np.argsort(envelope.total)[-2:]) / FRAME_RATE
    assert peaks == pytest.approx([0.5, 1.25], abs=0.015)


def test_circular_autocorrelation_of_a_loop_peaks_at_its_period():
    signal = np.tile(np.r_[1.0, np.zeros(49)], 8)
    correlation = autocorrelation(signal, circular=True)
    assert correlation[50] == pytest.approx(correlation[0])
    assert correlation[25] < 0


def test_audio_without_onsets_is_refused():
    with pytest.raises(ValueError, match="no onsets"):
        estimate_tempo(np.zeros(RATE * 3, np.float32), RATE)
    with pytest.raises(ValueError, match="finite"):
        estimate_tempo(np.full(RATE, np.nan, np.float32), RATE)
