"""Uploads -> seed loops (pipeline/audio/{decode,loops,stretch}.py): every format, the beat-grid fit, each refusal."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.audio.image import audio_from_image
from pipeline.loops.decode import UnusableUpload, sniff
from pipeline.loops.seed_loop import seed_from_upload
from pipeline.loops.stretch import time_stretch
from pipeline.loops.tempo import estimate_tempo
from pipeline.seeds import SeedLibrary
from tests.test_tempo import RATE, drum_loop
from tests.upload_support import encode, loop_upload

LOOP_SAMPLES = 512 * 441


@pytest.mark.parametrize("kind", ["wav", "flac", "ogg", "mp3"])
def test_each_audio_format_becomes_a_seed_on_its_own_beat_grid(kind):
    data = loop_upload(121.0, kind)
    assert sniff(data) == kind
    seed = seed_from_upload(data)
    assert seed.source_format == kind
    assert seed.source_bpm == pytest.approx(121.0, abs=0.5)
    # 121 BPM: 10 beats (4.96 s) are nearest 5.12 s, stretched by 3 % to 117.19 BPM
    assert seed.beats == 10 and seed.bpm == pytest.approx(10 * 60 / 5.12)
    assert seed.fit == "stretched" and seed.stretch == pytest.approx(5.12 / (10 * 60 / 121.0), abs=0.01)
    assert seed.image.size == (512, 512)
    heard = estimate_tempo(audio_from_image(seed.image), RATE, loop=True)
    assert heard.bpm == pytest.approx(seed.bpm) and len(heard.beats) == 10


def test_the_loop_starts_on_a_beat_so_it_repeats_on_the_grid():
    late_start = np.concatenate([np.zeros(int(0.37 * RATE), np.float32), drum_loop(100.0, seconds=8.0)])
    seed = seed_from_upload(encode(late_start, "wav"))
    audio = audio_from_image(seed.image)[0]
    tempo = estimate_tempo(np.tile(audio, 2), RATE)
    phase = (tempo.beats / (60.0 / seed.bpm)) % 1.0
    assert np.all(np.minimum(phase, 1 - phase) < 0.06)  # every beat, across the wrap, lands on the grid


def test_a_clip_shorter_than_5_seconds_is_looped_on_whole_beats():
    short = drum_loop(90.0, seconds=2.7)[: int(2.8 * RATE)]  # 4 whole beats of 0.667 s
    seed = seed_from_upload(encode(short, "wav"))
    assert seed.fit == "stretched" and seed.beats == 8  # looped to 8 beats: 5.33 s -> 5.12 s
    assert seed.stretch == pytest.approx(0.96, abs=0.01)


def test_audio_without_a_steady_beat_is_padded_not_stretched():
    t = np.arange(int(3.0 * RATE)) / RATE
    drone = (0.5 * np.sin(2 * np.pi * 220 * t) * np.minimum(1, t / 0.5)).astype(np.float32)
    seed = seed_from_upload(encode(drone, "flac"))
    assert seed.fit == "padded" and seed.bpm is None and seed.beats is None
    audio = audio_from_image(seed.image)[0]
    assert np.abs(audio[int(3.2 * RATE) :]).max() < 0.02 * np.abs(audio).max()  # silence after 3 s


def test_a_riffusion_png_is_accepted_with_its_tempo():
    png = io.BytesIO()
    SeedLibrary().load_seed("motorway").save(png, format="PNG", exif=SeedLibrary().load_seed("motorway").getexif())
    seed = seed_from_upload(png.getvalue())
    assert (seed.source_format, seed.fit, seed.bpm, seed.beats) == ("png", "as-is", 140.625, 12)
    assert Image.open(io.BytesIO(seed.png_bytes())).getexif()[11000] == 44100


def _png(size=(512, 512), exif: dict[int, float] | None = None) -> bytes:
    image = Image.new("RGB", size, (200, 200, 200))
    out = io.BytesIO()
    tags = Image.Exif()
    for tag, value in (exif or {}).items():
        tags[tag] = value
    image.save(out, format="PNG", exif=tags)
    return out.getvalue()


RIFFUSION_EXIF = {11000: 44100, 11005: 0, 11010: 10, 11020: 100, 11030: 400, 11040: 512, 11050: 0, 11060: 10000,
                  11070: 0.25, 11080: 3e7}


@pytest.mark.parametrize("data, problem, status, words", [
    (b"", "empty", 400, "empty"),
    (b"hello, I am a text file" * 10, "unsupported_format", 415, "not WAV"),
    (b"RIFF\x24\x00\x00\x00WAVEfmt garbage", "undecodable", 400, "wav data cannot be decoded"),
    (b"fLaC" + bytes(200), "undecodable", 400, "flac"),
    (b"ID3\x03\x00\x00\x00\x00\x00\x00" + bytes(300), "undecodable", 400, "mp3"),
    (b"OggS\x00\x02" + bytes(30) + b"\x13OpusHead" + bytes(40), "unsupported_format", 415, "Vorbis"),
    (b"\x89PNG\r\n\x1a\n" + bytes(50), "undecodable", 400, "PNG cannot be decoded"),
    (_png((256, 256), RIFFUSION_EXIF), "bad_image", 400, "512x512"),
    (_png(), "bad_image", 400, "EXIF"),
    (_png(exif={**RIFFUSION_EXIF, 11000: 22050, 11060: 8000}), "bad_image", 400, "sample rate is 22050"),
    (_png(exif={**RIFFUSION_EXIF, 11040: 256}), "bad_image", 400, "num frequencies is 256"),
])
def test_bad_uploads_are_refused_naming_the_problem(data, problem, status, words):
    with pytest.raises(UnusableUpload, match=words) as refused:
        seed_from_upload(data)
    assert (refused.value.problem, refused.value.status) == (problem, status)


def test_empty_silent_too_short_and_too_long_audio_are_refused():
    cases = [
        (encode(np.zeros(0, np.float32), "wav"), "empty"),
        (encode(np.zeros(5 * RATE, np.float32), "wav"), "silent"),
        (encode(drum_loop(120.0, seconds=4.0)[: int(0.2 * RATE)], "wav"), "too_short"),
        (encode(np.zeros(601 * 1000, np.float32) + 0.1, "wav", rate=1000), "too_long"),  # 601 s at 1 kHz
    ]
    for data, problem in cases:
        with pytest.raises(UnusableUpload) as refused:
            seed_from_upload(data)
        assert refused.value.problem == problem, refused.value
    with pytest.raises(UnusableUpload, match="shorter than one beat|less than one beat"):
        seed_from_upload(encode(drum_loop(60.0, seconds=3.0)[: int(0.5 * RATE)], "wav"))


def test_time_stretch_hits_the_length_exactly_and_keeps_the_pitch():
    t = np.arange(RATE) / RATE
    tone = np.sin(2 * np.pi * 441.0 * t).astype(np.float32)
    for length in (int(0.93 * RATE), int(1.08 * RATE)):
        out = time_stretch(tone, length, RATE)
        assert out.shape == (length,)
        spectrum = np.abs(np.fft.rfft(out[2000:-2000] * np.hanning(out.size - 4000)))
        peak_hz = np.argmax(spectrum) * RATE / (out.size - 4000)
        assert peak_hz == pytest.approx(441.0, abs=3.0)
        middle = out[2000:-2000]
        assert np.sqrt(np.mean(middle**2)) == pytest.approx(np.sqrt(0.5), rel=0.05)  # no phase cancellation
