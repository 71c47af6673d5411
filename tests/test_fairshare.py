"""FairShare: which jobs share a UNet call, simulated call by call (pure; the engine tests run it for real)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from jamserver.server.device.fairshare import FairShare


@dataclass(eq=False)
class Job:
    owner: str
    steps: int
    background: bool = False
    urgent: bool = False
    deadline: float = 0.0
    order: int = 0
    rows: int = 2

    @property
    def steps_left(self) -> int:
        return self.steps


def run_calls(fair: FairShare, jobs: list[Job], *, refill: dict[str, int] | None = None,
              calls: int = 10_000) -> dict[str, list[int]]:
    """Step jobs call by call as the engine does; each owner in `refill` starts a new job of that many steps
    whenever one finishes. Returns, per owner, the call numbers at which its jobs finished."""
    active = list(jobs)
    for job in active:
        fair.started(job)
    finished: dict[str, list[int]] = {job.owner: [] for job in jobs}
    for call in range(1, calls + 1):
        if not active:
            break
        chosen = fair.choose(active)
        fair.charge(chosen)
        for job in chosen:
            job.steps -= 1
        done = [job for job in active if job.steps == 0]
        active = [job for job in active if job.steps > 0]
        for job in done:
            fair.finished(job, active)
            finished[job.owner].append(call)
            if refill and job.owner in refill:
                fresh = Job(job.owner, refill[job.owner], job.background, order=call)
                active.append(fresh)
                fair.started(fresh)
    return finished


def test_a_cheap_room_is_stepped_in_nearly_every_call_beside_eight_expensive_ones():
    heavy = [Job(f"heavy {n}", 1000) for n in range(8)]
    finished = run_calls(FairShare(max_jobs=8, background_jobs=2), [*heavy, Job("cheap", 37)],
                         refill={"cheap": 37}, calls=400)
    clip_calls = [b - a for a, b in zip([0, *finished["cheap"]], finished["cheap"])]
    # 9 owners share 8 slots: the cheap room gets 8 of every 9 calls, so a 37-step clip takes about 42 calls,
    # where stepping every active job (the old way) left it waiting until a 1000-step job ended.
    assert len(clip_calls) >= 9 and max(clip_calls) <= 43


def test_owners_share_calls_equally_whatever_their_step_counts():
    fair = FairShare(max_jobs=2, background_jobs=0)
    jobs = [Job("a", 10_000), Job("b", 10_000), Job("c", 10_000)]
    run_calls(fair, jobs, calls=300)
    stepped = sorted(10_000 - job.steps for job in jobs)
    assert stepped[-1] - stepped[0] <= 1 and sum(stepped) == 600


def test_background_jobs_run_only_when_no_room_has_a_job():
    fair = FairShare(max_jobs=4, background_jobs=2)
    rooms = [Job(f"room {n}", 5, order=n) for n in range(3)]
    rest = [Job(f"rest {n}", 5, background=True, order=10 + n) for n in range(3)]
    assert [job.owner for job in fair.choose([*rest, *rooms])] == ["room 0", "room 1", "room 2"]
    assert [job.owner for job in fair.choose(rest)] == ["rest 0", "rest 1"]  # oldest first, background_jobs of them


def test_a_newly_active_owner_earns_no_credit_for_idle_time():
    fair = FairShare(max_jobs=1, background_jobs=0)
    old = Job("old", 100)
    fair.started(old)
    for _ in range(50):
        fair.charge(fair.choose([old]))
    new = Job("new", 100, deadline=1.0)
    fair.started(new)
    assert fair.charge_of("new") == fair.charge_of("old") == 100
    assert fair.choose([old, new])[0].owner == "old"  # equal charge: the earlier deadline (0.0) goes first


def test_a_cut_in_is_stepped_in_calls_of_its_own_and_the_rooms_go_on_after_it():
    rooms = [Job(f"room {n}", 37, deadline=10.0, order=n) for n in range(7)]
    cut = Job("cut", 37, urgent=True, deadline=20.0, order=9)  # least urgent by deadline, but a listener waits
    fair = FairShare(max_jobs=8, background_jobs=2)
    for job in [*rooms, cut]:
        fair.started(job)
    assert fair.choose([*rooms, cut], now=0.0) == [cut]
    finished = run_calls(FairShare(max_jobs=8, background_jobs=2), [*rooms, cut])
    assert finished["cut"] == [37]  # as fast as a room of its own
    assert all(finished[f"room {n}"] == [74] for n in range(7))  # then the rooms, batched as before


def test_equally_charged_owners_go_by_deadline():
    fair = FairShare(max_jobs=1, background_jobs=0)
    jobs = [Job("relaxed", 3, deadline=100.0, order=0), Job("urgent", 3, deadline=1.0, order=1),
            Job("soon", 3, deadline=10.0, order=2)]
    finished = run_calls(fair, jobs)
    assert finished["urgent"][0] < finished["soon"][0] < finished["relaxed"][0]


def test_overloaded_late_jobs_sit_out_the_calls_that_would_make_an_on_time_job_late():
    fair = FairShare(max_jobs=8, background_jobs=2)
    normal = Job("normal", 37, deadline=105.0)
    heavy = [Job(f"heavy {n}", 50, deadline=99.0, order=n) for n in range(8)]
    for job in [normal, *heavy]:
        fair.started(job)
    # 16 ms a row (a loaded CPU), 0.5 s to decode: (5 - 0.5) / (37 x 0.016) = 7.6 rows fit, i.e. 3 guided jobs
    loaded = fair.choose([*heavy, normal], now=100.0, row_seconds=0.016, finish_seconds=0.5)
    assert [job.owner for job in loaded] == ["normal", "heavy 0", "heavy 1"]
    # a fast device (0.5 ms a row) fits them all; and with no job on time there is nothing to protect
    assert len(fair.choose([*heavy, normal], now=100.0, row_seconds=0.0005, finish_seconds=0.5)) == 8
    assert len(fair.choose(heavy, now=100.0, row_seconds=0.016, finish_seconds=0.5)) == 8


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError):
        FairShare(max_jobs=0, background_jobs=0)
