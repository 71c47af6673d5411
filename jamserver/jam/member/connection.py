"""One member's connection as a state machine, without a socket: bytes and the time in, frames and actions out.

`MemberConnection.receive(data, now)` holds every per-connection rule: the first message must be a join, a second
join is refused, listeners may not steer the room (but anyone may queue prompts in an open jam, one at a time),
prompts are rate limited, and any refusal is an error frame that keeps the connection open. It returns actions
for the transport to carry out (`Reply`, `Close`, `Enter`, `Forward`); the transport owns the socket, the room
registry and the rooms. A rule that needs to know about the room reads it through `RoomView`. Pure: time is
passed in, so every rule is tested over simulated time (tests/test_connection.py).

To add a rule for a message type, add a handler to `_JOINED_HANDLERS`; per-connection state lives on the object.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Protocol

from jamserver.jam import protocol
from jamserver.jam.member.ratelimit import TokenBucket
from jamserver.jam.prompt import Prompt
from jamserver.jam.protocol import ClientMessage, Join, Ping, ProtocolError, SettingsMessage

CLOSE_POLICY_VIOLATION = 1008


@dataclass(frozen=True)
class Reply:
    """Send `frame` to this member only, never dropped. `refusal`: it reports a refused message."""

    frame: dict[str, Any]
    refusal: bool = False


@dataclass(frozen=True)
class Close:
    """Close this member's connection with a WebSocket close code."""

    code: int
    reason: str


@dataclass(frozen=True)
class Enter:
    """Join the room `join` names (or create one); answer with `entered` or `refused`."""

    join: Join


@dataclass(frozen=True)
class Forward:
    """A message the connection accepted, for the room to apply (which may still refuse it)."""

    message: ClientMessage


Action = Reply | Close | Enter | Forward


class RoomView(Protocol):
    """What the connection's rules read about the room it joined."""

    @property
    def open_jam(self) -> bool: ...

    @property
    def up_next(self) -> tuple[Prompt, ...]: ...  # prompts not heard yet (a cut-in being made holds one)


class ImageIndex(Protocol):
    """The seed and mask image ids messages may name (they can change while the server runs)."""

    def seed_ids(self) -> Collection[str]: ...

    def mask_ids(self) -> Collection[str]: ...


@dataclass(frozen=True)
class MemberLimits:
    """The per-connection limits of `jamserver.server.config.ServerConfig`."""

    max_message_bytes: int
    prompts_per_minute: int
    join_timeout_seconds: float
    settings_per_minute: int | None = None  # None: unlimited
    settings_burst: int = 10


def check_one_at_a_time(previous: Prompt | None, up_next: tuple[Prompt, ...]) -> None:
    """In an open jam a listener queues one prompt at a time: refused while their last one is still up next.

    Also used by a cluster owner, which alone knows the queue of a room whose members are on other front-ends."""
    if previous is not None and any(queued is previous for queued in up_next):
        raise ProtocolError("rate_limited", "your previous prompt is still up next; "
                                            "in an open jam each member queues one at a time")


class MemberConnection:
    """The rules of one member's connection. Not thread-safe: drive it from the connection's task."""

    def __init__(self, limits: MemberLimits, images: ImageIndex, now: float) -> None:
        self.limits = limits
        self.images = images
        self.join_deadline = now + limits.join_timeout_seconds
        self.role: str | None = None
        self.room: RoomView | None = None
        self.closed = False
        self._entering = False  # a join was handed to the transport and not yet answered
        self._prompts = TokenBucket(limits.prompts_per_minute)
        self._settings = (None if limits.settings_per_minute is None
                          else TokenBucket(limits.settings_per_minute, burst=limits.settings_burst))
        self._queued_prompt: Prompt | None = None  # the last prompt this member queued (open-jam rule)

    @property
    def joined(self) -> bool:
        return self.room is not None

    @property
    def is_host(self) -> bool:
        return self.role == "host"

    # -- input ----------------------------------------------------------------------------------

    def receive(self, data: bytes | str, now: float) -> list[Action]:
        """Decide what one client frame leads to."""
        if self.closed or self._entering:
            return []  # nothing is read while a join is being answered, or after the close
        try:
            message = protocol.decode_client_message(
                data, max_bytes=self.limits.max_message_bytes,
                seed_image_ids=self.images.seed_ids(), mask_image_ids=self.images.mask_ids())
            if not self.joined:
                return self._first_message(message)
            return self._joined_message(message, now)
        except ProtocolError as error:
            if not self.joined:
                return self._refuse_join(error.frame())
            return [Reply(error.frame(), refusal=True)]

    def join_timed_out(self, now: float) -> list[Action]:
        """The transport's join timer ran out: refuse the connection if it has not joined by now."""
        if self.joined or self.closed or self._entering or now < self.join_deadline:
            return []
        return self._refuse_join(protocol.error_frame("not_joined", "no join message arrived in time"))

    # -- the transport's answers to Enter ---------------------------------------------------------

    def entered(self, role: str, room: RoomView) -> None:
        """The join was granted: this member is `role` in `room`."""
        if role not in protocol.ROLES:
            raise ValueError(f"role must be one of {protocol.ROLES}, got {role!r}")
        self.role, self.room, self._entering = role, room, False

    def refused(self, code: str, message: str) -> list[Action]:
        """The join could not be granted (no such room, bad token, server or room full)."""
        self._entering = False
        return self._refuse_join(protocol.error_frame(code, message))

    # -- rules ------------------------------------------------------------------------------------

    def _first_message(self, message: ClientMessage) -> list[Action]:
        if not isinstance(message, Join):
            raise ProtocolError("not_joined", "the first message must be a join")
        self._entering = True
        return [Enter(message)]

    def _refuse_join(self, frame: dict[str, Any]) -> list[Action]:
        self.closed = True
        return [Reply(frame, refusal=True), Close(CLOSE_POLICY_VIOLATION, "join refused")]

    def _joined_message(self, message: ClientMessage, now: float) -> list[Action]:
        self._check_role(message)
        handler = _JOINED_HANDLERS.get(type(message), MemberConnection._forward)
        return handler(self, message, now)

    def _check_role(self, message: ClientMessage) -> None:
        """Listeners may not steer the room; in an open jam anyone may queue prompts."""
        protocol.check_permission(message, is_host=self.is_host, open_jam=self.room.open_jam)

    def _on_join(self, message: Join, now: float) -> list[Action]:
        raise ProtocolError("already_joined", "this connection has already joined a room")

    def _on_ping(self, message: Ping, now: float) -> list[Action]:
        return [Reply(protocol.pong_frame(message.t))]

    def _on_prompt(self, prompt: Prompt, now: float) -> list[Action]:
        if not self.is_host:
            check_one_at_a_time(self._queued_prompt, self.room.up_next)
        if not self._prompts.allow(now):
            wait = self._prompts.retry_after()
            raise ProtocolError("rate_limited", f"too many prompts; try again in {wait:.0f} s")
        self._queued_prompt = prompt
        return [Forward(prompt)]

    def _on_settings(self, message: SettingsMessage, now: float) -> list[Action]:
        if self._settings is not None and not self._settings.allow(now):
            wait = self._settings.retry_after()
            raise ProtocolError("rate_limited", f"too many settings changes; try again in {wait:.1f} s")
        return [Forward(message)]

    def _forward(self, message: ClientMessage, now: float) -> list[Action]:
        return [Forward(message)]


Handler = Callable[[MemberConnection, Any, float], list[Action]]
_JOINED_HANDLERS: dict[type, Handler] = {
    Join: MemberConnection._on_join,
    Ping: MemberConnection._on_ping,
    Prompt: MemberConnection._on_prompt,
    SettingsMessage: MemberConnection._on_settings,
}
