"""A JamSession as plain data (dicts, lists, numbers, strings) and back: what another process needs to carry on.

Kept beside the session rather than in it so session.py stays about decisions; it reads the session's fields
directly because it is the session's own serialised form. Pure like the session: times are passed in.

What carries over: settings, the transition (start, end, alpha, queue), the seq counter, which clips were delivered,
listeners, pause, the playout clock (its delay and playhead), the cut-in timing and generation estimate, the
recent clips a cut can go back to, and the beats of the seed images the room plays (the cut-ins' beat grid: a new
owner may not know an uploaded seed; a snapshot without them restores with the new owner's own `beats_of`). A cut being made is undone first: its prompt goes back to the head of the queue
and the cut is wanted again. Clips that were in flight come back as clips to remake (same seq, next
attempt): the process that asked for them is gone, and a clip job is deterministic, so remaking one gives the same
clip. The play position moves on by the time the snapshot spent in transit, as the listeners' players did.
"""

from __future__ import annotations

import copy
import heapq
from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from jamserver.jam.cuts import CutTiming, GenerationEstimate
from jamserver.jam.playout import PlayoutClock
from jamserver.jam.prompt import Prompt
from jamserver.jam.session import ClipPlan, JamSession
from jamserver.jam.settings import Settings
from jamserver.jam.validation import StepLimits

SNAPSHOT_VERSION = 1
# Every attribute of a JamSession, each carried over below (or, `_reported`, deliberately not: a new owner reports
# the state afresh). A field added to the session without a thought for the snapshot fails loudly, not silently.
SESSION_FIELDS = frozenset({
    "limits", "defaults", "settings", "lookahead_clips", "max_up_next", "clip_duration", "_start", "_end", "_alpha",
    "_queue", "_next_seq", "_in_flight", "_retry", "_sides", "_delivered", "_contiguous", "_generated", "_clip_ends",
    "_listeners", "_paused", "_clock", "_reported", "cut_timing", "generation", "cut_generation", "cut_stats", "_beats_of",
    "delivery", "_cut_wanted", "_cut_waits_for", "_walks", "_placed", "_undo",
})


def _plan(data: dict[str, Any]) -> ClipPlan:
    return ClipPlan(**{**data, "start": Prompt(**data["start"]), "end": Prompt(**data["end"])})


def _without_cut_in_flight(session: JamSession) -> JamSession:
    """A copy of `session` with the cut being made (if any) undone, as if it had been stopped."""
    cut = session._cut_in_flight()
    if cut is None:
        return session
    undone = copy.copy(session)
    undone._queue, undone._in_flight, undone._undo = deque(session._queue), dict(session._in_flight), dict(session._undo)
    del undone._in_flight[cut.seq]
    undone._undo_cut(cut)
    return undone


def export_session(session: JamSession, now: float) -> dict[str, Any]:
    """The session at `now` (monotonic, this process's clock) as plain data."""
    if set(vars(session)) != SESSION_FIELDS:
        raise RuntimeError(f"JamSession fields changed ({sorted(set(vars(session)) ^ SESSION_FIELDS)}): "
                           "update jamserver/jam/snapshot.py")
    position = session.position(now)
    session = _without_cut_in_flight(session)
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
        "playout_delay": session.playout_delay,
        "cut_timing": asdict(session.cut_timing),
        "generation_mean": session.generation.mean,
        "cut_generation_mean": session.cut_generation.mean,
        "delivery_seconds": session.delivery.seconds(now),
        "cut_wanted": session._cut_wanted,
        "placed": [asdict(plan) for plan in session._placed.values()],
        "walks": [[seq, asdict(start), asdict(end), alpha] for seq, (start, end, alpha) in session._walks.items()],
        "beats": [[seed_id, session._beats_of(seed_id)] for seed_id in _seeds_in_play(session, waiting)],
    }


def _seeds_in_play(session: JamSession, waiting: list[ClipPlan]) -> list[str]:
    """The seed images whose beat grid the session may still cut on: the room's, and those of its recent clips."""
    plans = [*session._placed.values(), *waiting]
    return sorted({session.settings.seed_image_id, *(plan.seed_image_id for plan in plans)})


def _carried_beats(state: dict[str, Any], fallback: Callable[[str], int | None] | None) -> Callable[[str], int | None]:
    """The snapshot's seed beats first (what the old owner cut on), then the new owner's own for other seeds."""
    carried = {seed_id: beats for seed_id, beats in state.get("beats", [])}

    def beats_of(seed_image_id: str) -> int | None:
        if seed_image_id in carried:
            return carried[seed_image_id]
        return None if fallback is None else fallback(seed_image_id)

    return beats_of


def restore_session(state: dict[str, Any], now: float, elapsed: float = 0.0,
                    beats_of: Callable[[str], int | None] | None = None) -> JamSession:
    """A session that decides as the exported one would; `elapsed`: seconds since the export (wall clock).

    `beats_of`: the restoring process's seed beats, for seed images the snapshot carries none for."""
    if state.get("version") != SNAPSHOT_VERSION:
        raise ValueError(f"unsupported session snapshot version {state.get('version')!r}")
    session = JamSession(Settings(**state["defaults"]), lookahead_clips=state["lookahead_clips"],
                         max_up_next=state["max_up_next"], clip_duration=state["clip_duration"],
                         limits=StepLimits(**state["limits"]), playout_delay=state["playout_delay"],
                         cut_timing=CutTiming(**state["cut_timing"]), first_generation_guess=state["generation_mean"],
                         beats_of=_carried_beats(state, beats_of))
    session.cut_generation = GenerationEstimate(state.get("cut_generation_mean", state["generation_mean"]))
    session.delivery.observe(state.get("delivery_seconds", 0.0), now)  # the old owner's, remembered from now on
    session._cut_wanted = state["cut_wanted"]
    session._placed = {plan.seq: plan for plan in map(_plan, state["placed"])}
    session._walks = {seq: (Prompt(**start), Prompt(**end), alpha) for seq, start, end, alpha in state["walks"]}
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
    session._clock = PlayoutClock.resumed(state["playout_delay"], position, now, started=state["clock_started"],
                                          running=not state["paused"])
    return session
