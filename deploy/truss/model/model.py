"""Truss entry point: the original riffusion REST API (POST /run_inference) as a Baseten model.

Truss builds ``Model(config=..., data_dir=..., secrets=...)``, calls ``load()`` once and ``predict(request)`` per
request. The request/response are the original InferenceInput/InferenceOutput, produced by the very code the jam
server's REST route uses (``jamserver.server.http.compat`` + ``pipeline.render``), so a client cannot tell the two apart.

Which checkpoint to load comes from environment variables (``config.yaml`` declares them; Truss sets them in the
container). The same names in ``config["environment_variables"]`` are read too, so a Model built from a config
dict alone (tests, notebooks) behaves as deployed; the real environment wins when both set one.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHECKPOINT_ENV = "RIFFUSION_CHECKPOINT"
FALLBACK_ENV = "RIFFUSION_FALLBACK_TO_TINY"
DEVICE_ENV = "RIFFUSION_DEVICE"
SCHEDULER_ENV = "RIFFUSION_SCHEDULER"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})

log = logging.getLogger(__name__)


def _make_project_importable() -> None:
    """Deployed, ``pipeline``/``jamserver`` sit in the Truss ``packages/`` dir; in the repository, 3 levels up."""
    if importlib.util.find_spec("pipeline") is None:
        repo = Path(__file__).resolve().parents[3]
        if (repo / "pipeline").is_dir():
            sys.path.insert(0, str(repo))


_make_project_importable()

from jamserver.server.http.compat import CompatError, inference_output, parse_inference_input  # noqa: E402
from pipeline.audio.dsp import SpectrogramConverter  # noqa: E402
from pipeline.audio.params import SpectrogramParams  # noqa: E402
from pipeline.model.choices import DEFAULT_CHECKPOINT  # noqa: E402
from pipeline.model.loading import LoadedModel, load_pipeline  # noqa: E402
from pipeline.render import render_clip  # noqa: E402
from pipeline.seeds import SeedLibrary  # noqa: E402


def _flag(name: str, value: str) -> bool:
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{name} must be one of true/false/1/0/yes/no/on/off, got {value!r}")


@dataclass(frozen=True)
class ModelSettings:
    """What `load()` loads: checkpoint (hub id, directory or "tiny"), tiny fallback, device, scheduler."""

    checkpoint: str = DEFAULT_CHECKPOINT
    fallback_to_tiny: bool = False
    device: str | None = None
    scheduler: str | None = None

    @classmethod
    def from_environment(cls, configured: Mapping[str, Any], environ: Mapping[str, str]) -> ModelSettings:
        """Settings from `configured` (config.yaml's environment_variables), overridden by `environ`."""
        if not isinstance(configured, Mapping):
            raise ValueError(f"environment_variables must be a mapping, got {type(configured).__name__}")

        def read(name: str) -> str:
            value = environ.get(name, configured.get(name))
            return "" if value is None else str(value).strip()

        return cls(
            checkpoint=read(CHECKPOINT_ENV) or DEFAULT_CHECKPOINT,
            fallback_to_tiny=_flag(FALLBACK_ENV, read(FALLBACK_ENV)),
            device=read(DEVICE_ENV) or None,
            scheduler=read(SCHEDULER_ENV) or None,
        )


class Model:
    """One riffusion pipeline answering InferenceInput requests one at a time."""

    def __init__(self, **kwargs: Any) -> None:
        config = kwargs.get("config") or {}
        self.settings = ModelSettings.from_environment(config.get("environment_variables") or {}, os.environ)
        self.loaded: LoadedModel | None = None
        self._converter: SpectrogramConverter | None = None
        self._seeds: SeedLibrary | None = None
        # Truss may run predict() on several threads (runtime.predict_concurrency); the pipeline is not re-entrant.
        self._lock = threading.Lock()

    def load(self) -> None:
        """Load the checkpoint once per replica; `fallback_to_tiny` trades a failed start for the built-in mini model."""
        self.loaded = load_pipeline(
            self.settings.checkpoint,
            device=self.settings.device,
            scheduler=self.settings.scheduler,
            fallback=self.settings.fallback_to_tiny,
        )
        self._converter = SpectrogramConverter(SpectrogramParams(), device=self.loaded.device)
        self._seeds = SeedLibrary()
        if self.loaded.demo:
            log.warning("serving the built-in tiny DEMO model: random weights, no music (%s)",
                        "; ".join(self.loaded.notes))

    def predict(self, request: dict) -> dict:
        """InferenceInput -> InferenceOutput; a request the original server answered 400 gets {"error": reason}."""
        if self.loaded is None or self._converter is None or self._seeds is None:
            return {"error": "model is not loaded yet: call load() first"}
        try:
            clip_request = parse_inference_input(request, self._seeds, self.loaded.pipeline.latent_shape)
            with self._lock:
                clip = render_clip(self.loaded.pipeline, self._converter, clip_request)
        except (CompatError, ValueError) as error:
            return {"error": str(error)}
        return inference_output(clip)
