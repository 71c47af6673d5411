"""A room's continuous sound: generated clips in, consecutive MP3 frames out; cut-ins replace it from a time T.

Clips are joined (crossfade at each seam, a slow loudness rule) into one PCM stream and fed to a
single MP3 encoder that is never flushed mid-stream, so the frames of clip k+1 continue exactly
where clip k's stopped and a listener's decoder hears one unbroken stream. A cut-in splices new
audio at T (the joiner rewinds to T) and restarts the encoder at an MP3 frame F a little before T
(pipeline/audio/mp3_restart.py): listeners keep the frames before F and replace the rest with the
new ones, which decode to the old audio up to T and the new audio from T.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from pipeline.audio.joiner import ClipJoiner, JoinerState
from pipeline.audio.mp3 import Mp3StreamEncoder
from pipeline.audio.mp3_restart import PREROLL_FRAMES, restarted_encoder

# Frames before the one holding T that a restart re-encodes too: LAME's frame j is shaped by input a little past its
# own span (look-ahead, MDCT overlap), so frames from ~2 before T differ once the audio from T differs (measured).
CUT_GUARD_FRAMES = 3
HISTORY_SECONDS = 25.0  # how far back a cut may reach into audio already joined (a few clips ahead of the playhead)


@dataclass(frozen=True)
class StreamPiece:
    """Audio joined into the stream: where it starts, how long it is, and the MP3 frames that carry it."""

    stream_time: float
    duration: float
    audio: bytes
    first_frame: int  # index in the room's MP3 stream of the first frame in `audio`
    end_frame: int  # index of the frame after the last one in `audio`
    replaces: bool = False  # a cut-in: the frames from `first_frame` on replace those sent before


class RoomStream:
    """Joiner + encoder for one room. `append` and `cut` are blocking work: call them off the event loop."""

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
        self.bitrate_kbps = bitrate_kbps
        self._joiner = ClipJoiner(sample_rate=sample_rate, channels=channels, crossfade_seconds=crossfade_seconds,
                                  history_seconds=HISTORY_SECONDS)
        self._encoder = Mp3StreamEncoder(sample_rate=sample_rate, channels=channels, bitrate_kbps=bitrate_kbps)
        self._lock = threading.Lock()  # one clip at a time, in order
        self._history = np.zeros((channels, 0), np.float32)  # the last joined PCM, what the encoder was fed
        self._history_start = 0  # stream sample of its first column
        self._origin = 0  # stream sample where frame 0 of the MP3 stream starts (where a resumed stream resumed)
        self.samples_out = 0

    @property
    def stream_seconds(self) -> float:
        """Where the next clip starts in the room's stream."""
        return self.samples_out / self.sample_rate

    def append(self, audio: np.ndarray, continuation: np.ndarray | None = None) -> StreamPiece:
        """Join one clip at the end of the stream.

        `continuation` is what would follow the clip (see RenderedClip); the next clip fades in from it.
        """
        audio = self._checked(audio)
        with self._lock:
            stream_time, first_frame = self.stream_seconds, self._encoder.frames_out
            joined = self._joiner.push(audio, continuation)
            data = self._encoder.encode(joined)
            self._remember(joined)
            end_frame = self._encoder.frames_out
        return StreamPiece(stream_time, joined.shape[-1] / self.sample_rate, data, first_frame, end_frame)

    def cut(self, at: float, pieces: list[tuple[np.ndarray, np.ndarray | None]], *,
            sent_frames: int | None = None) -> StreamPiece:
        """Replace the stream from `at` seconds on with `pieces` ((audio, continuation), joined in order).

        `at` must lie within the audio already joined and not before the last HISTORY_SECONDS of it.
        `sent_frames`: how many frames listeners have; audio joined but never sent must not leave them a hole.
        """
        if not pieces:
            raise ValueError("pieces: a cut needs some audio")
        checked = [(self._checked(audio), continuation) for audio, continuation in pieces]
        with self._lock:
            position = round(at * self.sample_rate)
            per_frame = self._encoder.samples_per_frame
            # Never past the frames already handed out (LAME holds the last few back), so nothing is skipped.
            handed_out = self._encoder.frames_out if sent_frames is None else min(sent_frames, self._encoder.frames_out)
            first_frame = min(max(0, (position - self._origin) // per_frame - CUT_GUARD_FRAMES), handed_out)
            if (first_frame - min(PREROLL_FRAMES, first_frame)) * per_frame < self._history_start - self._origin:
                raise ValueError(f"at: {at:.3f} s is older than the stream audio kept")
            self._joiner.rewind(position)  # checks `at` against the joiner's history and the stream's end
            joined = np.concatenate([self._joiner.push(audio, continuation) for audio, continuation in checked],
                                    axis=1)
            self._truncate(position)
            self._remember(joined)
            self._encoder, data = restarted_encoder(self._history, self._history_start - self._origin, first_frame,
                                                    sample_rate=self.sample_rate, bitrate_kbps=self.bitrate_kbps)
            end_frame = self._encoder.frames_out
        return StreamPiece(position / self.sample_rate, joined.shape[-1] / self.sample_rate, data, first_frame,
                           end_frame, replaces=True)

    def joiner_state(self) -> JoinerState:
        with self._lock:
            return self._joiner.state()

    def resume(self, joiner: JoinerState) -> None:
        """Continue another process's stream: same stream time, same seam, a fresh MP3 encoder (a new MP3 stream,
        whose frame 0 starts here: frame k at the resume point + k frames).

        A cut-in can rewind only into audio joined here, after the resume.
        """
        with self._lock:
            if self.samples_out:
                raise RuntimeError("only a fresh stream can resume another one")
            self._joiner.restore(joiner)
            self.samples_out = self._history_start = self._origin = joiner.samples_out

    def finish(self) -> bytes:
        """The encoder's last frames; the stream ends here."""
        with self._lock:
            return self._encoder.finish()

    def _checked(self, audio: np.ndarray) -> np.ndarray:
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim == 1:
            audio = audio[None, :]
        if audio.shape[0] != self.channels:
            raise ValueError(f"audio has {audio.shape[0]} channels, stream has {self.channels}")
        return audio

    def _remember(self, joined: np.ndarray) -> None:
        self._history = np.concatenate([self._history, joined], axis=1)
        self.samples_out += joined.shape[1]
        excess = self._history.shape[1] - round(HISTORY_SECONDS * self.sample_rate)
        if excess > 0:
            self._history = self._history[:, excess:]
            self._history_start += excess

    def _truncate(self, position: int) -> None:
        self._history = self._history[:, : position - self._history_start]
        self.samples_out = position
