"""Captions for clips: templates filled with synonyms, split into training and held-out phrasings.

A caption names the lead instrument and/or the style in many ways ("church bells", "bells ringing", "chimes"), and
sometimes the mood, key or tempo. The held-out templates are never used for training data, so prompt following can be
measured on captions the model has not seen: every word in them also occurs in training captions, but never in
that phrasing (tests check that no held-out caption can come out of a training template).
"""

from __future__ import annotations

import numpy as np

from pipeline.music.clip import ClipSpec
from pipeline.music.styles import bpm_for_beats

INSTRUMENT_WORDS = {
    "piano": ("piano", "grand piano", "piano keys", "upright piano", "electric piano"),
    "organ": ("organ", "hammond organ", "church organ", "organ chords", "electric organ"),
    "strings": ("strings", "string section", "violins", "orchestral strings", "warm string pad"),
    "bells": ("church bells", "bells ringing", "chimes", "bells", "tubular bells"),
    "guitar": ("guitar", "acoustic guitar", "plucked guitar", "nylon guitar", "fingerpicked guitar"),
    "synth": ("synth lead", "synthesizer", "analog synth", "lead synth", "saw synth"),
    "choir": ("choir", "voices", "singing choir", "vocal choir", "choir singing"),
    "bass": ("bass", "bassline", "bass guitar", "deep bass", "groovy bassline"),
    "drums": ("drums only", "just drums", "drum loop", "drum solo", "drum beat", "percussion"),
}
STYLE_WORDS = {
    "techno": ("techno", "minimal techno", "berlin techno", "warehouse techno"),
    "house": ("house", "deep house", "house music", "chicago house"),
    "lofi": ("lo-fi hip hop", "lofi", "lo-fi beats", "chillhop"),
    "jazz": ("jazz", "swing jazz", "jazzy", "bebop"),
    "rock": ("rock", "rock and roll", "indie rock", "classic rock"),
    "funk": ("funk", "funky", "disco funk", "funk groove"),
    "ambient": ("ambient", "atmospheric", "ambient drone", "calm ambient"),
    "reggae": ("reggae", "dub", "roots reggae", "one drop reggae"),
    "classical": ("classical", "baroque", "chamber music", "classical music"),
}
MOODS = {"major": ("happy", "bright", "uplifting", "sunny"), "minor": ("sad", "dark", "melancholic", "moody")}
SOLO_WORDS = ("solo", "lone", "unaccompanied")

TRAIN_TEMPLATES = (
    "{inst}",
    "{style}",
    "{style} {inst}",
    "{inst}, {style}",
    "{mood} {style} with {inst}",
    "{style} song featuring {inst}",
    "{inst} playing {style}",
    "{mood} {inst} in {key}",
    "{style} {inst} at {bpm} bpm",
    "{inst} over a {style} beat",
    "{mood} {inst} tune",
    "{style} vibes with {inst}",
    "{inst} jam, {style}",
    "{style} led by {inst}",
    "{inst} and {style}",
)
HELD_OUT_TEMPLATES = (
    "a {mood} {style} tune led by {inst}",
    "{inst} and {style} vibes",
    "{style} jam with {inst}",
)


def _fill(template: str, spec: ClipSpec, rng: np.random.Generator) -> str:
    instrument = str(rng.choice(INSTRUMENT_WORDS[spec.lead]))
    if spec.solo and rng.random() < 0.6:
        instrument = f"{rng.choice(SOLO_WORDS)} {instrument}"
    words = {
        "inst": instrument,
        "style": str(rng.choice(STYLE_WORDS[spec.style])),
        "mood": str(rng.choice(MOODS[spec.key.mode])),
        "key": spec.key.name,
        "bpm": str(round(spec.bpm)),
    }
    return template.format(**words)


def caption(spec: ClipSpec, rng: np.random.Generator, *, held_out: bool = False) -> str:
    """A caption for ``spec``: a random training template, or a held-out one (for evaluation only)."""
    templates = HELD_OUT_TEMPLATES if held_out else TRAIN_TEMPLATES
    return _fill(str(rng.choice(templates)), spec, rng)


def vocabulary() -> list[str]:
    """Every word a caption can contain (for the tokenizer's whole-word merges)."""
    texts = [w for words in (*INSTRUMENT_WORDS.values(), *STYLE_WORDS.values(), *MOODS.values()) for w in words]
    texts += list(SOLO_WORDS) + list(TRAIN_TEMPLATES) + list(HELD_OUT_TEMPLATES)
    texts += ["c c# d eb e f f# g ab a bb b major minor bpm"]
    texts += [str(round(bpm_for_beats(beats))) for beats in range(6, 17)]
    words: set[str] = set()
    for text in texts:
        for word in text.replace(",", " , ").replace("-", " - ").split():
            if not word.startswith("{"):
                words.add(word.lower())
    return sorted(words)
