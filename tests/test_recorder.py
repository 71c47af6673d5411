"""`jamserver record` and its parts: timed prompts, the timeline, the incremental files, a real server."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
from PIL import Image

from jamserver.cli import main as jamserver_main
from jamserver.cli.record import cycling_prompts, parse_script
from jamserver.jam import protocol
from jamserver.jam.prompt import Prompt
from jamserver.recording.files import PromptSchedule, RecordingFiles, TimedPrompt, Timeline
from jamserver.recording.recorder import JamClient, Recorder, websocket_url
from jamserver.server.room.stream import RoomStream
from pipeline.audio.mp3 import DECODED_DELAY_SAMPLES, decode_mp3, split_frames
from tests.server_support import REPO, ServerProcess, running_server

RATE = 44100
FRAME = 1152
CLIP_SECONDS = 5.12


# -- pure parts -------------------------------------------------------------------------------------


def test_script_is_sorted_and_its_errors_name_the_entry_and_field():
    script = parse_script([{"at": 10, "prompt": "jazz", "seed": 7, "guidance": 9},
                           {"at": 0, "prompt": "bells", "denoising": 0.8}])
    assert [(p.at, p.prompt.prompt) for p in script] == [(0.0, "bells"), (10.0, "jazz")]
    assert protocol.client_message_to_wire(script[1].prompt) == {
        "type": "prompt", "prompt": "jazz", "seed": 7, "guidance": 9.0}
    for bad, named in [({"at": -1, "prompt": "x"}, "script[1].at"),
                       ({"at": 1, "prompt": ""}, "script[1].prompt"),
                       ({"at": 1, "prompt": "x", "guidence": 3}, "script[1].guidence"),
                       ({"at": 1, "prompt": "x", "denoising": 2}, "script[1].denoising"),
                       ({"at": True, "prompt": "x"}, "script[1].at")]:
        with pytest.raises(ValueError, match=named.replace("[", r"\[").replace("]", r"\]")):
            parse_script([{"at": 0, "prompt": "ok"}, bad])
    with pytest.raises(ValueError, match="array"):
        parse_script({"at": 0, "prompt": "x"})


def test_cycling_prompts_and_schedule_release_prompts_on_time():
    timed = cycling_prompts(["a", "b", "c"], every=5, until=22)
    assert [(p.at, p.prompt.prompt) for p in timed] == [(0, "a"), (5, "b"), (10, "c"), (15, "a"), (20, "b")]
    assert len(cycling_prompts(["a", "b", "c"], every=10 / 3, until=10)) == 3  # spread: no extra from rounding
    schedule = PromptSchedule(reversed(timed))
    assert [p.prompt.prompt for p in schedule.due(0.0)] == ["a"]
    assert schedule.seconds_until_next(1.0) == pytest.approx(4.0)
    assert [p.prompt.prompt for p in schedule.due(12.0)] == ["b", "c"]
    assert schedule.due(12.0) == []


def clip_frame(seq: int, audio: bytes = b"", *, prompt: str = "a", end: str = "b") -> dict[str, Any]:
    side = {"prompt": prompt, "seed": 1, "negative_prompt": None, "denoising": 0.75, "guidance": 7.0}
    image = io.BytesIO()
    Image.new("RGB", (512, 512), (seq * 40 % 255, 0, 0)).save(image, format="JPEG")
    return protocol.clip_frame(seq=seq, stream_time=seq * CLIP_SECONDS, duration=CLIP_SECONDS, alpha=0.25 * seq,
                               start=side, end={**side, "prompt": end}, image=image.getvalue(), audio=audio,
                               sample_rate=RATE, gen_seconds=1.5)


def test_timeline_places_clips_in_the_file_and_reports_missing_ones():
    timeline = Timeline({"room": "r1"})
    assert timeline.add(clip_frame(3))
    assert timeline.add(clip_frame(3)) is None  # a repeat is not recorded twice
    assert timeline.add(clip_frame(5)).file_time == pytest.approx(CLIP_SECONDS)
    document = timeline.to_json(mp3_name="jam.mp3", mp3_bytes=10, ended="interrupted")
    assert document["room"] == "r1" and document["complete"] is False
    assert document["missing_seqs"] == [4]
    assert [c["stream_time"] for c in document["clips"]] == pytest.approx([3 * CLIP_SECONDS, 5 * CLIP_SECONDS])
    assert document["clips"][0]["end"]["prompt"] == "b" and document["duration"] == pytest.approx(2 * CLIP_SECONDS)
    with pytest.raises(ValueError, match="missing"):
        timeline.add({"seq": 9})


def test_websocket_url_defaults_to_the_ws_endpoint():
    assert websocket_url("ws://127.0.0.1:3013") == "ws://127.0.0.1:3013/ws"
    assert websocket_url("https://jam.example/") == "wss://jam.example/ws"
    assert websocket_url("ws://h:1/custom") == "ws://h:1/custom"
    with pytest.raises(ValueError, match="url"):
        websocket_url("127.0.0.1:3013")


def test_files_stay_valid_after_every_clip_and_finish_with_wav_and_strip(tmp_path):
    stream = RoomStream(RATE)
    files = RecordingFiles(tmp_path / "jam.mp3", wav_path=tmp_path / "jam.wav", strip_path=tmp_path / "strip.png")
    files.open({"room": "r1"})
    tone = (0.3 * np.sin(2 * np.pi * 220 * np.arange(int(CLIP_SECONDS * RATE)) / RATE)).astype(np.float32)
    for seq in range(3):
        audio = stream.append(tone[None, :]).audio
        files.add_clip(clip_frame(seq, audio))
        on_disk = json.loads((tmp_path / "jam.json").read_text())
        assert on_disk["mp3_bytes"] == (tmp_path / "jam.mp3").stat().st_size
        assert len(on_disk["clips"]) == seq + 1 and on_disk["ended"] is None
    files.append_tail(stream.finish())
    files.finish("duration")
    timeline = json.loads((tmp_path / "jam.json").read_text())
    assert timeline["ended"] == "duration" and timeline["complete"] is True
    wav, rate = soundfile.read(tmp_path / "jam.wav")
    assert rate == RATE and len(wav) == round(3 * CLIP_SECONDS * RATE)  # the flushed stream: exact length
    # trimmed of the decoder delay: the tone starts at once, not after 1105 samples of silence
    assert np.abs(wav[:200]).max() > 0.05
    assert Image.open(tmp_path / "strip.png").size == (3 * 512, 512)


def test_a_cut_in_truncates_the_file_at_its_first_frame_and_is_listed_in_the_timeline(tmp_path):
    stream = RoomStream(RATE)
    files = RecordingFiles(tmp_path / "jam.mp3", wav_path=tmp_path / "jam.wav", strip_path=tmp_path / "strip.png")
    files.open({"room": "r1"})
    t = np.arange(int(CLIP_SECONDS * RATE)) / RATE
    low, high = (0.3 * np.sin(2 * np.pi * f * t).astype(np.float32)[None, :] for f in (220, 330))
    pieces = [stream.append(low) for _ in range(3)]
    beat = round(0.64 * RATE)
    pieces.append(stream.cut(CLIP_SECONDS + 3 * 0.64, [(high[:, 3 * beat:], None)]))
    pieces.append(stream.append(high))
    for seq, piece in enumerate(pieces):
        frame = {**clip_frame(seq, piece.audio), "stream_time": piece.stream_time, "duration": piece.duration,
                 "mp3_frame": piece.first_frame, "replaces": piece.replaces}
        files.add_clip(frame)
    tail = stream.finish()
    files.append_tail(tail)
    files.finish("duration")
    cut = pieces[3]
    expected = b"".join(piece.audio for piece in pieces[:3])
    kept = sum(len(f) for f in split_frames(expected)[:cut.first_frame])
    assert (tmp_path / "jam.mp3").read_bytes() == expected[:kept] + cut.audio + pieces[4].audio + tail
    timeline = json.loads((tmp_path / "jam.json").read_text())
    assert timeline["version"] == 2
    assert [c["seq"] for c in timeline["clips"]] == [0, 1, 3, 4]
    assert timeline["clips"][1]["duration"] == pytest.approx(3 * 0.64)
    assert timeline["cuts"] == [{"seq": 3, "stream_time": pytest.approx(CLIP_SECONDS + 3 * 0.64),
                                 "file_time": pytest.approx(CLIP_SECONDS + 3 * 0.64),
                                 "replaced_seconds": pytest.approx(2 * CLIP_SECONDS - 3 * 0.64)}]
    assert timeline["duration"] == pytest.approx(3 * CLIP_SECONDS)
    wav, _ = soundfile.read(tmp_path / "jam.wav")
    assert len(wav) == round(3 * CLIP_SECONDS * RATE)
    spectrum = np.abs(np.fft.rfft(wav[round(2.5 * CLIP_SECONDS * RATE):][:RATE]))
    assert np.argmax(spectrum) == pytest.approx(330, abs=2)  # after the cut: the cut-in's audio
    assert Image.open(tmp_path / "strip.png").size == (4 * 512, 512)


def test_a_cut_in_after_a_takeover_keeps_what_was_recorded_before_it(tmp_path):
    """After a takeover (`discontinuity`: frames numbered from 0 again) a cut-in truncates the new stream's frames,
    not the file's start."""
    old_owner, new_owner = RoomStream(RATE), RoomStream(RATE)
    files = RecordingFiles(tmp_path / "jam.mp3", wav_path=tmp_path / "jam.wav")
    files.open({"room": "r1"})
    t = np.arange(int(CLIP_SECONDS * RATE)) / RATE
    low, high = (0.3 * np.sin(2 * np.pi * f * t).astype(np.float32)[None, :] for f in (220, 330))
    pieces = [old_owner.append(low) for _ in range(3)]
    new_owner.resume(old_owner.joiner_state())
    resumed = [new_owner.append(low) for _ in range(2)]
    cut = new_owner.cut(4 * CLIP_SECONDS + 3 * 0.64, [(high[:, 3 * round(0.64 * RATE):], None)])
    assert cut.first_frame < pieces[2].first_frame  # the new stream's numbering: behind the file's frames
    for seq, piece in enumerate([*pieces, *resumed, cut]):
        frame = {**clip_frame(seq, piece.audio), "stream_time": piece.stream_time, "duration": piece.duration,
                 "mp3_frame": piece.first_frame, "replaces": piece.replaces}
        files.add_clip({**frame, "discontinuity": True} if seq == 3 else frame)
    files.finish("duration")
    old_bytes = b"".join(piece.audio for piece in pieces)
    new_bytes = b"".join(piece.audio for piece in resumed)
    kept = sum(len(f) for f in split_frames(new_bytes)[:cut.first_frame])
    assert (tmp_path / "jam.mp3").read_bytes() == old_bytes + new_bytes[:kept] + cut.audio
    timeline = json.loads((tmp_path / "jam.json").read_text())
    assert [c["seq"] for c in timeline["clips"]] == [0, 1, 2, 3, 4, 5] and timeline["discontinuities"] == [3]
    assert timeline["duration"] == pytest.approx(5 * CLIP_SECONDS)


# -- against a real server -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[Any]:
    """A live server for the module; one killed by a test is replaced on the next request."""
    with contextlib.ExitStack() as stack:
        current: list[ServerProcess] = []

        def live() -> ServerProcess:
            if not current or current[-1].process.poll() is not None:
                log_dir = tmp_path_factory.mktemp("server")
                current.append(stack.enter_context(running_server(log_dir=log_dir, timeout=240)))
            return current[-1]

        yield live


def start_record(server: ServerProcess, out: Path, *args: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "jamserver", "record", "--url", f"ws://127.0.0.1:{server.port}",
               "--out", str(out), *args]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_clips(timeline_path: Path, process: subprocess.Popen, clips: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        with contextlib.suppress(OSError, ValueError):
            if len(json.loads(timeline_path.read_text())["clips"]) >= clips:
                return
        time.sleep(0.1)
    raise AssertionError(f"no {clips} clips in {timeline_path} after {timeout} s")


def check_recording(mp3: Path, timeline_path: Path) -> dict[str, Any]:
    """The MP3 decodes, and the timeline is valid JSON that matches it clip for clip (cut-ins included)."""
    timeline = json.loads(timeline_path.read_text())
    kept = {c["seq"] for c in timeline["clips"]}
    assert all(cut["seq"] in kept for cut in timeline["cuts"])
    assert timeline["mp3_bytes"] == mp3.stat().st_size
    clips = timeline["clips"]
    assert clips and timeline["duration"] == pytest.approx(sum(c["duration"] for c in clips))
    for before, after in zip(clips, clips[1:]):
        assert after["seq"] > before["seq"]  # a clip a cut-in superseded is gone from the timeline
        assert after["stream_time"] == pytest.approx(before["stream_time"] + before["duration"])
        assert after["file_time"] == pytest.approx(before["file_time"] + before["duration"])
    decoded = decode_mp3(mp3.read_bytes(), RATE).shape[-1] - DECODED_DELAY_SAMPLES
    expected = timeline["duration"] * RATE
    # a live stream is never flushed: the encoder still holds its last few frames
    assert expected - 5 * FRAME <= decoded <= expected + FRAME, (decoded, expected)
    return timeline


def test_record_two_prompts_to_mp3_timeline_wav_and_strip(servers, tmp_path):
    out = tmp_path / "jam.mp3"
    process = start_record(servers(), out, "--prompt", "church bells", "--prompt", "jazz with piano",
                           "--duration", "12", "--wav", str(tmp_path / "jam.wav"),
                           "--strip", str(tmp_path / "strip.png"))
    stdout, stderr = process.communicate(timeout=240)
    assert process.returncode == 0, stderr
    timeline = check_recording(out, tmp_path / "jam.json")
    clips = timeline["clips"]
    assert timeline["complete"] is True and timeline["role"] == "host" and timeline["model"]["demo"] is True
    assert "token" not in json.dumps(timeline)  # the control token is never written into a shareable file
    assert 12 <= timeline["duration"] < 12 + CLIP_SECONDS and clips[0]["stream_time"] == 0.0
    ends = [clip["end"]["prompt"] for clip in clips]
    assert "church bells" in ends and ends[-1] == "jazz with piano", ends  # the prompt change is recorded
    wav, rate = soundfile.read(tmp_path / "jam.wav")
    assert abs(len(wav) - timeline["duration"] * rate) <= 5 * FRAME
    assert Image.open(tmp_path / "strip.png").size == (512 * len(clips), 512)
    assert "clip 2" in stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_midway_leaves_a_playable_mp3_and_a_matching_timeline(servers, tmp_path, signum):
    out = tmp_path / "cut.mp3"
    process = start_record(servers(), out, "--duration", "300", "--wav", str(tmp_path / "cut.wav"))
    wait_for_clips(tmp_path / "cut.json", process, 1)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signum, stderr
    timeline = check_recording(out, tmp_path / "cut.json")
    assert timeline["ended"] == "interrupted" and timeline["complete"] is False
    assert abs(len(soundfile.read(tmp_path / "cut.wav")[0]) - timeline["duration"] * RATE) <= 5 * FRAME


def test_a_refused_join_exits_2_with_the_servers_reason(servers, tmp_path):
    process = start_record(servers(), tmp_path / "none.mp3", "--room", "no-such-room", "--duration", "5")
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "room no-such-room does not exist" in stderr and "room_not_found" in stderr
    assert not (tmp_path / "none.mp3").exists()


def test_bad_arguments_exit_2_before_connecting(tmp_path, capsys):
    base = ["record", "--url", "ws://127.0.0.1:9", "--duration", "5", "--out", str(tmp_path / "x.mp3")]
    assert jamserver_main([*base, "--prompt-every", "3"]) == 2
    assert "--prompt-every needs" in capsys.readouterr().err
    (tmp_path / "script.json").write_text(json.dumps([{"at": 0, "prompt": "x", "seed": -1}]))
    assert jamserver_main([*base, "--script", str(tmp_path / "script.json")]) == 2
    assert "script[0].seed" in capsys.readouterr().err
    assert jamserver_main([*base[:-1], str(tmp_path / "missing" / "x.mp3")]) == 2
    with pytest.raises(SystemExit) as exit_info:
        jamserver_main([*base, "--duration", "-1"])
    assert exit_info.value.code == 2


def test_recorder_joins_an_existing_room_as_host_with_its_token(servers, tmp_path):
    async def scenario():
        host = JamClient(f"ws://127.0.0.1:{servers().port}")
        await host.connect()
        welcome = await host.join()
        files = RecordingFiles(tmp_path / "second.mp3")
        script = PromptSchedule([TimedPrompt(0.0, Prompt("taken over", seed=5))])
        recorder = Recorder(JamClient(host.url), files, duration=CLIP_SECONDS, schedule=script, timeout=120)
        try:
            return await recorder.run(room=welcome["room"], token=welcome["token"]), welcome
        finally:
            await host.close()

    result, welcome = asyncio.run(scenario())
    assert result.ended == "duration" and result.clips >= 1
    timeline = json.loads((tmp_path / "second.json").read_text())
    assert timeline["room"] == welcome["room"] and timeline["role"] == "host"


def test_server_killed_midway_exits_1_and_keeps_the_recording(servers, tmp_path):
    """Kills the module's server: later tests get a fresh one from `servers`."""
    server = servers()
    out = tmp_path / "gone.mp3"
    process = start_record(server, out, "--duration", "300", "--strip", str(tmp_path / "gone.png"))
    wait_for_clips(tmp_path / "gone.json", process, 1)
    server.process.kill()
    server.process.wait()
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1, stderr
    assert "went away" in stderr
    timeline = check_recording(out, tmp_path / "gone.json")
    assert timeline["ended"] == "server_gone"
    assert Image.open(tmp_path / "gone.png").width == 512 * len(timeline["clips"])
