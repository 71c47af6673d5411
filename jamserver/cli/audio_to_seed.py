"""`jamserver audio-to-seed`: turn your own loop into a seed image, printing its tempo.

    jamserver audio-to-seed loop.wav [more.mp3 ...] [--out-dir DIR]

Each input (WAV, FLAC, Ogg/Vorbis, MP3 or a riffusion PNG; the format is read from the content) is analysed and
fitted to 5.12 s on its beat grid exactly as an upload to POST /seed_images is, then stored in DIR as
``custom-<hash>.png`` with an entry in DIR/index.json. The default DIR is the seed store a server started without
``--data-dir`` reads at start-up, so the seed is offered there after a restart. A refused input prints one line
naming the file and the problem; the exit status is 2 if any input was refused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.loops.seed_loop import SeedLoop

EXIT_REFUSED = 2


def register(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("inputs", nargs="+", type=Path, metavar="IN", help="audio file(s) or riffusion PNG(s)")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="seed folder to write into (default: the server's default data directory's seeds)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.loops.decode import UnusableUpload
    from pipeline.loops.seed_loop import seed_from_upload
    from pipeline.seed_store import DEFAULT_MAX_SEEDS, SeedStore, content_id

    store = SeedStore(args.out_dir) if args.out_dir is not None else SeedStore.in_data_dir()
    store.max_seeds = max(DEFAULT_MAX_SEEDS, len(store.entries()) + len(args.inputs))  # the CLI never evicts
    status = 0
    for source in args.inputs:
        try:
            data = source.read_bytes()
            loop = seed_from_upload(data)
        except (OSError, UnusableUpload) as error:
            print(f"{source}: {error}", file=sys.stderr)
            status = EXIT_REFUSED
            continue
        entry, _ = store.add(content_id(data), loop.png_bytes(), bpm=loop.bpm, beats=loop.beats,
                             description=loop.describe(), source=loop.source())
        print(f"{source}: {_tempo_line(loop)} -> {store.path(entry.id)}")
    return status


def _tempo_line(loop: SeedLoop) -> str:
    if loop.bpm is None:
        return f"no steady beat; {loop.source_seconds:.2f} s {loop.fit} to 5.12 s"
    heard = f"{loop.source_bpm:.2f} BPM" if loop.source_bpm is not None else "tempo"
    if loop.fit == "stretched":
        return (f"{heard}; {loop.beats} beats stretched by {100 * (loop.stretch - 1):+.1f}% "
                f"to 5.12 s = {loop.bpm:.2f} BPM")
    return f"{heard}; {loop.beats} beats in 5.12 s"
