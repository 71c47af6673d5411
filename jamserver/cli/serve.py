"""`jamserver serve`: load the model, build the app, run it on uvicorn."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import socket

from jamserver.jam.session import Settings
from jamserver.server.config import ServerConfig
from pipeline.seed_store import DEFAULT_MAX_SEEDS, SeedStore
from pipeline.seeds import SeedLibrary

DEFAULT_CHECKPOINT = "riffusion/riffusion-model-v1"
SEND_BUFFER_BYTES = 256 * 1024  # ~9 s of a room's stream; far above any link's bandwidth-delay need
log = logging.getLogger("jamserver")


def register(parser: argparse.ArgumentParser, name: str) -> None:
    model = parser.add_argument_group("model")
    model.add_argument("--checkpoint", default=None,
                       help=f"hub id, local diffusers directory, 'mini' or 'tiny' (default: {DEFAULT_CHECKPOINT}, "
                            "falling back to the built-in mini model when it cannot be had)")
    model.add_argument("--no-fallback", action="store_true",
                       help="fail instead of falling back to the built-in mini model")
    model.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    model.add_argument("--steps", type=int, default=None,
                       help=f"a new room's scheduler steps (default: {Settings.num_inference_steps}, or what the model "
                            "recommends: 20 on the built-in mini model, which keeps it real-time on a CPU core)")
    model.add_argument("--scheduler", default=None, choices=["ddim", "dpm++", "lcm", "pndm", "euler"],
                       help="denoising scheduler (default: the checkpoint's own)")
    model.add_argument("--compile", action="store_true", help="torch.compile the UNet (slow start, faster steps)")
    model.add_argument("--no-freeze", action="store_true",
                       help="run the UNet and VAE eagerly "
                            "(default on a CPU: frozen TorchScript graphs, ~30%% faster steps)")
    model.add_argument("--channels-last", action="store_true", help="channels_last memory format for the UNet")
    model.add_argument("--tiny-vae", default=None, help="AutoencoderTiny checkpoint id or path for faster decoding")
    model.add_argument("--lora", default=None, help="LoRA weights id or path (e.g. LCM-LoRA)")
    model.add_argument("--max-batch", type=int, default=8, help="most clip jobs advanced in one UNet call")
    model.add_argument("--threads", type=int, default=None,
                       help="torch threads per worker (default on CPU: half the cores, since the device thread "
                            "and the DSP thread compute at the same time)")

    net = parser.add_argument_group("network and limits")
    net.add_argument("--host", default="127.0.0.1")
    net.add_argument("--port", type=int, default=3013)
    net.add_argument("--max-rooms", type=int, default=ServerConfig.max_rooms)
    net.add_argument("--max-listeners", type=int, default=ServerConfig.max_listeners, help="per room")
    net.add_argument("--max-message-bytes", type=int, default=ServerConfig.max_message_bytes)
    net.add_argument("--prompts-per-minute", type=int, default=ServerConfig.prompts_per_minute,
                     help="per connection")
    net.add_argument("--allowed-origin", action="append", default=[],
                     help="accept WebSockets only from this Origin (repeatable; none = any)")
    net.add_argument("--lookahead-clips", type=int, default=ServerConfig.lookahead_clips,
                     help="clips generated beyond the one playing")
    net.add_argument("--idle-room-seconds", type=float, default=ServerConfig.idle_room_seconds)
    net.add_argument("--listener-queue-frames", type=int, default=ServerConfig.listener_queue_frames,
                     help="frames queued per listener before the oldest clip is dropped")
    net.add_argument("--slow-listener-seconds", type=float, default=ServerConfig.slow_listener_seconds,
                     help="a listener making no progress this long with a full queue is closed (1013)")
    net.add_argument("--send-buffer-bytes", type=int, default=SEND_BUFFER_BYTES,
                     help="kernel send buffer per connection; small, so a slow listener backs up into its "
                          "frame queue (where old clips are dropped) instead of megabytes of stale audio")
    net.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    uploads = parser.add_argument_group("custom seeds (uploads)")
    uploads.add_argument("--data-dir", default=None,
                         help="where uploaded seeds are kept (default: $JAMSERVER_DATA_DIR, else "
                              "$XDG_DATA_HOME/jamserver, else ~/.local/share/jamserver)")
    uploads.add_argument("--no-uploads", action="store_true", help="refuse POST /seed_images (403)")
    uploads.add_argument("--max-upload-bytes", type=int, default=ServerConfig.max_upload_bytes,
                         help="larger uploads are refused with 413 before they are read")
    uploads.add_argument("--uploads-per-minute", type=int, default=ServerConfig.uploads_per_minute,
                         help="per client address")
    uploads.add_argument("--max-custom-seeds", type=int, default=DEFAULT_MAX_SEEDS,
                         help="stored uploads; the least recently used goes when a new one would pass this")
    parser.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        max_rooms=args.max_rooms,
        max_listeners=args.max_listeners,
        max_message_bytes=args.max_message_bytes,
        prompts_per_minute=args.prompts_per_minute,
        allowed_origins=tuple(args.allowed_origin),
        lookahead_clips=args.lookahead_clips,
        idle_room_seconds=args.idle_room_seconds,
        listener_queue_frames=args.listener_queue_frames,
        slow_listener_seconds=args.slow_listener_seconds,
        max_batch=args.max_batch,
        uploads_enabled=not args.no_uploads,
        max_upload_bytes=args.max_upload_bytes,
        uploads_per_minute=args.uploads_per_minute,
    )


def seed_library(args: argparse.Namespace) -> SeedLibrary:
    """The shipped seeds plus the custom seed store under --data-dir."""
    return SeedLibrary(store=SeedStore.in_data_dir(args.data_dir, args.max_custom_seeds))


def cpu_threads(requested: int | None) -> int:
    """Threads for torch's CPU kernels: two worker threads compute at once, so each gets half the cores.

    Oversubscribed OpenMP teams spin against each other; on a busy 2-core machine that made a clip ~10x slower.
    """
    if requested is not None:
        if requested < 1:
            raise ValueError("--threads must be at least 1")
        return requested
    return max(1, (os.cpu_count() or 2) // 2)


def run(args: argparse.Namespace) -> int:
    import torch
    import uvicorn

    from jamserver.server.app import create_app
    from pipeline.model.loading import CheckpointError, load_pipeline

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
        threads = cpu_threads(args.threads)
        seeds = seed_library(args)
    except ValueError as error:
        log.error("bad option: %s", error)
        return 2
    torch.set_num_threads(threads)
    checkpoint = args.checkpoint or DEFAULT_CHECKPOINT
    try:
        model = load_pipeline(
            checkpoint,
            device=args.device,
            scheduler=args.scheduler,
            compile=args.compile,
            freeze=False if args.no_freeze else None,
            channels_last=args.channels_last,
            tiny_vae=args.tiny_vae,
            lora=args.lora,
            fallback=args.checkpoint is None and not args.no_fallback,
        )
    except CheckpointError as error:
        log.error("%s", error)
        return 2
    if model.demo:
        log.warning("DEMO MODEL: running the built-in tiny model with random weights. It makes no music; "
                    "use --checkpoint with a riffusion model for real sound.")
    steps = args.steps or model.recommended_steps or Settings.num_inference_steps
    config = dataclasses.replace(config, default_steps=steps)
    app = create_app(config, model, seeds=seeds)
    # websockets-sansio: uvicorn's `websockets` backend is deprecated. Sansio queues every message of one TCP read
    # at once (hundreds, when they are small); each reader's own backpressure (Listener.wait_for_room) keeps such
    # a flood from overflowing the connection's reply queue.
    server = uvicorn.Server(uvicorn.Config(
        app, host=args.host, port=args.port, ws="websockets-sansio", ws_per_message_deflate=False,
        ws_max_size=max(1 << 20, 4 * config.max_message_bytes), log_level=args.log_level, lifespan="on",
    ))
    server.run(sockets=[listening_socket(args.host, args.port, send_buffer_bytes=args.send_buffer_bytes)])
    return 0


def listening_socket(host: str, port: int, *, send_buffer_bytes: int) -> socket.socket:
    """The server socket; accepted connections inherit its send buffer size (and lose autotuning)."""
    if send_buffer_bytes < 4096:
        raise ValueError("send_buffer_bytes must be at least 4096")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=2048)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer_bytes)
    return sock
