"""`jamserver serve`: load the model, build the app, run it on uvicorn."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import resource
import socket

from jamserver.cli.options import add_model_options, cpu_threads, load_model
from jamserver.cli.worker import default_name
from jamserver.cluster.frontend import FrontendOptions, RemoteModel
from jamserver.cluster.keys import OUT_STREAM_MAXLEN
from jamserver.cluster.lease import DEFAULT_LEASE_SECONDS
from jamserver.jam.settings import Settings
from jamserver.server.config import ServerConfig
from jamserver.server.transport.limits import (
    DEFAULT_MAX_PER_ADDRESS,
    TRUSTED_PROXIES,
    ConnectionLimits,
    default_max_connections,
)
from pipeline.model.choices import DEFAULT_CHECKPOINT
from pipeline.seed_store import DEFAULT_MAX_SEEDS, SeedStore
from pipeline.seeds import SeedLibrary

SEND_BUFFER_BYTES = 256 * 1024  # ~9 s of a room's stream; far above any link's bandwidth-delay need
log = logging.getLogger("jamserver")


def register(parser: argparse.ArgumentParser, name: str) -> None:
    model = add_model_options(parser)
    model.add_argument("--steps", type=int, default=None,
                       help=f"a new room's scheduler steps (default: {Settings.num_inference_steps}, or what the model "
                            "recommends: 20 on the built-in mini model, which keeps it real-time on a CPU core)")
    model.add_argument("--denoising", type=float, default=None,
                       help=f"a new room's denoising (default: {Settings.denoising}, or what the model recommends: "
                            "0.9 on mini, whose prompts are hardly heard over the seed's drums at 0.75)")

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
    net.add_argument("--playout-delay", type=float, default=ServerConfig.playout_delay,
                     help="seconds between a clip leaving the server and members playing it (the room's playout clock)")
    net.add_argument("--cut-margin", type=float, default=ServerConfig.cut_margin,
                     help="seconds a prompt's cut-in is planned beyond the playhead plus the generation time")
    net.add_argument("--idle-room-seconds", type=float, default=ServerConfig.idle_room_seconds,
                     help="a room nobody is connected to ends after this grace period")
    net.add_argument("--max-rooms-per-address", type=int, default=ServerConfig.max_rooms_per_address,
                     help="live rooms one client address may have created")
    net.add_argument("--settings-per-minute", type=int, default=ServerConfig.settings_per_minute,
                     help="settings messages per connection (bursts of 10)")
    net.add_argument("--listener-queue-frames", type=int, default=ServerConfig.listener_queue_frames,
                     help="frames queued per listener before the oldest clip is dropped")
    net.add_argument("--slow-listener-seconds", type=float, default=ServerConfig.slow_listener_seconds,
                     help="a listener making no progress this long with a full queue is closed (1013)")
    net.add_argument("--send-buffer-bytes", type=int, default=SEND_BUFFER_BYTES,
                     help="kernel send buffer per connection; small, so a slow listener backs up into its "
                          "frame queue (where old clips are dropped) instead of megabytes of stale audio")
    net.add_argument("--max-steps", type=int, default=ServerConfig.max_steps,
                     help="most num_inference_steps a room or /run_inference request may ask for (lowered to what "
                          "the scheduler can run)")
    net.add_argument("--max-denoising-steps", type=int, default=ServerConfig.max_denoising_steps,
                     help="most steps one clip may run: num_inference_steps x denoising")
    net.add_argument("--rest-queue", type=int, default=ServerConfig.rest_queue,
                     help="/run_inference requests waiting or running; beyond it 429")
    net.add_argument("--rest-timeout", type=float, default=ServerConfig.rest_timeout_seconds,
                     help="seconds a /run_inference request may wait below the live rooms; then 503")
    net.add_argument("--max-request-bytes", type=int, default=ServerConfig.max_request_bytes,
                     help="largest HTTP request body; beyond it 413")
    net.add_argument("--max-connections", type=int, default=None,
                     help="open connections in all; beyond it the oldest connection still waiting for its request "
                          "makes room, or the newcomer gets HTTP 503 (default: the open-files limit minus 256, "
                          "at most 10000)")
    net.add_argument("--max-connections-per-address", type=int, default=DEFAULT_MAX_PER_ADDRESS,
                     help="open connections from one client address (an IPv6 /64 counts as one); beyond it HTTP 503")
    net.add_argument("--trusted-proxy", action="append", default=None,
                     help="address of a reverse proxy (repeatable; default: 127.0.0.1 and ::1): its X-Forwarded-For "
                          "names the client, and it is not held to the per-address caps itself")
    net.add_argument("--request-timeout", type=float, default=ConnectionLimits.request_seconds,
                     help="seconds a connection has to send a complete HTTP request or WebSocket handshake")
    net.add_argument("--shutdown-seconds", type=int, default=8,
                     help="on SIGTERM, seconds connections and requests get to finish before they are cut off")
    net.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    cluster = parser.add_argument_group("cluster front-end (docs/OPERATIONS.md)")
    cluster.add_argument("--redis", default=None, metavar="URL",
                         help="run as a front-end of the cluster at redis://HOST:PORT/DB: load no model, have "
                              "`jamserver worker` processes make the clips (--checkpoint names what they run)")
    cluster.add_argument("--name", default=None,
                         help="this front-end's name in Redis, unique in the cluster (default: HOST-PID)")
    cluster.add_argument("--lease-seconds", type=float, default=None,
                         help="how long a room's lease lasts unrenewed: a dead front-end's rooms move after about "
                              "this long (default: 2)")
    cluster.add_argument("--out-stream-frames", type=int, default=None,
                         help="frames a room's out stream keeps for late joiners and stalled front-ends (default: 16)")

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
        playout_delay=args.playout_delay,
        cut_margin=args.cut_margin,
        idle_room_seconds=args.idle_room_seconds,
        max_rooms_per_address=args.max_rooms_per_address,
        settings_per_minute=args.settings_per_minute,
        trusted_proxies=trusted_proxies(args),
        listener_queue_frames=args.listener_queue_frames,
        slow_listener_seconds=args.slow_listener_seconds,
        max_batch=args.max_batch,
        uploads_enabled=not args.no_uploads,
        max_upload_bytes=args.max_upload_bytes,
        uploads_per_minute=args.uploads_per_minute,
        max_steps=args.max_steps,
        max_denoising_steps=args.max_denoising_steps,
        rest_queue=args.rest_queue,
        rest_timeout_seconds=args.rest_timeout,
        max_request_bytes=args.max_request_bytes,
    )


def seed_library(args: argparse.Namespace) -> SeedLibrary:
    """The shipped seeds plus the custom seed store under --data-dir."""
    return SeedLibrary(store=SeedStore.in_data_dir(args.data_dir, args.max_custom_seeds))


def connection_limits(args: argparse.Namespace) -> ConnectionLimits:
    """The connection caps, the total one defaulting to what the open-files limit allows (raised to its maximum)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    total = args.max_connections if args.max_connections is not None else default_max_connections(hard)
    if args.shutdown_seconds < 1:
        raise ValueError("--shutdown-seconds must be at least 1")
    return ConnectionLimits(max_connections=total, max_per_address=args.max_connections_per_address,
                            request_seconds=args.request_timeout, exempt=trusted_proxies(args))


def trusted_proxies(args: argparse.Namespace) -> frozenset[str]:
    return frozenset(args.trusted_proxy) if args.trusted_proxy else TRUSTED_PROXIES


def run(args: argparse.Namespace) -> int:
    from jamserver.server.app import create_app
    from jamserver.server.transport.guard import build_server

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_level != "debug":  # a line per hub request; the loader logs the download itself, file by file
        for client in ("httpx", "httpx2"):
            logging.getLogger(client).setLevel(logging.WARNING)
    try:
        config = config_from_args(args)
        limits = connection_limits(args)
        threads = cpu_threads(args.threads)
        seeds = seed_library(args)
    except ValueError as error:
        log.error("bad option: %s", error)
        return 2
    try:
        frontend = frontend_options(args)
    except ValueError as error:
        log.error("bad option: %s", error)
        return 2
    try:
        model = load_model(args, threads) if frontend is None else RemoteModel.named(args.checkpoint or DEFAULT_CHECKPOINT)
    except ValueError as error:  # a front-end's checkpoint whose config files say no geometry
        log.error("bad option: --checkpoint: %s", error)
        return 2
    if model is None:
        return 2
    recommended = model.recommended_settings
    try:
        config = dataclasses.replace(
            config,
            default_steps=args.steps or int(recommended.get("num_inference_steps", Settings.num_inference_steps)),
            default_denoising=args.denoising or recommended.get("denoising", Settings.denoising),
        )
    except ValueError as error:
        log.error("bad option: %s", error)
        return 2
    app = create_app(config, model, seeds=seeds, frontend=frontend)
    server = build_server(app, host=args.host, port=args.port, limits=limits, log_level=args.log_level,
                          ws_max_size=max(1 << 20, 4 * config.max_message_bytes),
                          shutdown_seconds=args.shutdown_seconds)
    log.info("connection limits: %d in all, %d per address, %g s for a request",
             limits.max_connections, limits.max_per_address, limits.request_seconds)
    server.run(sockets=[listening_socket(args.host, args.port, send_buffer_bytes=args.send_buffer_bytes)])
    return 0


def frontend_options(args: argparse.Namespace) -> FrontendOptions | None:
    """The cluster options when `--redis` is given (None: one process, as `make run`)."""
    if args.redis is None:
        if args.name or args.lease_seconds or args.out_stream_frames:
            raise ValueError("--name, --lease-seconds and --out-stream-frames need --redis")
        return None
    if not args.redis.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"--redis must be a redis://, rediss:// or unix:// URL, got {args.redis!r}")
    if args.lease_seconds is not None and not args.lease_seconds > 0:
        raise ValueError("--lease-seconds must be positive")
    return FrontendOptions(args.redis, args.name or default_name(),
                           lease_seconds=args.lease_seconds or DEFAULT_LEASE_SECONDS,
                           out_maxlen=args.out_stream_frames or OUT_STREAM_MAXLEN)


def listening_socket(host: str, port: int, *, send_buffer_bytes: int) -> socket.socket:
    """The server socket; accepted connections inherit its send buffer size (and lose autotuning)."""
    if send_buffer_bytes < 4096:
        raise ValueError("send_buffer_bytes must be at least 4096")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=2048)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer_bytes)
    return sock
