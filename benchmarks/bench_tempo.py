"""Tempo estimation (pipeline/loops/tempo.py) on synthesised loops at known tempos, and on the shipped seeds.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_tempo.py [--loops 80] [--seed 2026] [--librosa]
    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_tempo.py --uploads    # seconds to make a seed of an upload

Loops (benchmarks/tempo_loops.py): 60-190 BPM, eight styles (rock, house, hip-hop, waltz, keys without drums,
percussion, breakbeat, funk), swing 0.1-0.3 on every other loop, ~12 s each. A loop counts as right when
|estimate - truth| <= 1 BPM, so an octave error (half or double) is an error. Seeds: each seed image is decoded
with the project's DSP (Griffin-Lim, as an uploaded PNG would be) and analysed as a loop; the BPM and beat
count must equal the index's. ``--librosa`` adds librosa's beat_track on the same audio for comparison (a test
extra; the product never imports it).
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from tempo_loops import SAMPLE_RATE, benchmark_loops, make_loop

from pipeline.audio.image import audio_from_image
from pipeline.loops.tempo import estimate_tempo
from pipeline.seeds import SeedLibrary

TOLERANCE_BPM = 1.0
BANDS = ((60, 90), (90, 120), (120, 150), (150, 191))


def _librosa_bpm(audio: np.ndarray) -> float:
    import librosa

    tempo, _ = librosa.beat.beat_track(y=audio, sr=SAMPLE_RATE)
    return float(np.atleast_1d(tempo)[0])


def bench_loops(count: int, seed: int, with_librosa: bool) -> None:
    loops = benchmark_loops(count, seed)
    by_band: dict[tuple[int, int], list[bool]] = collections.defaultdict(list)
    by_style: dict[str, list[bool]] = collections.defaultdict(list)
    errors, octave_errors, seconds, librosa_right = [], 0, 0.0, 0
    for loop in loops:
        started = time.perf_counter()
        bpm = estimate_tempo(loop.audio, SAMPLE_RATE).bpm
        seconds += time.perf_counter() - started
        error = abs(bpm - loop.bpm)
        right = error <= TOLERANCE_BPM
        errors.append(error)
        if not right and any(abs(bpm - loop.bpm * m) <= 2 for m in (0.5, 2.0, 1 / 3, 3.0, 2 / 3, 1.5)):
            octave_errors += 1
        band = next(b for b in BANDS if b[0] <= loop.bpm < b[1])
        by_band[band].append(right)
        by_style[loop.name].append(right)
        if with_librosa:
            librosa_right += abs(_librosa_bpm(loop.audio) - loop.bpm) <= TOLERANCE_BPM
        if not right:
            print(f"  miss: {loop.name:<10} {loop.bpm:6.2f} BPM swing {loop.swing:.2f} -> {bpm:6.2f}")
    right_total = sum(error <= TOLERANCE_BPM for error in errors)
    print(f"\nloops: {right_total}/{len(loops)} within {TOLERANCE_BPM} BPM ({100 * right_total / len(loops):.1f}%), "
          f"{octave_errors} octave/third errors, median |error| of the right ones "
          f"{np.median([e for e in errors if e <= TOLERANCE_BPM]):.3f} BPM, {seconds / len(loops) * 1000:.0f} ms a loop")
    if with_librosa:
        print(f"librosa beat_track on the same loops: {librosa_right}/{len(loops)} within {TOLERANCE_BPM} BPM")
    print("\n| tempo band | right |\n|---|---|")
    for band in BANDS:
        print(f"| {band[0]}-{min(band[1], 190)} BPM | {sum(by_band[band])}/{len(by_band[band])} |")
    print("\n| style | right |\n|---|---|")
    for style, results in by_style.items():
        print(f"| {style} | {sum(results)}/{len(results)} |")


def bench_seeds(with_librosa: bool) -> None:
    library = SeedLibrary()
    print("\n| seed | index BPM / beats | ours | librosa |\n|---|---|---|---|")
    for seed_id in library.seed_ids():
        entry = library.entry(seed_id)
        audio = audio_from_image(library.load_seed(seed_id))[0]
        tempo = estimate_tempo(audio, SAMPLE_RATE, loop=True)
        theirs = f"{_librosa_bpm(np.tile(audio, 3)):.2f}" if with_librosa else "-"
        mark = "ok" if abs(tempo.bpm - entry.bpm) < 1e-6 and len(tempo.beats) == entry.beats else "WRONG"
        print(f"| {seed_id} | {entry.bpm:g} / {entry.beats} | {tempo.bpm:g} / {len(tempo.beats)} {mark} | {theirs} |")


def bench_uploads() -> None:
    """Seconds to turn an upload into a seed (decode, tempo, cut, stretch, image), as POST /seed_images does."""
    import io

    import lameenc
    import soundfile

    from pipeline.loops.seed_loop import seed_from_upload

    def encoded(audio: np.ndarray, kind: str) -> bytes:
        if kind == "mp3":
            encoder = lameenc.Encoder()
            encoder.set_bit_rate(192)
            encoder.set_in_sample_rate(SAMPLE_RATE)
            encoder.set_channels(1)
            return bytes(encoder.encode((audio * 32767).astype("<i2").tobytes()) + encoder.flush())
        buffer = io.BytesIO()
        soundfile.write(buffer, audio, SAMPLE_RATE, format="WAV")
        return buffer.getvalue()

    seed_from_upload(encoded(make_loop("rock", 120.0, 0.0, seed=1, seconds=6.0).audio, "wav"))  # build the DSP once
    print("\n| upload | size | wall s | CPU s |\n|---|---|---|---|")
    for seconds, kind in ((8.0, "wav"), (8.0, "mp3"), (180.0, "wav"), (180.0, "mp3")):
        data = encoded(make_loop("funk", 117.0, 0.2, seed=2, seconds=seconds).audio, kind)
        wall, cpu = time.perf_counter(), time.process_time()
        seed_from_upload(data)
        print(f"| {seconds:.0f} s {kind} | {len(data) / 1e6:.1f} MB | {time.perf_counter() - wall:.2f} | "
              f"{time.process_time() - cpu:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loops", type=int, default=80)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--librosa", action="store_true", help="also run librosa.beat.beat_track (test extra)")
    parser.add_argument("--uploads", action="store_true", help="only time turning uploads into seeds")
    args = parser.parse_args()
    if args.uploads:
        bench_uploads()
        return
    bench_loops(args.loops, args.seed, args.librosa)
    bench_seeds(args.librosa)


if __name__ == "__main__":
    main()
