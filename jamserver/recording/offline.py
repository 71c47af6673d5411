"""A room without a server, for `jamserver render`: the same decisions and sound as a live room.

The pieces a server room uses, driven one clip at a time in the calling thread: JamSession plans each
clip (alphas, wraps, seeds, queued prompts), `render_clip` makes it, RoomStream crossfades and
encodes it into one continuous MP3, and each clip comes out as the very "clip" frame a WebSocket
member would receive, so the recorder's file writers take it unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from jamserver.jam.prompt import Prompt
from jamserver.jam.session import JamSession
from jamserver.server.config import ServerConfig
from jamserver.server.room.generation import clip_frame, clip_request
from jamserver.server.room.stream import RoomStream
from pipeline.audio.dsp import SpectrogramConverter
from pipeline.diffusion.riffusion import RiffusionPipeline
from pipeline.render import jpeg_bytes, render_clip
from pipeline.seeds import SeedLibrary

_WRAP_ALPHA = 1.0 - 1e-9


class PromptRotation:
    """When an offline jam queues its next prompt: at each wrap (a clip reached alpha 1), or every K clips.

    The first prompt is the session's own; the others follow in order, then the list starts over.
    """

    def __init__(self, prompts: Sequence[Prompt], every_clips: int | None = None) -> None:
        if not prompts:
            raise ValueError("prompts must not be empty")
        if every_clips is not None and (isinstance(every_clips, bool) or not isinstance(every_clips, int)
                                        or every_clips < 1):
            raise ValueError(f"every_clips must be an integer >= 1, got {every_clips!r}")
        self.prompts = list(prompts)
        self.every_clips = every_clips
        self._taken = 0  # prompts handed out, the first one included

    def next_prompt(self, index: int, last_alpha: float | None) -> Prompt | None:
        """The prompt to queue before planning clip `index` (0-based), if one is due."""
        if index == 0 or len(self.prompts) < 2:
            return None
        if self.every_clips is not None:
            due = index % self.every_clips == 0
        else:
            due = last_alpha is not None and last_alpha >= _WRAP_ALPHA
        if not due:
            return None
        self._taken += 1
        return self.prompts[self._taken % len(self.prompts)]


class OfflineJam:
    """One room's jam rendered in order, as fast as the pipeline allows. Not thread-safe."""

    def __init__(self, pipeline: RiffusionPipeline, converter: SpectrogramConverter, session: JamSession,
                 seeds: SeedLibrary, *, config: ServerConfig | None = None) -> None:
        config = config or ServerConfig()
        self.pipeline = pipeline
        self.converter = converter
        self.session = session
        self.seeds = seeds
        self.stream = RoomStream(converter.params.sample_rate, bitrate_kbps=config.bitrate_kbps,
                                 crossfade_seconds=config.crossfade_seconds)

    def render_next(self) -> dict[str, Any]:
        """Plan, render and join the next clip; its clip frame (audio: the next MP3 stream bytes)."""
        plan = self.session.plan_next_clip()
        try:
            clip = render_clip(self.pipeline, self.converter, clip_request(plan, self.seeds))
            piece = self.stream.append(clip.audio, clip.continuation)
        except BaseException:
            self.session.clip_failed(plan)
            raise
        self.session.clip_delivered(plan, time.monotonic(), piece.duration)
        return clip_frame(plan, piece, image=jpeg_bytes(clip.image), sample_rate=self.stream.sample_rate,
                          gen_seconds=clip.gen_seconds, playhead=piece.stream_time)

    def finish(self) -> bytes:
        """The encoder's last frames: the stream ends here."""
        return self.stream.finish()
