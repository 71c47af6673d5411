"""The member connection's rules without a socket: frames in, actions out, over simulated time."""

from __future__ import annotations

from dataclasses import dataclass, field

import msgpack
import pytest

from jamserver.jam import protocol
from jamserver.jam.member.connection import (
    CLOSE_POLICY_VIOLATION,
    Close,
    Enter,
    Forward,
    MemberConnection,
    MemberLimits,
    Reply,
)
from jamserver.jam.prompt import Prompt

LIMITS = MemberLimits(max_message_bytes=4096, prompts_per_minute=6, join_timeout_seconds=10.0)


@dataclass
class FakeRoom:
    open_jam: bool = False
    up_next: tuple[Prompt, ...] = ()


@dataclass
class Images:
    seeds: set[str] = field(default_factory=lambda: {"og_beat", "vibes"})
    masks: set[str] = field(default_factory=lambda: {"mask_top_third_75"})

    def seed_ids(self) -> set[str]:
        return self.seeds

    def mask_ids(self) -> set[str]:
        return self.masks


def frame(**fields) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)


def joined(role: str = "host", room: FakeRoom | None = None, images: Images | None = None) -> MemberConnection:
    connection = MemberConnection(LIMITS, images or Images(), now=0.0)
    assert connection.receive(frame(type="join"), 0.1) == [Enter(protocol.Join())]
    connection.entered(role, room or FakeRoom())
    return connection


def refusal_code(actions: list) -> str:
    (action,) = actions
    assert isinstance(action, Reply) and action.refusal and action.frame["type"] == "error"
    return action.frame["code"]


# -- before the join ---------------------------------------------------------------------------------


@pytest.mark.parametrize("first, code", [
    (frame(type="prompt", prompt="jazz"), "not_joined"),
    (frame(type="ping"), "not_joined"),
    (b"\xc1", "bad_msgpack"),
    ("hello", "not_binary"),
    (frame(type="join", room="no room!"), "bad_field"),
])
def test_anything_but_a_valid_join_first_is_refused_and_closed(first, code):
    connection = MemberConnection(LIMITS, Images(), now=0.0)
    reply, close = connection.receive(first, 1.0)
    assert reply.frame["code"] == code and reply.refusal
    assert close == Close(CLOSE_POLICY_VIOLATION, "join refused")
    assert connection.closed and connection.receive(frame(type="join"), 2.0) == []


def test_a_join_asks_the_transport_and_nothing_is_read_until_it_answers():
    connection = MemberConnection(LIMITS, Images(), now=0.0)
    assert connection.receive(frame(type="join", room="abc", token="t0k"), 0.5) == [
        Enter(protocol.Join(room="abc", token="t0k"))]
    assert connection.receive(frame(type="ping"), 0.6) == []
    assert not connection.joined
    connection.entered("listener", FakeRoom())
    assert connection.joined and connection.role == "listener" and not connection.is_host


def test_a_refused_join_reports_the_registry_code_and_closes():
    connection = MemberConnection(LIMITS, Images(), now=0.0)
    connection.receive(frame(type="join", room="gone"), 0.5)
    reply, close = connection.refused("room_not_found", "room gone does not exist or has ended")
    assert reply.frame == protocol.error_frame("room_not_found", "room gone does not exist or has ended")
    assert close.code == CLOSE_POLICY_VIOLATION and connection.closed


def test_no_join_within_the_timeout_closes_the_connection():
    connection = MemberConnection(LIMITS, Images(), now=100.0)
    assert connection.join_deadline == 110.0
    assert connection.join_timed_out(109.9) == []
    reply, close = connection.join_timed_out(110.0)
    assert reply.frame["code"] == "not_joined" and "in time" in reply.frame["message"]
    assert close.code == CLOSE_POLICY_VIOLATION
    assert joined().join_timed_out(1e9) == []  # a joined member has no join timer


# -- joined ------------------------------------------------------------------------------------------


def test_a_second_join_is_refused_and_the_connection_stays_open():
    connection = joined()
    assert refusal_code(connection.receive(frame(type="join"), 1.0)) == "already_joined"
    assert not connection.closed
    assert connection.receive(frame(type="pause"), 1.1) == [Forward(protocol.Pause())]


def test_bad_messages_cost_an_error_frame_never_the_connection():
    connection = joined()
    assert refusal_code(connection.receive(frame(type="prompt", prompt="x", guidence=3), 1.0)) == "unknown_field"
    assert refusal_code(connection.receive(b"\x00" * 5000, 1.0)) == "too_large"
    assert refusal_code(connection.receive("text", 1.0)) == "not_binary"
    assert connection.receive(frame(type="prompt", prompt="jazz"), 1.0) == [Forward(Prompt("jazz"))]


def test_ping_is_answered_for_any_role_and_is_no_refusal():
    for role in ("host", "listener"):
        (reply,) = joined(role).receive(frame(type="ping", t=12.5), 1.0)
        assert reply == Reply(protocol.pong_frame(12.5))


@pytest.mark.parametrize("message", [
    frame(type="prompt", prompt="jazz"), frame(type="settings", guidance=3.0), frame(type="pause"),
    frame(type="resume"),
])
def test_listeners_may_not_steer_the_room(message):
    assert refusal_code(joined("listener").receive(message, 1.0)) == "not_host"


def test_in_an_open_jam_listeners_queue_prompts_one_at_a_time():
    room = FakeRoom(open_jam=True)
    listener = joined("listener", room)
    (forward,) = listener.receive(frame(type="prompt", prompt="jazz"), 1.0)
    room.up_next = (forward.message,)
    assert refusal_code(listener.receive(frame(type="prompt", prompt="bells"), 2.0)) == "rate_limited"
    assert refusal_code(listener.receive(frame(type="settings", guidance=3.0), 2.0)) == "not_host"
    room.up_next = ()  # the room played it
    assert listener.receive(frame(type="prompt", prompt="bells"), 3.0) == [Forward(Prompt("bells"))]
    host = joined("host", room)  # the host is not held to one at a time
    room.up_next = (Prompt("a"),)
    for text in ("b", "c"):
        (forward,) = host.receive(frame(type="prompt", prompt=text), 3.0)
        room.up_next += (forward.message,)


def test_prompts_are_rate_limited_per_connection_over_simulated_time():
    connection = joined()
    accepted = [connection.receive(frame(type="prompt", prompt=f"p{k}"), 0.0) for k in range(5)]
    assert all(isinstance(actions[0], Forward) for actions in accepted)  # the burst
    (reply,) = connection.receive(frame(type="prompt", prompt="one too many"), 0.0)
    assert reply.frame["code"] == "rate_limited" and "10 s" in reply.frame["message"]  # 6 a minute
    assert refusal_code(connection.receive(frame(type="prompt", prompt="still"), 9.0)) == "rate_limited"
    assert isinstance(connection.receive(frame(type="prompt", prompt="later"), 10.5)[0], Forward)
    other = joined()  # limits are per connection
    assert isinstance(other.receive(frame(type="prompt", prompt="mine"), 0.0)[0], Forward)


def test_image_ids_are_checked_against_the_index_as_it_is_now():
    images = Images()
    connection = joined(images=images)
    assert refusal_code(connection.receive(frame(type="settings", seed_image_id="upload_1"), 1.0)) == "bad_field"
    images.seeds.add("upload_1")
    (forward,) = connection.receive(frame(type="settings", seed_image_id="upload_1"), 2.0)
    assert forward.message.changes() == {"seed_image_id": "upload_1"}


def test_entered_refuses_an_unknown_role():
    connection = MemberConnection(LIMITS, Images(), now=0.0)
    connection.receive(frame(type="join"), 0.0)
    with pytest.raises(ValueError, match="role"):
        connection.entered("admin", FakeRoom())


def test_settings_are_rate_limited_when_the_server_says_so():
    limits = MemberLimits(max_message_bytes=4096, prompts_per_minute=6, join_timeout_seconds=10.0,
                          settings_per_minute=60, settings_burst=2)
    connection = MemberConnection(limits, Images(), now=0.0)
    connection.receive(frame(type="join"), 0.0)
    connection.entered("host", FakeRoom())
    for _ in range(2):
        assert isinstance(connection.receive(frame(type="settings", guidance=3.0), 0.0)[0], Forward)
    assert refusal_code(connection.receive(frame(type="settings", guidance=3.0), 0.0)) == "rate_limited"
    assert isinstance(connection.receive(frame(type="settings", guidance=3.0), 1.1)[0], Forward)  # one a second
    assert isinstance(joined().receive(frame(type="settings", guidance=3.0), 0.0)[0], Forward)  # unlimited by default
