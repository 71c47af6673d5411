"""The /ws endpoint: one member's socket, carried by asyncio around its sans-I/O `MemberConnection`.

The connection decides (join first, roles, rate limits, refusals); this module only moves bytes and carries out
the actions it returns: replies go to the member's `Outbox` (or straight to the socket before the join), `Enter`
goes to the room registry, `Forward` to the room. The reader pauses while the outbox is full, so a client that
sends faster than it reads its replies is held back at the socket rather than disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import asdict
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from jamserver.jam import protocol
from jamserver.jam.member.connection import (
    CLOSE_POLICY_VIOLATION,
    Action,
    Close,
    Enter,
    Forward,
    MemberConnection,
    MemberLimits,
    Reply,
)
from jamserver.server.room.fanout import Outbox
from jamserver.server.room.registry import Member, Room, RoomError
from jamserver.server.state import JamState

log = logging.getLogger("jamserver.server.transport.websocket")
# Longer than the WebSocket layer's own close timeout (10 s), which then aborts a stuck TCP connection.
CLOSE_TIMEOUT_SECONDS = 30


async def ws_endpoint(websocket: WebSocket) -> None:
    state: JamState = websocket.app.state.jam
    if not state.config.origin_allowed(websocket.headers.get("origin")):
        await websocket.close(CLOSE_POLICY_VIOLATION)
        return
    await websocket.accept()
    state.metrics.connections.inc()
    try:
        config = state.config
        connection = MemberConnection(
            MemberLimits(max_message_bytes=config.max_message_bytes, prompts_per_minute=config.prompts_per_minute,
                         join_timeout_seconds=config.join_timeout_seconds,
                         settings_per_minute=config.settings_per_minute),
            state.seeds, time.monotonic())
        room = await _join(state, websocket, connection)
        if room is not None:
            await _serve_member(state, websocket, connection, room)
    finally:
        state.metrics.connections.dec()


# -- before the join: straight to the socket ----------------------------------------------------------


async def _join(state: JamState, websocket: WebSocket, connection: MemberConnection) -> Room | None:
    """Read until the connection has joined a room (returned) or was refused and closed (None)."""
    while not connection.closed:
        try:
            wait = max(0.0, connection.join_deadline - time.monotonic())
            message = await asyncio.wait_for(_receive(websocket), wait)
        except TimeoutError:
            actions = connection.join_timed_out(time.monotonic())
        else:
            if message is None:
                return None
            actions = connection.receive(_data(message), time.monotonic())
        for action in actions:
            if isinstance(action, Enter):
                try:
                    room, role = await _enter(state, action.join, websocket.client.host if websocket.client else None)
                except RoomError as error:
                    await _carry_out_unjoined(websocket, connection.refused(error.code, error.message))
                    return None
                connection.entered(role, room)
                return room
        await _carry_out_unjoined(websocket, actions)
    return None


async def _enter(state: JamState, join: protocol.Join, host: str | None) -> tuple[Room, str]:
    """Create a room for the client at `host` (its IP; rooms are capped per address), or find the one it names."""
    if join.room is None:
        return await state.rooms.create(host), "host"
    return await state.rooms.find(join.room, join.token)


async def _carry_out_unjoined(websocket: WebSocket, actions: list[Action]) -> None:
    for action in actions:
        if isinstance(action, Reply):
            await _send_frame(websocket, action.frame)
        elif isinstance(action, Close):
            await _close(websocket, action.code, action.reason)


# -- a member of a room: through its outbox -----------------------------------------------------------


async def _serve_member(state: JamState, websocket: WebSocket, connection: MemberConnection, room: Room) -> None:
    member = _new_member(state, websocket, connection)
    member.outbox.offer(protocol.encode(_welcome(state, room, connection.role)), droppable=False)
    try:
        room.add_member(member)
    except RoomError as error:
        await _send_frame(websocket, protocol.error_frame(error.code, error.message))
        await _close(websocket, CLOSE_POLICY_VIOLATION, "room full")
        return
    member.task = asyncio.create_task(member.outbox.run())
    try:
        await _read_messages(state, websocket, room, member)
    except WebSocketDisconnect:
        pass
    finally:
        room.remove_member(member)
        member.task.cancel()
        with contextlib.suppress(BaseException):
            await member.task


async def _read_messages(state: JamState, websocket: WebSocket, room: Room, member: Member) -> None:
    """Hand each message to the connection and carry out what it says; nothing a client sends costs the socket."""
    while not member.outbox.closed:
        await member.outbox.wait_for_room()
        message = await _receive(websocket)
        if message is None:
            return
        try:
            for action in member.connection.receive(_data(message), time.monotonic()):
                _carry_out(state, room, member, action)
        except Exception as error:  # a bug must not cost the socket either
            log.exception("room %s: handling a message failed", room.id)
            _reply(member, protocol.error_frame(
                "server_error", f"the server failed to handle that message: {type(error).__name__}"))


def _carry_out(state: JamState, room: Room, member: Member, action: Action) -> None:
    if isinstance(action, Forward):
        try:
            room.apply(action.message, member)
        except protocol.ProtocolError as error:  # the session's refusals: queue full, bad settings
            action = Reply(error.frame(), refusal=True)
    if isinstance(action, Reply):
        if action.refusal:
            state.metrics.protocol_errors.inc()
        _reply(member, action.frame)
    elif isinstance(action, Close):
        member.outbox.close_with(action.code, action.reason)


def _reply(member: Member, frame: dict[str, Any]) -> None:
    member.outbox.offer(protocol.encode(frame), droppable=False)


def _new_member(state: JamState, websocket: WebSocket, connection: MemberConnection) -> Member:
    async def send(data: bytes) -> None:
        await websocket.send_bytes(data)

    async def close(code: int, reason: str) -> None:
        await _close(websocket, code, reason)

    members: list[Member] = []
    outbox = Outbox(send, close, max_frames=state.config.listener_queue_frames,
                    stuck_seconds=state.config.slow_listener_seconds, counters=state.counters,
                    on_stuck=lambda: _cut_off(members[0], websocket))
    members.append(Member(connection, outbox))
    return members[0]


def _cut_off(member: Member, websocket: WebSocket) -> None:
    """An outbox stuck in send(): stop its sender and close the connection from outside."""
    if member.task is not None:
        member.task.cancel()
    asyncio.get_running_loop().create_task(_close(websocket, member.outbox.close_code or 1013, "too slow"))


def _welcome(state: JamState, room: Room, role: str) -> dict[str, Any]:
    return protocol.welcome_frame(
        room=room.id, role=role, token=room.token if role == "host" else None,
        checkpoint=state.model.checkpoint, device=str(state.model.device), demo=state.model.demo,
        description=state.model.description, settings=asdict(room.session.settings),
        seed_images=state.seeds.seed_ids(), mask_images=state.seeds.mask_ids(),
        defaults=asdict(room.session.defaults), clip_seconds=room.session.clip_duration,
        playout_delay=room.session.playout_delay, playhead=room.session.reported_playhead(time.monotonic()),
        limits=protocol.value_limits(max_up_next=room.session.max_up_next,
                                     max_message_bytes=state.config.max_message_bytes))


# -- the socket -----------------------------------------------------------------------------------------


async def _receive(websocket: WebSocket) -> dict[str, Any] | None:
    """The next data message, or None once the client has gone."""
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        return None
    return message


def _data(message: dict[str, Any]) -> bytes | str:
    data = message.get("bytes")
    return message.get("text", "") if data is None else data


async def _send_frame(websocket: WebSocket, frame: dict[str, Any]) -> None:
    with contextlib.suppress(Exception):
        await websocket.send_bytes(protocol.encode(frame))


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(websocket.close(code, reason[:120]), timeout=CLOSE_TIMEOUT_SECONDS)
