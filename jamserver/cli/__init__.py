"""`jamserver` command line: one subcommand per module, each exposing `register(subparsers)`.

Subcommand modules are imported lazily by name so that `jamserver --help` stays fast and a
command that needs torch does not make the others pay for importing it.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). The module's `register(parser)` adds arguments and sets `func`.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("jamserver.cli.serve", "run the jam server (WebSocket rooms, REST API, page)"),
    "worker": ("jamserver.cli.worker", "run a generation worker: clip jobs from Redis (see docs/OPERATIONS.md)"),
    "record": ("jamserver.cli.record", "record a jam from a running server to MP3/WAV + timeline"),
    "render": ("jamserver.cli.render", "render a jam in-process, no server, to MP3/WAV + timeline"),
    "audio-to-image": ("jamserver.cli.convert", "turn audio files into spectrogram images"),
    "image-to-audio": ("jamserver.cli.convert", "turn spectrogram images into audio files"),
    "audio-to-seed": ("jamserver.cli.audio_to_seed", "make a seed loop of your own audio and print its tempo"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser; `only` imports just one subcommand's module (the one being run)."""
    parser = argparse.ArgumentParser(
        prog="jamserver",
        description="Real-time riffusion jam server and tools.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if only is None or only == name:
            module = importlib.import_module(module_name)
            module.register(sub, name)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    parser = build_parser(only=command if command in SUBCOMMANDS else "")
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
