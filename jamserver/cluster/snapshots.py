"""A room's snapshot: its session and its stream's seam, packed with msgpack, so another front-end can carry on.

The owner stores one with every published clip (in the same lease-checked script, see lease.py); a front-end that
takes the room over loads it, rebuilds the session and resumes the stream at the same stream time, crossfading the
next clip from the last clip's continuation exactly as the old owner would have.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
from redis.asyncio import Redis

from jamserver.cluster.keys import RoomKeys
from jamserver.cluster.messages import pack_array, unpack_array
from jamserver.jam.session import JamSession
from jamserver.jam.snapshot import export_session, restore_session
from jamserver.server.room.stream import RoomStream
from pipeline.audio.joiner import JoinerState

FORMAT = 1


@dataclass(frozen=True)
class RoomSnapshot:
    """Everything a new owner restores. `taken_at` is wall-clock time: the play position moves on from it.

    `inbox_id`: the last entry of the room's inbox (member messages) the session had applied; a new owner applies
    the messages after it, so nothing a member sent between this snapshot and the old owner's end is lost."""

    room_id: str
    epoch: int
    taken_at: float
    session: dict[str, Any]
    joiner: JoinerState
    inbox_id: str = "0-0"

    @classmethod
    def take(cls, room_id: str, epoch: int, session: JamSession, stream: RoomStream, now: float,
             inbox_id: str = "0-0") -> RoomSnapshot:
        """The room as it stands; `now` is this process's monotonic clock, as the session uses."""
        return cls(room_id, epoch, time.time(), export_session(session, now), stream.joiner_state(), inbox_id)

    def pack(self) -> bytes:
        return msgpack.packb({
            "format": FORMAT, "room": self.room_id, "epoch": self.epoch, "taken_at": self.taken_at,
            "session": self.session, "inbox": self.inbox_id,
            "joiner": {"continuation": pack_array(self.joiner.continuation), "gain_db": self.joiner.gain_db,
                       "limiter_db": self.joiner.limiter_db, "samples_out": self.joiner.samples_out},
        }, use_bin_type=True)

    @classmethod
    def unpack(cls, data: bytes) -> RoomSnapshot:
        raw = msgpack.unpackb(data, raw=False)
        if raw.get("format") != FORMAT:
            raise ValueError(f"unsupported room snapshot format {raw.get('format')!r}")
        joiner = raw["joiner"]
        return cls(raw["room"], raw["epoch"], raw["taken_at"], raw["session"],
                   JoinerState(unpack_array(joiner["continuation"]), joiner["gain_db"], joiner["limiter_db"],
                               joiner["samples_out"]), raw.get("inbox", "0-0"))

    def restore_session(self, now: float, beats_of: Callable[[str], int | None] | None = None) -> JamSession:
        """The session, its play position moved on by the time since the snapshot was taken; `beats_of`: this
        front-end's seed beats, for seed images the snapshot carries none for (one from an older version)."""
        return restore_session(self.session, now, elapsed=max(0.0, time.time() - self.taken_at), beats_of=beats_of)

    def restore_stream(self, stream: RoomStream) -> None:
        """Continue the old owner's stream in a fresh RoomStream."""
        stream.resume(self.joiner)


async def load_snapshot(redis: Redis, keys: RoomKeys) -> RoomSnapshot | None:
    """The room's latest snapshot, or None if it never published a clip (a new owner starts it afresh)."""
    data = await redis.get(keys.snapshot)
    return None if data is None else RoomSnapshot.unpack(data)
