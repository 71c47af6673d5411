"""Recording files: a room's continuous MP3 written as clips arrive, a timeline, a WAV and a spectrogram strip.

`PromptSchedule` and `Timeline` are pure (timed prompts; clip frames -> timeline rows). `RecordingFiles`
writes as clips arrive (MP3 bytes appended, timeline replaced atomically), so a recording cut short is
still a playable file with a timeline that matches it. A cut-in clip (`replaces`) supersedes the audio
from its stream time T on: the MP3 is truncated at the frame the cut's bytes start with, the timeline's
clips end at T, and the timeline lists the cut. A clip marked `discontinuity` (a cluster front-end took the room
over) starts a new MP3 stream, appended as it is: its frames, numbered afresh, are counted from there. Both `jamserver record` (over a WebSocket) and
`jamserver render` (an in-process room) feed it.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import miniaudio
import numpy as np
import soundfile
from PIL import Image

from jamserver.jam.prompt import Prompt
from pipeline.audio.mp3 import DECODED_DELAY_SAMPLES, parse_frame_header, split_frames

TIMELINE_VERSION = 2  # 2: "cuts", and clips shortened or dropped by a cut-in
ENDINGS = ("duration", "clips", "interrupted", "server_gone", "timeout", "failed")
COMPLETE_ENDINGS = ("duration", "clips")
Report = Callable[[str], None]


@dataclass(frozen=True)
class TimedPrompt:
    """A prompt to queue `at` seconds after the recorder joined its room."""

    at: float
    prompt: Prompt


class PromptSchedule:
    """Timed prompts waiting to be sent, oldest first."""

    def __init__(self, prompts: Iterable[TimedPrompt] = ()) -> None:
        self._pending = deque(sorted(prompts, key=lambda timed: timed.at))

    def due(self, elapsed: float) -> list[TimedPrompt]:
        """Take every prompt whose time has come."""
        ready = []
        while self._pending and self._pending[0].at <= elapsed:
            ready.append(self._pending.popleft())
        return ready

    def seconds_until_next(self, elapsed: float) -> float:
        return max(0.0, self._pending[0].at - elapsed) if self._pending else math.inf


@dataclass(frozen=True)
class TimelineEntry:
    """One clip of a recording: where it is in the room's stream and in the recorded file."""

    seq: int
    stream_time: float
    file_time: float
    duration: float
    alpha: float
    start: dict[str, Any]
    end: dict[str, Any]
    gen_seconds: float


@dataclass(frozen=True)
class TimelineCut:
    """A cut-in: from `stream_time` (at `file_time` in the file) the clip `seq` replaced what was recorded."""

    seq: int
    stream_time: float
    file_time: float
    replaced_seconds: float  # recorded audio after the cut that the cut-in superseded


class Timeline:
    """Clip frames in, rows out. Clips are kept in seq order; repeats of a seq already taken are ignored."""

    def __init__(self, info: Mapping[str, Any] | None = None, *, sample_rate: int = 44100) -> None:
        self.info = dict(info or {})
        self.sample_rate = sample_rate
        self.entries: list[TimelineEntry] = []
        self.cuts: list[TimelineCut] = []
        self.discontinuities: list[int] = []  # seqs of clips that start a new MP3 stream (a cluster takeover)

    @property
    def recorded_seconds(self) -> float:
        return sum((entry.duration for entry in self.entries), 0.0)

    def _cut_at(self, seq: int, stream_time: float) -> None:
        """End the recording at `stream_time`: later clips go, the clip playing there is shortened."""
        before = self.recorded_seconds
        kept = [entry for entry in self.entries if entry.stream_time < stream_time - 1e-9]
        if kept:
            last = kept[-1]
            kept[-1] = replace(last, duration=min(last.duration, stream_time - last.stream_time))
        self.entries = kept
        self.cuts.append(TimelineCut(seq, stream_time, self.recorded_seconds, before - self.recorded_seconds))

    def add(self, frame: Mapping[str, Any]) -> TimelineEntry | None:
        """Take one "clip" frame; None if its seq is not after the last one taken."""
        missing = [key for key in ("seq", "stream_time", "duration", "alpha", "start", "end") if key not in frame]
        if missing:
            raise ValueError(f"clip frame is missing {', '.join(missing)}")
        if self.entries and int(frame["seq"]) <= self.entries[-1].seq:
            return None
        if frame.get("replaces"):
            self._cut_at(int(frame["seq"]), float(frame["stream_time"]))
        if frame.get("discontinuity"):
            self.discontinuities.append(int(frame["seq"]))
        entry = TimelineEntry(
            seq=int(frame["seq"]), stream_time=float(frame["stream_time"]), file_time=self.recorded_seconds,
            duration=float(frame["duration"]), alpha=float(frame["alpha"]),
            start={key: frame["start"].get(key) for key in Prompt.FIELDS},
            end={key: frame["end"].get(key) for key in Prompt.FIELDS},
            gen_seconds=float(frame.get("gen_seconds", 0.0)))
        self.entries.append(entry)
        return entry

    def missing_seqs(self) -> list[int]:
        """Clips the room made that this recording lacks (a slow connection may drop some)."""
        seqs = [entry.seq for entry in self.entries]
        return [seq for before, after in zip(seqs, seqs[1:]) for seq in range(before + 1, after)]

    def to_json(self, *, mp3_name: str, mp3_bytes: int, ended: str | None) -> dict[str, Any]:
        """The timeline document; `ended` is None while recording, else one of ENDINGS."""
        return {
            "version": TIMELINE_VERSION, **self.info, "sample_rate": self.sample_rate,
            "mp3": mp3_name, "mp3_bytes": mp3_bytes, "mp3_delay_samples": DECODED_DELAY_SAMPLES,
            "duration": round(self.recorded_seconds, 6), "ended": ended, "complete": ended in COMPLETE_ENDINGS,
            "missing_seqs": self.missing_seqs(), "clips": [asdict(entry) for entry in self.entries],
            "cuts": [asdict(cut) for cut in self.cuts], "discontinuities": self.discontinuities,
        }


def describe_clip(entry: TimelineEntry) -> str:
    """One progress line for a clip."""
    start, end = entry.start["prompt"], entry.end["prompt"]
    prompts = repr(start) if start == end else f"{start!r} -> {end!r}"
    return (f"clip {entry.seq}: {entry.stream_time:.2f}-{entry.stream_time + entry.duration:.2f} s, "
            f"alpha {entry.alpha:.2f}, {prompts}, made in {entry.gen_seconds:.1f} s")


def _replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Write to a sibling temporary file, then rename over `path`: readers never see a half file."""
    temporary = path.with_name(f".{path.name}.partial{path.suffix}")
    write(temporary)
    os.replace(temporary, path)


def write_wav_from_mp3(mp3_path: Path, wav_path: Path, seconds: float, sample_rate: int) -> int:
    """Decode the recording to 16-bit WAV without the MP3 delay, at most `seconds` long; returns samples."""
    with open(mp3_path, "rb") as mp3:
        header = parse_frame_header(mp3.read(4))
    channels = header.channels if header else 1
    wanted = round(seconds * sample_rate)
    chunks = miniaudio.stream_file(str(mp3_path), miniaudio.SampleFormat.FLOAT32, channels, sample_rate,
                                   frames_to_read=65536)
    decoded = (np.frombuffer(chunk, dtype=np.float32).reshape(-1, channels) for chunk in chunks)
    written = 0

    def write(path: Path) -> None:  # streamed: an hour-long jam never sits in memory as floats
        nonlocal written
        position = 0
        with soundfile.SoundFile(path, "w", sample_rate, channels, subtype="PCM_16", format="WAV") as wav:
            for pcm in decoded:
                begin = max(0, DECODED_DELAY_SAMPLES - position)
                keep = pcm[begin: begin + max(0, wanted - written)]
                position += len(pcm)
                wav.write(keep)
                written += len(keep)

    _replace_atomically(wav_path, write)
    return written


def write_strip(images: Sequence[bytes], path: Path) -> tuple[int, int]:
    """The clips' spectrogram images side by side in order, as one PNG; returns its size."""
    opened = [Image.open(io.BytesIO(data)).convert("RGB") for data in images]
    strip = Image.new("RGB", (sum(image.width for image in opened), max(image.height for image in opened)))
    left = 0
    for image in opened:
        strip.paste(image, (left, strip.height - image.height))
        left += image.width
    _replace_atomically(path, lambda temporary: strip.save(temporary, format="PNG"))
    return strip.size


def default_timeline_path(mp3_path: Path | str) -> Path:
    return Path(mp3_path).with_suffix(".json")


class RecordingFiles:
    """The files of one recording, kept valid after every clip so a cut-short recording is still usable."""

    def __init__(self, mp3_path: Path | str, *, timeline_path: Path | str | None = None,
                 wav_path: Path | str | None = None, strip_path: Path | str | None = None,
                 sample_rate: int = 44100) -> None:
        self.mp3_path = Path(mp3_path)
        self.timeline_path = Path(timeline_path) if timeline_path else default_timeline_path(mp3_path)
        if self.timeline_path.resolve() == self.mp3_path.resolve():
            raise ValueError(f"timeline path must differ from the MP3 path {self.mp3_path}")
        self.wav_path = Path(wav_path) if wav_path else None
        self.strip_path = Path(strip_path) if strip_path else None
        self.sample_rate = sample_rate
        self.timeline = Timeline(sample_rate=sample_rate)
        self.mp3_bytes = 0
        self.ended: str | None = None
        self._mp3: io.BufferedWriter | None = None
        self._images: dict[int, bytes] = {}  # by seq
        self._first_frame: int | None = None  # the room stream's index of the file's first MP3 frame
        self._frame_offsets: list[int] = []  # byte offset of every frame in the file

    def open(self, info: Mapping[str, Any]) -> None:
        """Create the MP3 (empty) and a timeline with no clips yet."""
        self.timeline = Timeline(info, sample_rate=self.sample_rate)
        self._mp3 = open(self.mp3_path, "wb")
        self._write_timeline()

    def add_clip(self, frame: Mapping[str, Any]) -> TimelineEntry | None:
        """Append one clip frame's audio bytes and image; None if it repeats a clip already written."""
        entry = self.timeline.add(frame)
        if entry is not None:
            if frame.get("replaces") and frame.get("mp3_frame") is not None:
                self._truncate_mp3(int(frame["mp3_frame"]))
            if self.strip_path is not None:
                self._images[entry.seq] = bytes(frame["image"])
                kept = {kept_entry.seq for kept_entry in self.timeline.entries}
                self._images = {seq: image for seq, image in self._images.items() if seq in kept}
            if self._first_frame is None:
                self._first_frame = frame.get("mp3_frame")
            elif frame.get("discontinuity") and frame.get("mp3_frame") is not None:
                # a takeover: a new MP3 stream, its frames numbered afresh, goes on after the file's last frame
                self._first_frame = int(frame["mp3_frame"]) - len(self._frame_offsets)
            self._append_mp3(bytes(frame["audio"]))
        return entry

    def _truncate_mp3(self, first_frame: int) -> None:
        """Drop the file's frames from the room stream's frame `first_frame` on (a cut-in replaces them)."""
        if self._mp3 is None:
            raise RuntimeError("open() the recording before adding clips")
        keep = max(0, first_frame - (self._first_frame or 0))
        if keep >= len(self._frame_offsets):
            return
        offset = self._frame_offsets[keep]
        del self._frame_offsets[keep:]
        self._mp3.seek(offset)
        self._mp3.truncate()
        self.mp3_bytes = offset

    def append_tail(self, data: bytes) -> None:
        """The encoder's last frames, when the stream really ends (offline rendering)."""
        if data:
            self._append_mp3(data)

    def _append_mp3(self, data: bytes) -> None:
        if self._mp3 is None:
            raise RuntimeError("open() the recording before adding clips")
        position = self.mp3_bytes
        for frame in split_frames(data):
            self._frame_offsets.append(position)
            position += len(frame)
        self._mp3.write(data)
        self._mp3.flush()
        self.mp3_bytes += len(data)
        self._write_timeline()

    def _write_timeline(self) -> None:
        document = self.timeline.to_json(mp3_name=self.mp3_path.name, mp3_bytes=self.mp3_bytes, ended=self.ended)
        text = json.dumps(document, indent=1, ensure_ascii=False) + "\n"
        _replace_atomically(self.timeline_path, lambda path: path.write_text(text, encoding="utf-8"))

    def finish(self, ended: str) -> list[str]:
        """Close the MP3, write the final timeline, then the WAV and strip; returns notes for the user."""
        if ended not in ENDINGS:
            raise ValueError(f"ended must be one of {ENDINGS}, got {ended!r}")
        if self._mp3 is None or self.ended is not None:
            return []
        self._mp3.close()
        self.ended = ended
        self._write_timeline()
        cuts = f", {len(self.timeline.cuts)} cut-ins" if self.timeline.cuts else ""
        notes = [f"{self.mp3_path}: {self.timeline.recorded_seconds:.2f} s in {len(self.timeline.entries)} clips{cuts}",
                 f"{self.timeline_path}: timeline"]
        if self.wav_path is not None and self.mp3_bytes:
            samples = write_wav_from_mp3(self.mp3_path, self.wav_path, self.timeline.recorded_seconds,
                                         self.sample_rate)
            notes.append(f"{self.wav_path}: {samples / self.sample_rate:.2f} s WAV")
        if self.strip_path is not None and self._images:
            width, height = write_strip(list(self._images.values()), self.strip_path)
            notes.append(f"{self.strip_path}: {width}x{height} spectrogram strip")
        return notes
