"""Connection limits: how many connections the server holds, in all and per client address, and for how long.

A flood of connections that never send a request must not exhaust the process's file descriptors or lock
out everyone else. The table below admits each new connection, or refuses it (its address already holds
too many), or makes room for it by evicting the oldest connection that has not yet sent a complete request
(a real client sends its request within milliseconds; a flooder never does). Connections must complete their
request (or WebSocket handshake) within `request_seconds`, and one that is closing but cannot flush its last
bytes (a stalled reader) is aborted after `closing_seconds`. Handles are opaque: the transport glue
(`guard.py`) passes asyncio transports, tests can pass anything hashable. Pure: time is passed in.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

FD_RESERVE = 256  # descriptors kept for the model's files, threads, logs and connections being refused
DEFAULT_MAX_CONNECTIONS = 10_000
MIN_BODY_RATE = 32 * 1024  # bytes/s a request body is given time for (a 20 MB upload: 10 min)
DEFAULT_MAX_PER_ADDRESS = 256  # a classroom behind one NAT: ~30 listeners x a browser's 6-7 connections

TRUSTED_PROXIES = frozenset({"127.0.0.1", "::1"})  # uvicorn's default for X-Forwarded-For, and the local host

Handle = TypeVar("Handle", bound=Hashable)


def default_max_connections(open_files_limit: int) -> int:
    """A cap that leaves FD_RESERVE descriptors free, so accept() never fails for want of one."""
    return max(16, min(DEFAULT_MAX_CONNECTIONS, open_files_limit - FD_RESERVE))


def address_key(host: str | None) -> str:
    """What the per-address cap counts by: the IPv4 address, or the /64 of an IPv6 one (one host's prefix)."""
    if not host:
        return "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host  # a Unix socket path or a name: count it as given
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_per_address: int = DEFAULT_MAX_PER_ADDRESS
    request_seconds: float = 10.0  # connect -> complete request (headers and body) or WebSocket handshake
    closing_seconds: float = 3.0  # a connection still flushing this long after its close is aborted
    exempt: frozenset[str] = TRUSTED_PROXIES  # reverse proxies: one address for many clients, not capped per address

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_per_address"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("request_seconds", "closing_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")


@dataclass(frozen=True)
class Admission(Generic[Handle]):
    """The verdict on a new connection: `admitted`, and a connection to drop to make room for it (or None)."""

    admitted: bool
    evict: Handle | None = None
    reason: str = ""


@dataclass
class _Entry:
    address: str
    deadline: float | None  # a complete request is due by then; None once it has come
    closing_since: float | None = None


@dataclass
class ConnectionTable(Generic[Handle]):
    """Every open connection of a server, with its address and request deadline."""

    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    _entries: dict[Handle, _Entry] = field(default_factory=dict)
    _waiting: OrderedDict[Handle, None] = field(default_factory=OrderedDict)  # no complete request yet; by deadline
    _per_address: dict[str, int] = field(default_factory=dict)
    refused: int = 0
    evicted: int = 0
    timed_out: int = 0
    aborted: int = 0
    lingering: int = 0  # refused connections being answered (not counted against the caps)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, handle: object) -> bool:
        return handle in self._entries

    def count(self, address: str) -> int:
        return self._per_address.get(address, 0)

    def admit(self, handle: Handle, host: str | None, now: float) -> Admission[Handle]:
        """Admit `handle` from `host` (counted by `address_key`), evicting a waiting connection if the server is full."""
        address = address_key(host)
        if self.count(address) >= self.limits.max_per_address and host not in self.limits.exempt:
            self.refused += 1
            return Admission(False, reason=f"too many connections from your address "
                                           f"(limit {self.limits.max_per_address})")
        victim = None
        if len(self._entries) >= self.limits.max_connections:
            if not self._waiting:
                self.refused += 1
                return Admission(False, reason="the server is at its connection limit")
            victim = next(iter(self._waiting))
            self.release(victim)
            self.evicted += 1
        self._entries[handle] = _Entry(address, now + self.limits.request_seconds)
        self._waiting[handle] = None
        self._per_address[address] = self.count(address) + 1
        return Admission(True, evict=victim)

    def settle(self, handle: Handle) -> None:
        """Its request (or handshake) is complete: no deadline, and no longer evictable."""
        entry = self._entries.get(handle)
        if entry is not None:
            entry.deadline = None
            self._waiting.pop(handle, None)

    def expect(self, handle: Handle, now: float, *, body_bytes: int = 0) -> None:
        """It now waits for a request (HTTP keep-alive), or for the `body_bytes` of one: a new deadline, with
        time for the body at MIN_BODY_RATE."""
        entry = self._entries.get(handle)
        if entry is not None:
            entry.deadline = now + self.limits.request_seconds + body_bytes / MIN_BODY_RATE
            self._waiting[handle] = None
            self._waiting.move_to_end(handle)

    def release(self, handle: Handle) -> None:
        """The connection is gone (idempotent)."""
        entry = self._entries.pop(handle, None)
        if entry is None:
            return
        self._waiting.pop(handle, None)
        left = self._per_address[entry.address] - 1
        if left:
            self._per_address[entry.address] = left
        else:
            del self._per_address[entry.address]

    def overdue_requests(self, now: float) -> list[Handle]:
        """Connections whose request is late; they stay in the table until released."""
        late = []
        for handle in self._waiting:
            deadline = self._entries[handle].deadline
            if deadline is None or deadline > now:
                break
            late.append(handle)
        for handle in late:
            self._waiting.pop(handle)
            self._entries[handle].deadline = None
        self.timed_out += len(late)
        return late

    def stuck_closing(self, closing: set[Handle], now: float, *, grace: float | None = None) -> list[Handle]:
        """Of the connections now `closing`, those that have been at it longer than the grace period."""
        grace = self.limits.closing_seconds if grace is None else grace
        stuck = []
        for handle in closing:
            entry = self._entries.get(handle)
            if entry is None:
                continue
            if entry.closing_since is None:
                entry.closing_since = now
            if now - entry.closing_since >= grace:
                stuck.append(handle)
        self.aborted += len(stuck)
        return stuck

    def handles(self) -> list[Handle]:
        return list(self._entries)
