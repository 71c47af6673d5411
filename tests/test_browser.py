"""The jam page in a real Chromium against a real server on the tiny model.

One server and one browser serve the whole module. A host page presses Play and steers; a
listener opens the host's share link; a second listener is forced onto the Web Audio fallback.
Each test waits for the condition it checks, so they also pass when run alone.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path

import numpy as np
import pytest

from tests.browser_support import (
    REPO_ROOT,
    SERVER_ENV,
    analyse_joins,
    assert_gapless,
    chromium_browser,
    require_chromium,
)
from tests.server_support import running_server

in_browser = pytest.mark.browser

OUTPUT_DIR = REPO_ROOT / "test-output" / "browser"
NEW_PROMPT = "marimba solo with soft rain"
CUT_PROMPT = "dub reggae with tape echo"
CLIP_PROMPT = "slow blues with harmonica"
PLAY_SECONDS = 20.0
WAIT_MS = 90_000


# -- pure checks of the gaplessness judge (no browser) -------------------------------------------

SR = 44100


def _tone_clips(count: int, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(count * seconds * SR)) / SR
    return (0.4 * np.sin(2 * np.pi * 220 * t) * (1 + 0.2 * np.sin(2 * np.pi * 3 * t)))[None, :].astype(np.float32)


def test_join_judge_accepts_a_continuous_stream():
    report = analyse_joins(_tone_clips(4), SR, [1.0] * 4)
    assert_gapless(report)


def test_join_judge_catches_a_silent_gap_at_a_join():
    pcm = _tone_clips(4)
    ramp = int(0.01 * SR)
    dropout = np.ones(pcm.shape[1], dtype=np.float32)  # 20 ms of silence at the second join, faded
    dropout[2 * SR - ramp: 2 * SR] = np.linspace(1, 0, ramp)  # so that it makes no jump
    dropout[2 * SR: 2 * SR + 2 * ramp] = 0.0
    dropout[2 * SR + 2 * ramp: 2 * SR + 3 * ramp] = np.linspace(0, 1, ramp)
    pcm *= dropout
    with pytest.raises(AssertionError, match="dropout at a clip join"):
        assert_gapless(analyse_joins(pcm, SR, [1.0] * 4))


def test_join_judge_catches_a_jump_at_a_join():
    pcm = _tone_clips(4)
    pcm[:, SR:] = np.roll(pcm[:, SR:], 37, axis=1)  # phase jump: what restarting a clip does
    with pytest.raises(AssertionError, match="jump at a clip join"):
        assert_gapless(analyse_joins(pcm, SR, [1.0] * 4))


def test_join_judge_names_its_bad_input():
    with pytest.raises(ValueError, match="durations"):
        analyse_joins(_tone_clips(1), SR, [1.0])
    with pytest.raises(ValueError, match="pcm"):
        analyse_joins(np.zeros(10), SR, [1.0, 1.0])


# -- fixtures: one server, one browser, three pages ----------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_chromium()
    with running_server(log_dir=tmp_path_factory.mktemp("server"), env=SERVER_ENV, timeout=180.0) as jam:
        yield jam


@pytest.fixture(scope="module")
def browser():
    with chromium_browser() as chromium:
        yield chromium


class PageProblems:
    """Console errors and uncaught exceptions of a page: the page must produce none."""

    def __init__(self, page, name: str) -> None:
        self.name = name
        self.messages: list[str] = []
        page.on("console", lambda message: message.type == "error" and self.messages.append(message.text))
        page.on("pageerror", lambda error: self.messages.append(f"uncaught: {error}"))


def _open_page(browser, url: str, name: str, problems: list[PageProblems], **context_options):
    context = browser.new_context(accept_downloads=True, **context_options)
    page = context.new_page()
    problems.append(PageProblems(page, name))
    page.goto(url)
    page.wait_for_function("window.jam && window.jam.role !== null", timeout=WAIT_MS)
    return page


@pytest.fixture(scope="module")
def problems():
    return []


@pytest.fixture(scope="module")
def host(server, browser, problems):
    page = _open_page(browser, f"{server.http_url}/", "host", problems, viewport={"width": 1280, "height": 900})
    page.get_by_role("button", name="Play").click()
    yield page
    page.context.close()


@pytest.fixture(scope="module")
def listener(host, browser, problems):
    page = _open_page(browser, host.evaluate("window.jam.listenUrl"), "listener", problems,
                      viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page.get_by_role("button", name="Play").click()
    yield page
    page.context.close()


@pytest.fixture(scope="module")
def fallback_listener(host, browser, problems):
    page = _open_page(browser, host.evaluate("window.jam.listenUrl") + "&player=webaudio", "webaudio", problems)
    page.get_by_role("button", name="Play").click()
    yield page
    page.context.close()


def _stats(page) -> dict:
    return page.evaluate("window.jam.stats")


def _wait_played(page, seconds: float) -> None:
    page.wait_for_function(f"window.jam.stats.secondsPlayed >= {seconds}", timeout=WAIT_MS + seconds * 2000)


# -- the page against the real server ------------------------------------------------------------


@in_browser
@pytest.mark.slow
def test_host_page_gets_controls_share_links_and_demo_banner(host):
    jam = host.evaluate("({role: jam.role, room: jam.room, listenUrl: jam.listenUrl, controlUrl: jam.controlUrl})")
    assert jam["role"] == "host"
    assert jam["listenUrl"].endswith(f"/?room={jam['room']}")
    assert jam["controlUrl"].startswith(jam["listenUrl"] + "&token=")
    assert host.locator("#listen-link").input_value() == jam["listenUrl"]
    assert host.locator("#controls").is_visible()
    assert host.locator("#demo-banner").is_visible()  # the tiny model makes no music and the page says so
    host.wait_for_function("document.querySelectorAll('#seed-options input[type=radio]').length > 0", timeout=WAIT_MS)


@in_browser
@pytest.mark.slow
def test_prompt_sent_from_the_page_labels_a_later_clip(host, listener):
    sent_after = host.evaluate("window.jam.stats.clipsReceived")
    host.locator("#prompt-input").fill(NEW_PROMPT)
    host.locator("#prompt-input").press("Enter")
    host.wait_for_function(
        "prompt => window.jam.clips.some(clip => clip.label.includes(prompt))", arg=NEW_PROMPT, timeout=WAIT_MS)
    labelled = host.evaluate("p => window.jam.clips.filter(clip => clip.label.includes(p)).map(clip => clip.seq)", NEW_PROMPT)
    first_seq = host.evaluate("window.jam.clips[0].seq")
    assert min(labelled) >= first_seq + sent_after  # a clip generated after the prompt, not an old one
    host.wait_for_function("p => document.getElementById('clip-log').textContent.includes(p)", arg=NEW_PROMPT)
    listener.wait_for_function(
        "prompt => window.jam.clips.some(clip => clip.label.includes(prompt))", arg=NEW_PROMPT, timeout=WAIT_MS)


@in_browser
@pytest.mark.slow
def test_a_prompt_is_heard_within_two_and_a_half_seconds_by_a_cut_in(host, listener):
    _wait_played(host, 6.0)
    cuts_before = _stats(host)["cuts"]
    host.locator("#prompt-input").fill(CUT_PROMPT)
    host.locator("#prompt-input").press("Enter")
    assert _stats(host)["lastPromptLatency"] is None  # until the prompt is heard
    host.wait_for_function("window.jam.stats.lastPromptLatency !== null", timeout=WAIT_MS)
    host.wait_for_function(f"window.jam.stats.cuts > {cuts_before}", timeout=WAIT_MS)
    stats = _stats(host)
    # send -> first sample of the cut-in played, on the page's own audio clock
    assert 0 < stats["lastPromptLatency"] <= 2.5, f"{stats}"
    assert stats["underruns"] == 0 and stats["playoutDelay"] > 0, f"{stats}"
    listener.wait_for_function(
        "p => window.jam.clips.some(clip => clip.label.includes(p))", arg=CUT_PROMPT, timeout=WAIT_MS)
    time.sleep(1.0)
    after = _stats(host)
    assert after["bufferedRanges"] == 1, f"{after}"  # the cut replaced the buffer from its frame on: no hole
    assert abs(after["drift"]) < 0.3, f"{after}"  # the page plays where the room's clock says


@in_browser
@pytest.mark.slow
def test_host_plays_twenty_seconds_without_underrun(host):
    _wait_played(host, PLAY_SECONDS)
    before = _stats(host)
    time.sleep(1.5)
    after = _stats(host)
    assert after["currentTime"] > before["currentTime"] + 1.0, (before, after)
    assert after["clipsPlayed"] >= 3, after
    arrivals = host.evaluate("window.jam.clips.map(c => [c.seq, +c.received_at.toFixed(2), +c.gen_seconds.toFixed(2)])")
    assert after["underruns"] == 0, (after, "clip arrivals [seq, page time, gen s]:", arrivals)
    assert after["bufferedRanges"] == 1, after
    assert after["lastError"] is None, after
    assert host.evaluate("window.jam.player") == "mse"


@in_browser
@pytest.mark.slow
def test_listener_is_listen_only_and_receives_the_same_clips(host, listener):
    assert listener.evaluate("window.jam.role") == "listener"
    assert not listener.locator("#controls").is_visible()
    assert listener.evaluate("window.jam.controlUrl") is None
    _wait_played(listener, 6.0)
    fields = "window.jam.clips.map(c => [c.seq, c.stream_time, c.duration, c.label])"
    host_clips = {clip[0]: clip for clip in host.evaluate(fields)}
    listener_clips = listener.evaluate(fields)
    assert len(listener_clips) >= 2
    assert all(host_clips.get(clip[0]) == clip for clip in listener_clips), (listener_clips, host_clips)
    listener.wait_for_function("Number.parseInt(document.getElementById('listener-count').textContent) >= 2")
    stats = _stats(listener)
    assert stats["underruns"] == 0 and stats["bufferedRanges"] == 1, stats


@in_browser
@pytest.mark.slow
def test_webaudio_fallback_plays_without_underrun(fallback_listener):
    _wait_played(fallback_listener, 8.0)
    stats = _stats(fallback_listener)
    assert fallback_listener.evaluate("window.jam.player") == "webaudio"
    assert stats["underruns"] == 0, stats
    assert stats["bufferedRanges"] == 1, stats
    assert stats["clipsPlayed"] >= 1, stats


@pytest.fixture(scope="module")
def heard_mp3(host, tmp_path_factory) -> tuple[bytes, list[float]]:
    """The host's Download: the MP3 of everything heard, and the clip durations inside it."""
    _wait_played(host, PLAY_SECONDS)
    with host.expect_download() as download_info:
        # Click and read the layout in one turn of the page: a clip arriving in between would join the layout but
        # not the file already made.
        layout = host.evaluate("() => { document.getElementById('download').click(); return window.jam.recordingLayout(); }")
    path = tmp_path_factory.mktemp("download") / "heard.mp3"
    download_info.value.save_as(path)
    return path.read_bytes(), [piece["duration"] for piece in layout]


@in_browser
@pytest.mark.slow
def test_downloaded_stream_is_gapless_at_clip_joins(heard_mp3):
    from pipeline.audio.mp3 import decode_mp3

    data, durations = heard_mp3
    assert len(durations) >= 4
    pcm = decode_mp3(data, sample_rate=SR, channels=1)
    assert abs(pcm.shape[1] / SR - sum(durations)) < 0.2  # the file is the heard clips, nothing lost
    assert np.abs(pcm).max() > 0.01  # sound, not silence
    assert_gapless(analyse_joins(pcm, SR, durations))


def _leading_frames(data: bytes, count: int) -> bytes:
    """The first `count` whole MP3 frames of a stream."""
    from pipeline.audio.mp3 import parse_frame_header

    offset = 0
    for _ in range(count):
        header = parse_frame_header(data, offset)
        assert header is not None and offset + header.frame_length <= len(data), f"stream too short at byte {offset}"
        offset += header.frame_length
    return data[:offset]


@in_browser
@pytest.mark.slow
def test_fallback_decoder_joins_pieces_sample_exactly(host, heard_mp3):
    """Pieces cut anywhere, decoded one by one and trimmed, equal the whole stream decoded at once."""
    data = _leading_frames(heard_mp3[0], 600)  # ~16 s: the fallback keeps 30 s before Play
    cuts = [len(data) * k // 5 + k * 13 for k in range(1, 5)]  # not on frame boundaries
    result = host.evaluate(
        """async ([b64, cuts]) => {
          const { WebAudioPlayer } = await import('/webaudio-player.js');
          const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
          const player = new WebAudioPlayer();
          let previous = 0;
          for (const cut of [...cuts, bytes.length]) { player.append(bytes.slice(previous, cut)); previous = cut; }
          await player.decoding;
          const pieces = player.waiting.map((item) => item.buffer.getChannelData(0));
          const whole = (await new OfflineAudioContext(1, 1, 44100).decodeAudioData(bytes.buffer.slice(0))).getChannelData(0);
          const length = pieces.reduce((n, piece) => n + piece.length, 0);
          let offset = whole.length - length, worst = 0;
          for (const piece of pieces) {
            for (let i = 0; i < piece.length; i += 1) worst = Math.max(worst, Math.abs(piece[i] - whole[offset + i]));
            offset += piece.length;
          }
          return { pieces: pieces.length, length, whole: whole.length, worst };
        }""",
        [base64.b64encode(data).decode(), cuts],
    )
    assert result["pieces"] == 5, result
    assert result["length"] == result["whole"], result  # every sample of every frame, none doubled
    assert result["worst"] < 1e-6, result


@in_browser
@pytest.mark.slow
def test_played_audio_is_let_go(host):
    """Memory stays flat over a long jam: the SourceBuffer drops what was played long ago."""
    _wait_played(host, 36.0)  # trimming starts once 30 s lie behind the playhead
    stats = _stats(host)
    assert stats["heldSeconds"] < stats["currentTime"], stats
    assert stats["bufferedRanges"] == 1, stats


@in_browser
@pytest.mark.slow
def test_with_cut_ins_off_a_prompt_waits_for_the_next_clip(host, listener):
    """The host's "cut in" box reaches the room: a prompt is then carried by the next clip, with no cut."""
    assert host.locator("#cut-in").is_checked()  # the room's setting, from welcome
    host.locator("#cut-in").uncheck()  # sent ahead of the prompt on the same socket, so applied first
    cuts_before = _stats(host)["cuts"]
    host.locator("#prompt-input").fill(CLIP_PROMPT)
    host.locator("#prompt-input").press("Enter")
    listener.wait_for_function(
        "p => window.jam.clips.some(clip => clip.label.includes(p))", arg=CLIP_PROMPT, timeout=WAIT_MS)
    host.wait_for_function(
        "p => window.jam.clips.some(clip => clip.label.includes(p))", arg=CLIP_PROMPT, timeout=WAIT_MS)
    assert _stats(host)["cuts"] == cuts_before  # heard from a clip boundary, not cut in
    host.locator("#cut-in").check()


@in_browser
@pytest.mark.slow
def test_pages_look_right_and_log_no_errors(host, listener, fallback_listener, problems):
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    _wait_played(host, 4.0)
    host.screenshot(path=str(OUTPUT_DIR / "host.png"), full_page=True)
    listener.screenshot(path=str(OUTPUT_DIR / "listener-phone.png"), full_page=True)
    assert Path(OUTPUT_DIR / "host.png").stat().st_size > 10_000
    # A phone-sized page must not scroll sideways.
    assert listener.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    # Keyboard: Tab reaches the Play button and the prompt box.
    focusable = host.evaluate("""() => {
        const reachable = [...document.querySelectorAll('button, input, a[href]')].filter(
          (element) => !element.disabled && element.offsetParent !== null && element.tabIndex >= 0);
        return reachable.map((element) => element.id).filter(Boolean);
    }""")
    assert {"play", "prompt-input", "dice", "volume", "copy-listen"} <= set(focusable), focusable
    errors = [f"{page.name}: {message}" for page in problems for message in page.messages]
    assert errors == []
