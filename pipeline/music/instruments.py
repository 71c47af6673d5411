"""Pitched instruments: piano, organ, strings, bells, guitar, synth lead, choir and bass.

Each voice is a small physical or spectral model chosen so that its spectrogram looks like the real thing: a piano's
bright attack fading to a mellow tone, an organ's steady drawbar partials, bowed strings' slow swell with vibrato,
bells' inharmonic partials ringing for seconds, a plucked string (Karplus-Strong), a filtered saw lead, formant-shaped
voices, and a round bass. ``brightness`` (0..1, drawn per clip) varies the timbre between clips.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pipeline.music.synth import (
    SAMPLE_RATE,
    TOP_HZ,
    adsr,
    band_noise,
    exp_decay,
    harmonic_count,
    midi_hz,
    play_table,
    samples,
    seconds,
    vibrato,
    wavetable,
)

NoteVoice = Callable[[float, int, float, np.random.Generator], np.ndarray]

# Vowel formants (centre Hz, bandwidth Hz, gain) for the choir: "ah", "oh", "oo".
VOWELS = {
    "ah": ((800, 80, 1.0), (1150, 90, 0.5), (2900, 120, 0.25), (3900, 130, 0.2)),
    "oh": ((450, 70, 1.0), (800, 80, 0.3), (2830, 100, 0.1), (3800, 120, 0.08)),
    "oo": ((325, 50, 1.0), (700, 60, 0.15), (2530, 170, 0.05), (3500, 180, 0.04)),
}


def piano(midi: float, gate: int, brightness: float, rng: np.random.Generator) -> np.ndarray:
    """Hammered strings: a bright table crossfading into a mellow one; dampers cut the note at key release."""
    f0 = midi_hz(midi)
    count = harmonic_count(f0)
    k = np.arange(1, count + 1)
    bright = wavetable(1.0 / k ** (0.9 - 0.3 * brightness) * np.abs(np.sin(np.pi * k / 7.3)))
    mellow = wavetable(1.0 / k**2.5)
    sustain_s = 0.6 + 2.5 * np.clip((84 - midi) / 48, 0, 1)
    length = gate + samples(0.15)
    mix = np.exp(-seconds(length) / 0.12)
    tone = play_table(bright, f0, length) * mix + play_table(mellow, f0 * 1.0008, length) * (1 - mix)
    envelope = adsr(length, gate, 0.002, sustain_s, 0.0, 0.08)
    hammer = band_noise(rng, length, 500.0, 5000.0) * exp_decay(length, 0.006, 0.0005)
    return 0.5 * tone * envelope + 0.04 * hammer


def organ(midi: float, gate: int, brightness: float, rng: np.random.Generator) -> np.ndarray:
    """Drawbar organ: steady sine partials at 1, 2, 3, 4, 6, 8 x the key, a key click and the Leslie's tremolo."""
    f0 = midi_hz(midi)
    drawbars = {1: 1.0, 2: 0.7, 3: 0.5 + 0.3 * brightness, 4: 0.4, 6: 0.25 * brightness + 0.1, 8: 0.3 * brightness}
    amplitudes = np.zeros(harmonic_count(f0))
    for harmonic, level in drawbars.items():
        if harmonic <= amplitudes.size:
            amplitudes[harmonic - 1] = level
    length = gate + samples(0.06)
    t = seconds(length)
    leslie = 1.0 - 0.25 * (0.5 + 0.5 * np.sin(2 * np.pi * 6.3 * t))
    tone = play_table(wavetable(amplitudes), f0 * (1 + 0.002 * np.sin(2 * np.pi * 6.3 * t)), length)
    click = band_noise(rng, length, 1500.0, 8000.0) * exp_decay(length, 0.004, 0.0003)
    return 0.3 * tone * leslie * adsr(length, gate, 0.008, 1.0, 1.0, 0.03) + 0.03 * click


def strings(midi: float, gate: int, brightness: float, rng: np.random.Generator) -> np.ndarray:
    """Bowed section: three detuned band-limited saws with a slow swell, vibrato and a soft top end."""
    f0 = midi_hz(midi)
    k = np.arange(1, harmonic_count(f0 * 1.01) + 1)
    table = wavetable(1.0 / k * np.exp(-k * f0 / (2500.0 + 3000.0 * brightness)))
    length = gate + samples(0.45)
    voices = sum(
        play_table(table, vibrato(f0 * 2 ** (cents / 1200), length, 5.0 + 0.4 * i, 12.0, 0.2), length)
        for i, cents in enumerate((-7.0, 0.0, 6.0))
    )
    return 0.22 * voices * adsr(length, gate, 0.25, 1.0, 1.0, 0.35)


BELL_PARTIALS = ((0.5, 0.5, 1.0), (1.0, 1.0, 0.8), (1.19, 0.6, 0.6), (1.5, 0.35, 0.5), (2.0, 0.7, 0.45),
                 (2.51, 0.3, 0.3), (2.66, 0.25, 0.25), (3.01, 0.2, 0.2), (4.16, 0.15, 0.12))


def bells(midi: float, gate: int, brightness: float, rng: np.random.Generator) -> np.ndarray:
    """Struck bell: the inharmonic hum, prime, minor third, fifth and nominal partials, ringing for seconds."""
    f0 = midi_hz(midi)
    ring_s = 1.6 + 1.4 * brightness
    length = max(gate, samples(1.2 * ring_s))
    t = seconds(length)
    tone = np.zeros(length)
    for ratio, gain, decay in BELL_PARTIALS:
        if f0 * ratio < TOP_HZ:
            detune = 1.0 + float(rng.uniform(-0.002, 0.002))
            tone += gain * np.sin(2 * np.pi * f0 * ratio * detune * t) * np.exp(-t / (ring_s * decay))
    strike = band_noise(rng, length, 2000.0, 9000.0) * exp_decay(length, 0.01, 0.0003)
    return 0.25 * tone * np.minimum(t / 0.001, 1.0) + 0.05 * strike


def guitar(midi: float, gate: int, brightness: float, rng: np.random.Generator) -> np.ndarray:
    """Plucked string by Karplus-Strong: a noise burst circulating in a delay line with a damping average."""
    f0 = midi_hz(midi)
    period = max(2, round(SAMPLE_RATE / f0))
    length = gate + samples(0.08)
    line = np.zeros(int(length * period * f0 / SAMPLE_RATE) + period + 2)
    burst = band_noise(rng, period + 1, 80.0, 2000.0 + 6000.0 * brightness)
    line[: period + 1] = burst * np.hanning(period + 1) ** 0.3
    loss = 0.996 + 0.003 * np.clip((midi - 40) / 40, 0, 1)
    for start in range(period + 1, line.size, period):
        end = min(start + period, line.size)
        line[start:end] = loss * 0.5 * (line[start - period : end - period] + line[start - period - 1 : end - period - 1])
    # Read the integer-period line at the exact pitch.
    position = np.arange(length) * (period * f0 / SAMPLE_RATE)
    tone = np.interp(position, np.arange(line.size), line)
    return 0.5 * tone * adsr(length, gate, 0.001, 10.0, 1.0, 0.03)


def synth_lead(midi: float, gate: int, brightness: float, rng: np.random.Generator) -> np.ndarray:
    """Analogue-style lead: a saw/square blend whose filter opens at each note and closes to a buzzy sustain."""
    f0 = midi_hz(midi)
    k = np.arange(1, harmonic_count(f0 * 1.02) + 1)
    square = np.where(k % 2 == 1, 1.0 / k, 0.0)
    length = gate + samples(0.1)
    t = seconds(length)
    open_table = wavetable((0.5 / k + 0.5 * square) * np.exp(-k * f0 / 7000.0))
    closed_table = wavetable((0.5 / k + 0.5 * square) * np.exp(-k * f0 / (900.0 + 1500.0 * brightness)))
    frequency = vibrato(f0, length, 5.8, 15.0, 0.25)
    sweep = np.exp(-t / 0.09)
    tone = play_table(open_table, frequency, length) * sweep + play_table(closed_table, frequency, length) * (1 - sweep)
    detuned = play_table(closed_table, frequency * 1.006, length)
    return 0.25 * (tone + 0.5 * detuned) * adsr(length, gate, 0.005, 0.3, 0.8, 0.06)


def choir(midi: float, gate: int, brightness: float, rng: np.random.Generator) -> np.ndarray:
    """Voices singing a vowel: glottal harmonics weighted by formant resonances, an ensemble of three, breath."""
    f0 = midi_hz(midi)
    vowel = VOWELS[("ah", "oh", "oo")[int(brightness * 2.99)]]
    k = np.arange(1, harmonic_count(f0) + 1)
    freqs = k * f0
    envelope = sum(gain / (1.0 + ((freqs - centre) / bandwidth) ** 2) for centre, bandwidth, gain in vowel)
    table = wavetable(envelope / k**0.5)
    length = gate + samples(0.35)
    voices = sum(
        play_table(table, vibrato(f0 * 2 ** (cents / 1200), length, 5.2 + 0.3 * i, 25.0, 0.15), length)
        for i, cents in enumerate((-9.0, 0.0, 8.0))
    )
    breath = band_noise(rng, length, 600.0, 3500.0)
    return (0.25 * voices + 0.01 * breath) * adsr(length, gate, 0.18, 1.0, 1.0, 0.3)


def bass(midi: float, gate: int, brightness: float, rng: np.random.Generator) -> np.ndarray:
    """Bass: a sine fundamental with a few low-passed saw partials and a plucked decay."""
    f0 = midi_hz(midi)
    k = np.arange(1, min(harmonic_count(f0), 24) + 1)
    table = wavetable(np.where(k == 1, 1.0, 0.5 / k) * np.exp(-k * f0 / (300.0 + 900.0 * brightness)))
    length = gate + samples(0.05)
    return 0.5 * play_table(table, f0, length) * adsr(length, gate, 0.004, 0.5, 0.6, 0.04)


PITCHED = {
    "piano": piano,
    "organ": organ,
    "strings": strings,
    "bells": bells,
    "guitar": guitar,
    "synth": synth_lead,
    "choir": choir,
    "bass": bass,
}
# Comfortable MIDI ranges (melody low, melody high) for each voice.
MELODY_RANGE = {
    "piano": (60, 84),
    "organ": (55, 79),
    "strings": (60, 84),
    "bells": (67, 91),
    "guitar": (55, 79),
    "synth": (60, 84),
    "choir": (55, 76),
    "bass": (33, 52),
}
