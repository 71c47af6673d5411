"""Mel -> audio: the original method against ours, in one process, on synthetic 5.12 s clips.

Original (re-implemented here as the yardstick): least-squares inverse mel (torch.linalg.lstsq, clipped
at 0) onto the n_fft 17640 spectrum, then 32 Griffin-Lim iterations with momentum 0.99 (torchaudio's
update rule) from random phase. Ours: SpectrogramConverter.audio_from_mel with its defaults.

    .venv/bin/python benchmarks/bench_dsp.py [--repeats 3]

Prints seconds per clip (best of repeats, wall and process CPU), the speed ratio and the mel spectral
convergence ||g * mel(audio) - target|| / ||target|| of each method (lower is better).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch

from pipeline.dsp import PCM_SCALE, SpectrogramConverter, mel_filter_bank
from pipeline.params import SpectrogramParams

SAMPLE_RATE = 44100
SAMPLES = 512 * 441


def drum_loop_with_chords(seed: int = 0) -> np.ndarray:
    """120 bpm kick/snare eighths under four decaying chords with harmonics."""
    rng = np.random.default_rng(seed)
    audio = np.zeros(SAMPLES)
    for step in range(20):
        start = int(step * 0.25 * SAMPLE_RATE)
        if step % 2 == 0:
            t = np.arange(int(0.3 * SAMPLE_RATE)) / SAMPLE_RATE
            hit = np.sin(2 * np.pi * np.cumsum(50 + 100 * np.exp(-30 * t)) / SAMPLE_RATE) * np.exp(-8 * t)
        else:
            t = np.arange(int(0.15 * SAMPLE_RATE)) / SAMPLE_RATE
            hit = 0.5 * rng.standard_normal(len(t)) * np.exp(-25 * t)
        end = min(SAMPLES, start + len(hit))
        audio[start:end] += hit[: end - start]
    chords = [(220.0, 277.18, 329.63), (196.0, 246.94, 293.66), (174.61, 220.0, 261.63), (196.0, 246.94, 311.13)]
    for index, chord in enumerate(chords):
        start, end = int(index * 1.28 * SAMPLE_RATE), int((index + 1) * 1.28 * SAMPLE_RATE)
        t = np.arange(end - start) / SAMPLE_RATE
        envelope = np.minimum(1.0, 20 * t) * np.exp(-t)
        for root in chord:
            for harmonic in range(1, 5):
                audio[start:end] += 0.15 / harmonic * np.sin(2 * np.pi * root * harmonic * t) * envelope
    return (0.8 * audio / np.abs(audio).max()).astype(np.float32)


def sweep_with_noise(seed: int = 1) -> np.ndarray:
    """A 200 Hz -> 8 kHz exponential sweep over a light noise floor."""
    t = np.arange(SAMPLES) / SAMPLE_RATE
    frequency = 200 * np.exp(np.log(40) * t / 5.12)
    noise = np.random.default_rng(seed).standard_normal(SAMPLES)
    return (0.4 * np.sin(2 * np.pi * np.cumsum(frequency) / SAMPLE_RATE) + 0.05 * noise).astype(np.float32)


class OriginalMethod:
    """Least-squares inverse mel + 32 Griffin-Lim iterations at n_fft 17640, as the original ran it."""

    def __init__(self, params: SpectrogramParams, iterations: int = 32, momentum: float = 0.99) -> None:
        self.params = params
        self.bank_t = mel_filter_bank(params).T.contiguous()  # (mels, bins)
        self.window = torch.hann_window(params.win_length, periodic=True)
        self.iterations = iterations
        self.momentum = momentum

    def __call__(self, mel: torch.Tensor) -> torch.Tensor:
        p = self.params
        linear = torch.linalg.lstsq(self.bank_t[None], mel[None], driver="gelsd").solution[0].clamp(min=0)
        stft = dict(n_fft=p.n_fft, hop_length=p.hop_length, win_length=p.win_length, window=self.window)
        frames, length = mel.shape[-1], mel.shape[-1] * p.hop_length
        angles = torch.polar(torch.ones_like(linear), 2 * torch.pi * torch.rand_like(linear))
        previous = torch.zeros_like(angles)
        for _ in range(self.iterations):
            audio = torch.istft(linear * angles, length=length, **stft)
            rebuilt = torch.stft(audio, return_complex=True, pad_mode="reflect", **stft)[..., :frames]
            angles = rebuilt - previous * (self.momentum / (1 + self.momentum))
            angles = angles / (angles.abs() + 1e-16)
            previous = rebuilt
        return torch.istft(linear * angles, length=length, **stft) / PCM_SCALE


def spectral_convergence(converter: SpectrogramConverter, audio: torch.Tensor, target: torch.Tensor) -> float:
    mel = converter.mel_from_audio(audio)
    gain = (mel * target).sum() / (mel * mel).sum()
    return float((gain * mel - target).norm() / target.norm())


def best_time(run: Callable[[], torch.Tensor], repeats: int) -> tuple[torch.Tensor, float, float]:
    """(last result, best wall seconds, best process-CPU seconds)."""
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = run()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return result, min(walls), min(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    params = SpectrogramParams()
    converter = SpectrogramConverter(params)
    original = OriginalMethod(params)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, best of {args.repeats}")
    header = f"{'signal':<14}{'method':<10}{'wall s':>8}{'cpu s':>8}{'conv':>8}"
    print(header)
    for name, signal in (("drums+chords", drum_loop_with_chords()), ("sweep+noise", sweep_with_noise())):
        target = converter.mel_from_audio(torch.from_numpy(signal))
        results = {}
        for method, run in (("original", lambda: original(target)), ("ours", lambda: converter.audio_from_mel(target))):
            audio, wall, cpu = best_time(run, args.repeats)
            results[method] = (wall, cpu)
            print(f"{name:<14}{method:<10}{wall:>8.3f}{cpu:>8.3f}{spectral_convergence(converter, audio, target):>8.4f}")
        (wall_o, cpu_o), (wall_f, cpu_f) = results["original"], results["ours"]
        print(f"{name:<14}{'ratio':<10}{wall_o / wall_f:>7.1f}x{cpu_o / cpu_f:>7.1f}x")


if __name__ == "__main__":
    main()
