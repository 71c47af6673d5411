"""Render the mini model's training clips into the cache (resumable): ``python scripts/build_mini_data.py``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pipeline.music.dataset import DEFAULT_DATA_DIR, build_dataset

DEFAULT_CLIPS = 2400


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help=f"default: {DEFAULT_DATA_DIR}")
    parser.add_argument("--clips", type=int, default=DEFAULT_CLIPS, help="clips to render (whole shards of 200)")
    parser.add_argument("--workers", type=int, default=2, help="processes (the machine has 2 cores)")
    args = parser.parse_args()
    start = time.monotonic()
    paths = build_dataset(args.data_dir, args.clips, args.workers)
    print(f"{len(paths)} shards in {args.data_dir} ({time.monotonic() - start:.0f} s)")


if __name__ == "__main__":
    main()
