"""The page across a cluster takeover, in a real Chromium: a stream whose MP3 frames restart with `discontinuity`.

A front-end that takes a room over resumes its stream at the same stream time with a fresh MP3 encoder, so
`mp3_frame` starts again at 0 (docs/PROTOCOL.md). The room here is scripted: the old owner's stream (RoomStream)
up to the takeover, then a stream resumed from its seam, a cut-in after the takeover and the clips after it, each
sent at the room's playout clock as a front-end would. What a listener would notice if the page mis-placed the new
stream: the cut-in spliced at the wrong place (a stall, a jump back), and the download losing what was heard
before the takeover.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from PIL import Image

from jamserver.jam import protocol
from jamserver.server.room.stream import RoomStream, StreamPiece
from tests.browser_support import REPO_ROOT, chromium_browser

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ORIGIN = "http://jam.test"
RATE = 44100
LOOP = 5.12
DELAY = 1.0  # the room's playout delay
JOIN_PLAYHEAD = 8.0  # the page joins a room already playing (its catch-up clips are old-stream frames 196 on)
AHEAD = 4.0  # a clip is sent this long before it plays
CUT_AT = 4 * LOOP + 2.56  # a cut-in in the new owner's second clip, sent 1.7 s before it plays
END_PLAYHEAD = 27.0
WAIT_MS = 60_000


def loop_audio(index: int) -> np.ndarray:
    """A 5.12 s loop: a chord struck on 8 beats, its root by `index`, so every clip sounds."""
    t = np.arange(round(LOOP * RATE)) / RATE
    root = 110.0 * 2 ** (index / 12)
    chord = sum(np.sin(2 * np.pi * root * ratio * t) for ratio in (1.0, 1.25, 1.5))
    envelope = np.exp(-((t % (LOOP / 8)) * 6.0))
    return (0.2 * chord * envelope).astype(np.float32)[None]


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (40, 40, 40)).save(buffer, format="JPEG")
    return buffer.getvalue()


@dataclass
class Send:
    """A frame the scripted room sends once its playhead reaches `at`."""

    at: float
    frame: dict[str, Any]


def clip_frame(seq: int, piece: StreamPiece, *, discontinuity: bool = False, loop_offset: float = 0.0,
               prompt: str = "church bells") -> dict[str, Any]:
    frame = {"type": "clip", "seq": seq, "stream_time": piece.stream_time, "duration": piece.duration,
             "replaces": piece.replaces, "mp3_frame": piece.first_frame, "loop_offset": loop_offset, "alpha": 0.25,
             "start": {"prompt": "church bells", "seed": 1, "negative_prompt": None, "denoising": 0.75,
                       "guidance": 7.0},
             "end": {"prompt": prompt, "seed": 2, "negative_prompt": None, "denoising": 0.75, "guidance": 7.0},
             "image": jpeg(), "audio": piece.audio, "sample_rate": RATE, "gen_seconds": 1.0}
    return {**frame, "discontinuity": True} if discontinuity else frame


def takeover_script() -> list[Send]:
    """Clips 0-2 from the old owner (1 and 2 are the page's catch-up), then the new owner's stream: clip 3 (marked,
    frames from 0 again), clip 4, a cut-in (seq 5) at 23.04 s into clip 4, and clip 6 after it."""
    old = RoomStream(RATE)
    pieces = [old.append(loop_audio(index)) for index in range(3)]
    new = RoomStream(RATE)
    new.resume(old.joiner_state())
    resumed = [new.append(loop_audio(index)) for index in (3, 4)]
    offset = CUT_AT - 4 * LOOP
    cut = new.cut(CUT_AT, [(loop_audio(9)[:, round(offset * RATE):], None)], sent_frames=resumed[-1].end_frame)
    after = new.append(loop_audio(10))
    assert resumed[0].first_frame == 0 and cut.first_frame < pieces[2].first_frame  # what the page must cope with
    return [
        Send(JOIN_PLAYHEAD, clip_frame(1, pieces[1])),
        Send(JOIN_PLAYHEAD, clip_frame(2, pieces[2])),
        Send(3 * LOOP - AHEAD, clip_frame(3, resumed[0], discontinuity=True)),
        Send(4 * LOOP - AHEAD, clip_frame(4, resumed[1])),
        Send(CUT_AT - 1.7, clip_frame(5, cut, loop_offset=offset, prompt="rain on a tin roof")),
        Send(CUT_AT - 1.5, clip_frame(6, after, prompt="rain on a tin roof")),
    ]


def welcome() -> dict[str, Any]:
    return {"type": "welcome", "protocol": 2, "room": "takeover", "role": "listener",
            "model": {"checkpoint": "tiny", "device": "cpu", "demo": True},
            "settings": {"seed_image_id": "og_beat"}, "seed_images": ["og_beat"], "mask_images": [],
            "clip_seconds": LOOP, "playout_delay": DELAY, "playhead": JOIN_PLAYHEAD}


def serve_static(route: Any) -> None:
    path = route.request.url.removeprefix(ORIGIN).split("?", 1)[0].lstrip("/") or "index.html"
    file = REPO_ROOT / "static" / path
    if file.is_file():
        route.fulfill(path=file)
    else:
        route.fulfill(status=404, body="not found")


def play_through_a_takeover(browser: Any, player: str) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
    """Join the scripted room, press Play, run it to END_PLAYHEAD; the page's stats, recording and errors."""
    script = takeover_script()
    context = browser.new_context()
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.on("pageerror", lambda error: errors.append(f"uncaught: {error}"))
    sockets: list[Any] = []
    page.route(f"{ORIGIN}/**", serve_static)
    page.route_web_socket("ws://jam.test/ws", lambda socket: sockets.append(socket))
    page.goto(f"{ORIGIN}/?room=takeover&player={player}")
    page.wait_for_function("window.jam !== undefined", timeout=WAIT_MS)
    deadline = time.monotonic() + 30
    while not sockets and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    assert sockets, "the page opened no WebSocket"
    socket = sockets[0]
    joined = time.monotonic()
    socket.send(protocol.encode(welcome()))
    page.get_by_role("button", name="Play").click()
    while True:
        playhead = JOIN_PLAYHEAD + time.monotonic() - joined
        while script and script[0].at <= playhead:
            socket.send(protocol.encode({**script.pop(0).frame, "playhead": playhead}))
        if playhead >= END_PLAYHEAD:
            break
        page.wait_for_timeout(40)
    stats = page.evaluate("window.jam.stats")
    layout = page.evaluate("window.jam.recordingLayout()")
    context.close()
    return stats, layout, errors


@pytest.fixture(scope="module")
def browser():
    with chromium_browser() as chromium:
        yield chromium


@pytest.mark.parametrize("player", ["mse", "webaudio"])
def test_the_page_plays_on_across_a_takeover_and_splices_a_later_cut_in_where_it_lands(browser, player):
    stats, layout, errors = play_through_a_takeover(browser, player)
    print(player, {key: stats[key] for key in ("underruns", "cuts", "discontinuities", "drift", "secondsPlayed",
                                               "bufferedRanges")}, layout)
    assert not errors, errors
    assert stats["discontinuities"] == 1 and stats["cuts"] == 1
    assert stats["underruns"] == 0  # the cut-in did not land on the audio playing (or leave a hole)
    assert stats["drift"] is not None and abs(stats["drift"]) < 0.25  # on the room's clock after the cut
    assert stats["secondsPlayed"] > 0.8 * (END_PLAYHEAD - JOIN_PLAYHEAD - 2.0)
    heard = [piece["seq"] for piece in layout]
    assert heard[:6] == [1, 2, 3, 4, 5, 6] or heard[:5] == [2, 3, 4, 5, 6], heard  # nothing heard lost
    pieces = {piece["seq"]: piece["duration"] for piece in layout}
    assert pieces[2] == pytest.approx(LOOP, abs=0.05)  # the old stream's clip is kept whole by the cut after it
    assert pieces[4] == pytest.approx(CUT_AT - 4 * LOOP, abs=0.12)  # the clip the cut-in cut short
