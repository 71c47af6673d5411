"""Your own loop from the page, in a real Chromium: the host uploads a WAV, the room switches to it, a listener
hears the clips made from it, and the picker shows its tempo."""

from __future__ import annotations

import base64

import pytest

from tests.browser_support import SERVER_ENV, chromium_browser, require_chromium
from tests.server_support import running_server
from tests.upload_support import loop_upload

WAIT_MS = 120_000
pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_chromium()
    data_dir = tmp_path_factory.mktemp("data")
    with running_server("--data-dir", str(data_dir), log_dir=tmp_path_factory.mktemp("server"), env=SERVER_ENV,
                        timeout=180.0) as jam:
        yield jam


@pytest.fixture(scope="module")
def browser():
    with chromium_browser() as chromium:
        yield chromium


def _open(browser, url: str, errors: list[str]):
    page = browser.new_context().new_page()
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.on("pageerror", lambda error: errors.append(f"uncaught: {error}"))
    page.goto(url)
    page.wait_for_function("window.jam && window.jam.role !== null", timeout=WAIT_MS)
    page.get_by_role("button", name="Play").click()
    return page


def test_a_dropped_wav_becomes_the_rooms_seed_and_the_listener_hears_it(server, browser, tmp_path):
    errors: list[str] = []
    host = _open(browser, f"{server.http_url}/", errors)
    listener = _open(browser, host.evaluate("window.jam.listenUrl"), errors)
    assert not listener.locator("#seed-file").is_visible()  # listeners cannot change the seed
    host.wait_for_function("document.querySelectorAll('#seed-options input[type=radio]').length >= 5",
                           timeout=WAIT_MS)
    wav = tmp_path / "my loop.wav"
    wav.write_bytes(loop_upload(121.0, "wav", seconds=9.0))

    host.locator("#seed-file").set_input_files(str(wav))
    host.wait_for_function("window.jam.uploadedSeeds.length === 1", timeout=WAIT_MS)
    answer = host.evaluate("window.jam.uploadedSeeds[0]")
    assert answer["id"].startswith("custom-") and answer["bpm"] == pytest.approx(117.1875)
    assert "121.0 BPM" in host.locator("#seed-upload-status").text_content()
    host.wait_for_function("id => document.querySelector('#seed-options input[type=radio]:checked')?.value === id",
                           arg=answer["id"], timeout=WAIT_MS)  # the picker is rebuilt with the upload chosen
    checked_label = host.locator("#seed-options label", has=host.locator("input[type=radio]:checked"))
    assert "your loop · 117.2 bpm" in checked_label.text_content()

    # the settings frame reaches everyone; clips generated after it are made from the upload
    listener.wait_for_function("id => window.jam.seedImageId === id", arg=answer["id"], timeout=WAIT_MS)
    switched_at = listener.evaluate("window.jam.clips.length ? window.jam.clips.at(-1).seq : -1")
    listener.wait_for_function(
        """seq => {
             const made = window.jam.clips.find(clip => clip.seq >= seq);
             return made && window.jam.stats.currentTime > made.stream_time + 1;
           }""",
        arg=switched_at + 2, timeout=WAIT_MS)  # one clip was generated ahead under the old seed
    stats = listener.evaluate("window.jam.stats")
    assert stats["underruns"] == 0 and stats["lastError"] is None, stats
    assert not errors, errors

    refused = tmp_path / "notes.wav"  # a misleading name: content decides
    refused.write_text("these are not audio samples")
    host.locator("#seed-file").set_input_files(str(refused))
    host.wait_for_function("document.getElementById('seed-upload-status').classList.contains('failed')",
                           timeout=WAIT_MS)
    assert "not WAV" in host.locator("#seed-upload-status").text_content()


DROP = """([name, data]) => {
  const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], name, { type: "audio/flac" }));
  const picker = document.getElementById("seed-picker");
  picker.dispatchEvent(new DragEvent("dragover", { dataTransfer: transfer, bubbles: true, cancelable: true }));
  picker.dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }));
}"""


def test_a_file_dropped_on_the_seed_picker_is_uploaded_and_chosen(server, browser):
    errors: list[str] = []
    host = _open(browser, f"{server.http_url}/", errors)
    host.wait_for_function("document.querySelectorAll('#seed-options input[type=radio]').length >= 5",
                           timeout=WAIT_MS)
    host.evaluate(DROP, ["dropped.flac", base64.b64encode(loop_upload(98.0, "flac", seconds=7.0)).decode()])
    host.wait_for_function("window.jam.uploadedSeeds.length === 1", timeout=WAIT_MS)
    answer = host.evaluate("window.jam.uploadedSeeds[0]")
    assert answer["source"] == "flac" and answer["source_bpm"] == pytest.approx(98.0, abs=0.5)
    host.wait_for_function("id => window.jam.seedImageId === id", arg=answer["id"], timeout=WAIT_MS)
    assert "98.0 BPM" in host.locator("#seed-upload-status").text_content()
    assert not errors, errors
