"""A JamSession as plain data (dicts, lists, numbers, strings) and back: what another process needs to carry on.

Kept beside the session rather than in it so session.py stays about decisions; it reads the session's fields
directly because it is the session's own serialised form. Pure like the session: times are passed in.

What carries over: settings, the transition (start, end, alpha, queue), the seq counter, which clips were delivered,
listeners, pause, and the play position. Clips that were in flight come back as clips to remake (same seq, next
attempt): the process that asked for them is gone, and a clip job is deterministic, so remaking one gives the same
clip. The play position moves on by the time the snapshot spent in transit, as the listeners' players did.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import asdict
from typing import Any

from jamserver.jam.prompt import Prompt
from jamserver.jam.session import ClipPlan, JamSession, Settings, _Clock
from jamserver.jam.validation import StepLimits

SNAPSHOT_VERSION = 1
# Every attribute of a JamSession, each carried over below (or, `_reported`, deliberately not: a new owner reports
# the state afresh). A field added to the session without a thought for the snapshot fails loudly, not silently.
SESSION_FIELDS = frozenset({
    "limits", "defaults", "settings", "lookahead_clips", "max_up_next", "clip_duration", "_start", "_end", "_alpha",
    "_queue", "_next_seq", "_in_flight", "_retry", "_sides", "_delivered", "_contiguous", "_generated", "_clip_ends",
    "_listeners", "_paused", "_clock", "_reported",
})


def _plan(data: dict[str, Any]) -> ClipPlan:
    return ClipPlan(**{**data, "start": Prompt(**data["start"]), "end": Prompt(**data["end"])})


def export_session(session: JamSession, now: float) -> dict[str, Any]:
    """The session at `now` (monotonic, this process's clock) as plain data."""
    if set(vars(session)) != SESSION_FIELDS:
        raise RuntimeError(f"JamSession fields changed ({sorted(set(vars(session)) ^ SESSION_FIELDS)}): "
                           "update jamserver/jam/snapshot.py")
    position = session.position(now)
    waiting = sorted([*session._in_flight.values(), *(plan for _, plan in session._retry)], key=lambda p: p.seq)
    return {
        "version": SNAPSHOT_VERSION,
        "limits": asdict(session.limits),
        "defaults": asdict(session.defaults),
        "settings": asdict(session.settings),
        "lookahead_clips": session.lookahead_clips,
        "max_up_next": session.max_up_next,
        "clip_duration": session.clip_duration,
        "start": asdict(session._start),
        "end": asdict(session._end),
        "alpha": session._alpha,
        "queue": [asdict(spec) for spec in session._queue],
        "next_seq": session._next_seq,
        "unfinished": [asdict(plan) for plan in waiting],
        # the unresolved prompts of those clips: a remade clip takes the room's settings as they are then
        "sides": [[plan.seq, asdict(session._sides[plan.seq][0]), asdict(session._sides[plan.seq][1])]
                  for plan in waiting],
        "delivered": sorted(session._delivered.items()),  # [seq, length] pairs: msgpack maps want string keys
        "contiguous": session._contiguous,
        "generated": session._generated,
        "clip_ends": list(session._clip_ends),
        "listeners": session._listeners,
        "paused": session._paused,
        "clock_started": session._clock.started,
        "position": position,
    }


def restore_session(state: dict[str, Any], now: float, elapsed: float = 0.0) -> JamSession:
    """A session that decides as the exported one would; `elapsed`: seconds since the export (wall clock)."""
    if state.get("version") != SNAPSHOT_VERSION:
        raise ValueError(f"unsupported session snapshot version {state.get('version')!r}")
    session = JamSession(Settings(**state["defaults"]), lookahead_clips=state["lookahead_clips"],
                         max_up_next=state["max_up_next"], clip_duration=state["clip_duration"],
                         limits=StepLimits(**state["limits"]))
    session.defaults = Settings(**state["defaults"])
    session.settings = Settings(**state["settings"])
    session._start = Prompt(**state["start"])
    session._end = Prompt(**state["end"])
    session._alpha = state["alpha"]
    session._queue = deque(Prompt(**spec) for spec in state["queue"])
    session._next_seq = state["next_seq"]
    session._sides = {seq: (Prompt(**start), Prompt(**end)) for seq, start, end in state["sides"]}
    for data in state["unfinished"]:
        plan = _plan(data)
        heapq.heappush(session._retry, (plan.seq, plan))
    session._delivered = {int(seq): float(length) for seq, length in state["delivered"]}
    session._contiguous = state["contiguous"]
    session._generated = state["generated"]
    session._clip_ends = deque(state["clip_ends"])
    session._listeners = state["listeners"]
    session._paused = state["paused"]
    generated_until = session.generated_until
    position = state["position"]
    if state["clock_started"] and not state["paused"]:
        position = min(generated_until, position + max(0.0, elapsed))
    session._clock = _Clock(started=state["clock_started"], position=position, now=now)
    return session
