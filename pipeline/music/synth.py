"""Sound-design primitives shared by the instruments: time grids, envelopes, wavetables, filtered noise, loop mixing.

Everything is band-limited to what the spectrogram keeps (below 10 kHz), so no partial can alias and no work is spent
on sound the image never shows. Clips are loops: :func:`mix_into` wraps a sound that runs past the loop's end back to
its start, so a clip played twice is one continuous performance.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 44100
HOP = 441
LOOP_COLUMNS = 512
LOOP_SAMPLES = LOOP_COLUMNS * HOP  # 225792 samples = 5.12 s
LOOP_SECONDS = LOOP_SAMPLES / SAMPLE_RATE
TOP_HZ = 9500.0  # highest partial rendered: the spectrogram stops at 10 kHz
TABLE_SIZE = 4096


def midi_hz(note: float) -> float:
    return 440.0 * 2.0 ** ((note - 69.0) / 12.0)


def seconds(count: int) -> np.ndarray:
    """Times in seconds of ``count`` samples."""
    return np.arange(count) / SAMPLE_RATE


def samples(duration_s: float) -> int:
    return max(1, round(duration_s * SAMPLE_RATE))


def adsr(length: int, gate: int, attack_s: float, decay_s: float, sustain: float, release_s: float) -> np.ndarray:
    """Attack-decay-sustain-release envelope of ``length`` samples whose key is held for ``gate`` samples."""
    t = seconds(length)
    held = np.minimum(t / max(attack_s, 1e-4), 1.0)
    held = np.where(t < attack_s, held, sustain + (1.0 - sustain) * np.exp(-(t - attack_s) / max(decay_s, 1e-4)))
    gate_s = gate / SAMPLE_RATE
    level_at_gate = float(held[min(gate, length - 1)])
    released = level_at_gate * np.exp(-np.maximum(t - gate_s, 0.0) / max(release_s, 1e-4))
    return np.where(t < gate_s, held, released)


def exp_decay(length: int, decay_s: float, attack_s: float = 0.002) -> np.ndarray:
    """Exponential decay with a short linear attack (no click at the onset)."""
    t = seconds(length)
    return np.minimum(t / attack_s, 1.0) * np.exp(-t / decay_s)


def wavetable(amplitudes: np.ndarray, phases: np.ndarray | None = None) -> np.ndarray:
    """One period of a waveform whose k-th harmonic (k = 1..len) has ``amplitudes[k-1]``."""
    spectrum = np.zeros(TABLE_SIZE // 2 + 1, dtype=np.complex128)
    count = min(len(amplitudes), TABLE_SIZE // 2 - 1)
    phase = np.zeros(count) if phases is None else phases[:count]
    spectrum[1 : count + 1] = amplitudes[:count] * np.exp(1j * (phase - np.pi / 2)) * (TABLE_SIZE / 2)
    return np.fft.irfft(spectrum, TABLE_SIZE)


def harmonic_count(frequency: float) -> int:
    """How many harmonics of ``frequency`` fit below the top of the spectrogram."""
    return max(1, int(TOP_HZ // max(frequency, 1.0)))


def play_table(table: np.ndarray, frequency: np.ndarray | float, length: int) -> np.ndarray:
    """Read ``table`` at a (possibly time-varying) frequency: an oscillator with linear interpolation."""
    freq = np.broadcast_to(np.asarray(frequency, dtype=np.float64), (length,))
    phase = np.cumsum(freq) / SAMPLE_RATE
    position = (phase - np.floor(phase)) * TABLE_SIZE
    index = position.astype(np.int64)
    frac = position - index
    return table[index % TABLE_SIZE] * (1.0 - frac) + table[(index + 1) % TABLE_SIZE] * frac


def vibrato(frequency: float, length: int, rate_hz: float, depth_cents: float, delay_s: float = 0.0) -> np.ndarray:
    """Instantaneous frequency with a sine vibrato that fades in after ``delay_s``."""
    t = seconds(length)
    fade = np.clip((t - delay_s) / 0.3, 0.0, 1.0)
    return frequency * 2.0 ** (depth_cents * fade * np.sin(2 * np.pi * rate_hz * t) / 1200.0)


def band_noise(rng: np.random.Generator, length: int, low_hz: float, high_hz: float) -> np.ndarray:
    """White noise through a soft band-pass (fourth-order roll-offs), unit RMS."""
    white = rng.standard_normal(length)
    freqs = np.fft.rfftfreq(length, 1.0 / SAMPLE_RATE)
    gain = 1.0 / (1.0 + (low_hz / np.maximum(freqs, 1e-3)) ** 4) / (1.0 + (freqs / high_hz) ** 4)
    band = np.fft.irfft(np.fft.rfft(white) * gain, length)
    return band / (np.sqrt(np.mean(band**2)) + 1e-12)


def lowpass(signal: np.ndarray, cutoff_hz: float, circular: bool = True) -> np.ndarray:
    """Second-order-like low-pass in the frequency domain (circular: made for loops)."""
    freqs = np.fft.rfftfreq(signal.size, 1.0 / SAMPLE_RATE)
    gain = 1.0 / (1.0 + (freqs / cutoff_hz) ** 2)
    if not circular:
        padded = np.concatenate([signal, np.zeros_like(signal)])
        return lowpass(padded, cutoff_hz)[: signal.size]
    return np.fft.irfft(np.fft.rfft(signal) * gain, signal.size)


def loop_reverb(loop: np.ndarray, rng: np.random.Generator, decay_s: float, wet: float) -> np.ndarray:
    """Reverb by circular convolution with a decaying noise tail: the tail of the loop's end rings into its start."""
    tail = band_noise(rng, loop.size, 200.0, 6000.0) * np.exp(-seconds(loop.size) / decay_s)
    tail[: samples(0.01)] = 0.0  # pre-delay
    tail /= np.sqrt(np.sum(tail**2)) + 1e-12
    wet_signal = np.fft.irfft(np.fft.rfft(loop) * np.fft.rfft(tail), loop.size)
    return (1.0 - wet) * loop + wet * wet_signal * 3.0


def mix_into(loop: np.ndarray, sound: np.ndarray, onset: int, gain: float = 1.0) -> None:
    """Add ``sound`` starting at sample ``onset`` of ``loop``, wrapping around its end (in place)."""
    position = onset % loop.size
    remaining = sound
    while remaining.size:
        take = min(remaining.size, loop.size - position)
        loop[position : position + take] += gain * remaining[:take]
        remaining = remaining[take:]
        position = 0


def rms(signal: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(signal)))) if signal.size else 0.0
