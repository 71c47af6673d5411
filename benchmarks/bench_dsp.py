"""Mel -> audio: the original method against ours, in one process, on the same clips.

Original (re-implemented here as the yardstick): least-squares inverse mel (torch.linalg.lstsq, clipped
at 0) onto the n_fft 17640 spectrum, then 32 Griffin-Lim iterations with momentum 0.99 (torchaudio's
update rule) from random phase. Ours: SpectrogramConverter.audio_from_mel with its defaults.

    .venv/bin/python benchmarks/bench_dsp.py [--repeats 3] [--threads N] [--allocator as-is]

Prints seconds per clip (best of repeats; wall clock and process CPU time), the speed ratios and the
mel spectral convergence ||g * mel(audio) - target|| / ||target|| (lower is better). The original
starts from random phase, so its convergence is the mean (and range) over its repeats, one seed each.
By default the process re-executes itself with the glibc allocator settings the Makefile exports
(both methods alike: they make large FFT buffers cheap to reallocate); `--allocator as-is` keeps the
environment it was started with.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.audio.dsp import PCM_SCALE, SpectrogramConverter, mel_filter_bank
from pipeline.audio.params import SpectrogramParams

SAMPLE_RATE = 44100
SAMPLES = 512 * 441
ALLOCATOR_SETTINGS = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "4000000000"}


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


def seed_image_mel(name: str = "og_beat") -> torch.Tensor:
    """The mel spectrogram of a seed image, the kind of input the server decodes."""
    import PIL.Image

    from pipeline.audio.image import mel_from_image

    with PIL.Image.open(ROOT / "seed_images" / f"{name}.png") as image:
        return mel_from_image(image)[0][0]


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
        stft = {"n_fft": p.n_fft, "hop_length": p.hop_length, "win_length": p.win_length, "window": self.window}
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


def timed_runs(run: Callable[[int], torch.Tensor], repeats: int) -> tuple[list[torch.Tensor], float, float]:
    """(results, best wall seconds, best process-CPU seconds); run(i) is the i-th repeat."""
    walls, cpus, results = [], [], []
    for index in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        results.append(run(index))
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return results, min(walls), min(cpus)


def seeded(method: OriginalMethod, mel: torch.Tensor) -> Callable[[int], torch.Tensor]:
    def run(index: int) -> torch.Tensor:
        torch.manual_seed(index)
        return method(mel)

    return run


def reexec_with_allocator_settings() -> None:
    if all(os.environ.get(name) == value for name, value in ALLOCATOR_SETTINGS.items()):
        return
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **ALLOCATOR_SETTINGS})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--allocator", choices=("tuned", "as-is"), default="tuned")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.allocator == "tuned":
        reexec_with_allocator_settings()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    params = SpectrogramParams()
    converter = SpectrogramConverter(params)
    original = OriginalMethod(params)
    allocator = " ".join(f"{name}={os.environ.get(name, '(unset)')}" for name in ALLOCATOR_SETTINGS)
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, best of {args.repeats}, load average {load}")
    print(f"allocator: {allocator}")
    print(f"{'signal':<14}{'method':<10}{'wall s':>9}{'cpu s':>9}  convergence")
    clips = {
        "drums+chords": converter.mel_from_audio(torch.from_numpy(drum_loop_with_chords())),
        "sweep+noise": converter.mel_from_audio(torch.from_numpy(sweep_with_noise())),
        "og_beat image": seed_image_mel("og_beat"),
    }
    for name, target in clips.items():
        originals, wall_o, cpu_o = timed_runs(seeded(original, target), args.repeats)
        ours, wall_f, cpu_f = timed_runs(lambda _, mel=target: converter.audio_from_mel(mel), args.repeats)
        scores = [spectral_convergence(converter, audio, target) for audio in originals]
        spread = f"mean of {len(scores)} seeds, {min(scores):.4f}-{max(scores):.4f}"
        print(f"{name:<14}{'original':<10}{wall_o:>9.3f}{cpu_o:>9.3f}  {statistics.mean(scores):.4f} ({spread})")
        score = spectral_convergence(converter, ours[-1], target)
        print(f"{name:<14}{'ours':<10}{wall_f:>9.3f}{cpu_f:>9.3f}  {score:.4f}")
        print(f"{name:<14}{'ratio':<10}{wall_o / wall_f:>8.1f}x{cpu_o / cpu_f:>8.1f}x", flush=True)


if __name__ == "__main__":
    main()
