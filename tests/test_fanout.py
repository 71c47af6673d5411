"""Fan-out: the per-listener queue policy with fake transports, then the real server's behaviour.

The unit tests drive `jamserver.server.room.fanout.Outbox` with an in-memory `send`/`close` and a hand-moved
clock, so slowness is simulated rather than waited for. The server tests check what a client sees:
no per-message deflate, the same clip bytes for every listener, and catch-up for late joiners.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from websockets.asyncio.client import connect

from jamserver.jam import protocol
from jamserver.jam.member.backlog import HARD_LIMIT_FACTOR
from jamserver.server.room.fanout import CLOSE_TRY_AGAIN_LATER, Audience, FanoutCounters, Outbox
from pipeline.audio.mp3 import decode_mp3
from tests.server_support import join, recv_type, run, running_server


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeSocket:
    """Records sent frames; `gate` cleared makes send() block like a socket with full buffers."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed_with: tuple[int, str] | None = None
        self.gate = asyncio.Event()
        self.gate.set()

    async def send(self, data: bytes) -> None:
        await self.gate.wait()
        self.sent.append(data)

    async def close(self, code: int, reason: str) -> None:
        self.closed_with = (code, reason)


def make_listener(socket: FakeSocket, clock: FakeClock, counters: FanoutCounters, *, max_frames: int = 3,
                  stuck_seconds: float = 10.0, on_stuck: Any = None) -> Outbox:
    return Outbox(socket.send, socket.close, max_frames=max_frames, stuck_seconds=stuck_seconds,
                    counters=counters, clock=clock, on_stuck=on_stuck)


async def settle() -> None:
    """Let the sender task run until it waits again."""
    for _ in range(20):
        await asyncio.sleep(0)


def test_frames_are_sent_in_order_as_the_same_bytes_objects():
    async def scenario():
        socket, counters = FakeSocket(), FanoutCounters()
        listener = make_listener(socket, FakeClock(), counters)
        task = asyncio.create_task(listener.run())
        frames = [b"first", b"second", b"third"]
        for frame in frames:
            listener.offer(frame)
            await settle()
        listener.stop()
        await task
        return frames, socket, counters

    frames, socket, counters = run(scenario())
    assert socket.sent == frames
    assert all(sent is offered for sent, offered in zip(socket.sent, frames))  # shared, never copied
    assert counters.bytes_sent == sum(map(len, frames))
    assert socket.closed_with is None  # stop() ends quietly


def test_a_late_joiner_is_not_sent_the_clips_a_cut_in_superseded():
    async def scenario():
        audience = Audience(catch_up_clips=3)
        for seq, start in enumerate((0.0, 5.12, 10.24)):
            audience.broadcast_clip({"type": "clip", "seq": seq, "stream_time": start})
        audience.broadcast_clip({"type": "clip", "seq": 3, "stream_time": 7.04, "replaces": True})
        socket = FakeSocket()
        late = make_listener(socket, FakeClock(), FanoutCounters(), max_frames=8)
        task = asyncio.create_task(late.run())
        audience.add(1, late)
        await settle()
        late.stop()
        await task
        return [protocol.decode(frame) for frame in socket.sent]

    sent = run(scenario())
    # the clip at 10.24 was superseded from 7.04 on: the joiner gets what plays, the clip the cut starts in first
    assert [(frame["seq"], frame["stream_time"]) for frame in sent] == [(0, 0.0), (1, 5.12), (3, 7.04)]


def test_a_full_queue_drops_the_oldest_droppable_frame_and_keeps_control_frames():
    async def scenario():
        socket, counters, clock = FakeSocket(), FanoutCounters(), FakeClock()
        socket.gate.clear()
        listener = make_listener(socket, clock, counters, max_frames=3)
        task = asyncio.create_task(listener.run())
        listener.offer(b"clip-0")
        await settle()  # the sender is now blocked sending clip-0
        listener.offer(b"welcome", droppable=False)
        for seq in range(1, 5):
            listener.offer(f"clip-{seq}".encode())
        socket.gate.set()
        await settle()
        listener.stop()
        await task
        return socket, counters

    socket, counters = run(scenario())
    # clip-1 and clip-2 went to make room; the listener skipped ahead to the live edge
    assert socket.sent == [b"clip-0", b"welcome", b"clip-3", b"clip-4"]
    assert counters.frames_dropped == 2
    assert counters.closed_slow == 0


def test_a_listener_stuck_past_the_limit_is_closed_with_1013():
    stuck_calls = []

    async def scenario():
        socket, counters, clock = FakeSocket(), FanoutCounters(), FakeClock()
        socket.gate.clear()
        listener = make_listener(socket, clock, counters, max_frames=2, stuck_seconds=10.0,
                                 on_stuck=lambda: stuck_calls.append(True))
        task = asyncio.create_task(listener.run())
        listener.offer(b"clip-0")
        await settle()
        listener.offer(b"clip-1")
        listener.offer(b"clip-2")
        clock.now += 5.0
        listener.offer(b"clip-3")  # full but not yet stuck for long: a drop, not a close
        assert listener.close_code is None and counters.frames_dropped == 1
        clock.now += 6.0
        listener.offer(b"clip-4")  # still no progress 11 s later: give up
        assert listener.close_code == CLOSE_TRY_AGAIN_LATER and listener.queued == 0
        listener.offer(b"clip-5")  # ignored from now on
        assert listener.queued == 0
        socket.gate.set()  # the owner would cut the socket off; here the send completes
        await asyncio.wait_for(task, 5)
        return socket, counters

    socket, counters = run(scenario())
    assert stuck_calls == [True]
    assert counters.closed_slow == 1
    assert socket.sent == [b"clip-0"]
    assert socket.closed_with is not None and socket.closed_with[0] == 1013


class TrickleSocket(FakeSocket):
    """A reader that takes one frame whenever the test grants it one."""

    def __init__(self) -> None:
        super().__init__()
        self.credits = asyncio.Semaphore(0)

    async def send(self, data: bytes) -> None:
        await self.credits.acquire()
        self.sent.append(data)


def test_a_listener_that_trickles_but_never_catches_up_is_closed_with_1013():
    async def scenario():
        socket, counters, clock = TrickleSocket(), FanoutCounters(), FakeClock()
        listener = make_listener(socket, clock, counters, max_frames=2, stuck_seconds=10.0)
        task = asyncio.create_task(listener.run())
        clips = 0
        while listener.close_code is None and clips < 20:  # a clip and a state frame every 5 s ...
            listener.offer(f"clip-{clips}".encode())
            listener.offer(b"state", droppable=False)
            socket.credits.release()  # ... and the reader takes one frame in that time
            await settle()
            clock.now += 5.0
            clips += 1
        for _ in range(10):
            socket.credits.release()
        await asyncio.wait_for(task, 5)
        return clips, socket, counters

    clips, socket, counters = run(scenario())
    assert counters.frames_dropped >= 1 and counters.closed_slow == 1
    assert clips <= 6  # first drop at 10 s, closed at the first full queue more than 10 s later
    assert len(socket.sent) >= 3  # it was making progress all along, just never enough
    assert socket.closed_with[0] == CLOSE_TRY_AGAIN_LATER


def test_an_idle_spell_followed_by_a_burst_is_not_mistaken_for_slowness():
    async def scenario():
        socket, counters, clock = FakeSocket(), FanoutCounters(), FakeClock()
        listener = make_listener(socket, clock, counters, max_frames=2, stuck_seconds=10.0)
        task = asyncio.create_task(listener.run())
        listener.offer(b"hello")
        await settle()
        clock.now += 300.0  # a paused room: nothing to send for five minutes
        burst = [b"state", b"settings", b"clip"]
        for frame in burst:  # arrives before the sender task gets to run
            listener.offer(frame)
        await settle()
        listener.stop()
        await task
        return socket, counters, listener

    socket, counters, listener = run(scenario())
    assert listener.close_code is None and counters.closed_slow == 0
    assert socket.sent == [b"hello", b"settings", b"clip"]  # one dropped, none refused
    assert counters.frames_dropped == 1


def test_undroppable_frames_cannot_grow_the_queue_without_bound():
    async def scenario():
        socket, counters, clock = FakeSocket(), FanoutCounters(), FakeClock()
        socket.gate.clear()
        listener = make_listener(socket, clock, counters, max_frames=2, stuck_seconds=1e9)
        task = asyncio.create_task(listener.run())
        listener.offer(b"first")
        await settle()
        offered = 0
        while listener.close_code is None and offered < 100:
            listener.offer(b"pong", droppable=False)  # a client that pings and never reads
            offered += 1
        socket.gate.set()
        await asyncio.wait_for(task, 5)
        return socket, counters, offered

    socket, counters, offered = run(scenario())
    assert offered == HARD_LIMIT_FACTOR * 2 + 1
    assert counters.closed_slow == 1 and socket.closed_with[0] == CLOSE_TRY_AGAIN_LATER


def test_a_newer_state_frame_replaces_the_queued_one():
    async def scenario():
        socket, counters = FakeSocket(), FanoutCounters()
        socket.gate.clear()
        listener = make_listener(socket, FakeClock(), counters, max_frames=4)
        task = asyncio.create_task(listener.run())
        listener.offer(b"clip-0")
        await settle()  # being sent
        for listeners in range(1, 1001):  # a thousand joins while this listener is busy
            listener.offer(f"state {listeners}".encode(), droppable=False, replaces="state")
        listener.offer(b"clip-1")
        socket.gate.set()
        await settle()
        listener.stop()
        await task
        return socket, counters

    socket, counters = run(scenario())
    assert socket.sent == [b"clip-0", b"state 1000", b"clip-1"]
    assert counters.frames_dropped == 0 and counters.closed_slow == 0


def test_close_with_sends_what_is_queued_then_closes():
    async def scenario():
        socket, counters = FakeSocket(), FanoutCounters()
        listener = make_listener(socket, FakeClock(), counters)
        listener.offer(b"clip")
        listener.offer(b"error", droppable=False)
        listener.close_with(1001, "server shutting down")
        listener.offer(b"late")  # nothing is queued after the close was asked for
        await asyncio.wait_for(listener.run(), 5)
        return socket

    socket = run(scenario())
    assert socket.sent == [b"clip", b"error"]
    assert socket.closed_with == (1001, "server shutting down")


def test_a_reader_waits_while_replies_pile_up_and_resumes_as_they_drain():
    async def scenario():
        socket, counters = FakeSocket(), FanoutCounters()
        listener = make_listener(socket, FakeClock(), counters, max_frames=2)
        socket.gate.clear()  # the client reads nothing for now
        sender = asyncio.create_task(listener.run())
        for index in range(3):  # one frame held in send(), two queued: full
            listener.offer(b"error %d" % index, droppable=False)
            await settle()
        reader = asyncio.create_task(listener.wait_for_room())
        await settle()
        paused = not reader.done()
        socket.gate.set()  # the client reads again
        await settle()
        resumed = reader.done()
        listener.stop()
        await sender
        return paused, resumed, socket, counters

    paused, resumed, socket, counters = run(scenario())
    assert paused and resumed
    assert socket.sent == [b"error 0", b"error 1", b"error 2"]
    assert counters.closed_slow == 0 and socket.closed_with is None


def test_a_waiting_reader_is_let_go_when_the_listener_is_closed():
    async def scenario():
        socket = FakeSocket()
        listener = make_listener(socket, FakeClock(), FanoutCounters(), max_frames=1)
        listener.offer(b"error", droppable=False)
        reader = asyncio.create_task(listener.wait_for_room())
        await settle()
        waiting = not reader.done()
        listener.close_with(1001, "server shutting down")
        await asyncio.wait_for(reader, 5)
        return waiting

    assert run(scenario())


def test_a_reader_is_let_go_when_the_sender_dies_on_a_dead_socket():
    async def scenario():
        socket = FakeSocket()

        async def send_to_reset_socket(data: bytes) -> None:
            raise ConnectionResetError("the client vanished")

        listener = Outbox(send_to_reset_socket, socket.close, max_frames=1, stuck_seconds=10.0,
                            counters=FanoutCounters(), clock=FakeClock())
        listener.offer(b"welcome", droppable=False)
        listener.offer(b"catch-up clip")  # queue full behind the frame being sent
        sender = asyncio.create_task(listener.run())
        reader = asyncio.create_task(listener.wait_for_room())
        await asyncio.wait_for(reader, 5)  # released, so it can read the disconnect
        with pytest.raises(ConnectionResetError):
            await sender
        return listener.queued

    assert run(scenario()) == 1


# -- the real server --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server("--idle-room-seconds", "2", log_dir=tmp_path_factory.mktemp("fanout")) as running:
        yield running


def test_server_negotiates_no_per_message_deflate(server):
    async def scenario():
        # the websockets client offers permessage-deflate by default; the server must decline it
        async with connect(server.ws_url) as ws:
            return ws.response.headers.get("Sec-WebSocket-Extensions"), ws.protocol.extensions

    header, extensions = run(scenario())
    assert header is None
    assert extensions == []


def test_late_joiner_catches_up_at_once_with_the_same_bytes_then_streams_live(server):
    async def scenario():
        async with connect(server.ws_url, max_size=None) as host:
            welcome = await join(host)
            host_clips = [await recv_type(host, "clip", 90) for _ in range(2)]
            async with connect(server.ws_url, max_size=None) as late:
                await join(late, room=welcome["room"])
                caught_up = [await recv_type(late, "clip", 3) for _ in range(2)]  # already there
                live = await recv_type(late, "clip", 60)
                host_live = await recv_type(host, "clip", 60)
                return host_clips, caught_up, live, host_live

    host_clips, caught_up, live, host_live = run(scenario())
    assert [clip["seq"] for clip in caught_up] == [clip["seq"] for clip in host_clips]
    assert [clip["audio"] for clip in caught_up] == [clip["audio"] for clip in host_clips]
    assert live["seq"] == caught_up[-1]["seq"] + 1
    assert live["audio"] == host_live["audio"]  # one packing, the same frame for every listener
    audio = decode_mp3(b"".join(clip["audio"] for clip in [*caught_up, live]), 44100)
    assert audio.shape[-1] > 2.9 * 5.12 * 44100  # the caught-up bytes and the live ones are one stream
