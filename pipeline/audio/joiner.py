"""Join generated clips into one continuous PCM stream: crossfaded seams and a steady, slowly moving loudness.

The joiner plays clip k to its end and, at the start of clip k+1, fades from clip k's *continuation* (what clip k
would have played next) into clip k+1's head, so no sample is delayed and the stream time of clip k is exactly the sum
of the lengths before it. The best continuation is rendered with the clip (the spectrogram's first columns appended
after its last, resynthesised in one go, so it follows the last sample without a step); without one, the clip's own
head stands in for it, because every clip comes from a seed image that loops.

A cut-in replaces the stream from a sample already pushed: ``splice`` rewinds to it (the gain, the limiter and what
the stream was playing there are kept for the last ``history_seconds``) and joins the new audio there exactly as a
clip join would, fading from the superseded audio into the new over the same crossfade.

Loudness: the original normalised every clip on its own, which made the level jump at each seam. Here each clip only
*proposes* a gain (from its RMS toward a target); the applied gain moves toward it by a limited step per clip, glides
across the clip sample by sample, never boosts near-silence, and a look-ahead limiter keeps peaks under a ceiling.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

__all__ = ["ClipJoiner", "JoinerState"]

_EPSILON = 1e-12
_PEAK_QUANTILE = 0.999


def _db_to_gain(db: np.ndarray | float) -> np.ndarray | float:
    return np.power(10.0, np.asarray(db) / 20.0)


def _gain_to_db(gain: np.ndarray | float) -> np.ndarray | float:
    return 20.0 * np.log10(np.maximum(gain, _EPSILON))


def _fade_in_weights(length: int) -> np.ndarray:
    """Raised-cosine weights from exactly 0 upward; with 1 - w on the other side the two always sum to one."""
    return (0.5 - 0.5 * np.cos(np.pi * np.arange(length) / length)).astype(np.float32)


def _glide_db(start_db: float, end_db: float, length: int) -> np.ndarray:
    """Per-sample gain in dB that leaves ``start_db`` and arrives at ``end_db`` with zero slope at both ends."""
    progress = 0.5 - 0.5 * np.cos(np.pi * np.arange(1, length + 1) / length)
    return start_db + (end_db - start_db) * progress


def _cone_envelope_db(required_db: np.ndarray, attack_db_per_sample: float, release_db_per_sample: float) -> np.ndarray:
    """Largest envelope that stays at or below ``required_db`` and changes by at most the given slopes.

    It is the lower envelope of cones hung under every sample: falling toward a peak at the attack slope (look-ahead)
    and recovering after it at the release slope. Both halves are running minima, so this is O(n) and loop-free.
    """
    index = np.arange(len(required_db), dtype=np.float64)
    before_peak = np.minimum.accumulate((required_db + attack_db_per_sample * index)[::-1])[::-1]
    after_peak = np.minimum.accumulate(required_db - release_db_per_sample * index)
    return np.minimum(before_peak - attack_db_per_sample * index, after_peak + release_db_per_sample * index)


@dataclass
class _Pushed:
    """One pushed piece of stream, kept so a cut-in can rewind into it: pre-gain audio and the gain it got."""

    start: int  # stream sample of its first sample
    joined: np.ndarray  # (channels, n) after the crossfade, before the gain
    following: np.ndarray  # what would have followed it (its continuation), for a rewind to its very end
    start_db: float
    end_db: float
    limiter_start_db: float
    limiter_db: np.ndarray | None  # per sample, None while the limiter was idle
    glide_samples: int  # the length the slow gain glided over (the piece may be cut shorter later)

    @property
    def end(self) -> int:
        return self.start + self.joined.shape[1]

    def slow_gain_db(self, index: int) -> float:
        return float(_glide_db(self.start_db, self.end_db, self.glide_samples)[index])

    def limiter_before(self, index: int) -> float:
        """The limiter's reduction on the sample before `index` (the state a push from `index` starts from)."""
        if index == 0:
            return self.limiter_start_db
        return 0.0 if self.limiter_db is None else float(self.limiter_db[index - 1])


@dataclass(frozen=True)
class JoinerState:
    """What the next seam depends on: another process restores it and joins the next clip as this one would have.

    The cut-in history is not carried: a restored joiner can rewind only into what it pushed itself.
    """

    continuation: np.ndarray | None
    gain_db: float | None
    limiter_db: float
    samples_out: int


class ClipJoiner:
    """Turns a sequence of looping clips into one click-free stream at a steady level, one clip at a time.

    ``push`` returns exactly as many samples as it is given, immediately. Not thread-safe: one joiner per stream, fed by
    one thread at a time.
    """

    def __init__(
        self,
        sample_rate: int = 44100,
        channels: int = 1,
        crossfade_seconds: float = 0.03,
        target_rms_dbfs: float = -16.0,
        *,
        ceiling_dbfs: float = -1.0,
        max_gain_db: float = 12.0,
        silence_dbfs: float = -60.0,
        smoothing: float = 0.5,
        max_step_db: float = 6.0,
        limiter_attack_seconds: float = 0.005,
        limiter_release_seconds: float = 0.25,
        history_seconds: float = 25.0,
    ) -> None:
        _require(sample_rate > 0, "sample_rate", f"must be positive, got {sample_rate}")
        _require(channels >= 1, "channels", f"must be at least 1, got {channels}")
        _require(crossfade_seconds >= 0, "crossfade_seconds", f"must not be negative, got {crossfade_seconds}")
        _require(target_rms_dbfs < ceiling_dbfs <= 0, "ceiling_dbfs", "must lie between target_rms_dbfs and 0 dBFS")
        _require(max_gain_db >= 0, "max_gain_db", f"must not be negative, got {max_gain_db}")
        _require(0 < smoothing <= 1, "smoothing", f"must be in (0, 1], got {smoothing}")
        _require(max_step_db > 0, "max_step_db", f"must be positive, got {max_step_db}")
        _require(limiter_attack_seconds > 0, "limiter_attack_seconds", "must be positive")
        _require(limiter_release_seconds > 0, "limiter_release_seconds", "must be positive")
        _require(history_seconds >= 0, "history_seconds", f"must not be negative, got {history_seconds}")
        self.sample_rate = sample_rate
        self.channels = channels
        self.crossfade_samples = round(crossfade_seconds * sample_rate)
        self.target_rms_dbfs = target_rms_dbfs
        self.ceiling_dbfs = ceiling_dbfs
        self.max_gain_db = max_gain_db
        self.silence_dbfs = silence_dbfs
        self.smoothing = smoothing
        self.max_step_db = max_step_db
        # The limiter's slopes: 12 dB of reduction builds up within the attack time and recovers within the release.
        self._attack_db_per_sample = 12.0 / (limiter_attack_seconds * sample_rate)
        self._release_db_per_sample = 12.0 / (limiter_release_seconds * sample_rate)
        self.history_samples = round(history_seconds * sample_rate)
        self.reset()

    def reset(self) -> None:
        """Forget the previous clip and the gain history, e.g. when a room restarts its stream."""
        self._continuation: np.ndarray | None = None
        self._gain_db: float | None = None
        self._limiter_db = 0.0
        self.last_gain: np.ndarray | None = None
        self.samples_out = 0
        self._history: deque[_Pushed] = deque()

    def state(self) -> JoinerState:
        continuation = None if self._continuation is None else self._continuation.copy()
        return JoinerState(continuation, self._gain_db, self._limiter_db, self.samples_out)

    def restore(self, state: JoinerState) -> None:
        """Continue from a state taken with `state()`, possibly in another process."""
        continuation = None if state.continuation is None else self._validated(state.continuation, "continuation")
        self._continuation = continuation
        self._gain_db = None if state.gain_db is None else float(state.gain_db)
        self._limiter_db = float(state.limiter_db)
        self.last_gain = None
        self.samples_out = int(state.samples_out)
        self._history.clear()

    @property
    def gain_db(self) -> float | None:
        """The slow gain reached at the end of the last clip (None before the first clip)."""
        return self._gain_db

    def push(self, clip: np.ndarray, continuation: np.ndarray | None = None) -> np.ndarray:
        """Join the next (channels, samples) clip; return the same number of samples of finished stream.

        ``continuation`` is the audio that would follow the clip's last sample (at least the crossfade's length);
        the next clip fades in from it. Without it the clip's own head is used (the loop assumption).
        """
        audio = self._validated(clip)
        following = audio if continuation is None else self._validated(continuation, "continuation")
        if following.shape[1] < min(self.crossfade_samples, audio.shape[1]):
            raise ValueError(f"continuation: needs at least {self.crossfade_samples} samples, got {following.shape[1]}")
        samples = audio.shape[1]
        joined = self._crossfade_from_continuation(audio)
        start_db = self._gain_db
        end_db = self._next_gain_db(audio)
        slow_gain = _db_to_gain(_glide_db(end_db if start_db is None else start_db, end_db, samples)).astype(np.float32)
        limiter_db = self._limiter_envelope_db(joined, slow_gain, following)
        idle = self._limiter_idle(limiter_db)
        gain = slow_gain if idle else slow_gain * _db_to_gain(limiter_db).astype(np.float32)
        self._history.append(_Pushed(self.samples_out, joined, following[:, : self.crossfade_samples].copy(),
                               end_db if start_db is None else start_db, end_db, self._limiter_db,
                               None if idle else limiter_db.astype(np.float32), samples))
        self._continuation = following[:, : self.crossfade_samples].copy()
        self._gain_db = end_db
        self._limiter_db = float(limiter_db[-1])
        self.last_gain = gain
        self.samples_out += samples
        self._forget_old()
        return joined * gain

    def splice(self, position: int, clip: np.ndarray, continuation: np.ndarray | None = None) -> np.ndarray:
        """Replace the stream from sample `position` on with `clip`, joined like a clip join; returns its samples."""
        self.rewind(position)
        return self.push(clip, continuation)

    def rewind(self, position: int) -> None:
        """Forget everything pushed from stream sample `position` on; the next push continues from there."""
        if not self.samples_out - self.history_samples <= position <= self.samples_out or position < 0:
            raise ValueError(f"position: {position} is not within the last {self.history_samples} samples "
                             f"pushed (0-{self.samples_out})")
        while self._history and self._history[-1].start > position:
            self._history.pop()
        if position == self.samples_out:
            return
        if not self._history or self._history[0].start > position:
            raise ValueError(f"position: {position} is older than the history kept")
        piece = self._history[-1]
        index = position - piece.start
        self._gain_db = piece.slow_gain_db(index) if index else piece.start_db
        self._limiter_db = piece.limiter_before(index)
        superseded = np.concatenate([piece.joined[:, index:], piece.following], axis=1)
        self._continuation = superseded[:, : self.crossfade_samples].copy()
        if index:
            piece.joined, piece.following = piece.joined[:, :index], superseded[:, : self.crossfade_samples].copy()
            piece.limiter_db = None if piece.limiter_db is None else piece.limiter_db[:index]
        else:
            self._history.pop()
        self.samples_out = position

    def _forget_old(self) -> None:
        while len(self._history) > 1 and self.samples_out - self._history[1].start > self.history_samples:
            self._history.popleft()

    def _validated(self, clip: np.ndarray, field: str = "clip") -> np.ndarray:
        audio = np.asarray(clip)
        if audio.ndim == 1 and self.channels == 1:
            audio = audio[np.newaxis, :]
        if audio.ndim != 2 or audio.shape[0] != self.channels or audio.shape[1] == 0:
            raise ValueError(f"{field}: expected shape ({self.channels}, samples>0), got {np.shape(clip)}")
        if not np.issubdtype(audio.dtype, np.floating):
            raise ValueError(f"{field}: expected float samples in [-1, 1], got dtype {audio.dtype}")
        if not np.all(np.isfinite(audio)):
            raise ValueError(f"{field}: contains NaN or infinite samples")
        return audio.astype(np.float32)

    def _crossfade_from_continuation(self, audio: np.ndarray) -> np.ndarray:
        """Fade from the previous clip's looped-around head into this clip's head."""
        joined = audio.copy()
        if self._continuation is None:
            return joined
        length = min(self._continuation.shape[1], audio.shape[1])
        if length == 0:
            return joined
        fade_in = _fade_in_weights(length)
        joined[:, :length] = self._continuation[:, :length] * (1.0 - fade_in) + audio[:, :length] * fade_in
        return joined

    def _next_gain_db(self, audio: np.ndarray) -> float:
        """The gain this clip glides to: a limited step toward its proposal; held steady through near-silence."""
        rms_db = float(_gain_to_db(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))))
        previous = self._gain_db
        if rms_db < self.silence_dbfs:
            return 0.0 if previous is None else previous
        # A high quantile rather than the maximum: a lone spike is the limiter's job, not a reason to turn down 5 s.
        peak_db = float(_gain_to_db(np.quantile(np.abs(audio), _PEAK_QUANTILE)))
        proposal = min(self.target_rms_dbfs - rms_db, self.max_gain_db, self.ceiling_dbfs - peak_db)
        if previous is None:
            return proposal
        step = float(np.clip(self.smoothing * (proposal - previous), -self.max_step_db, self.max_step_db))
        # A clip too loud for the current gain may pull it down at once; rises always stay slow.
        return min(previous + step, self.ceiling_dbfs - peak_db)

    def _limiter_envelope_db(self, joined: np.ndarray, slow_gain: np.ndarray, following: np.ndarray) -> np.ndarray:
        """Gain reduction (<= 0 dB) that keeps every output peak under the ceiling and moves only at limited slopes.

        The look-ahead also covers the start of the *next* clip, predicted as this clip's continuation at the final
        gain, because that is what the next crossfade begins with; the reduction then carries over the seam without a
        step.
        """
        samples = joined.shape[1]
        predicted_next = np.max(np.abs(following[:, : self.crossfade_samples]), axis=0) * slow_gain[-1]
        peaks = np.concatenate([np.max(np.abs(joined), axis=0) * slow_gain, predicted_next])
        recovering = np.minimum(0.0, self._limiter_db + self._release_db_per_sample * np.arange(1, samples + 1))
        too_loud = peaks > _db_to_gain(self.ceiling_dbfs)
        if not too_loud.any():
            return recovering
        required_db = np.zeros(len(peaks))
        required_db[too_loud] = self.ceiling_dbfs - _gain_to_db(peaks[too_loud].astype(np.float64))
        envelope = _cone_envelope_db(required_db, self._attack_db_per_sample, self._release_db_per_sample)
        return np.minimum(envelope[:samples], recovering)

    @staticmethod
    def _limiter_idle(limiter_db: np.ndarray) -> bool:
        return not limiter_db.any()


def _require(condition: bool, field: str, reason: str) -> None:
    if not condition:
        raise ValueError(f"{field}: {reason}")
