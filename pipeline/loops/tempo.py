"""Tempo and beats of a loop or a song, from an onset envelope (numpy only).

Onsets: a 5 ms grid of spectral flux (log-compressed STFT magnitudes, half-wave rectified increase) summed in
four bands: low (kick, bass), low-mid (drum bodies, chords), mid (snare and clap noise) and high
(hats, shakers). Tempo: the autocorrelation
of the envelope gives candidate periods; which metrical level is *the beat* (the octave question: 70 or 140?) is
decided by the tatum, the finest regular grid the onsets sit on: beats hold two to four tatums (three in
ternary metre), and among those the level whose pulses carry the most accented, evenly spread onsets wins.
Beats: dynamic programming over the envelope with the found period, then a straight line fitted through the
beat times sets the tempo to a small fraction of a BPM.
"""

from __future__ import annotations

import dataclasses

import numpy as np

FRAME_RATE = 200.0  # onset frames a second (5 ms)
WINDOW_SECONDS = 0.046
MIN_BPM = 55.0
MAX_BPM = 200.0
BAND_EDGES_HZ = (0.0, 200.0, 1000.0, 5000.0, 1e9)  # kick/bass, body/chords, snare/clap, hats
SNARE_BAND = 2
COMPRESSION = 1000.0  # log(1 + C * |X|): loud and quiet onsets count on a similar footing
ANALYSIS_SECONDS = 60.0  # longer inputs: tempo from this much of them (from their first onset)
CHUNK_FRAMES = 2048  # STFT computed this many frames at a time, so a 10-minute file needs little memory


@dataclasses.dataclass(frozen=True)
class OnsetEnvelope:
    """Onset strength per band, (bands, frames) at ``frame_rate`` frames a second; ``total`` sums the bands."""

    bands: np.ndarray
    frame_rate: float

    @property
    def total(self) -> np.ndarray:
        return self.bands.sum(axis=0)

    @property
    def seconds(self) -> float:
        return self.bands.shape[1] / self.frame_rate


@dataclasses.dataclass(frozen=True)
class Tempo:
    """A tempo in BPM, beat times in seconds from the start of the analysed audio, and how periodic it was.

    ``confidence`` is the envelope's autocorrelation at the beat period relative to its energy (0..1): near 0
    for audio without a steady pulse (pads, speech), where the BPM means little.
    """

    bpm: float
    beats: np.ndarray
    confidence: float

    @property
    def period(self) -> float:
        return 60.0 / self.bpm


def onset_envelope(pcm: np.ndarray, sample_rate: int) -> OnsetEnvelope:
    """Band-wise spectral flux of (samples,) or (channels, samples) PCM on a 5 ms grid."""
    mono = _mono(pcm)
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    n_fft = 1 << int(np.ceil(np.log2(WINDOW_SECONDS * sample_rate)))
    hop = sample_rate / FRAME_RATE
    frames = int(mono.size / hop)
    # Frame i's window ends a quarter window after i * hop: a sharp onset's log-magnitude rise is steepest as it
    # enters the window's leading quarter, so the flux peaks at the onset's own frame (measured: within 5 ms).
    lead = n_fft - n_fft // 4
    padded = np.concatenate([np.zeros(lead, np.float32), mono, np.zeros(n_fft, np.float32)])
    window = np.hanning(n_fft).astype(np.float32)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    band_of_bin = np.searchsorted(BAND_EDGES_HZ, freqs, side="right") - 1
    band_sizes = np.bincount(band_of_bin, minlength=len(BAND_EDGES_HZ) - 1)[: len(BAND_EDGES_HZ) - 1]
    flux = np.zeros((len(BAND_EDGES_HZ) - 1, frames), np.float32)
    previous: np.ndarray | None = None
    scale = COMPRESSION * 2.0 / window.sum()
    for first in range(0, frames, CHUNK_FRAMES):
        starts = np.round(np.arange(first, min(frames, first + CHUNK_FRAMES)) * hop).astype(np.int64)
        framed = padded[starts[:, None] + np.arange(n_fft)[None, :]] * window
        log_magnitude = np.log1p(scale * np.abs(np.fft.rfft(framed, axis=1))).astype(np.float32)
        before = np.concatenate([log_magnitude[:1] if previous is None else previous, log_magnitude[:-1]])
        rise = np.maximum(log_magnitude - before, 0.0)
        for band in range(flux.shape[0]):
            flux[band, first : first + starts.size] = rise[:, band_of_bin == band].sum(axis=1)
        previous = log_magnitude[-1:]
    flux /= np.maximum(band_sizes[:, None], 1)
    return OnsetEnvelope(flux, FRAME_RATE)


def _mono(pcm: np.ndarray) -> np.ndarray:
    audio = np.asarray(pcm, dtype=np.float32)
    if audio.ndim == 2:
        audio = audio.mean(axis=0)
    if audio.ndim != 1:
        raise ValueError(f"audio must be shaped (samples,) or (channels, samples), got {audio.shape}")
    if not np.all(np.isfinite(audio)):
        raise ValueError("audio must be finite")
    return audio


def autocorrelation(signal: np.ndarray, circular: bool = False) -> np.ndarray:
    """Unbiased autocorrelation of a mean-removed signal, lag 0 first; ``circular`` for a loop that repeats."""
    centred = signal - signal.mean()
    size = centred.size if circular else 2 * centred.size
    spectrum = np.fft.rfft(centred, n=size)
    correlation = np.fft.irfft(np.abs(spectrum) ** 2, n=size)[: centred.size]
    if not circular:
        correlation = correlation / np.arange(centred.size, 0, -1)
    else:
        correlation = correlation / centred.size
    return correlation


# ----------------------------------------------------------------------------------------- metrical levels
ACCENT_REACH_FRAMES = 2  # an onset counts within +-10 ms of a grid position (timing jitter, window smear)
PHASES = 48  # phase resolution when folding the envelope onto a period
OCTAVE_ACCENT_GAIN = 1.2  # a level half as fast must be this much more accented to be the beat instead
METRE_ACCENT_GAIN = 1.25  # a level 3:2 or 4:3 slower (another metre, not a subdivision) must be this much more
BACKBEAT_CONTRAST = 0.45  # snare-band contrast (on - off, in units of all onsets' mean) that reads as a backbeat
BACKBEAT_SALIENCE = 0.6  # a backbeat level must be at least this periodic, relative to the main pulse
BPM_GRID_STEP = 0.25
COMB_MULTIPLES = 4  # the pulse and its next three multiples (beyond that, bar-level periodicity dominates)


def _local_peaks(envelope: np.ndarray) -> np.ndarray:
    """Each frame's maximum over +-ACCENT_REACH_FRAMES: what an onset near a grid position contributes."""
    padded = np.pad(envelope, ACCENT_REACH_FRAMES, mode="edge")
    width = 2 * ACCENT_REACH_FRAMES + 1
    return np.lib.stride_tricks.sliding_window_view(padded, width).max(axis=1)


def _fold(peaks: np.ndarray, period: float, circular: bool) -> np.ndarray:
    """Mean local peak at each of PHASES phases of ``period`` frames: the envelope folded onto one period."""
    phases = np.arange(PHASES) * period / PHASES
    count = int(peaks.size // period) if not circular else round(peaks.size / period)
    count = max(count, 1)
    positions = np.round(phases[:, None] + np.arange(count)[None, :] * period).astype(np.int64)
    positions = positions % peaks.size if circular else np.minimum(positions, peaks.size - 1)
    return peaks[positions].mean(axis=1)


def accent(peaks: np.ndarray, period: float, circular: bool) -> float:
    """How much stronger than average the onsets are on the best-placed grid of ``period`` frames."""
    return float(_fold(peaks, period, circular).max() / max(float(peaks.mean()), 1e-12))


def backbeat_contrast(snare_peaks: np.ndarray, all_peaks: np.ndarray, period: float, circular: bool) -> float:
    """Snare-band strength on every other beat minus on the beats between, in units of the mean of all onsets.

    A backbeat (snare or clap on 2 and 4) makes this large at the true beat period and near zero at half the
    tempo (snares then fall on every beat of the slower grid) and smaller at twice it (they fall on half of the
    faster grid's "on" positions).
    """
    profile = _fold(snare_peaks, 2.0 * period, circular)
    on = int(np.argmax(profile))
    off = (on + PHASES // 2) % PHASES
    return float((profile[on] - profile[off]) / max(float(all_peaks.mean()), 1e-12))


def comb_salience(correlation: np.ndarray, period: float) -> float:
    """Mean autocorrelation at the first multiples of ``period`` (up to ~4 s): periodicity of a pulse level."""
    multiples = np.arange(1, COMB_MULTIPLES + 1) * period
    multiples = multiples[multiples < correlation.size - 1]
    if multiples.size == 0:
        return 0.0
    return float(np.interp(multiples, np.arange(correlation.size), correlation).mean() / max(correlation[0], 1e-12))


def _pulse_levels(correlation: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Periods (frames) in MIN_BPM-MAX_BPM related to the most periodic pulse, with their comb salience.

    Returns the octaves of that pulse, the octaves of its 3:2 and 2:3 relatives (a ternary bar makes the
    pulse two beats long), both fastest first, and the octaves' salience.
    """
    bpms = np.arange(MIN_BPM, MAX_BPM + BPM_GRID_STEP, BPM_GRID_STEP)
    salience = np.array([comb_salience(correlation, 60.0 * FRAME_RATE / bpm) for bpm in bpms])
    best = float(60.0 * FRAME_RATE / bpms[int(np.argmax(salience))])
    octaves = _in_range(best * 2.0 ** np.arange(-3, 4))
    thirds = _in_range(np.concatenate([best * 1.5 * 2.0 ** np.arange(-3, 4), best / 1.5 * 2.0 ** np.arange(-3, 4)]))
    return octaves, thirds, np.array([comb_salience(correlation, period) for period in octaves])


def _in_range(periods: np.ndarray) -> np.ndarray:
    low, high = 60.0 * FRAME_RATE / MAX_BPM, 60.0 * FRAME_RATE / MIN_BPM
    return np.sort(periods[(periods >= low - 1e-9) & (periods <= high + 1e-9)])


def beat_period(envelope: OnsetEnvelope, circular: bool = False) -> float:
    """The beat period in frames: which level of the envelope's main pulse is the beat.

    A clear backbeat decides first: snares on every other beat of an octave level of the main pulse (see
    ``backbeat_contrast``) that is itself about as periodic as the main pulse. Without one, walk from the fastest
    level to slower ones (octaves and 3:2 relatives) while the slower level carries markedly stronger accents:
    the faster pulses were subdivisions (eighth-note hats, arpeggios, a waltz's triplets).
    """
    octaves, thirds, salience = _pulse_levels(autocorrelation(envelope.total, circular))
    snare, peaks = _local_peaks(envelope.bands[SNARE_BAND]), _local_peaks(envelope.total)
    contrasts = np.array([backbeat_contrast(snare, peaks, period, circular) for period in octaves])
    contrasts[salience < BACKBEAT_SALIENCE * salience.max()] = 0.0
    if contrasts.max() >= BACKBEAT_CONTRAST:
        return float(octaves[int(np.argmax(contrasts))])
    levels = np.sort(np.concatenate([octaves, thirds]))
    chosen = float(levels[0])
    for slower in levels[1:]:
        octaves_apart = np.log2(slower / chosen)
        is_octave = abs(octaves_apart - round(octaves_apart)) < 0.01
        needed = OCTAVE_ACCENT_GAIN**octaves_apart if is_octave else METRE_ACCENT_GAIN
        if accent(peaks, slower, circular) >= needed * accent(peaks, chosen, circular):
            chosen = float(slower)
    return chosen


# ------------------------------------------------------------------------------------------------- beats
FIT_TOLERANCE_FRAMES = 1.0  # beats further than this off the fitted line (and 3x the median) are dropped
TIGHTNESS = 100.0  # how strongly the beat tracker holds to the period (log-ratio squared penalty)


def track_beats(onsets: np.ndarray, period: float) -> np.ndarray:
    """Frames of the beats: the path through the envelope with the most onset strength and steady spacing.

    Dynamic programming: each frame's best score is its strength plus the best predecessor's score within
    0.5-2 periods, minus a penalty growing with the squared log ratio of the gap to ``period``.
    """
    strength = onsets / max(float(onsets.std()), 1e-12)
    count = strength.size
    score = strength.copy()
    previous = np.full(count, -1, dtype=np.int64)
    gaps = np.arange(round(period / 2), round(2 * period) + 1)
    penalty = TIGHTNESS * np.log(gaps / period) ** 2
    for frame in range(int(gaps[0]), count):
        candidates = frame - gaps
        valid = candidates >= 0
        totals = score[candidates[valid]] - penalty[valid]
        best = int(np.argmax(totals))
        if totals[best] > 0:
            score[frame] += totals[best]
            previous[frame] = candidates[valid][best]
    # The path ends at the last real onset, not in a silent tail (where it would run on undisturbed).
    end = int(np.flatnonzero(strength >= 0.1 * strength.max())[-1]) + 1
    last_window = max(1, min(end, round(period)))
    frame = end - last_window + int(np.argmax(score[end - last_window : end]))
    beats = [frame]
    while previous[beats[-1]] >= 0:
        beats.append(int(previous[beats[-1]]))
    return np.array(beats[::-1], dtype=np.float64)


def _refine(onsets: np.ndarray, beats: np.ndarray) -> np.ndarray:
    """Each beat moved to its onset peak within the accent reach, with parabolic sub-frame interpolation."""
    refined = []
    for frame in beats.astype(np.int64):
        low, high = max(1, frame - ACCENT_REACH_FRAMES), min(onsets.size - 2, frame + ACCENT_REACH_FRAMES)
        if high < low:
            refined.append(float(frame))
            continue
        peak = low + int(np.argmax(onsets[low : high + 1]))
        left, centre, right = onsets[peak - 1], onsets[peak], onsets[peak + 1]
        curve = left - 2 * centre + right
        refined.append(peak + (0.5 * (left - right) / curve if curve < 0 else 0.0))
    return np.array(refined)


def _fitted_period(beats: np.ndarray, period: float) -> float:
    """Slope of a straight line through the beat times, in frames; beats off the line (a pickup, a fill, the
    audio's ragged ends) are dropped and the line refitted, so they cannot tilt it."""
    numbers = np.round((beats - beats[0]) / period)
    keep = np.ones(beats.size, dtype=bool)
    slope = period
    for _ in range(3):
        if keep.sum() < 3 or np.ptp(numbers[keep]) < 2:
            return period
        slope, intercept = np.polyfit(numbers[keep], beats[keep], 1)
        residuals = np.abs(beats - (slope * numbers + intercept))
        keep = residuals <= max(FIT_TOLERANCE_FRAMES, 3.0 * float(np.median(residuals[keep])))
    return float(slope) if abs(slope / period - 1.0) < 0.05 else period


def estimate_tempo(pcm: np.ndarray, sample_rate: int, *, loop: bool = False) -> Tempo:
    """Tempo and beats of audio. ``loop``: the audio is exactly one loop (e.g. a seed image), so it wraps around
    and holds a whole number of beats; the tempo is then that number over the loop's length.

    Long audio is analysed over its first ANALYSIS_SECONDS (from its first onset); beat times are relative to
    the start of ``pcm``.
    """
    mono = _mono(pcm)
    offset = 0 if loop else _first_sound(mono)
    excerpt = mono if loop else mono[offset : offset + int(ANALYSIS_SECONDS * sample_rate)]
    envelope = onset_envelope(excerpt, sample_rate)
    onsets = envelope.total
    if onsets.size < 2 * 60.0 * FRAME_RATE / MAX_BPM:
        raise ValueError(f"audio is too short to find a tempo in (under two beats at {MAX_BPM:g} BPM)")
    if not np.any(onsets > 0):
        raise ValueError("audio has no onsets to find a tempo in")
    period = beat_period(envelope, circular=loop)
    correlation = autocorrelation(onsets, loop)
    confidence = float(np.clip(np.interp(period, np.arange(correlation.size), correlation) / correlation[0], 0, 1))
    if loop:
        beats_in_loop = max(1, round(onsets.size / period))
        period = onsets.size / beats_in_loop
        profile = _fold(_local_peaks(onsets), period, circular=True)
        first = int(np.argmax(profile)) * period / PHASES
        frames = first + np.arange(beats_in_loop) * period
    else:
        frames = _refine(onsets, track_beats(onsets, period))
        period = _fitted_period(frames, period)
    seconds = frames / FRAME_RATE + offset / sample_rate
    return Tempo(bpm=60.0 * FRAME_RATE / period, beats=seconds, confidence=confidence)


def _first_sound(mono: np.ndarray) -> int:
    """Index of the first sample above -60 dBFS of the peak (leading silence would only dilute the analysis)."""
    peak = float(np.max(np.abs(mono))) if mono.size else 0.0
    if peak == 0.0:
        return 0
    loud = np.flatnonzero(np.abs(mono) > 1e-3 * peak)
    return int(loud[0]) if loud.size else 0
