"""Server limits and knobs, one frozen object shared by the app, rooms and fan-out."""

from __future__ import annotations

from dataclasses import dataclass

from jamserver.jam.validation import StepLimits
from jamserver.server.transport.limits import TRUSTED_PROXIES


@dataclass(frozen=True)
class ServerConfig:
    max_rooms: int = 64
    max_listeners: int = 1000  # per room
    max_message_bytes: int = 16 * 1024
    prompts_per_minute: int = 30  # per connection
    allowed_origins: tuple[str, ...] = ()  # empty: any origin
    lookahead_clips: int = 1
    idle_room_seconds: float = 30.0  # a room with nobody connected ends after this
    max_rooms_per_address: int = 4  # live rooms created from one client address (not a trusted proxy's own)
    trusted_proxies: frozenset[str] = TRUSTED_PROXIES
    settings_per_minute: int = 120  # settings messages per connection
    listener_queue_frames: int = 8
    slow_listener_seconds: float = 20.0  # stuck this long at a full queue: closed with 1013
    catch_up_clips: int = 2
    join_timeout_seconds: float = 10.0
    max_batch: int = 8
    default_steps: int = 50  # a new room's num_inference_steps
    default_denoising: float = 0.75  # and its denoising (prompts without their own)
    bitrate_kbps: int = 128
    crossfade_seconds: float = 0.03
    uploads_enabled: bool = True
    max_upload_bytes: int = 20 * 1024 * 1024
    uploads_per_minute: int = 6  # per client address
    max_steps: int = 50  # num_inference_steps a room or REST request may ask for
    max_denoising_steps: int = 50  # steps a clip actually runs: num_inference_steps x denoising
    rest_queue: int = 8  # REST requests waiting or running; beyond it 429
    rest_timeout_seconds: float = 60.0  # a REST request not done by then gets 503 (it runs below live rooms)
    max_request_bytes: int = 64 * 1024  # HTTP request bodies; beyond it 413
    # Every member plays stream time S at t0 + S + playout_delay (t0: the room's first clip left the server): time
    # for a clip to reach 1,000 listeners (p99 spread 0.21 s, PERFORMANCE.md) and for a page to start playing it.
    playout_delay: float = 1.0
    # A cut-in is planned this much beyond the playhead plus the expected generation time: to reach every member
    # and be spliced in before they play its first MP3 frame.
    cut_margin: float = 0.35

    def __post_init__(self) -> None:
        for name in ("max_rooms", "max_listeners", "max_message_bytes", "prompts_per_minute",
                     "listener_queue_frames", "max_batch", "bitrate_kbps", "max_upload_bytes",
                     "uploads_per_minute", "default_steps", "max_steps", "max_denoising_steps", "rest_queue",
                     "max_request_bytes", "max_rooms_per_address", "settings_per_minute"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.lookahead_clips < 0 or self.catch_up_clips < 0:
            raise ValueError("lookahead_clips and catch_up_clips must be >= 0")
        if not self.rest_timeout_seconds > 0:
            raise ValueError("rest_timeout_seconds must be positive")
        if not 0 < self.default_denoising <= 1:
            raise ValueError(f"denoising must be in (0, 1], got {self.default_denoising}")
        for name in ("playout_delay", "cut_margin"):
            if not 0 <= getattr(self, name) <= 10:
                raise ValueError(f"{name} must be between 0 and 10 seconds")

    @property
    def step_limits(self) -> StepLimits:
        return StepLimits(self.max_steps, self.max_denoising_steps)

    def origin_allowed(self, origin: str | None) -> bool:
        """Browsers send Origin; scripts may not. No list configured means any origin."""
        if not self.allowed_origins or origin is None:
            return True
        return origin.rstrip("/") in {o.rstrip("/") for o in self.allowed_origins}
