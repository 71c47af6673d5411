"""One labelled clip: pick style, key, tempo, lead and arrangement from a seed; render audio and spectrogram image.

``render_clip(seed)`` is deterministic: the same seed gives the same samples, image and labels on every machine
(numpy's PCG64 stream). The labels are what the classifier learns and what the captions say.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import PIL.Image
import torch

from pipeline.audio.dsp import SpectrogramConverter
from pipeline.audio.image import image_from_mel
from pipeline.audio.params import SpectrogramParams
from pipeline.music.drums import DrumKit
from pipeline.music.mixer import master, render_part
from pipeline.music.score import Event, bass_events, drum_events, lead_events
from pipeline.music.styles import DRUM_STYLES, STYLE_NAMES, STYLES, bpm_for_beats
from pipeline.music.theory import Key

INSTRUMENTS = ("piano", "organ", "strings", "bells", "guitar", "synth", "choir", "bass", "drums")
PITCHED_LEADS = INSTRUMENTS[:-1]
SOLO_PROBABILITY = 0.3  # a pitched lead playing alone (no drums, no bass)


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    """Everything that decides a clip; ``seed`` also drives the motif, progression and humanising."""

    seed: int
    style: str
    lead: str
    key: Key
    beats: int
    solo: bool
    brightness: float

    @property
    def bpm(self) -> float:
        return bpm_for_beats(self.beats)

    @property
    def has_drums(self) -> bool:
        return self.lead == "drums" or (not self.solo and bool(STYLES[self.style].drums))

    @classmethod
    def from_seed(cls, seed: int, *, lead: str | None = None, style: str | None = None) -> ClipSpec:
        """Draw a clip; ``lead``/``style`` pin those labels (drums need a style with a drum groove)."""
        rng = np.random.default_rng([seed, 1])
        lead = lead or str(rng.choice(INSTRUMENTS))
        if lead not in INSTRUMENTS:
            raise ValueError(f"lead: expected one of {INSTRUMENTS}, got {lead!r}")
        styles = DRUM_STYLES if lead == "drums" else STYLE_NAMES
        style = style or str(rng.choice(styles))
        if style not in styles:
            raise ValueError(f"style: expected one of {styles} for lead {lead!r}, got {style!r}")
        solo = lead not in ("drums", "bass") and bool(rng.random() < SOLO_PROBABILITY)
        beats = int(rng.choice(STYLES[style].beats))
        brightness = float(np.clip(STYLES[style].brightness + rng.normal(0, 0.15), 0.0, 1.0))
        return cls(seed, style, lead, Key.random(rng), beats, solo, brightness)


@dataclasses.dataclass(frozen=True)
class Clip:
    spec: ClipSpec
    audio: np.ndarray  # (samples,) float32 mono loop at 44.1 kHz
    parts: tuple[str, ...]  # which parts are in the mix

    def image(self, params: SpectrogramParams | None = None) -> PIL.Image.Image:
        """The riffusion spectrogram image of the clip (512x512 at the default params)."""
        converter = _converter(params or SpectrogramParams())
        return image_from_mel(converter.mel_from_audio(torch.from_numpy(self.audio[None])), converter.params)


@functools.lru_cache(maxsize=4)
def _converter(params: SpectrogramParams) -> SpectrogramConverter:
    """Building a converter costs ~1 s (its filter banks); a data set renders thousands of images with one."""
    return SpectrogramConverter(params)


def render_clip(spec: ClipSpec | int) -> Clip:
    """Render ``spec`` (or the clip drawn from that seed) to one 5.12 s loop."""
    spec = ClipSpec.from_seed(spec) if isinstance(spec, int) else spec
    style = STYLES[spec.style]
    rng = np.random.default_rng([spec.seed, 2])
    kit = DrumKit.random(rng, style.brightness)
    events = []
    if spec.lead != "drums":
        events += lead_events(spec.key, style, spec.lead, spec.beats, rng)
        if not spec.solo and spec.lead != "bass":
            events += bass_events(spec.key, style, spec.beats, rng)
    if spec.has_drums:
        events += drum_events(style, spec.beats, rng, busy=spec.lead == "drums")
    return _mix(spec, events, kit, rng)


def render_groove(style_name: str, beats: int, seed: int, *, busy: bool = False) -> Clip:
    """The band without its lead: the style's drums and bass line at the levels they keep under a lead.

    Seed images are grooves like this: img2img from one keeps its drums and bass, and the prompt brings the lead
    (a drum loop alone at the seed's loudness drowns it). ``busy`` adds ghost notes and a fill, as in drum solos.
    """
    style = STYLES[style_name]
    if not style.drums:
        raise ValueError(f"style: {style_name!r} has no drum groove; expected one of {DRUM_STYLES}")
    rng = np.random.default_rng([seed, 3])
    spec = ClipSpec(seed, style_name, "drums", Key.random(rng), beats, False, style.brightness)
    kit = DrumKit.random(rng, style.brightness)
    events = bass_events(spec.key, style, beats, rng) + drum_events(style, beats, rng, busy=busy)
    return _mix(spec, events, kit, rng)


def _mix(spec: ClipSpec, events: list[Event], kit: DrumKit, rng: np.random.Generator) -> Clip:
    """Render each part's events and master them in the spec's style."""
    parts = {}
    for name in ("lead", "chords", "bass", "drums"):
        chosen = [event for event in events if event.part == name]
        if chosen:
            parts[name] = render_part(chosen, spec.beats, spec.brightness, kit, rng)
    audio = master(parts, STYLES[spec.style], rng).astype(np.float32)
    return Clip(spec, audio, tuple(parts))
