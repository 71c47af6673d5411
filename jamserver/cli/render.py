"""`jamserver render`: a jam rendered in-process, no server, to the same MP3 + timeline (+ WAV, strip).

Exit codes: 0 all clips rendered; 2 bad arguments or an unusable checkpoint; 1 generation failed
(the clips made so far are saved); 128 + N when stopped by signal N, files saved and valid.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from jamserver.cli.options import DEFAULT_CHECKPOINT
from jamserver.cli.record import add_output_arguments, check_output_paths
from jamserver.jam.prompt import Prompt
from jamserver.jam.session import DEFAULT_SEED, JamSession
from jamserver.jam.settings import Settings
from jamserver.recording.files import RecordingFiles, describe_clip

if TYPE_CHECKING:  # torch-heavy: imported when a render actually runs
    from pipeline.model.loading import LoadedModel
    from pipeline.seeds import SeedLibrary

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
OPTION_OF_SETTING = {"seed_image_id": "--seed-image", "num_inference_steps": "--steps",
                     "alpha_velocity": "--alpha-velocity", "denoising": "--denoising", "guidance": "--guidance",
                     "seed": "--seed", "prompt": "--prompt"}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def register(parser: argparse.ArgumentParser, name: str) -> None:
    jam = parser.add_argument_group("jam")
    jam.add_argument("--prompt", action="append", required=True, metavar="TEXT",
                     help="prompts in order (repeatable); the next one is queued at each wrap, then they cycle")
    jam.add_argument("--clips", type=_positive_int, required=True,
                     help="how many clips to render (5.12 s each from a 512-wide seed image)")
    jam.add_argument("--prompt-every-clips", type=_positive_int, default=None, metavar="K",
                     help="queue the next prompt every K clips instead of at each wrap")
    jam.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the first prompt")
    jam.add_argument("--seed-image", default=Settings.seed_image_id,
                     help="seed image id: a shipped one or an uploaded custom-... one from --data-dir")
    jam.add_argument("--data-dir", default=None,
                     help="the server's data directory, where uploaded seeds are kept (default as for serve)")
    jam.add_argument("--steps", type=int, default=Settings.num_inference_steps, help="scheduler steps")
    jam.add_argument("--denoising", type=float, default=Settings.denoising)
    jam.add_argument("--guidance", type=float, default=Settings.guidance)
    jam.add_argument("--alpha-velocity", type=float, default=Settings.alpha_velocity,
                     help="how far each clip moves towards the next prompt")
    model = parser.add_argument_group("model")
    model.add_argument("--checkpoint", default=None,
                       help=f"hub id, local diffusers directory, 'mini' or 'tiny' (default: {DEFAULT_CHECKPOINT}, "
                            "falling back to the built-in mini model when it cannot be had)")
    model.add_argument("--no-fallback", action="store_true", help="fail instead of falling back to the built-in mini model")
    model.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    add_output_arguments(parser)
    parser.set_defaults(func=run)


def _usage_error(message: str) -> int:
    print(f"jamserver render: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _option_error(error: ValueError) -> str:
    """A settings/prompt refusal, named by the command-line option rather than the protocol field."""
    field = getattr(error, "field", None)
    option = OPTION_OF_SETTING.get(field or "")
    return f"{option}: {error}" if option else str(error)


def jam_session(args: argparse.Namespace, seed_ids: list[str]) -> tuple[JamSession, list[Prompt]]:
    """The session the arguments describe, and the prompt list (the first one seeded); ValueError if bad."""
    if args.seed_image not in seed_ids:
        raise ValueError(f"--seed-image: unknown id {args.seed_image!r} (known: {', '.join(seed_ids)})")
    settings = Settings(seed_image_id=args.seed_image, num_inference_steps=args.steps,
                        alpha_velocity=args.alpha_velocity, denoising=args.denoising, guidance=args.guidance)
    prompts = [Prompt(text) for text in args.prompt]
    prompts[0] = Prompt(args.prompt[0], seed=args.seed)
    return JamSession(settings, first_prompt=prompts[0]), prompts


class SignalStop:
    """SIGINT/SIGTERM end the render: at once during generation, otherwise after the clip being written."""

    class Interrupted(Exception):
        pass

    def __init__(self) -> None:
        self.signum: int | None = None
        self._interruptible = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> SignalStop:
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signum = signum
        if self._interruptible:
            self._interruptible = False
            raise SignalStop.Interrupted()

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        if self.signum is not None:
            raise SignalStop.Interrupted()
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False


def run(args: argparse.Namespace) -> int:
    from pipeline.model.loading import CheckpointError, load_pipeline
    from pipeline.seed_store import SeedStore
    from pipeline.seeds import SeedLibrary

    report: Callable[[str], None] = (lambda line: None) if args.quiet else (
        lambda line: print(line, file=sys.stderr, flush=True))
    try:
        check_output_paths(args)
        seeds = SeedLibrary(store=SeedStore.in_data_dir(args.data_dir))
        session, prompts = jam_session(args, seeds.seed_ids())
        files = RecordingFiles(args.out, timeline_path=args.timeline, wav_path=args.wav, strip_path=args.strip)
        model = load_pipeline(args.checkpoint or DEFAULT_CHECKPOINT, device=args.device,
                              fallback=args.checkpoint is None and not args.no_fallback)
        model.pipeline.latent_shape(seeds.load_seed(args.seed_image).size, f"--seed-image {args.seed_image}")
    except CheckpointError as error:
        return _usage_error(str(error))
    except (ValueError, OSError) as error:
        return _usage_error(_option_error(error) if isinstance(error, ValueError) else str(error))
    if model.demo:
        print("jamserver render: DEMO MODEL: the built-in tiny model has random weights and makes no music; "
              "use --checkpoint with a riffusion model for real sound.", file=sys.stderr)
    return render(args, model, session, prompts, seeds, files, report)


def render(args: argparse.Namespace, model: LoadedModel, session: JamSession, prompts: list[Prompt],
           seeds: SeedLibrary, files: RecordingFiles, report: Callable[[str], None]) -> int:
    """Render `args.clips` clips into `files`; always leaves them finished and valid."""
    from jamserver.recording.offline import OfflineJam, PromptRotation
    from pipeline.audio.dsp import SpectrogramConverter
    from pipeline.audio.params import SpectrogramParams

    jam = OfflineJam(model.pipeline, SpectrogramConverter(SpectrogramParams(), device=model.device), session, seeds)
    rotation = PromptRotation(prompts, args.prompt_every_clips)
    files.open({"source": "render", "room": None,
                "model": {"checkpoint": model.checkpoint, "device": str(model.device), "demo": model.demo},
                "settings": asdict(session.settings)})
    ended, last_alpha = "failed", None
    with SignalStop() as stop:
        try:
            for index in range(args.clips):
                queued = rotation.next_prompt(index, last_alpha)
                if queued is not None:
                    session.queue_prompt(queued)
                with stop.interruptible():
                    frame = jam.render_next()
                entry = files.add_clip(frame)
                last_alpha = frame["alpha"]
                report(describe_clip(entry))
            ended = "clips"
        except (SignalStop.Interrupted, KeyboardInterrupt):
            ended = "interrupted"
        except Exception as error:
            print(f"jamserver render: clip {len(files.timeline.entries)} failed: "
                  f"{type(error).__name__}: {error}", file=sys.stderr)
        finally:
            files.append_tail(jam.finish())
            for note in files.finish(ended):
                report(note)
    if ended == "interrupted":
        return 128 + (stop.signum or signal.SIGINT)
    return EXIT_OK if ended == "clips" else EXIT_FAILED
