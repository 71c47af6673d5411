"""Every Redis key the cluster uses, named in one place.

A room's keys carry the hash tag `{ID}` (`room:{ID}:out`, ...), so on a Redis Cluster they share one slot and the
Lua scripts that touch several of them at once (the lease-checked publish) stay legal. Shared keys live under `jam:`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

JOBS_STREAM = "jam:jobs"  # rooms' clip jobs; the workers read it as one consumer group
URGENT_JOBS_STREAM = "jam:jobs:urgent"  # rooms' cut-ins: every worker takes one at once, one beyond its slots
REST_JOBS_STREAM = "jam:jobs:rest"  # REST clip jobs, run only in rows rooms leave free (their own worker slots)
WORKERS_GROUP = "workers"
WORKER_PREFIX = "jam:worker:"  # + worker name: its heartbeat (a hash that expires unless renewed)
WORKERS_SET = "jam:workers"  # worker names scored by their last heartbeat (wall clock), to list the live ones
RESULTS_PREFIX = "jam:results:"  # + front-end name: the stream its finished clip jobs come back on
ROOMS_SET = "jam:rooms"  # live room ids scored by their owner's last lease renewal (wall clock), for capacity

# Caps on streams. The out stream is also the catch-up source for late joiners and front-ends resuming after a
# stall, so it keeps a few clips (each ~100 kB of MP3 + JPEG); the results stream is read as results arrive.
OUT_STREAM_MAXLEN = 16
IN_STREAM_MAXLEN = 1000
RESULTS_MAXLEN = 256
JOBS_MAXLEN = 10_000
# A results stream or room nobody writes to any more disappears after this long (a dead front-end's leftovers).
IDLE_KEY_SECONDS = 3600

_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def checked_name(kind: str, name: str) -> str:
    """Room ids and process names become parts of keys: no braces (hash tags), colons or spaces."""
    if not isinstance(name, str) or not _ID.fullmatch(name):
        raise ValueError(f"{kind} must be 1-64 characters of A-Z a-z 0-9 _ -, got {name!r}")
    return name


@dataclass(frozen=True)
class RoomKeys:
    """The keys of one room, all in the room's hash slot."""

    room_id: str

    def __post_init__(self) -> None:
        checked_name("room id", self.room_id)

    def _key(self, suffix: str) -> str:
        return f"room:{{{self.room_id}}}:{suffix}"

    @property
    def lease(self) -> str:
        """`EPOCH OWNER` of the front-end running the room, with a TTL it keeps renewing."""
        return self._key("lease")

    @property
    def epoch(self) -> str:
        """A counter bumped by every acquisition, so each owner's frames carry a larger epoch than the last's."""
        return self._key("epoch")

    @property
    def out(self) -> str:
        """Published frames (clips, state, settings), capped; every front-end relays it to its members."""
        return self._key("out")

    @property
    def inbox(self) -> str:
        """Member messages from any front-end, read by the owner."""
        return self._key("in")

    @property
    def snapshot(self) -> str:
        """The room's state after its last published clip, written by the same script that publishes it."""
        return self._key("snapshot")

    @property
    def published(self) -> str:
        """The highest clip seq published, so a clip is published once whatever happens to its owners."""
        return self._key("published")

    @property
    def meta(self) -> str:
        """What any front-end needs to admit a member: the host's token, the creation time."""
        return self._key("meta")

    def all(self) -> tuple[str, ...]:
        return (self.lease, self.epoch, self.out, self.inbox, self.snapshot, self.published, self.meta)


def worker_key(name: str) -> str:
    return WORKER_PREFIX + checked_name("worker name", name)


def results_stream(frontend: str) -> str:
    return RESULTS_PREFIX + checked_name("front-end name", frontend)
