"""`jamserver audio-to-image` and `jamserver image-to-audio`: convert files in the original image format.

    jamserver audio-to-image loop.wav loop.png [--start 12.5]
    jamserver image-to-audio a.png b.png --out-dir out/ [--format mp3]

Every failure prints one line naming the file and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

AUDIO_SUFFIXES = (".wav", ".mp3", ".flac", ".ogg")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
EXIT_FAILURE = 2


class ConversionError(Exception):
    """A user-facing, one-line problem with one input or output."""


def register(parser: argparse.ArgumentParser, name: str) -> None:
    if name == "audio-to-image":
        parser.add_argument("inputs", nargs="+", type=Path, metavar="IN", help="audio file(s): wav, mp3, flac")
        parser.add_argument("--start", type=float, default=0.0, help="seconds into the audio where the clip starts")
        parser.add_argument("--stereo", action="store_true", help="keep two channels (G and B of the image)")
        parser.set_defaults(func=_audio_to_image)
    elif name == "image-to-audio":
        parser.add_argument("inputs", nargs="+", type=Path, metavar="IN", help="spectrogram image(s)")
        parser.add_argument("--format", choices=("wav", "mp3"), default="wav", help="output format with --out-dir")
        parser.add_argument("--iterations", type=int, default=None, help="phase-reconstruction iterations")
        parser.set_defaults(func=_image_to_audio)
    else:
        raise ValueError(f"convert_cli cannot register subcommand {name!r}")
    parser.add_argument(
        "--out-dir", type=Path, default=None, help="write one output per input here (else the last IN is the output)"
    )


def _audio_to_image(args: argparse.Namespace) -> int:
    from pipeline.audio.params import SpectrogramParams

    if args.start < 0:
        return _fail(f"--start must be >= 0, got {args.start}")
    params = SpectrogramParams(stereo=args.stereo)

    def convert(source: Path, target: Path) -> None:
        from pipeline.audio.audio_io import AudioFileError, read_audio
        from pipeline.audio.image import image_from_audio  # torch: only once there is work to do

        try:
            audio = read_audio(source, params.sample_rate, params.num_channels)
        except AudioFileError as error:
            raise ConversionError(str(error)) from None
        first = int(round(args.start * params.sample_rate))
        clip = audio[:, first : first + params.clip_samples()]
        if clip.shape[1] <= params.n_fft // 2:
            raise ConversionError(f"{source}: too short after --start {args.start:g} s ({clip.shape[1]} samples)")
        image_from_audio(clip, params).save(target)

    return _run_all(args, ".png", AUDIO_SUFFIXES, convert)


def _image_to_audio(args: argparse.Namespace) -> int:
    import PIL.Image

    from pipeline.audio.audio_io import AudioFileError, write_audio
    from pipeline.audio.dsp import SpectrogramConverter
    from pipeline.audio.image import mel_from_image

    converters: dict[object, SpectrogramConverter] = {}

    def convert(source: Path, target: Path) -> None:
        try:
            with PIL.Image.open(source) as image:
                image.load()
                mel, params = mel_from_image(image)
        except (OSError, ValueError, PIL.Image.DecompressionBombError) as error:
            raise ConversionError(f"{source}: not a readable spectrogram image ({error})") from None
        if params not in converters:
            converters[params] = SpectrogramConverter(params)
        converter = converters[params]
        audio = converter.audio_from_mel(mel, iterations=args.iterations).numpy()
        peak = float(abs(audio).max())
        if peak > 1.0:
            audio = audio / peak  # decoded loudness follows the image's max value; never clip
        try:
            write_audio(target, audio, params.sample_rate)
        except AudioFileError as error:
            raise ConversionError(str(error)) from None

    if args.iterations is not None and args.iterations < 0:
        return _fail(f"--iterations must be >= 0, got {args.iterations}")
    return _run_all(args, f".{args.format}", IMAGE_SUFFIXES, convert)


def _run_all(
    args: argparse.Namespace,
    out_suffix: str,
    in_suffixes: tuple[str, ...],
    convert: Callable[[Path, Path], None],
) -> int:
    """Pair inputs with outputs, convert each, report failures one line each."""
    try:
        pairs = _pairs(args.inputs, args.out_dir, out_suffix)
    except ConversionError as error:
        return _fail(str(error))
    status = 0
    for source, target in pairs:
        try:
            if not source.is_file():
                raise ConversionError(f"{source}: no such file")
            if source.suffix.lower() not in in_suffixes:
                raise ConversionError(f"{source}: unsupported type (expected {', '.join(in_suffixes)})")
            convert(source, target)
            print(f"{source} -> {target}")
        except ConversionError as error:
            status = _fail(str(error))
    return status


def _pairs(inputs: list[Path], out_dir: Path | None, out_suffix: str) -> list[tuple[Path, Path]]:
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        return [(source, out_dir / (source.stem + out_suffix)) for source in inputs]
    if len(inputs) != 2:
        raise ConversionError("give IN OUT, or several inputs with --out-dir DIR")
    return [(inputs[0], inputs[1])]


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_FAILURE
