"""What every request handler of one app shares, built once when the app starts."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from jamserver.server.config import ServerConfig
from jamserver.server.engine import Engine
from jamserver.server.fanout import FanoutCounters
from jamserver.server.metrics import Metrics
from jamserver.server.rest import RestQueue
from jamserver.server.rooms import RoomRegistry
from jamserver.server.uploads import UploadGate
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
