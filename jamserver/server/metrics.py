"""Prometheus metrics of the jam server, in one registry per app so tests can run several apps."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.clips = Counter("jam_clips", "Clips generated and streamed", registry=r)
        self.clip_failures = Counter("jam_clip_failures", "Clips whose generation failed", registry=r)
        self.cuts = Counter("jam_cuts", "Cut-ins spliced into a room's stream", registry=r)
        self.late_cuts = Counter("jam_late_cuts", "Cut-ins that missed their beat and landed on a later one",
                                 registry=r)
        self.generation_seconds = Histogram(
            "jam_generation_seconds",
            "Wall time from submitting a clip to its audio being ready",
            buckets=(0.25, 0.5, 1, 2, 3, 5, 8, 13, 30, 60),
            registry=r,
        )
        self.connections = Gauge("jam_connections", "Open WebSocket connections", registry=r)
        self.rooms = Gauge("jam_rooms", "Live rooms", registry=r)
        self.protocol_errors = Counter("jam_protocol_errors", "Client messages refused", registry=r)
        self.rest_requests = Counter("jam_rest_requests", "POST /run_inference requests", ["status"], registry=r)

    def watch(self, fanout: Any, engine: Any | None) -> None:
        """Expose counters that other objects keep as plain integers (no locking on the hot path).

        `engine` is None on a cluster front-end: its clips are made by workers, which have metrics of their own."""
        self.registry.register(_CountersCollector(fanout, engine))

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric (what /metrics serves)."""
        return generate_latest(self.registry)


class _CountersCollector(Collector):
    """Fan-out and engine counters, read at scrape time."""

    def __init__(self, fanout: Any, engine: Any) -> None:
        self._fanout = fanout
        self._engine = engine

    def collect(self) -> Iterator[CounterMetricFamily]:
        rows = (
            ("jam_bytes_sent", "Bytes sent to WebSocket listeners", self._fanout.bytes_sent),
            ("jam_frames_dropped", "Frames dropped for listeners that fell behind", self._fanout.frames_dropped),
            ("jam_listeners_closed_slow", "Listeners closed (1013) for staying behind", self._fanout.closed_slow),
        )
        if self._engine is not None:
            rows += self._engine_rows()
        for name, documentation, value in rows:
            yield CounterMetricFamily(name, documentation, value=value)

    def _engine_rows(self) -> tuple[tuple[str, str, float], ...]:
        return (
            ("jam_unet_calls", "Batched UNet calls made by the engine", self._engine.unet_calls),
            ("jam_batched_rows", "Clip jobs advanced, summed over UNet calls", self._engine.batched_rows),
            ("jam_engine_busy_seconds", "Seconds the device thread spent on steps (and on decodes off a CPU)",
             self._engine.busy_seconds),
        )
