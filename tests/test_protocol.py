"""The WebSocket protocol: every client message decodes, every bad frame is refused with a reason."""

from __future__ import annotations

import math
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jamserver.jam.prompt import Prompt
from jamserver.jam.protocol import (
    ERROR_CODES,
    MAX_PROMPT_CHARS,
    PROTOCOL_VERSION,
    UNSET,
    Join,
    Pause,
    Ping,
    ProtocolError,
    Resume,
    SettingsMessage,
    check_permission,
    client_message_to_wire,
    clip_frame,
    decode,
    decode_client_message,
    encode,
    error_frame,
    pong_frame,
    settings_frame,
    state_frame,
    welcome_frame,
)

SEEDS = {"og_beat", "agile", "marim"}
MASKS = {"mask_beat_lines_80"}
LIMIT = 4096


def pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def decode_map(obj: object, **kwargs) -> object:
    return decode_client_message(pack(obj), max_bytes=LIMIT, seed_image_ids=SEEDS, mask_image_ids=MASKS, **kwargs)


def refused(data: bytes | str, *, max_bytes: int = LIMIT) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_client_message(data, max_bytes=max_bytes, seed_image_ids=SEEDS, mask_image_ids=MASKS)
    return info.value


# -- valid messages ------------------------------------------------------------------------------


def test_join_without_room_creates_and_with_room_joins():
    assert decode_map({"type": "join"}) == Join()
    assert decode_map({"type": "join", "room": None, "token": None}) == Join()
    joined = decode_map({"type": "join", "room": "r00m-A_1", "token": "T0k_en-xyz", "protocol": PROTOCOL_VERSION})
    assert joined == Join(room="r00m-A_1", token="T0k_en-xyz", protocol=2)
    assert decode_map({"type": "join", "protocol": 1}) == Join(protocol=1)  # version-1 clients are still served


def test_prompt_full_and_minimal():
    full = decode_map({"type": "prompt", "prompt": "  jazz with piano ", "seed": 123, "negative_prompt": "drums",
                       "denoising": 0.8, "guidance": 9})
    assert full == Prompt("jazz with piano", seed=123, negative_prompt="drums", denoising=0.8, guidance=9.0)
    assert isinstance(full.guidance, float)
    assert decode_map({"type": "prompt", "prompt": "church bells"}) == Prompt("church bells")
    assert decode_map({"type": "prompt", "prompt": "x", "negative_prompt": "  "}).negative_prompt is None


def test_prompt_limits_are_inclusive_where_documented():
    edge = decode_map({"type": "prompt", "prompt": "p" * MAX_PROMPT_CHARS, "seed": 2**32 - 1, "denoising": 1,
                       "guidance": 30.0})
    assert edge.seed == 2**32 - 1 and edge.denoising == 1.0 and len(edge.prompt) == MAX_PROMPT_CHARS
    assert decode_map({"type": "prompt", "prompt": "p", "seed": 0, "guidance": 0}).guidance == 0.0


def test_settings_only_carries_the_fields_sent():
    message = decode_map({"type": "settings", "num_inference_steps": 20, "seed_image_id": "agile"})
    assert message.changes() == {"seed_image_id": "agile", "num_inference_steps": 20}
    assert message.denoising is UNSET
    every = decode_map({"type": "settings", "seed_image_id": "marim", "mask_image_id": "mask_beat_lines_80",
                        "num_inference_steps": 1000, "alpha_velocity": 1, "denoising": 0.5, "guidance": 0,
                        "open_jam": True})
    assert every.changes() == {"seed_image_id": "marim", "mask_image_id": "mask_beat_lines_80",
                               "num_inference_steps": 1000, "alpha_velocity": 1.0, "denoising": 0.5,
                               "guidance": 0.0, "open_jam": True}


def test_settings_null_mask_clears_it_and_other_nulls_change_nothing():
    assert decode_map({"type": "settings", "mask_image_id": None}).changes() == {"mask_image_id": None}
    assert decode_map({"type": "settings", "denoising": None}).changes() == {}


def test_image_ids_are_checked_only_for_format_without_an_index():
    message = decode_client_message(pack({"type": "settings", "seed_image_id": "my_own_seed"}), max_bytes=LIMIT)
    assert message.seed_image_id == "my_own_seed"


def test_pause_resume_ping():
    assert decode_map({"type": "pause"}) == Pause()
    assert decode_map({"type": "resume"}) == Resume()
    assert decode_map({"type": "ping"}) == Ping()
    assert decode_map({"type": "ping", "t": 1712.5}) == Ping(t=1712.5)


def test_accepts_bytearray_and_memoryview():
    data = pack({"type": "pause"})
    assert decode_client_message(bytearray(data), max_bytes=LIMIT) == Pause()
    assert decode_client_message(memoryview(data), max_bytes=LIMIT) == Pause()


@pytest.mark.parametrize("message", [
    Join(), Join(room="abc", token="tok", protocol=1), Prompt("jazz"),
    Prompt("jazz", seed=7, negative_prompt="vocals", denoising=0.9, guidance=12.5),
    SettingsMessage(num_inference_steps=25, mask_image_id=None, open_jam=True), SettingsMessage(),
    SettingsMessage(cut_in=False),
    Pause(), Resume(), Ping(), Ping(t=3.25),
])
def test_client_messages_round_trip(message):
    assert decode_map(client_message_to_wire(message)) == message


@settings(max_examples=60, deadline=None)
@given(
    prompt=st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=MAX_PROMPT_CHARS),
    seed=st.none() | st.integers(0, 2**32 - 1),
    denoising=st.none() | st.floats(1e-6, 1.0),
    guidance=st.none() | st.floats(0.0, 30.0),
)
def test_prompt_round_trip_property(prompt, seed, denoising, guidance):
    wire = {"type": "prompt", "prompt": prompt, "seed": seed, "denoising": denoising, "guidance": guidance}
    if not prompt.strip():
        assert refused(pack(wire)).field == "prompt"
        return
    message = decode_map(wire)
    assert (message.prompt, message.seed, message.denoising, message.guidance) == \
        (prompt.strip(), seed, denoising, guidance)
    assert decode_map(client_message_to_wire(message)) == message


# -- refused frames --------------------------------------------------------------------------------


@pytest.mark.parametrize("data, code", [
    (b"", "bad_msgpack"),
    (b"\xc1", "bad_msgpack"),  # a byte msgpack never uses
    (pack({"type": "prompt", "prompt": "jazz"})[:-2], "bad_msgpack"),  # truncated
    (pack({"type": "pause"}) + b"\x00", "bad_msgpack"),  # trailing bytes
    (b"\x81\xa4type\xa3j\xff\xfe", "bad_msgpack"),  # invalid UTF-8 in a string
    (b"\x91" * 3000 + b"\xc0", "bad_msgpack"),  # nested too deep
    (pack({1: "join"}), "bad_msgpack"),  # integer map key
    (pack(["join"]), "bad_message"),
    (pack("join"), "bad_message"),
    (pack({b"type": "join"}), "bad_message"),  # bytes map key
    (pack({"type": "dance"}), "unknown_type"),
    (pack({"type": "join", "rooom": "abc"}), "unknown_field"),
    (pack({"type": "prompt", "prompt": "jazz", "guidence": 7.0}), "unknown_field"),
    (pack({"type": "pause", "now": True}), "unknown_field"),
])
def test_malformed_frames(data, code):
    assert refused(data).code == code


def test_text_frames_are_refused():
    assert refused('{"type": "join"}').code == "not_binary"


def test_size_is_checked_before_parsing():
    data = pack({"type": "prompt", "prompt": "x" * 400})
    assert decode_client_message(data, max_bytes=len(data)).prompt == "x" * 400
    error = refused(data, max_bytes=len(data) - 1)
    assert error.code == "too_large" and str(len(data)) in error.message
    assert refused(b"\xdb\xff\xff\xff\xff" + b"x" * 100, max_bytes=64).code == "too_large"


def test_type_field_problems():
    assert (refused(pack({"prompt": "x"})).code, refused(pack({"prompt": "x"})).field) == ("bad_field", "type")
    assert refused(pack({"type": 3})).field == "type"
    assert refused(pack({"type": b"join"})).message == "type must be a string, got bytes"
    assert refused(pack({"type": None})).code == "bad_field"


FIELD_CASES = [
    ({"type": "prompt"}, "prompt"),
    ({"type": "prompt", "prompt": None}, "prompt"),
    ({"type": "prompt", "prompt": b"jazz"}, "prompt"),  # bytes where a string goes
    ({"type": "prompt", "prompt": 42}, "prompt"),
    ({"type": "prompt", "prompt": ["jazz"]}, "prompt"),
    ({"type": "prompt", "prompt": {"text": {"nested": [1, {"junk": None}]}}}, "prompt"),
    ({"type": "prompt", "prompt": msgpack.ExtType(7, b"junk")}, "prompt"),
    ({"type": "prompt", "prompt": ""}, "prompt"),
    ({"type": "prompt", "prompt": " \t "}, "prompt"),
    ({"type": "prompt", "prompt": "p" * (MAX_PROMPT_CHARS + 1)}, "prompt"),
    ({"type": "prompt", "prompt": "x" * 3000}, "prompt"),
    ({"type": "prompt", "prompt": "jazz\x00piano"}, "prompt"),
    ({"type": "prompt", "prompt": "x", "negative_prompt": b"drums"}, "negative_prompt"),
    ({"type": "prompt", "prompt": "x", "negative_prompt": "n" * 501}, "negative_prompt"),
    ({"type": "prompt", "prompt": "x", "seed": -1}, "seed"),
    ({"type": "prompt", "prompt": "x", "seed": 2**32}, "seed"),
    ({"type": "prompt", "prompt": "x", "seed": 1.5}, "seed"),
    ({"type": "prompt", "prompt": "x", "seed": 4.0}, "seed"),
    ({"type": "prompt", "prompt": "x", "seed": True}, "seed"),
    ({"type": "prompt", "prompt": "x", "seed": "42"}, "seed"),
    ({"type": "prompt", "prompt": "x", "denoising": 0}, "denoising"),
    ({"type": "prompt", "prompt": "x", "denoising": 1.0001}, "denoising"),
    ({"type": "prompt", "prompt": "x", "denoising": math.nan}, "denoising"),
    ({"type": "prompt", "prompt": "x", "denoising": math.inf}, "denoising"),
    ({"type": "prompt", "prompt": "x", "denoising": "0.5"}, "denoising"),
    ({"type": "prompt", "prompt": "x", "guidance": -0.5}, "guidance"),
    ({"type": "prompt", "prompt": "x", "guidance": 30.5}, "guidance"),
    ({"type": "prompt", "prompt": "x", "guidance": -math.inf}, "guidance"),
    ({"type": "prompt", "prompt": "x", "guidance": False}, "guidance"),
    ({"type": "settings", "num_inference_steps": 0}, "num_inference_steps"),
    ({"type": "settings", "num_inference_steps": 1001}, "num_inference_steps"),
    ({"type": "settings", "num_inference_steps": 50.0}, "num_inference_steps"),
    ({"type": "settings", "alpha_velocity": 0.0}, "alpha_velocity"),
    ({"type": "settings", "alpha_velocity": 1.5}, "alpha_velocity"),
    ({"type": "settings", "alpha_velocity": math.nan}, "alpha_velocity"),
    ({"type": "settings", "denoising": -0.1}, "denoising"),
    ({"type": "settings", "guidance": math.nan}, "guidance"),
    ({"type": "settings", "seed_image_id": "not_a_seed"}, "seed_image_id"),
    ({"type": "settings", "seed_image_id": "../../etc/passwd"}, "seed_image_id"),
    ({"type": "settings", "seed_image_id": b"og_beat"}, "seed_image_id"),
    ({"type": "settings", "mask_image_id": "og_beat"}, "mask_image_id"),  # a seed, not a mask
    ({"type": "settings", "open_jam": 1}, "open_jam"),
    ({"type": "settings", "open_jam": "true"}, "open_jam"),
    ({"type": "settings", "cut_in": 0}, "cut_in"),
    ({"type": "join", "room": ""}, "room"),
    ({"type": "join", "room": "has space"}, "room"),
    ({"type": "join", "room": "r" * 65}, "room"),
    ({"type": "join", "room": b"abc"}, "room"),
    ({"type": "join", "room": 12}, "room"),
    ({"type": "join", "token": "t" * 129}, "token"),
    ({"type": "join", "token": ["tok"]}, "token"),
    ({"type": "join", "token": "tok"}, "room"),  # a token opens its own room, never a new one
    ({"type": "join", "protocol": "1"}, "protocol"),
    ({"type": "ping", "t": math.nan}, "t"),
    ({"type": "ping", "t": "now"}, "t"),
]


@pytest.mark.parametrize("wire, field", FIELD_CASES)
def test_bad_fields_name_the_field(wire, field):
    error = refused(pack(wire))
    assert error.code == "bad_field"
    assert error.field == field
    assert error.message.startswith(field + " ")
    assert len(error.message) < 300  # never echoes a huge value back


def test_bad_field_messages_say_why():
    assert refused(pack({"type": "prompt", "prompt": "x", "denoising": 2})).message == \
        "denoising must be a number in (0, 1], got 2"
    assert "finite" in refused(pack({"type": "prompt", "prompt": "x", "guidance": math.inf})).message
    assert "got bytes" in refused(pack({"type": "prompt", "prompt": b"x"})).message
    assert "got map" in refused(pack({"type": "prompt", "prompt": {"a": 1}})).message
    unknown_seed = refused(pack({"type": "settings", "seed_image_id": "nope"})).message
    assert "nope" in unknown_seed and "og_beat" in unknown_seed


def test_newer_protocol_is_refused_with_its_own_code():
    error = refused(pack({"type": "join", "protocol": PROTOCOL_VERSION + 1}))
    assert (error.code, error.field) == ("unsupported_protocol", "protocol")


def test_protocol_error_is_a_value_error_with_an_error_frame():
    error = refused(pack({"type": "prompt", "prompt": 1}))
    assert isinstance(error, ValueError)
    frame = decode(encode(error.frame()))
    assert frame == {"type": "error", "code": "bad_field", "message": error.message, "field": "prompt"}
    with pytest.raises(ValueError, match="unknown error code"):
        ProtocolError("oops", "no such code")


def test_max_bytes_must_be_positive():
    with pytest.raises(ValueError, match="max_bytes"):
        decode_client_message(pack({"type": "pause"}), max_bytes=0)


# -- permissions ---------------------------------------------------------------------------------


@pytest.mark.parametrize("message", [Prompt("x"), SettingsMessage(guidance=3.0), Pause(), Resume()])
def test_listeners_may_not_send_host_messages(message):
    check_permission(message, is_host=True, open_jam=False)
    with pytest.raises(ProtocolError) as info:
        check_permission(message, is_host=False, open_jam=False)
    assert info.value.code == "not_host" and message.TYPE in info.value.message


def test_open_jam_lets_anyone_queue_prompts_but_not_change_settings():
    check_permission(Prompt("x"), is_host=False, open_jam=True)
    with pytest.raises(ProtocolError):
        check_permission(SettingsMessage(open_jam=False), is_host=False, open_jam=True)
    with pytest.raises(ProtocolError):
        check_permission(Pause(), is_host=False, open_jam=True)


@pytest.mark.parametrize("message", [Join(), Ping(t=1.0)])
def test_anyone_may_join_and_ping(message):
    check_permission(message, is_host=False, open_jam=False)


# -- server frames ---------------------------------------------------------------------------------

SIDE = {"prompt": "jazz", "seed": 1, "negative_prompt": None, "denoising": 0.75, "guidance": 7.0}


def test_welcome_gives_the_token_to_the_host_only():
    common = dict(room="abc", checkpoint="riffusion/riffusion-model-v1", device="cpu", demo=True,
                  settings={"num_inference_steps": 50}, seed_images=["og_beat"], mask_images=["m"])
    host = decode(encode(welcome_frame(role="host", token="secret", **common)))
    assert host["token"] == "secret" and host["protocol"] == PROTOCOL_VERSION and host["role"] == "host"
    assert host["model"] == {"checkpoint": "riffusion/riffusion-model-v1", "device": "cpu", "demo": True}
    listener = decode(encode(welcome_frame(role="listener", token=None, **common)))
    assert "token" not in listener and listener["seed_images"] == ["og_beat"]
    with pytest.raises(ValueError, match="token"):
        welcome_frame(role="listener", token="secret", **common)
    with pytest.raises(ValueError, match="role"):
        welcome_frame(role="admin", token=None, **common)


def test_welcome_says_what_a_built_in_model_is():
    frame = welcome_frame(room="abc", role="listener", token=None, checkpoint="mini", device="cpu", demo=False,
                          settings={}, seed_images=["og_beat"], description="small, trained on synthesised music")
    assert decode(encode(frame))["model"]["description"] == "small, trained on synthesised music"


def test_clip_frame_keeps_bytes_as_bytes_and_round_trips():
    frame = clip_frame(seq=3, stream_time=15.36, duration=5.12, alpha=0.75, start=SIDE, end={**SIDE, "seed": 2},
                       image=b"\xff\xd8jpeg", audio=b"\xff\xfbmp3", sample_rate=44100, gen_seconds=1.5,
                       mp3_frame=612, playhead=13.9, replaces=True, loop_offset=0.0)
    data = encode(frame)
    assert b"\xc4\x06\xff\xd8jpeg" in data  # msgpack bin 8, not a str
    back = decode(data)
    assert back == frame
    assert isinstance(back["audio"], bytes) and back["end"]["seed"] == 2
    assert (back["mp3_frame"], back["playhead"], back["replaces"]) == (612, 13.9, True)
    with pytest.raises(ValueError, match="start is missing seed"):
        clip_frame(seq=0, stream_time=0, duration=5.12, alpha=0, start={"prompt": "x"}, end=SIDE,
                   image=b"", audio=b"", sample_rate=44100, gen_seconds=0)


def test_state_settings_error_and_pong_frames():
    state = decode(encode(state_frame(listeners=3, up_next=("a", "b"), paused=False, behind=True, playhead=7.5)))
    assert state == {"type": "state", "listeners": 3, "up_next": ["a", "b"], "paused": False, "behind": True,
                     "playhead": 7.5}
    assert decode(encode(settings_frame({"open_jam": True}))) == {"type": "settings", "settings": {"open_jam": True}}
    assert "field" not in error_frame("queue_full", "full")
    with pytest.raises(ValueError):
        error_frame("made_up", "x")
    assert decode(encode(pong_frame(12.5))) == {"type": "pong", "t": 12.5}


def test_every_error_code_is_documented():
    text = (Path(__file__).parents[1] / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")
    missing = [code for code in ERROR_CODES if f"`{code}`" not in text]
    assert not missing


def test_encode_refuses_frames_without_a_type():
    with pytest.raises(ValueError):
        encode({"seq": 1})
    with pytest.raises(ValueError):
        decode(pack([1, 2]))
