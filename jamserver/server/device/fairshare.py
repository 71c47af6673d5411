"""Who gets the rows of the next UNet call: each live room an equal share of UNet time, REST jobs the idle time.

Stepping every active job in every call (per-row fairness) lets a room that asks for 1000 steps hold a
batch slot twenty times as long as a room at the defaults, and eight such rooms starve everyone else. Here
each owner (a room) is charged for the UNet rows it is stepped with (a row costs about the same in any
call, so rows stand for UNet time and the order stays reproducible), and the next call goes to the
owners that have been charged least, so a cheap room is stepped in nearly every call whatever the others
ask for. An owner that becomes active starts at the least charge among the active ones: idle time earns
no credit; owners equally charged go by deadline. Jobs that can still make their deadline go before jobs
already late, and when a call's time (rows x measured seconds a row) would make an on-time job late, the
late ones sit that call out: overloaded, the rooms that can keep real time keep it, and the others share
what is left instead of dragging every room down. Urgent jobs (cut-ins: a listener is waiting to hear them) are
stepped in calls of their own, so one is made as fast as the device can: the other rooms have a clip of audio ahead
and wait that moment (a call's time grows with its rows on a CPU, so sharing it would slow the cut down to a full
batch's pace). Background jobs (the REST API) run only in calls with no
live job at all (a row costs time, so filling a room's call with them would slow the room), at most
`background_jobs` of them a call, oldest first. Pure: the engine passes its entries in.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Protocol


class Entry(Protocol):
    """What the policy reads of an active job."""

    owner: Hashable
    background: bool
    urgent: bool  # a listener is waiting for it (a cut-in): stepped before anything else, in calls of its own
    deadline: float  # for live jobs: when its room needs the clip; ties in charge go to the earliest
    order: int  # submission order: ties after that, and the order of background jobs
    rows: int  # UNet rows of one step (2 with classifier-free guidance)
    steps_left: int  # UNet steps until the job is done


class FairShare:
    def __init__(self, max_jobs: int, background_jobs: int) -> None:
        if max_jobs < 1 or background_jobs < 0:
            raise ValueError("max_jobs must be >= 1 and background_jobs >= 0")
        self.max_jobs = max_jobs
        self.background_jobs = min(background_jobs, max_jobs)
        self._charge: dict[Hashable, int] = {}  # UNet rows stepped, live owners with an active job only

    def charge_of(self, owner: Hashable) -> int | None:
        return self._charge.get(owner)

    def started(self, entry: Entry) -> None:
        """A job became active: a new live owner starts at the least charge of those already active."""
        if entry.background or entry.owner in self._charge:
            return
        self._charge[entry.owner] = min(self._charge.values(), default=0)

    def finished(self, entry: Entry, still_active: Sequence[Entry]) -> None:
        """A job left: forget its owner unless it has another active job."""
        if not any(other.owner == entry.owner for other in still_active):
            self._charge.pop(entry.owner, None)

    def choose(self, entries: Sequence[Entry], now: float = float("-inf"), row_seconds: float = 0.0,
               finish_seconds: float = 0.0) -> list[Entry]:
        """The jobs to step in the next call: live owners (one job each; on time before late, then least charged),
        as many as keep the on-time ones on time at `row_seconds` a row plus `finish_seconds` after the last
        step; or, if no room has a job, background jobs."""
        live = sorted((e for e in entries if not e.background),
                      key=lambda e: (e.deadline < now, self._charge.get(e.owner, 0), e.deadline, e.order))
        urgent = [e for e in live if e.urgent]
        live = urgent or live
        chosen: list[Entry] = []
        owners: set[Hashable] = set()
        for entry in live:
            if len(chosen) == self.max_jobs:
                break
            if entry.owner not in owners:
                chosen.append(entry)
                owners.add(entry.owner)
        if chosen:  # rows cost time on a CPU: a background row in a live call would slow the rooms
            return self._within_deadlines(chosen, now, row_seconds, finish_seconds)
        background = sorted((e for e in entries if e.background), key=lambda e: e.order)
        return background[:self.background_jobs]

    @staticmethod
    def _within_deadlines(chosen: list[Entry], now: float, row_seconds: float, finish_seconds: float) -> list[Entry]:
        """The first of `chosen` (on-time jobs lead) whose rows fit the tightest on-time job's budget; at least one."""
        budgets = [(e.deadline - now - finish_seconds) / (max(e.steps_left, 1) * row_seconds)
                   for e in chosen if e.deadline >= now and row_seconds > 0]
        if not budgets:
            return chosen
        rows_allowed, taken, rows = min(budgets), [chosen[0]], chosen[0].rows
        for entry in chosen[1:]:
            if rows + entry.rows > rows_allowed:
                break
            taken.append(entry)
            rows += entry.rows
        return taken

    def charge(self, stepped: Sequence[Entry]) -> None:
        """Bill each live owner in a call for the rows it was stepped with."""
        for entry in stepped:
            if not entry.background and entry.owner in self._charge:
                self._charge[entry.owner] += entry.rows
