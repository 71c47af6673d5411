"""The procedural music generator: deterministic, labelled truthfully, every instrument audible, clips loop, captions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.music.captions import (
    HELD_OUT_TEMPLATES,
    INSTRUMENT_WORDS,
    STYLE_WORDS,
    TRAIN_TEMPLATES,
    caption,
)
from pipeline.music.clip import INSTRUMENTS, ClipSpec, render_clip
from pipeline.music.drums import DRUM_VOICES, DrumKit, drum_sound
from pipeline.music.instruments import BELL_PARTIALS, PITCHED
from pipeline.music.styles import DRUM_STYLES, STYLE_NAMES, STYLES, bpm_for_beats
from pipeline.music.synth import LOOP_SAMPLES, SAMPLE_RATE, midi_hz, samples

SEED_INDEX = Path(__file__).resolve().parents[1] / "seed_images" / "index.json"


def test_same_seed_same_clip_other_seed_other_clip() -> None:
    first, again, other = render_clip(5), render_clip(5), render_clip(6)
    assert first.spec == again.spec
    assert np.array_equal(first.audio, again.audio)
    assert first.audio.shape == (LOOP_SAMPLES,) and first.audio.dtype == np.float32
    assert not np.array_equal(first.audio, other.audio)


def test_image_is_a_512_square_riffusion_spectrogram() -> None:
    image = render_clip(3).image()
    assert image.size == (512, 512) and image.mode == "RGB"
    pixels = np.asarray(image)
    assert np.array_equal(pixels[..., 0], pixels[..., 1])  # mono: grey
    assert pixels.min() < 60 and pixels.max() > 200  # loud and quiet parts both present


def test_tempos_cover_the_seed_images_range_on_whole_beats() -> None:
    """Every seed image's tempo is a generator tempo, or twice one (agile's 187.5 BPM breakbeat is double time)."""
    seeds = [row["bpm"] for row in json.loads(SEED_INDEX.read_text()) if row["kind"] == "seed"]
    tempos = {bpm_for_beats(beats) for style in STYLES.values() for beats in style.beats}
    for bpm in seeds:
        assert bpm in tempos or bpm / 2 in tempos, bpm
    assert min(tempos) <= min(seeds)
    for seed in range(30):
        spec = ClipSpec.from_seed(seed)
        assert spec.bpm * 5.12 / 60 == pytest.approx(spec.beats)


@pytest.mark.parametrize("lead", INSTRUMENTS)
def test_pinned_labels_are_what_gets_rendered(lead: str) -> None:
    spec = ClipSpec.from_seed(40, lead=lead)
    clip = render_clip(spec)
    assert spec.lead == lead and spec.style in STYLE_NAMES
    if lead == "drums":
        assert clip.parts == ("drums",) and spec.style in DRUM_STYLES
    else:
        assert clip.parts[0] == "lead"
        assert ("drums" in clip.parts) == (not spec.solo and bool(STYLES[spec.style].drums))


def test_labels_are_balanced_over_many_seeds() -> None:
    specs = [ClipSpec.from_seed(seed) for seed in range(900)]
    leads = {name: sum(spec.lead == name for spec in specs) for name in INSTRUMENTS}
    styles = {name: sum(spec.style == name for spec in specs) for name in STYLE_NAMES}
    assert min(leads.values()) > 900 / len(INSTRUMENTS) * 0.6
    assert min(styles.values()) > 900 / len(STYLE_NAMES) * 0.5


def _peak_hz(sound: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(sound * np.hanning(sound.size)))
    return float(np.fft.rfftfreq(sound.size, 1 / SAMPLE_RATE)[np.argmax(spectrum)])


@pytest.mark.parametrize("name", sorted(PITCHED))
def test_every_instrument_sounds_at_its_pitch(name: str) -> None:
    midi = 40 if name == "bass" else 64
    note = PITCHED[name](midi, samples(0.6), 0.5, np.random.default_rng(0))
    assert np.sqrt(np.mean(note**2)) > 0.01
    peak, f0 = _peak_hz(note[: samples(0.6)]), midi_hz(midi)
    ratios = [ratio for ratio, _, _ in BELL_PARTIALS] if name == "bells" else range(1, 9)
    assert min(abs(peak - f0 * ratio) for ratio in ratios) < 0.03 * f0, f"{name}: peak {peak:.0f} Hz, f0 {f0:.0f} Hz"


def test_drums_sit_in_their_bands() -> None:
    kit = DrumKit.random(np.random.default_rng(1), 0.8)
    sounds = {voice: drum_sound(voice, kit, np.random.default_rng(2)) for voice in DRUM_VOICES}
    assert all(np.max(np.abs(sound)) > 0.05 for sound in sounds.values())
    assert _peak_hz(sounds["kick"]) < 200
    assert _peak_hz(sounds["hat"]) > 4000


def test_clips_loop_without_a_seam() -> None:
    """A loop played twice is one performance: the jump across the seam is no bigger than any inside the clip."""
    for seed in (1, 2, 3):
        audio = render_clip(seed).audio.astype(np.float64)
        inside = np.max(np.abs(np.diff(audio)))
        assert abs(audio[0] - audio[-1]) <= inside


def test_held_out_captions_never_come_from_training_templates() -> None:
    rng = np.random.default_rng(0)
    specs = [ClipSpec.from_seed(seed) for seed in range(300)]
    training = {caption(spec, rng) for spec in specs for _ in range(40)}
    held_out = {caption(spec, rng, held_out=True) for spec in specs for _ in range(5)}
    assert not training & held_out
    training_words = {word for text in training for word in text.replace(",", " ").split()}
    for text in held_out:
        assert set(text.replace(",", " ").split()) <= training_words, text
    assert not set(TRAIN_TEMPLATES) & set(HELD_OUT_TEMPLATES)


def test_captions_name_the_labels_with_synonyms() -> None:
    rng = np.random.default_rng(3)
    spec = ClipSpec.from_seed(11, lead="bells", style="classical")
    texts = [caption(spec, rng) for _ in range(200)]
    assert {"church bells", "bells ringing", "chimes"} <= {w for w in INSTRUMENT_WORDS["bells"] if any(w in t for t in texts)}
    assert any(word in text for text in texts for word in STYLE_WORDS["classical"])
