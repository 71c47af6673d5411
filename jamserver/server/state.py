"""What every request handler of one app shares, built once when the app starts."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from jamserver.server.config import ServerConfig
from jamserver.server.device.engine import Engine
from jamserver.server.http.rest import RestQueue
from jamserver.server.http.uploads import UploadGate
from jamserver.server.metrics import Metrics
from jamserver.server.room.fanout import FanoutCounters
from jamserver.server.room.registry import RoomRegistry
from pipeline.model.loading import LoadedModel
from pipeline.seeds import SeedLibrary


@dataclass
class JamState:
    """Everything a request handler needs; `request.app.state.jam`."""

    config: ServerConfig
    model: LoadedModel
    seeds: SeedLibrary
    engine: Engine
    rooms: RoomRegistry
    metrics: Metrics
    counters: FanoutCounters
    executor: ThreadPoolExecutor
    uploads: UploadGate
    rest_queue: RestQueue
