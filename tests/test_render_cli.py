"""`jamserver render`: the room's logic in-process, to the same files `record` writes."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile
from PIL import Image

from jamserver.cli import main as jamserver_main
from jamserver.cli.render import jam_session
from jamserver.jam.prompt import Prompt
from jamserver.jam.session import JamSession
from jamserver.recording.offline import PromptRotation
from pipeline.audio.mp3 import DECODED_DELAY_SAMPLES, decode_mp3
from tests.server_support import REPO
from tests.upload_support import loop_upload

RATE = 44100
FAST = ["--checkpoint", "tiny", "--steps", "8", "--quiet"]  # 6 UNet steps a clip: the tiny model's sound is noise anyway


def render_args(**overrides) -> argparse.Namespace:
    defaults = dict(prompt=["a"], seed=42, seed_image="og_beat", steps=50, denoising=0.75, guidance=7.0,
                    alpha_velocity=0.25)
    return argparse.Namespace(**{**defaults, **overrides})


def planned_prompts(rotation: PromptRotation, session: JamSession, clips: int) -> list[tuple[str, str, float]]:
    """Drive a session the way `render` does, without rendering: (start, end, alpha) per clip."""
    plans, last_alpha = [], None
    for index in range(clips):
        queued = rotation.next_prompt(index, last_alpha)
        if queued is not None:
            session.queue_prompt(queued)
        plan = session.plan_next_clip()
        session.clip_delivered(plan, float(index))
        plans.append((plan.start.prompt, plan.end.prompt, plan.alpha))
        last_alpha = plan.alpha
    return plans


def test_prompts_enter_one_per_wrap_then_cycle():
    session, prompts = jam_session(render_args(prompt=["a", "b"]), ["og_beat"])
    plans = planned_prompts(PromptRotation(prompts), session, 11)
    assert [p[2] for p in plans[:6]] == [0.0, 0.25, 0.5, 0.75, 1.0, 0.25]
    assert plans[4][:2] == ("a", "a") and plans[5][:2] == ("a", "b")  # b enters right after the wrap
    assert plans[9][:2] == ("b", "a")  # at the next wrap, back to a


def test_prompts_enter_every_k_clips_when_asked():
    session, prompts = jam_session(render_args(prompt=["a", "b", "c"]), ["og_beat"])
    plans = planned_prompts(PromptRotation(prompts, every_clips=2), session, 5)
    assert [p[1] for p in plans] == ["a", "a", "b", "b", "c"]
    with pytest.raises(ValueError, match="every_clips"):
        PromptRotation(prompts, every_clips=0)


def test_single_prompt_is_never_requeued_and_first_prompt_takes_the_seed():
    session, prompts = jam_session(render_args(prompt=["solo"], seed=9), ["og_beat"])
    rotation = PromptRotation(prompts)
    assert all(rotation.next_prompt(index, 1.0) is None for index in range(10))
    plan = session.plan_next_clip()
    assert plan.start == Prompt("solo", 9, None, 0.75, 7.0) and plan.end.seed == 10


def test_bad_render_options_are_named(tmp_path, capsys):
    base = ["render", "--prompt", "a", "--clips", "1", "--checkpoint", "tiny", "--out", str(tmp_path / "x.mp3")]
    assert jamserver_main([*base, "--seed-image", "nope"]) == 2
    assert "--seed-image: unknown id 'nope'" in capsys.readouterr().err
    assert jamserver_main([*base, "--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().err
    assert jamserver_main([*base, "--denoising", "1.5"]) == 2
    assert "--denoising" in capsys.readouterr().err
    assert not (tmp_path / "x.mp3").exists()


def start_render(out: Path, *args: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "jamserver", "render", "--out", str(out), *FAST, *args]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_render_three_clips_with_a_prompt_change(tmp_path, capsys):
    out = tmp_path / "song.mp3"
    code = jamserver_main(["render", "--out", str(out), *FAST, "--prompt", "church bells",
                           "--prompt", "jazz with piano", "--clips", "3", "--prompt-every-clips", "1", "--seed", "7",
                           "--wav", str(tmp_path / "song.wav"), "--strip", str(tmp_path / "song.png")])
    assert code == 0
    assert "DEMO MODEL" in capsys.readouterr().err
    timeline = json.loads((tmp_path / "song.json").read_text())
    clips = timeline["clips"]
    assert [clip["seq"] for clip in clips] == [0, 1, 2] and timeline["complete"] is True
    assert timeline["source"] == "render" and timeline["settings"]["num_inference_steps"] == 8
    assert clips[0]["start"] == {"prompt": "church bells", "seed": 7, "negative_prompt": None,
                                 "denoising": 0.75, "guidance": 7.0}
    assert clips[1]["end"]["prompt"] == "jazz with piano"
    for before, after in zip(clips, clips[1:]):
        assert after["stream_time"] == pytest.approx(before["stream_time"] + before["duration"])
    total = sum(clip["duration"] for clip in clips)
    assert timeline["duration"] == pytest.approx(total) == pytest.approx(3 * 5.12, abs=0.01)
    # the stream really ends here, so the encoder is flushed: every sample is in the MP3
    decoded = decode_mp3(out.read_bytes(), RATE).shape[-1] - DECODED_DELAY_SAMPLES
    assert total * RATE <= decoded <= total * RATE + 2 * 1152
    wav, rate = soundfile.read(tmp_path / "song.wav")
    assert len(wav) == round(total * rate) and abs(wav).max() > 0.01
    assert Image.open(tmp_path / "song.png").size == (3 * 512, 512)


def test_sigterm_stops_a_render_with_valid_files(tmp_path):
    out = tmp_path / "long.mp3"
    process = start_render(out, "--prompt", "a", "--clips", "500")
    timeline_path = tmp_path / "long.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        with contextlib.suppress(OSError, ValueError):
            if json.loads(timeline_path.read_text())["clips"]:
                break
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    timeline = json.loads(timeline_path.read_text())
    assert timeline["ended"] == "interrupted" and timeline["complete"] is False
    assert 1 <= len(timeline["clips"]) < 500 and timeline["mp3_bytes"] == out.stat().st_size
    decoded = decode_mp3(out.read_bytes(), RATE).shape[-1] - DECODED_DELAY_SAMPLES
    assert decoded >= timeline["duration"] * RATE


def test_render_jams_on_an_uploaded_seed_from_the_data_dir(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("JAMSERVER_DATA_DIR", str(tmp_path / "default"))
    data_dir = tmp_path / "data"
    (tmp_path / "loop.flac").write_bytes(loop_upload(104.0, "flac"))
    assert jamserver_main(["audio-to-seed", str(tmp_path / "loop.flac"), "--out-dir", str(data_dir / "seeds")]) == 0
    custom = json.loads((data_dir / "seeds" / "index.json").read_text())[0]["id"]
    out = tmp_path / "mine.mp3"
    base = ["render", "--out", str(out), *FAST, "--prompt", "tabla", "--clips", "1", "--seed-image", custom]
    assert jamserver_main(base) == 2  # not in the default data directory
    assert custom in capsys.readouterr().err
    assert jamserver_main([*base, "--data-dir", str(data_dir)]) == 0
    assert json.loads((tmp_path / "mine.json").read_text())["settings"]["seed_image_id"] == custom
