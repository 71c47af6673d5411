"""A room's continuous sound: generated clips in, consecutive MP3 frames out.

Clips are joined (crossfade at each seam, a slow loudness rule) into one PCM stream and fed to a
single MP3 encoder that is never flushed mid-stream, so the frames of clip k+1 continue exactly
where clip k's stopped and a listener's decoder hears one unbroken stream.
"""

from __future__ import annotations

import threading

import numpy as np

from pipeline.audio.joiner import ClipJoiner
from pipeline.audio.mp3 import Mp3StreamEncoder


class RoomStream:
    """Joiner + encoder for one room. `append` is blocking work: call it off the event loop."""

    def __init__(
        self,
        sample_rate: int = 44100,
        channels: int = 1,
        *,
        bitrate_kbps: int = 128,
        crossfade_seconds: float = 0.03,
    ) -> None:
        self.sample_rate = sample_rate
        self.channels = channels
        self._joiner = ClipJoiner(sample_rate=sample_rate, channels=channels, crossfade_seconds=crossfade_seconds)
        self._encoder = Mp3StreamEncoder(sample_rate=sample_rate, channels=channels, bitrate_kbps=bitrate_kbps)
        self._lock = threading.Lock()  # one clip at a time, in order
        self.samples_out = 0

    @property
    def stream_seconds(self) -> float:
        """Where the next clip starts in the room's stream."""
        return self.samples_out / self.sample_rate

    def append(self, audio: np.ndarray, continuation: np.ndarray | None = None) -> tuple[float, float, bytes]:
        """Join one clip: (its stream_time, its duration, the MP3 bytes that carry it).

        `continuation` is what would follow the clip (see RenderedClip); the next clip fades in from it.
        """
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim == 1:
            audio = audio[None, :]
        if audio.shape[0] != self.channels:
            raise ValueError(f"audio has {audio.shape[0]} channels, stream has {self.channels}")
        with self._lock:
            stream_time = self.stream_seconds
            joined = self._joiner.push(audio, continuation)
            data = self._encoder.encode(joined)
            self.samples_out += joined.shape[-1]
        return stream_time, joined.shape[-1] / self.sample_rate, data

    def finish(self) -> bytes:
        """The encoder's last frames; the stream ends here."""
        with self._lock:
            return self._encoder.finish()
