import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from jamserver.cli import main
from pipeline.audio.audio_io import AudioFileError, read_audio, write_audio
from pipeline.seed_store import SeedStore
from pipeline.seeds import SeedLibrary
from tests.upload_support import loop_upload


def tone(seconds: float, frequency: float = 330.0, rate: int = 44100) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.4 * np.sin(2 * np.pi * frequency * t))[None].astype(np.float32)


def test_audio_to_image_then_image_to_audio(tmp_path: Path):
    source = tmp_path / "loop.wav"
    write_audio(source, tone(6.0), 44100)
    image_path = tmp_path / "loop.png"
    assert main(["audio-to-image", str(source), str(image_path), "--start", "0.5"]) == 0
    with PIL.Image.open(image_path) as image:
        assert image.size == (512, 512) and image.getexif()[11000] == 44100
    out = tmp_path / "back.wav"
    assert main(["image-to-audio", str(image_path), str(out), "--iterations", "2"]) == 0
    audio = read_audio(out)
    assert audio.shape == (1, 512 * 441)
    assert 0.05 < float(np.abs(audio).max()) <= 1.0


def test_several_inputs_with_out_dir_and_mp3(tmp_path: Path):
    for name, frequency in (("a.mp3", 220.0), ("b.flac", 440.0)):
        write_audio(tmp_path / name, tone(5.5, frequency), 44100)
    out_dir = tmp_path / "images"
    assert main(["audio-to-image", str(tmp_path / "a.mp3"), str(tmp_path / "b.flac"), "--out-dir", str(out_dir)]) == 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["a.png", "b.png"]
    audio_dir = tmp_path / "audio"
    args = ["image-to-audio", *map(str, sorted(out_dir.iterdir())), "--out-dir", str(audio_dir), "--format", "mp3"]
    assert main([*args, "--iterations", "1"]) == 0
    decoded = read_audio(audio_dir / "a.mp3")
    assert abs(decoded.shape[1] - 512 * 441) < 4000  # MP3 adds encoder padding only


def test_unreadable_file_fails_with_one_line_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"not audio at all")
    assert main(["audio-to-image", str(broken), str(tmp_path / "x.png")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "broken.wav" in error
    assert main(["image-to-audio", str(tmp_path / "missing.png"), str(tmp_path / "x.wav")]) == 2
    assert "missing.png" in capsys.readouterr().err
    with pytest.raises(AudioFileError, match="broken.wav"):
        read_audio(broken)


def test_resampling_on_read_keeps_pitch(tmp_path: Path):
    path = tmp_path / "low.wav"
    write_audio(path, tone(1.0, 1000.0, rate=22050), 22050)
    audio = read_audio(path, sample_rate=44100)
    assert audio.shape == (1, 44100)
    peak_hz = np.argmax(np.abs(np.fft.rfft(audio[0]))) * 44100 / audio.shape[1]
    assert abs(peak_hz - 1000.0) <= 1.0


def test_installed_command_reports_errors_with_exit_code_2(tmp_path: Path):
    executable = Path(sys.executable).parent / "jamserver"
    result = subprocess.run(
        [str(executable), "audio-to-image", str(tmp_path / "nope.wav"), str(tmp_path / "x.png")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert "nope.wav" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_audio_to_seed_prints_the_tempo_and_writes_the_png_and_index_entry(tmp_path: Path, capsys):
    (tmp_path / "loop.wav").write_bytes(loop_upload(121.0, "wav"))
    (tmp_path / "notes.txt").write_text("not audio")
    out_dir = tmp_path / "seeds"
    assert main(["audio-to-seed", str(tmp_path / "loop.wav"), str(tmp_path / "notes.txt"),
                 "--out-dir", str(out_dir)]) == 2
    printed, refused = capsys.readouterr()
    assert "121.0" in printed and "10 beats" in printed and "117.19 BPM" in printed
    assert "notes.txt" in refused and "not WAV" in refused
    (entry,) = json.loads((out_dir / "index.json").read_text())
    assert entry["bpm"] == 117.1875 and entry["beats"] == 10 and entry["custom"] is True
    with PIL.Image.open(out_dir / entry["file"]) as image:
        assert image.size == (512, 512) and image.getexif()[11000] == 44100
    assert entry["id"] in SeedLibrary(store=SeedStore(out_dir)).seed_ids()  # a server with this store offers it
