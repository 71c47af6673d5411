"""Prompt-to-ear latency as a listener's page measures it: Chromium, the real page, a real server (tiny model).

The host page plays the room, then types prompts at random moments; the page's `window.jam.stats.lastPromptLatency`
is the time from sending a prompt to the first sample of the clip carrying it being played, on the page's own audio
clock (issue 11: <= 2.5 s). Also printed: how far the page plays from the room's clock (`drift`), cut-ins received
and underruns. Needs /usr/bin/chromium (tests/browser_support.py). Run from the repository root:

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_page_latency.py [--prompts 8]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.browser_support import SERVER_ENV, chromium_browser, require_chromium  # noqa: E402
from tests.server_support import running_server  # noqa: E402

WAIT_MS = 90_000
PROMPTS = ("dub reggae with tape echo", "marimba solo with soft rain", "church bells on sunday", "jazz with piano",
           "funk bass and clavinet", "ambient pads over rain", "bossa nova guitar", "chiptune arpeggios")


def measure(page, prompts: int, rng: random.Random) -> list[dict]:
    """Send `prompts` prompts from the page at random moments; the page's stats once each is heard."""
    results = []
    for n in range(prompts):
        time.sleep(rng.uniform(1.5, 6.0))
        page.locator("#prompt-input").fill(f"{PROMPTS[n % len(PROMPTS)]} {n}")
        page.locator("#prompt-input").press("Enter")
        page.wait_for_function("window.jam.stats.lastPromptLatency !== null", timeout=WAIT_MS)
        results.append(page.evaluate("window.jam.stats"))
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1, help="for the random moments")
    args = parser.parse_args(argv)
    require_chromium()
    print(f"bench_page_latency: {args.prompts} prompts, load average at start {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory() as logs, running_server(log_dir=Path(logs), env=SERVER_ENV) as server, \
            chromium_browser() as browser:
        page = browser.new_context().new_page()
        page.goto(server.http_url + "/")
        page.wait_for_function("window.jam && window.jam.role !== null", timeout=WAIT_MS)
        page.get_by_role("button", name="Play").click()
        page.wait_for_function("window.jam.stats.secondsPlayed >= 6", timeout=WAIT_MS)
        results = measure(page, args.prompts, random.Random(args.seed))
    latencies = [stats["lastPromptLatency"] for stats in results]
    last = results[-1]
    print("  page prompt-to-ear (s): " + " ".join(f"{value:.2f}" for value in latencies))
    print(f"  median {statistics.median(latencies):.2f} s, max {max(latencies):.2f} s (goal <= 2.5 s); "
          f"cut-ins {last['cuts']}, underruns {last['underruns']}, drift from the room's clock "
          + " ".join(f"{stats['drift']:+.2f}" for stats in results) + " s")
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
