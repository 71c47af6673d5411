"""`jamserver record`: a headless member of a room writing the jam to MP3 + timeline (+ WAV, strip).

Exit codes: 0 recorded the requested duration; 2 bad arguments or a refused join; 1 the server could
not be reached or went away (what was recorded is saved), or the wall-clock timeout passed;
128 + N when stopped by signal N (SIGINT 130, SIGTERM 143), files saved and valid.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jamserver.jam.prompt import Prompt
from jamserver.recording.files import PromptSchedule, RecordingFiles, TimedPrompt
from jamserver.recording.recorder import JamClient, JoinRefused, Recorder, ServerGone, websocket_url

SCRIPT_FIELDS = ("at", *Prompt.FIELDS)
EXIT_OK, EXIT_GONE, EXIT_USAGE = 0, 1, 2
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def parse_script(data: Any) -> list[TimedPrompt]:
    """`[{"at": seconds, "prompt": ..., optional seed/negative_prompt/denoising/guidance}]`, sorted by `at`."""
    if not isinstance(data, list) or not data:
        raise ValueError('script must be a non-empty JSON array of {"at": seconds, "prompt": text} objects')
    prompts = []
    for index, item in enumerate(data):
        where = f"script[{index}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where} must be an object, got {type(item).__name__}")
        unknown = sorted(set(item) - set(SCRIPT_FIELDS))
        if unknown:
            raise ValueError(f"{where}.{unknown[0]} is not a script field (known: {', '.join(SCRIPT_FIELDS)})")
        at = item.get("at")
        if isinstance(at, bool) or not isinstance(at, (int, float)) or not math.isfinite(at) or at < 0:
            raise ValueError(f"{where}.at must be a number of seconds >= 0, got {at!r}")
        try:
            prompt = Prompt.from_wire(item)
        except ValueError as error:  # the protocol's checks name the field: "prompt must not be empty"
            raise ValueError(f"{where}.{error}") from None
        prompts.append(TimedPrompt(float(at), prompt))
    return sorted(prompts, key=lambda timed: timed.at)


def cycling_prompts(prompts: Sequence[str], every: float, until: float) -> list[TimedPrompt]:
    """One prompt every `every` seconds from 0 until `until`, cycling through `prompts`."""
    if not prompts:
        raise ValueError("prompts must not be empty")
    if not every > 0:
        raise ValueError(f"every must be a positive number of seconds, got {every}")
    choices = [Prompt(text) for text in prompts]
    count = max(1, math.ceil(until / every - 1e-9))
    return [TimedPrompt(k * every, choices[k % len(choices)]) for k in range(count)]


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _url(text: str) -> str:
    try:
        return websocket_url(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """--out, --timeline, --wav, --strip: shared with `jamserver render`."""
    out = parser.add_argument_group("output")
    out.add_argument("--out", required=True, type=Path, help="the MP3 file (one continuous stream)")
    out.add_argument("--timeline", type=Path, default=None,
                     help="timeline JSON (default: the --out path with .json)")
    out.add_argument("--wav", type=Path, default=None, help="also write decoded 16-bit PCM WAV here")
    out.add_argument("--strip", type=Path, default=None,
                     help="also write the spectrogram strip PNG here (clip images side by side)")
    out.add_argument("--quiet", action="store_true", help="print nothing but errors")


def register(parser: argparse.ArgumentParser, name: str) -> None:
    room = parser.add_argument_group("room")
    room.add_argument("--url", required=True, type=_url, help="the server, e.g. ws://127.0.0.1:3013")
    room.add_argument("--room", default=None, help="join this room (default: create a new one, as its host)")
    room.add_argument("--token", default=None, help="the room's control token: join an existing room as host")
    room.add_argument("--seed-image", default=None, metavar="ID",
                      help="set the room's seed image first (host only): a shipped id or an uploaded custom-... one")
    prompts = parser.add_argument_group("prompts")
    prompts.add_argument("--prompt", action="append", default=[], metavar="TEXT",
                         help="a prompt to play (repeatable); several are spread over --duration "
                              "unless --prompt-every is given")
    prompts.add_argument("--prompt-every", type=_positive_seconds, default=None, metavar="SECONDS",
                         help="send the next --prompt (cycling) every SECONDS after joining")
    prompts.add_argument("--script", type=Path, default=None, metavar="FILE.json",
                         help='timed prompts: [{"at": seconds, "prompt": ..., "seed"/"denoising"/"guidance"}]')
    parser.add_argument("--duration", required=True, type=_positive_seconds,
                        help="stream seconds to record (stops once clips covering it have arrived)")
    parser.add_argument("--timeout", type=_positive_seconds, default=None,
                        help="wall-clock safety limit in seconds (default: 2 x duration + 120)")
    add_output_arguments(parser)
    parser.set_defaults(func=run)


def _usage_error(message: str) -> int:
    print(f"jamserver record: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def prompt_plan(args: argparse.Namespace) -> list[TimedPrompt]:
    """The timed prompts the arguments ask for; ValueError/OSError name the problem."""
    if args.script is not None:
        if args.prompt or args.prompt_every:
            raise ValueError("--script cannot be combined with --prompt or --prompt-every")
        return parse_script(json.loads(args.script.read_text(encoding="utf-8")))
    if args.prompt_every is not None and not args.prompt:
        raise ValueError("--prompt-every needs at least one --prompt")
    if not args.prompt:
        return []
    every = args.prompt_every or args.duration / len(args.prompt)
    return cycling_prompts(args.prompt, every, args.duration)


def check_output_paths(args: argparse.Namespace) -> None:
    for option in ("out", "timeline", "wav", "strip"):
        path = getattr(args, option)
        if path is not None and not path.parent.resolve().is_dir():
            raise ValueError(f"--{option}: directory {path.parent} does not exist")


def run(args: argparse.Namespace) -> int:
    try:
        check_output_paths(args)
        prompts = prompt_plan(args)
        if args.token is not None and args.room is None:
            raise ValueError("--token needs --room (it is the control token of an existing room)")
        files = RecordingFiles(args.out, timeline_path=args.timeline, wav_path=args.wav, strip_path=args.strip)
    except (ValueError, OSError) as error:
        return _usage_error(str(error))
    report = (lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    recorder = Recorder(JamClient(args.url), files, duration=args.duration, schedule=PromptSchedule(prompts),
                        timeout=args.timeout, report=report, seed_image_id=args.seed_image)
    return asyncio.run(_record(recorder, args))


async def _record(recorder: Recorder, args: argparse.Namespace) -> int:
    """Run the recorder with SIGINT/SIGTERM turned into a clean stop."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[int] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        stop.set()

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        result = await recorder.run(room=args.room, token=args.token, stop=stop)
    except JoinRefused as error:
        print(f"jamserver record: the server refused to join: {error.message} ({error.code})", file=sys.stderr)
        return EXIT_USAGE
    except ServerGone as error:
        print(f"jamserver record: {error}", file=sys.stderr)
        return 128 + received[0] if received else EXIT_GONE
    finally:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)
    if result.ended == "duration":
        return EXIT_OK
    if result.ended == "interrupted":
        recorder.report(f"stopped by {signal.Signals(received[0]).name}: saved {result.seconds:.2f} s")
        return 128 + received[0]
    reason = {"server_gone": f"the server went away ({result.detail})",
              "timeout": f"timed out after {recorder.timeout:.0f} s"}.get(result.ended, result.ended)
    print(f"jamserver record: {reason}; saved {result.seconds:.2f} s in {result.clips} clips", file=sys.stderr)
    return EXIT_GONE
