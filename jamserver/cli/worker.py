"""`jamserver worker --redis URL`: load the model once, then make clip jobs from the cluster's job stream."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import socket

from jamserver.cli.options import add_model_options, cpu_threads, load_model

log = logging.getLogger("jamserver")


def register(parser: argparse.ArgumentParser, name: str) -> None:
    cluster = parser.add_argument_group("cluster")
    cluster.add_argument("--redis", required=True, metavar="URL", help="redis://HOST:PORT/DB of the cluster")
    cluster.add_argument("--name", default=None,
                         help="this worker's name in Redis, unique in the cluster (default: HOST-PID)")
    cluster.add_argument("--claim-after", type=float, default=None, metavar="SECONDS",
                         help="take over a job another worker left idle this long (default: twice this worker's "
                              "p99 generation time, at least 1 s)")
    cluster.add_argument("--heartbeat-seconds", type=float, default=1.0,
                         help="how often the worker says it lives; it counts as gone after three missed")
    cluster.add_argument("--max-attempts", type=int, default=None,
                         help="workers a clip job may be handed to; a job whose workers all died running it is "
                              "given up and its room told (default: 3)")
    cluster.add_argument("--metrics-port", type=int, default=None,
                         help="serve Prometheus metrics over HTTP on this port (default: none)")
    cluster.add_argument("--metrics-host", default="127.0.0.1", help="address for --metrics-port")
    cluster.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    add_model_options(parser)
    parser.set_defaults(func=run)


def default_name() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"{socket.gethostname()}-{os.getpid()}")[:64]


def check_options(args: argparse.Namespace) -> None:
    """Refuse nonsense before the model loads (that takes a while)."""
    from jamserver.cluster.keys import checked_name

    if not args.redis.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"--redis must be a redis://, rediss:// or unix:// URL, got {args.redis!r}")
    checked_name("--name", args.name or default_name())
    if args.claim_after is not None and args.claim_after <= 0:
        raise ValueError("--claim-after must be positive")
    if args.heartbeat_seconds <= 0:
        raise ValueError("--heartbeat-seconds must be positive")
    if args.max_batch < 1:
        raise ValueError("--max-batch must be at least 1")
    if args.max_attempts is not None and args.max_attempts < 1:
        raise ValueError("--max-attempts must be at least 1")
    if args.metrics_port is not None and not 0 < args.metrics_port < 65536:
        raise ValueError("--metrics-port must be 1-65535")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        check_options(args)
        threads = cpu_threads(args.threads)
    except ValueError as error:
        log.error("bad option: %s", error)
        return 2
    model = load_model(args, threads)
    if model is None:
        return 2

    from jamserver.cluster.worker import DEFAULT_MAX_ATTEMPTS, GenerationWorker
    from jamserver.cluster.worker_metrics import serve_metrics
    from jamserver.server.device.engine import Engine
    from pipeline.audio.dsp import SpectrogramConverter
    from pipeline.audio.params import SpectrogramParams

    engine = Engine(model.pipeline, SpectrogramConverter(SpectrogramParams(), device=model.device),
                    max_batch=args.max_batch)
    worker = GenerationWorker(args.redis, engine, name=args.name or default_name(),
                              heartbeat_seconds=args.heartbeat_seconds, claim_after=args.claim_after,
                              max_attempts=args.max_attempts or DEFAULT_MAX_ATTEMPTS)
    try:
        if args.metrics_port is not None:
            serve_metrics(worker, args.metrics_port, args.metrics_host)
            log.info("worker %s: metrics on http://%s:%d/metrics", worker.name, args.metrics_host, args.metrics_port)
        seconds = worker.warm_up()
        log.info("worker %s: model %s on %s, warm-up clip in %.2f s", worker.name, model.checkpoint, model.device,
                 seconds)
        asyncio.run(_serve(worker))
    finally:
        engine.close()
    return 0


async def _serve(worker) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await worker.run(stop)
