"""A worker's Prometheus metrics over HTTP (`jamserver worker --metrics-port N`): what its heartbeat says, and more.

Read at scrape time from the worker's and its engine's plain counters (no locking on the hot path), served by
prometheus_client's own small HTTP server on a thread, so a scrape never waits for the worker's event loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from jamserver.cluster.worker import GenerationWorker


class WorkerCollector(Collector):
    def __init__(self, worker: GenerationWorker) -> None:
        self._worker = worker

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        worker = self._worker
        stats = worker.engine.stats
        p99 = worker.p99_seconds()
        gauges = (
            ("jam_worker_slots", "Room clip jobs this worker runs at once (--max-batch)", worker.slots),
            ("jam_worker_running", "Clip jobs running now (room and REST)", worker.running),
            ("jam_worker_p99_seconds", "p99 generation time over the last 50 clips (-1 before the first)",
             -1.0 if p99 is None else p99),
            ("jam_worker_claim_after_seconds", "Idle time after which this worker takes over another's job",
             worker.claim_after()),
        )
        counters = (
            ("jam_worker_clips_done", "Clips made and delivered", worker.clips_done),
            ("jam_worker_jobs_claimed", "Jobs taken over from workers that stopped answering", worker.jobs_claimed),
            ("jam_worker_jobs_given_up", "Poison jobs: handed to more workers than --max-attempts, all of which died",
             worker.jobs_given_up),
            ("jam_worker_clips_failed", "Clip jobs that failed in the engine", stats.clips_failed),
            ("jam_unet_calls", "Batched UNet calls made by the engine", stats.unet_calls),
            ("jam_batched_rows", "Clip jobs advanced, summed over UNet calls", stats.batched_rows),
            ("jam_engine_busy_seconds", "Seconds the device thread spent on steps", stats.busy_seconds),
        )
        for name, documentation, value in gauges:
            yield GaugeMetricFamily(name, documentation, value=value)
        for name, documentation, value in counters:
            yield CounterMetricFamily(name, documentation, value=value)


def serve_metrics(worker: GenerationWorker, port: int, host: str = "127.0.0.1") -> None:
    """Serve /metrics (any path, as prometheus_client does) on `host:port` from a daemon thread."""
    registry = CollectorRegistry()
    registry.register(WorkerCollector(worker))
    start_http_server(port, addr=host, registry=registry)
