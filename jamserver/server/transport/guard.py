"""uvicorn, guarded: the connection limits of `limits.py` applied to real transports, and a bounded shutdown.

uvicorn keeps a connection that never sends a request open forever, waits forever at shutdown for a
socket whose peer stopped reading, logs a traceback for every invalid UTF-8 text frame and assembles a
message from any number of fragments. The protocol subclasses here admit or refuse each connection,
time out requests that do not complete, abort sockets that cannot flush their close, and refuse such
frames with a close code instead of a traceback. `GuardedServer` sweeps the table, keeps accept()
failures to one log line every few seconds, and gives connections a bounded time to close at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, ClassVar

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from jamserver.server.transport.limits import ConnectionLimits, ConnectionTable

log = logging.getLogger("jamserver.server.transport.guard")

MAX_FRAGMENTS = 64  # continuation frames in one message; clients fragment large messages, not 16 KiB ones
WS_CLOSE_SECONDS = 5.0  # a peer that has not answered our close frame by then is cut off
SWEEP_SECONDS = 0.5
SHUTDOWN_CLOSING_SECONDS = 1.0  # during shutdown, a socket that cannot flush its close is aborted this soon
ACCEPT_LOG_SECONDS = 10.0
RETRY_AFTER_SECONDS = 10
MAX_LINGERING = 64  # refused connections kept half-open at once so their 503 is read, not reset
LINGER_SECONDS = 1.0


def _refusal(status: str, reason: str) -> bytes:
    body = (reason + "\n").encode()
    return (f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nRetry-After: {RETRY_AFTER_SECONDS}\r\n"
            f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def _peer_host(transport: asyncio.BaseTransport) -> str | None:
    peer = transport.get_extra_info("peername")
    return peer[0] if isinstance(peer, (tuple, list)) and peer else None


class GuardedHttpProtocol(H11Protocol):
    """HTTP/1.1 connections counted in the table, refused or evicted by it, and timed out if their request is late."""

    table: ClassVar[ConnectionTable]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        verdict = self.table.admit(transport, _peer_host(transport), time.monotonic())
        if verdict.evict is not None:
            verdict.evict.abort()
        self._refused = not verdict.admitted
        if self._refused:
            self._refuse(transport, verdict.reason)
            return
        super().connection_made(transport)

    def _refuse(self, transport: asyncio.Transport, reason: str) -> None:
        """Answer 503 and half-close, reading (and dropping) what the client sent for a moment, so that its
        request does not turn our answer into a reset; past MAX_LINGERING such sockets, just drop them."""
        if self.table.lingering >= MAX_LINGERING:
            transport.abort()
            return
        self.table.lingering += 1
        self.transport = transport
        transport.write(_refusal("503 Service Unavailable", reason))
        transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, transport.abort)

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            if self.transport is not None:
                self.table.lingering -= 1
            return
        self.table.release(self.transport)
        super().connection_lost(exc)

    def handle_events(self) -> None:
        before = self.cycle
        super().handle_events()
        cycle = self.cycle
        if cycle is None or self.transport.get_protocol() is not self:
            return
        if not cycle.more_body:
            self.table.settle(self.transport)
        elif cycle is not before:  # headers in, body to come: give it time by its declared length
            length = dict(self.headers).get(b"content-length", b"0")
            self.table.expect(self.transport, time.monotonic(), body_bytes=int(length) if length.isdigit() else 0)

    def on_response_complete(self) -> None:
        if not self.transport.is_closing():
            self.table.expect(self.transport, time.monotonic())
        super().on_response_complete()

    def request_timed_out(self) -> None:
        """The request did not arrive in time: 408 if nothing was answered yet, and close."""
        if self.cycle is None or not self.cycle.response_started or self.cycle.response_complete:
            self.transport.write(_refusal("408 Request Timeout", "the request did not arrive in time"))
        self.transport.close()


class GuardedWebSocketProtocol(WebSocketsSansIOProtocol):
    """The sansio WebSocket protocol with the table's bookkeeping and bounded fragments, closes and bad frames."""

    table: ClassVar[ConnectionTable]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.close_timeout = WS_CLOSE_SECONDS

    def connection_lost(self, exc: Exception | None) -> None:
        self.table.release(self.transport)
        super().connection_lost(exc)

    def request_timed_out(self) -> None:
        if not self.handshake_complete:
            self.send_500_response()
        self.transport.close()

    async def send(self, message: Any) -> None:
        if (message["type"] == "websocket.close" and self.handshake_complete and not self.disconnected
                and not self.writable.is_set()):
            # The peer stopped reading: a close frame would wait behind its unread data forever.
            self.transport.abort()
            return
        await super().send(message)
        if self.handshake_complete:
            self.table.settle(self.transport)
        if message["type"] == "websocket.close" and self.close_timer is not None:
            self.close_timer.cancel()  # uvicorn's timer only close()s, which waits for unsent data: abort instead
            self.close_timer = self.loop.call_later(self.close_timeout, self.transport.abort)

    def handle_cont(self, event: Any) -> None:
        if self.close_sent:
            return
        if len(self.frames) >= MAX_FRAGMENTS:
            self.frames = []
            self.conn.fail(1009, f"a message may have at most {MAX_FRAGMENTS} fragments")
            self.handle_parser_exception()
            return
        super().handle_cont(event)

    def send_receive_event_to_app(self) -> None:
        if self.curr_msg_data_type == "text" and not self.close_sent:
            try:
                b"".join(self.frames).decode()
            except UnicodeDecodeError:  # the client's fault: a close code, not a traceback in our log
                self.frames = []
                log.debug("%s: invalid UTF-8 in a text frame; closing with 1007", self.client)
                self.conn.fail(1007, "invalid UTF-8")
                self.handle_parser_exception()
                return
        super().send_receive_event_to_app()


def guarded_protocols(table: ConnectionTable) -> tuple[type[H11Protocol], type[WebSocketsSansIOProtocol]]:
    """Protocol classes bound to `table`, for uvicorn.Config(http=..., ws=...)."""
    http = type("JamHttpProtocol", (GuardedHttpProtocol,), {"table": table})
    ws = type("JamWebSocketProtocol", (GuardedWebSocketProtocol,), {"table": table})
    return http, ws


class AcceptErrorLog:
    """An event-loop exception handler that turns a storm of failed accept() calls into one line per period."""

    def __init__(self, period: float = ACCEPT_LOG_SECONDS, clock: Any = time.monotonic) -> None:
        self.period = period
        self.clock = clock
        self.failures = 0
        self._since_logged = 0
        self._logged_at: float | None = None

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if not str(context.get("message", "")).startswith("socket.accept() out of system resource"):
            loop.default_exception_handler(context)
            return
        self.failures += 1
        self._since_logged += 1
        now = self.clock()
        if self._logged_at is None or now - self._logged_at >= self.period:
            log.warning("accept() failed %d time(s) (%s); lower --max-connections or raise the open-files limit",
                        self._since_logged, context.get("exception"))
            self._logged_at, self._since_logged = now, 0


class GuardedServer(uvicorn.Server):
    """uvicorn.Server that sweeps the connection table and cannot be held open at shutdown by its clients."""

    def __init__(self, config: uvicorn.Config, table: ConnectionTable) -> None:
        super().__init__(config)
        self.table = table
        self._shutting_down = False
        self._sweeper: asyncio.Task | None = None

    async def startup(self, sockets: list | None = None) -> None:
        asyncio.get_running_loop().set_exception_handler(AcceptErrorLog())
        await super().startup(sockets=sockets)
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def shutdown(self, sockets: list | None = None) -> None:
        self._shutting_down = True
        try:
            await super().shutdown(sockets=sockets)
        finally:
            if self._sweeper is not None:
                self._sweeper.cancel()
            for transport in self.table.handles():
                transport.abort()

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            self.sweep(time.monotonic())

    def sweep(self, now: float) -> None:
        """Time out late requests; abort connections stuck closing (sooner once shutdown has begun)."""
        for transport in self.table.overdue_requests(now):
            protocol = transport.get_protocol()
            if isinstance(protocol, (GuardedHttpProtocol, GuardedWebSocketProtocol)):
                protocol.request_timed_out()
            else:
                transport.abort()
        closing = {transport for transport in self.table.handles() if transport.is_closing()}
        grace = SHUTDOWN_CLOSING_SECONDS if self._shutting_down else None
        for transport in self.table.stuck_closing(closing, now, grace=grace):
            transport.abort()


def build_server(app: Any, *, host: str, port: int, limits: ConnectionLimits, log_level: str, ws_max_size: int,
                 shutdown_seconds: int) -> GuardedServer:
    """The app on guarded uvicorn protocols.

    The WebSocket side is uvicorn's websockets-sansio protocol (the legacy `websockets` backend is
    deprecated). Sansio queues every message of one TCP read at once (hundreds, when they are small); each
    reader's own backpressure (Outbox.wait_for_room) keeps such a flood from overflowing its reply queue.
    """
    table: ConnectionTable = ConnectionTable(limits)
    http, ws = guarded_protocols(table)
    config = uvicorn.Config(app, host=host, port=port, http=http, ws=ws, ws_per_message_deflate=False,
                            ws_max_size=ws_max_size, log_level=log_level, lifespan="on",
                            timeout_graceful_shutdown=shutdown_seconds, proxy_headers=True,
                            forwarded_allow_ips=sorted(limits.exempt))
    return GuardedServer(config, table)
