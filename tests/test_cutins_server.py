"""Cut-ins on a real server (tiny model): a prompt is spliced in on a beat just ahead of the room's playhead.

What a client sees: a `clip` frame with `replaces: true` at a beat of the seed's grid, never before the playhead,
with a seq never sent before, whose MP3 frames replace those from `mp3_frame` on so that the stream a client
splices together decodes to one continuous sound; the stream goes on from the cut's end.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import connect

from jamserver.jam import protocol
from pipeline.audio.mp3 import DECODED_DELAY_SAMPLES, decode_mp3, split_frames
from tests.server_support import join, recv, run, running_server

RATE = 44100
BEAT_SECONDS = 5.12 / 8  # og_beat: 8 beats a loop (seed_images/index.json)
PROMPT = "jazz with piano"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server("--playout-delay", "1.0", log_dir=tmp_path_factory.mktemp("cutins")) as running:
        yield running


async def frames_until(ws: Any, done: Any, timeout: float = 90.0) -> list[tuple[float, dict[str, Any]]]:
    """(arrival time, frame) of every frame until `done(frame)`."""
    received = []
    deadline = time.monotonic() + timeout
    while True:
        frame = await recv(ws, max(0.1, deadline - time.monotonic()))
        received.append((time.monotonic(), frame))
        if done(frame):
            return received


def spliced(clips: list[dict[str, Any]]) -> list[bytes]:
    """The room's MP3 frames as a client keeps them: in order, a cut-in replacing those from its mp3_frame on."""
    frames: list[bytes] = []
    for clip in clips:
        if clip["replaces"]:
            assert clip["mp3_frame"] <= len(frames)  # a restart never begins after the frames already sent
            del frames[clip["mp3_frame"]:]
        assert clip["mp3_frame"] == len(frames)
        frames += split_frames(clip["audio"])
    return frames


def curvature(audio: np.ndarray) -> float:
    return float(np.max(np.abs(np.diff(audio, n=2, axis=-1))))


def test_a_prompt_is_cut_in_on_a_beat_ahead_of_the_playhead_and_the_stream_goes_on(server):
    async def scenario():
        async with connect(server.ws_url, max_size=None) as ws:
            welcome = await join(ws, protocol=protocol.PROTOCOL_VERSION)
            before = await frames_until(ws, lambda frame: frame["type"] == "clip" and frame["seq"] == 1)
            await asyncio.sleep(random.uniform(0.0, 2.0))
            arrived, last = before[-1]
            sent_at = time.monotonic()
            playhead_at_send = last["playhead"] + (sent_at - arrived)  # at most where the room is
            await ws.send(protocol.encode({"type": "prompt", "prompt": PROMPT}))
            after = await frames_until(ws, lambda frame: frame["type"] == "clip" and frame["end"]["prompt"] == PROMPT)
            following = await frames_until(ws, lambda frame: frame["type"] == "clip")
            return welcome, [frame for _, frame in before + after + following], playhead_at_send

    welcome, frames, playhead_at_send = run(scenario())
    assert welcome["protocol"] == 2 and welcome["playout_delay"] == 1.0
    assert welcome["playhead"] is None  # a new room's clock starts with its first clip: no frozen -1 to follow
    first_clip = next(index for index, frame in enumerate(frames) if frame["type"] == "clip")
    assert all(frame["playhead"] is None for frame in frames[:first_clip] if frame["type"] == "state")
    assert all(isinstance(frame["playhead"], float) for frame in frames[first_clip:] if frame["type"] in ("clip", "state"))
    clips = [frame for frame in frames if frame["type"] == "clip"]
    cut, next_clip = clips[-2], clips[-1]
    earlier = clips[:-2]
    assert cut["replaces"] and not next_clip["replaces"]
    assert cut["seq"] not in {clip["seq"] for clip in earlier}  # a sent seq is never reused
    assert cut["stream_time"] >= cut["playhead"] and cut["stream_time"] >= playhead_at_send - 0.1
    beats = cut["stream_time"] / BEAT_SECONDS
    assert beats == pytest.approx(round(beats), abs=1e-6)  # on the seed's beat grid
    assert cut["loop_offset"] == pytest.approx(cut["stream_time"] % 5.12, abs=1e-6)
    assert cut["stream_time"] - playhead_at_send < 6.0  # was 9.4 s without cut-ins (PERFORMANCE.md)
    assert next_clip["stream_time"] == pytest.approx(cut["stream_time"] + cut["duration"])
    frames_kept = spliced(clips)
    audio = decode_mp3(b"".join(frames_kept), RATE)[:, DECODED_DELAY_SAMPLES:]
    end = next_clip["stream_time"] + next_clip["duration"]
    assert abs(audio.shape[-1] - end * RATE) < 4 * 1152  # no hole, no overlap: one continuous stream
    at = round(cut["stream_time"] * RATE)
    near = curvature(audio[:, at - 882:at + 882])  # within 20 ms of the cut
    inside = curvature(audio[:, 10000:round(5.12 * RATE) - 10000])
    assert near <= inside


def test_a_listener_of_protocol_1_is_still_served(server):
    async def scenario():
        async with connect(server.ws_url, max_size=None) as ws:
            welcome = await join(ws, protocol=1)
            clip = await frames_until(ws, lambda frame: frame["type"] == "clip")
            return welcome, clip[-1][1]

    welcome, clip = run(scenario())
    assert welcome["protocol"] == 2 and clip["seq"] == 0 and clip["audio"]
