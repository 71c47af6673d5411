"""Cut-ins in the room state machine, driven through simulated time: the issue's rules, case by case."""

from __future__ import annotations

import random

import pytest

from jamserver.jam.cuts import CutTiming
from jamserver.jam.prompt import Prompt as PromptSpec
from jamserver.jam.session import CLIP_SECONDS, ClipPlan, JamSession
from jamserver.jam.settings import Settings

L = CLIP_SECONDS
BEAT = L / 8  # og_beat: 8 beats a loop
MARGIN = 0.3


def cut_session(**kwargs) -> JamSession:
    """A playing room with cut-ins: og_beat's grid, a 1 s playout delay, generation guessed at 0.8 s."""
    options = {"settings": Settings(cut_in=True), "playout_delay": 1.0,
               "cut_timing": CutTiming(network_margin=MARGIN, bar_slack=0.0), "beats_of": lambda seed: {"og_beat": 8, "vibes": 6}.get(seed), "first_generation_guess": 0.8}
    session = JamSession(first_prompt=PromptSpec("church bells", seed=10), **{**options, **kwargs})
    session.set_listeners(1)
    return session


def deliver(session: JamSession, plan: ClipPlan, now: float) -> None:
    session.clip_delivered(plan, now)


def started(session: JamSession) -> float:
    """Deliver the first two clips at t = 0 and 0.5; the playhead reaches 0 at t = 1 (the playout delay)."""
    deliver(session, session.plan_next_clip(), 0.0)
    deliver(session, session.plan_next_clip(), 0.5)
    return 1.0


def test_a_prompt_is_cut_in_on_the_first_beat_after_the_playhead_plus_generation_and_margin() -> None:
    session = cut_session()
    t0 = started(session)
    now = t0 + 2.0  # playhead at 2.0 s
    session.queue_prompt(PromptSpec("jazz"))
    assert session.wants_cut(now) and not session.wants_clip(now)
    plan, superseded = session.plan_cut(now)
    assert superseded == ()
    assert plan.seq == 2  # clip 1 was sent: its seq is not reused (members drop a repeated seq)
    assert plan.replaces and plan.stream_time == pytest.approx(3 * BEAT * 2)  # 2.0 + 0.92 * ... -> 3.84
    assert plan.stream_time >= 2.0 + 0.8 * session.generation.headroom + MARGIN - 1e-9
    assert plan.loop_offset == pytest.approx(plan.stream_time)  # in the first loop: the same offset
    assert plan.stream_end == pytest.approx(L)  # to the end of its loop: enough left for the next clip
    assert plan.end.prompt == "jazz" and plan.alpha == 0.25
    assert session.up_next == ()
    deliver(session, plan, now + 0.9)
    assert session.generated_until == pytest.approx(L)  # the old clip 1 is superseded
    assert session.cut_stats.landed == 1
    assert session.wants_clip(now + 0.9)
    after = session.plan_next_clip()
    assert after.seq == plan.seq + 1 and after.stream_time == pytest.approx(L) and not after.replaces
    assert (after.end.prompt, after.alpha) == ("jazz", 0.5)  # the alpha walk goes on from the cut


def test_cuts_are_planned_with_what_cuts_take_not_with_what_batched_clips_take() -> None:
    session = cut_session()
    now = started(session) + 2.0
    for _ in range(6):  # clips batched with other rooms' take 3 s from plan to sent
        session.generation.observe(3.0)
    session.queue_prompt(PromptSpec("jazz"))
    plan, _ = session.plan_cut(now)
    assert plan.stream_time - 2.0 < 0.8 * session.generation.headroom + MARGIN + BEAT  # a cut still takes 0.8 s
    session.clip_delivered(plan, now + 0.5, made_in=0.5)  # made urgently: faster than the guess
    assert session.cut_generation.mean < 0.8 and session.generation.mean > 2.5  # each learns from its own kind
    assert plan.duration == pytest.approx(L - plan.stream_time + L)  # the clip after it is a slow one: runs on


def test_the_cut_clip_is_on_the_loop_grid_and_takes_the_superseded_clips_seq() -> None:
    session = cut_session()
    t0 = started(session)
    now = t0 + L + 0.05  # playhead just into clip 1: clip 2 is wanted
    assert session.wants_clip(now)
    regular = session.plan_next_clip()
    assert regular.seq == 2 and regular.stream_time == pytest.approx(2 * L)
    session.queue_prompt(PromptSpec("jazz"))
    plan, superseded = session.plan_cut(now + 0.1)
    assert superseded == (regular,)  # clip 2 would follow the old prompt: stop making it
    assert plan.seq == 2  # nothing was sent with seq 2, so the cut takes it
    assert L < plan.stream_time < 2 * L
    assert plan.loop_offset == pytest.approx(plan.stream_time - L)
    assert plan.stream_time / BEAT == pytest.approx(round(plan.stream_time / BEAT))


def test_a_cut_close_to_the_loop_end_runs_on_for_one_more_loop() -> None:
    session = cut_session()
    t0 = started(session)
    now = t0 + 3.2  # earliest 3.2 + 0.92 + 0.3 = 4.42 -> beat 4.48, 0.64 s before the loop end
    session.queue_prompt(PromptSpec("jazz"))
    plan, _ = session.plan_cut(now)
    assert plan.stream_time == pytest.approx(7 * BEAT)
    assert plan.stream_end == pytest.approx(2 * L)


def test_prompts_close_together_coalesce_into_one_cut_and_the_last_wins() -> None:
    session = cut_session()
    t0 = started(session)
    for prompt in ("jazz", "techno", "waltz"):
        session.queue_prompt(PromptSpec(prompt))
    plan, _ = session.plan_cut(t0 + 1.0)
    assert plan.end.prompt == "waltz" and session.up_next == ()
    assert session.cut_stats.coalesced == 2
    # Another prompt while that cut is being made: the cut is stopped and made again with the newer prompt.
    session.queue_prompt(PromptSpec("polka"))
    assert session.stale_cut == plan
    session.drop(plan)
    assert session.wants_cut(t0 + 1.2)
    again, _ = session.plan_cut(t0 + 1.2)
    assert again.seq == plan.seq and again.end.prompt == "polka"
    assert session.cut_stats.coalesced == 3 and session.cut_stats.planned == 2


def test_a_cut_that_misses_its_beat_lands_on_the_next_reachable_one_never_before_the_playhead() -> None:
    session = cut_session()
    t0 = started(session)
    session.queue_prompt(PromptSpec("jazz"))
    plan, _ = session.plan_cut(t0 + 1.0)
    late = t0 + plan.stream_time  # generation took so long that the playhead has reached T
    landed = session.land_cut(plan, late)
    playhead = session.position(late)
    assert landed.stream_time >= playhead + MARGIN - 1e-9
    assert landed.stream_time - playhead < MARGIN + BEAT
    assert landed.loop_offset == pytest.approx(landed.stream_time % L)
    assert landed.end == plan.end and landed.seq == plan.seq
    assert session.cut_stats.late == 1
    deliver(session, landed, late)
    assert session.generated_until == pytest.approx(landed.stream_end)


def test_a_cut_in_time_lands_where_it_was_planned() -> None:
    session = cut_session()
    t0 = started(session)
    session.queue_prompt(PromptSpec("jazz"))
    plan, _ = session.plan_cut(t0 + 1.0)
    assert session.land_cut(plan, t0 + 1.8) is plan
    assert session.cut_stats.late == 0


def test_no_cut_when_the_next_reachable_beat_is_past_the_generated_audio() -> None:
    session = cut_session()
    t0 = started(session)
    now = t0 + 2 * L - 0.5  # 0.5 s of audio left: the prompt can only go in at the end of the stream
    session.queue_prompt(PromptSpec("jazz"))
    assert session.wants_cut(now)
    assert session.plan_cut(now) == (None, ())
    assert not session.wants_cut(now)
    plan = session.plan_next_clip()
    assert plan.stream_time == pytest.approx(2 * L) and plan.end.prompt == "jazz" and not plan.replaces


def test_without_cut_ins_a_prompt_waits_for_the_next_clip_as_before() -> None:
    session = cut_session(settings=Settings(cut_in=False))  # the default
    t0 = started(session)
    session.queue_prompt(PromptSpec("jazz"))
    assert not session.wants_cut(t0 + 1.0)
    assert not session.wants_clip(t0 + 1.0)  # one clip ahead is ready: nothing to do until clip 1 plays
    assert session.wants_clip(t0 + L + 0.01)
    plan = session.plan_next_clip()
    assert plan.stream_time == pytest.approx(2 * L) and plan.end.prompt == "jazz"


def test_settings_that_change_the_sound_cut_in_and_others_do_not() -> None:
    session = cut_session()
    t0 = started(session)
    session.update_settings(alpha_velocity=0.5, guidance=9.0)
    assert not session.wants_cut(t0 + 1.0)
    session.update_settings(seed_image_id="vibes")
    assert session.wants_cut(t0 + 1.0)
    plan, _ = session.plan_cut(t0 + 1.0)
    assert plan.seed_image_id == "vibes" and plan.end.prompt == "church bells"
    assert plan.stream_time / BEAT == pytest.approx(round(plan.stream_time / BEAT))  # the playing seed's grid


def test_a_failed_cut_puts_its_prompt_back_and_is_wanted_again() -> None:
    session = cut_session()
    t0 = started(session)
    session.queue_prompt(PromptSpec("jazz"))
    plan, _ = session.plan_cut(t0 + 1.0)
    session.clip_failed(plan)
    assert [spec.prompt for spec in session.up_next] == ["jazz"]
    assert session.wants_cut(t0 + 1.5)
    again, _ = session.plan_cut(t0 + 1.5)
    assert again.seq == plan.seq and again.end.prompt == "jazz"


def test_no_cut_before_the_first_clip_the_first_prompt_is_simply_the_first_clip() -> None:
    session = cut_session()
    session.queue_prompt(PromptSpec("jazz"))
    assert not session.wants_cut(0.0)
    first = session.plan_next_clip()
    assert first.start.prompt == "jazz"
    deliver(session, first, 0.5)
    assert not session.wants_cut(0.6)  # the first clip carried it: nothing left to cut in


def test_the_playhead_follows_the_playout_clock() -> None:
    session = cut_session(playout_delay=1.5)
    deliver(session, session.plan_next_clip(), 10.0)
    assert session.position(10.0) == pytest.approx(-1.5)
    assert session.position(12.0) == pytest.approx(0.5)
    assert session.playout_delay == 1.5


def test_simulated_jam_prompt_to_ear_latency_and_no_underrun() -> None:
    """Prompts at random moments, generation taking 0.6-1.0 s: every prompt is heard within
    generation + margin + one beat of the playhead, no cut lands before the playhead, the stream never starves."""
    rng = random.Random(7)
    session = cut_session()
    step, now = 0.02, 0.0
    running: list[tuple[float, ClipPlan]] = []
    prompts = sorted(rng.uniform(8.0, 110.0) for _ in range(20))
    latencies, asked = [], {}
    while now < 120.0:
        now = round(now + step, 6)
        for done in [job for job in running if job[0] <= now]:
            running.remove(done)
            plan = session.land_cut(done[1], now) if done[1].replaces else done[1]
            if plan.replaces:
                assert plan.stream_time >= session.position(now)
                latencies.append(plan.stream_time - asked[plan.end.prompt])
            session.clip_delivered(plan, now, made_in=0.8)
        while prompts and prompts[0] <= now:
            text = f"prompt at {prompts.pop(0):.2f}"
            session.queue_prompt(PromptSpec(text))
            asked[text] = session.position(now)
        stale = session.stale_cut
        if stale is not None:
            running = [job for job in running if job[1] != stale]
            session.drop(stale)
        if session.wants_cut(now):
            plan, superseded = session.plan_cut(now)
            running = [job for job in running if job[1] not in superseded]
            if plan is not None:
                running.append((now + rng.uniform(0.6, 1.0), plan))
        while session.wants_clip(now):
            running.append((now + rng.uniform(0.6, 1.0), session.plan_next_clip()))
        assert not session.behind(now), f"the stream ran dry at {now}"
    assert len(latencies) + session.cut_stats.coalesced >= 18
    assert max(latencies) <= 0.8 * session.generation.headroom + MARGIN + BEAT + 1e-6
    assert session.cut_stats.late == 0


def test_a_prompt_being_cut_in_is_still_waiting_until_the_cut_lands() -> None:
    session = cut_session()
    t0 = started(session)
    jazz = PromptSpec("jazz")
    session.queue_prompt(jazz)
    plan, _ = session.plan_cut(t0 + 1.0)
    assert session.up_next == () and session.waiting_prompts == (jazz,)  # one at a time holds for open jams
    deliver(session, plan, t0 + 1.9)
    assert session.waiting_prompts == ()


def test_a_cut_on_the_end_of_the_stream_remakes_the_clip_being_made_there_with_the_prompt() -> None:
    session = cut_session()
    t0 = started(session)
    now = t0 + 8.5  # earliest 8.5 + 0.92 + 0.3 = 9.72: the first beat after it is 10.24, where clip 1 ends
    regular = session.plan_next_clip()
    assert regular.stream_time == pytest.approx(2 * L)
    session.queue_prompt(PromptSpec("jazz"))
    plan, superseded = session.plan_cut(now)
    assert superseded == (regular,)
    assert (plan.seq, plan.stream_time, plan.duration, plan.replaces) == (2, pytest.approx(2 * L), L, False)
    assert plan.end.prompt == "jazz"
    assert session.land_cut(plan, now + 0.9) is plan
    deliver(session, plan, now + 0.9)
    assert session.generated_until == pytest.approx(3 * L)


def test_a_beat_inside_the_clip_still_being_made_is_cut_in_once_that_clip_is_there() -> None:
    session = cut_session(first_generation_guess=2.5)  # a slow machine: ~2.9 s planned for a clip
    t0 = started(session)
    now = t0 + L + 0.3  # clip 1 plays; clip 2 (10.24-15.36) is being made; earliest 5.42 + 2.88 + 0.3 = 8.6
    regular = session.plan_next_clip()
    now = t0 + 2 * L - 1.5  # 1.5 s of audio left: the first reachable beat lies inside clip 2
    session.queue_prompt(PromptSpec("jazz"))
    asked = session.position(now)
    assert session.plan_cut(now) == (None, ())
    assert session.wants_cut(now) is False  # waits: clip 2 is still being made
    assert not session.wants_clip(now)
    deliver(session, regular, now + 0.5)
    assert session.wants_cut(now + 0.5)
    plan, _ = session.plan_cut(now + 0.5)
    assert plan.replaces and 2 * L < plan.stream_time < 3 * L and plan.end.prompt == "jazz"
    assert plan.stream_time - asked <= 0.5 + 2.5 * 1.15 + MARGIN + BEAT  # not the clip after clip 2 (~6.6 s)


def test_a_snapshot_taken_while_a_cut_is_made_carries_the_prompt_and_the_wish_to_cut() -> None:
    from jamserver.jam.snapshot import export_session, restore_session

    session = cut_session()
    t0 = started(session)
    session.queue_prompt(PromptSpec("jazz"))
    plan, _ = session.plan_cut(t0 + 1.0)
    state = export_session(session, t0 + 1.2)
    assert session.planned(plan) and session.up_next == ()  # the exporting session is left as it was
    restored = restore_session(state, now=50.0, beats_of=lambda seed: 8)
    assert [spec.prompt for spec in restored.up_next] == ["jazz"]
    assert restored.playout_delay == 1.0 and restored.position(50.0) == pytest.approx(session.position(t0 + 1.2))
    assert restored.wants_cut(50.0)
    again, _ = restored.plan_cut(50.0)
    assert again.replaces and again.end.prompt == "jazz"


def test_on_a_cluster_cuts_leave_the_owner_earlier_by_the_measured_delivery_delay() -> None:
    """Relays reported that clips took 0.5 s to reach them: the cut is planned (and, late, landed) that much
    further ahead of the playhead, so members on every front-end still get it before its beat."""
    plain, relayed = cut_session(), cut_session()
    t0 = started(plain)
    started(relayed)
    now = t0 + 2.5  # earliest 2.5 + 0.92 + 0.3 = 3.72 -> beat 3.84; with the delay 4.22 -> 4.48
    relayed.delivery_observed(0.5, now - 1.0)
    for session in (plain, relayed):
        session.queue_prompt(PromptSpec("jazz"))
    near, _ = plain.plan_cut(now)
    far, _ = relayed.plan_cut(now)
    assert relayed.cut_reach(now) == pytest.approx(MARGIN + 0.5) and plain.cut_reach(now) == pytest.approx(MARGIN)
    assert far.stream_time >= 2.5 + 0.8 * relayed.cut_generation.headroom + MARGIN + 0.5 - 1e-9
    assert (near.stream_time, far.stream_time) == pytest.approx((6 * BEAT, 7 * BEAT))
    late = t0 + far.stream_time - MARGIN - 0.1  # one process would still land it; the relays would get it late
    landed = relayed.land_cut(far, late)
    assert landed.stream_time > far.stream_time
    assert landed.stream_time >= relayed.position(late) + MARGIN + 0.5 - 1e-9


def test_frames_report_no_playhead_until_the_room_s_clock_starts() -> None:
    """Before the first clip leaves, the clock stands at -delay: reported as a number, a client would take it for a
    running clock and, if the first clip came less than the delay later, play up to the delay ahead of the room."""
    session = cut_session()
    assert session.reported_playhead(0.0) is None and session.reported_playhead(0.8) is None
    session.clip_delivered(session.plan_next_clip(), 0.9)
    assert session.reported_playhead(0.9) == pytest.approx(-1.0)
    assert session.reported_playhead(2.4) == pytest.approx(0.5)
