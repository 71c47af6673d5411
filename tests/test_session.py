"""The room state machine: musical decisions per clip, and timing decisions over simulated time."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from jamserver.jam.prompt import Prompt
from jamserver.jam.protocol import ProtocolError, clip_frame
from jamserver.jam.session import CLIP_SECONDS, DEFAULT_PROMPT, DEFAULT_SEED, ClipPlan, JamSession, StateSnapshot
from jamserver.jam.settings import Settings

D = CLIP_SECONDS


def plans(session: JamSession, count: int) -> list[ClipPlan]:
    return [session.plan_next_clip() for _ in range(count)]


def session_at_alpha(alpha: float, prompt: str = "church bells") -> tuple[JamSession, ClipPlan]:
    """A session whose last planned clip has `alpha` (first clip 0, then 0.25 steps)."""
    session = JamSession(first_prompt=Prompt(prompt, seed=10))
    last = plans(session, int(round(alpha / 0.25)) + 1)[-1]
    assert last.alpha == alpha
    return session, last


# -- alpha, wrap, seeds ------------------------------------------------------------------------


def test_first_clip_is_the_first_prompt_pure_then_alpha_steps_and_wraps():
    session = JamSession(first_prompt=Prompt("church bells", seed=10))
    got = [(p.alpha, p.start.prompt, p.start.seed, p.end.prompt, p.end.seed) for p in plans(session, 10)]
    assert got == [
        (0.0, "church bells", 10, "church bells", 11),
        (0.25, "church bells", 10, "church bells", 11),
        (0.5, "church bells", 10, "church bells", 11),
        (0.75, "church bells", 10, "church bells", 11),
        (1.0, "church bells", 10, "church bells", 11),
        (0.25, "church bells", 11, "church bells", 12),  # wrap: end became start, same prompt -> seed + 1
        (0.5, "church bells", 11, "church bells", 12),
        (0.75, "church bells", 11, "church bells", 12),
        (1.0, "church bells", 11, "church bells", 12),
        (0.25, "church bells", 12, "church bells", 13),
    ]


def test_a_plan_fills_a_clip_frame():
    plan = JamSession().plan_next_clip()
    frame = clip_frame(seq=plan.seq, stream_time=plan.stream_time, duration=plan.duration, alpha=plan.alpha,
                       start=asdict(plan.start), end=asdict(plan.end), image=b"j", audio=b"m", sample_rate=44100,
                       gen_seconds=0.5)
    assert frame["end"] == {"prompt": DEFAULT_PROMPT, "seed": DEFAULT_SEED + 1, "negative_prompt": None,
                            "denoising": 0.75, "guidance": 7.0}


def test_default_prompt_when_the_host_has_not_prompted_yet():
    first = JamSession().plan_next_clip()
    assert (first.start.prompt, first.start.seed, first.alpha) == (DEFAULT_PROMPT, DEFAULT_SEED, 0.0)


def test_seed_wraps_at_the_top_of_the_range():
    session = JamSession(first_prompt=Prompt("x", seed=2**32 - 1))
    assert session.plan_next_clip().end.seed == 0


def test_uneven_velocity_still_lands_on_one_before_wrapping():
    session = JamSession(Settings(alpha_velocity=0.3))
    assert [p.alpha for p in plans(session, 6)] == [0.0, 0.3, 0.6, 0.9, 1.0, 0.3]
    session = JamSession(Settings(alpha_velocity=0.1))
    alphas = [p.alpha for p in plans(session, 12)]
    assert alphas[10] == 1.0 and alphas[11] == 0.1


def test_seq_and_stream_time_of_consecutive_plans_add_up():
    session = JamSession()
    sequence = plans(session, 50)
    assert [p.seq for p in sequence] == list(range(50))
    assert sequence[0].stream_time == 0.0
    for before, after in zip(sequence, sequence[1:]):
        assert before.stream_end == pytest.approx(after.stream_time, abs=1e-9)
        assert before.duration == D


# -- queued prompts ------------------------------------------------------------------------------


@pytest.mark.parametrize("last_alpha", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_a_queued_prompt_is_carried_by_the_very_next_clip(last_alpha):
    session, last = session_at_alpha(last_alpha)
    session.queue_prompt(Prompt("jazz with piano"))
    nxt = session.plan_next_clip()
    assert nxt.end.prompt == "jazz with piano"
    assert nxt.alpha == 0.25
    expected_start = last.start if last_alpha < 0.5 else last.end  # whichever the last clip was nearer
    assert nxt.start == expected_start
    assert nxt.end.seed == expected_start.seed  # no seed given: the start's seed, as the original did
    assert session.up_next == ()


def test_after_a_rebase_the_transition_continues_to_the_new_prompt_and_wraps():
    session, _ = session_at_alpha(0.75)
    session.queue_prompt(Prompt("jazz"))
    got = [(p.alpha, p.start.prompt, p.end.prompt, p.start.seed, p.end.seed) for p in plans(session, 6)]
    assert got == [
        (0.25, "church bells", "jazz", 11, 11),
        (0.5, "church bells", "jazz", 11, 11),
        (0.75, "church bells", "jazz", 11, 11),
        (1.0, "church bells", "jazz", 11, 11),
        (0.25, "jazz", "jazz", 11, 12),
        (0.5, "jazz", "jazz", 11, 12),
    ]


def test_explicit_seed_is_kept_and_a_repeated_prompt_moves_on_a_seed():
    session, _ = session_at_alpha(0.25)
    session.queue_prompt(Prompt("jazz", seed=999))
    assert session.plan_next_clip().end.seed == 999
    session, _ = session_at_alpha(0.25)
    session.queue_prompt(Prompt("church bells"))  # the start's prompt again: not a silent no-op
    nxt = session.plan_next_clip()
    assert (nxt.start.seed, nxt.end.seed) == (10, 11)


def test_a_prompt_queued_before_the_first_clip_is_the_first_thing_heard():
    session = JamSession()
    session.queue_prompt(Prompt("motorway at night", seed=5))
    first = session.plan_next_clip()
    assert (first.alpha, first.start.prompt, first.start.seed, first.end.seed) == (0.0, "motorway at night", 5, 6)


def test_queue_is_fifo_one_prompt_per_clip():
    session, _ = session_at_alpha(0.5)
    for prompt in ("a", "b", "c"):
        session.queue_prompt(Prompt(prompt))
    assert [spec.prompt for spec in session.up_next] == ["a", "b", "c"]
    assert [p.end.prompt for p in plans(session, 4)] == ["a", "b", "c", "c"]


def test_queue_is_bounded():
    session = JamSession(max_up_next=2)
    session.queue_prompt(Prompt("a"))
    session.queue_prompt(Prompt("b"))
    with pytest.raises(ProtocolError) as info:
        session.queue_prompt(Prompt("c"))
    assert info.value.code == "queue_full"
    session.plan_next_clip()
    session.queue_prompt(Prompt("c"))
    assert [spec.prompt for spec in session.up_next] == ["b", "c"]


# -- settings ------------------------------------------------------------------------------------


def test_settings_changes_apply_to_the_next_plan():
    session = JamSession()
    before = session.plan_next_clip()
    assert (before.seed_image_id, before.mask_image_id, before.num_inference_steps) == ("og_beat", None, 50)
    assert (before.start.denoising, before.start.guidance) == (0.75, 7.0)
    session.update_settings(seed_image_id="vibes", mask_image_id="mask_top_third_75", num_inference_steps=20,
                            denoising=0.85, guidance=9.0, alpha_velocity=0.5)
    after = session.plan_next_clip()
    assert (after.seed_image_id, after.mask_image_id, after.num_inference_steps) == ("vibes", "mask_top_third_75", 20)
    assert (after.start.denoising, after.end.guidance, after.alpha) == (0.85, 9.0, 0.5)


def test_prompt_level_denoising_and_guidance_win_over_room_settings():
    session = JamSession(Settings(denoising=0.95))
    session.queue_prompt(Prompt("x", denoising=0.5, guidance=3.0))
    plan = session.plan_next_clip()
    assert (plan.start.denoising, plan.start.guidance) == (0.5, 3.0)


@pytest.mark.parametrize("kwargs, field", [
    ({"prompt": ""}, "prompt"), ({"prompt": 3}, "prompt"), ({"prompt": "x", "seed": -1}, "seed"),
    ({"prompt": "x", "denoising": 0}, "denoising"), ({"prompt": "x", "negative_prompt": b"n"}, "negative_prompt"),
])
def test_bad_prompt_specs_are_value_errors_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        Prompt(**kwargs)


def test_bad_session_arguments():
    for kwargs in ({"lookahead_clips": -1}, {"max_up_next": 0}, {"clip_duration": 0.0}, {"lookahead_clips": 1.5}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            JamSession(**kwargs)


# -- timing over simulated time --------------------------------------------------------------------


def live_session(**kwargs) -> JamSession:
    session = JamSession(**kwargs)
    session.set_listeners(1)
    return session


def simulate(session: JamSession, gen_seconds: float, until: float, step: float = 0.05) -> list[tuple]:
    """Drive the session like the server would: plan when it wants, deliver `gen_seconds` later."""
    running: list[tuple[float, ClipPlan]] = []
    trace = []
    for tick in range(int(until / step)):
        now = tick * step
        for done in [job for job in running if job[0] <= now]:
            running.remove(done)
            session.clip_delivered(done[1], now)
        while session.wants_clip(now):
            running.append((now + gen_seconds, session.plan_next_clip()))
        trace.append((now, session.position(now), session.generated_until, session.behind(now), len(running)))
    return trace


def test_fast_generation_keeps_one_clip_ahead_and_is_never_behind():
    session = live_session()
    trace = simulate(session, gen_seconds=1.0, until=60.0)
    started = [row for row in trace if row[2] > 0]
    assert started and not any(row[3] for row in trace)
    for now, position, generated, _, in_flight in started:
        playing_ends = (position // D + 1) * D
        assert generated - playing_ends <= D + 1e-6  # never more than lookahead beyond the playing clip
        assert position <= generated
    assert trace[-1][1] == pytest.approx(60.0 - 0.05 - 1.0, abs=0.06)  # playing in real time since t = 1 s
    assert session.generated_until <= trace[-1][1] + 2 * D


def test_lookahead_two_keeps_more_ready():
    trace = simulate(live_session(lookahead_clips=2), gen_seconds=1.0, until=40.0)
    assert max(row[2] - row[1] for row in trace) > 2 * D


def test_slow_generation_falls_behind_and_the_position_waits_for_audio():
    session = live_session()
    trace = simulate(session, gen_seconds=8.0, until=60.0)
    assert any(row[3] for row in trace)
    assert all(row[1] <= row[2] + 1e-9 for row in trace)
    assert max(row[4] for row in trace) <= 2  # lookahead 1: never more than two clips in flight


def test_behind_starts_when_audio_runs_out_and_ends_when_a_clip_arrives():
    session = live_session()
    first = session.plan_next_clip()
    assert not session.behind(0.0)  # nothing is playing yet: waiting for the first clip is not "behind"
    session.clip_delivered(first, 10.0)
    second = session.plan_next_clip()
    assert not session.behind(10.0 + D - 0.01)
    assert session.behind(10.0 + D + 0.01)
    assert session.position(12.0 + D) == pytest.approx(D)  # frozen at the end of generated audio
    session.clip_delivered(second, 13.0 + D)
    assert not session.behind(13.0 + D)
    assert session.position(14.0 + D) == pytest.approx(D + 1.0)  # continues from where it waited


def test_clock_starts_at_first_delivery():
    session = live_session()
    plan = session.plan_next_clip()
    assert session.position(100.0) == 0.0
    session.clip_delivered(plan, 100.0)
    assert session.position(102.0) == pytest.approx(2.0)


def test_no_generation_without_listeners():
    session = JamSession()
    assert not session.wants_clip(0.0)
    session.set_listeners(2)
    assert session.wants_clip(0.0)
    session.set_listeners(0)
    assert not session.wants_clip(1.0)
    with pytest.raises(ValueError, match="listeners"):
        session.set_listeners(-1)


def test_pause_stops_generation_and_freezes_the_position():
    session = live_session()
    session.clip_delivered(session.plan_next_clip(), 0.0)
    session.clip_delivered(session.plan_next_clip(), 0.5)
    session.pause(1.0)
    assert session.paused and not session.wants_clip(2.0)
    assert session.position(5.0) == pytest.approx(1.0)
    session.resume(5.0)
    assert session.position(7.0) == pytest.approx(3.0)
    assert not session.behind(7.0)


def test_paused_while_starved_is_not_behind():
    session = live_session()
    session.clip_delivered(session.plan_next_clip(), 0.0)
    session.plan_next_clip()
    assert session.behind(D + 1)
    session.pause(D + 1)
    assert not session.behind(D + 2)


def test_lookahead_decision_at_clip_boundaries():
    session = live_session()
    assert session.wants_clip(0.0, in_flight=0)
    assert session.wants_clip(0.0, in_flight=1)  # the first clip and one beyond it
    assert not session.wants_clip(0.0, in_flight=2)
    session.clip_delivered(session.plan_next_clip(), 0.0)
    session.clip_delivered(session.plan_next_clip(), 1.0)
    assert not session.wants_clip(1.0)  # clip 1 is ready while clip 0 plays
    assert session.wants_clip(D + 0.01)  # clip 1 started playing: time for clip 2
    assert not session.wants_clip(D + 0.01, in_flight=1)
    with pytest.raises(ValueError, match="in_flight"):
        session.wants_clip(D + 0.02, in_flight=-1)


def test_failed_clip_is_retried_with_the_same_plan_before_anything_new():
    session = live_session()
    first, second = plans(session, 2)
    session.queue_prompt(Prompt("jazz"))
    session.clip_failed(first)
    assert session.wants_clip(0.0, in_flight=5)
    retry = session.plan_next_clip()
    assert retry.attempt == 2
    assert (retry.seq, retry.stream_time, retry.alpha, retry.start) == (0, 0.0, first.alpha, first.start)
    assert session.plan_next_clip().end.prompt == "jazz"  # the queue waited for the retry
    session.clip_delivered(second, 1.0)
    assert session.generated_until == 0.0  # clip 1 cannot play before clip 0 exists
    session.clip_delivered(retry, 2.0)
    assert session.generated_until == pytest.approx(2 * D)


def test_timing_follows_the_length_of_the_clips_produced():
    session = live_session()  # expects 5.12 s clips until one has been made
    first = session.plan_next_clip()
    assert (first.stream_time, first.duration) == (0.0, D)
    session.clip_delivered(first, 0.0, duration=7.68)  # a 768-column seed image
    second = session.plan_next_clip()
    assert (second.stream_time, second.duration) == pytest.approx((7.68, 7.68))
    session.clip_delivered(second, 1.0, duration=2.56)
    assert session.generated_until == pytest.approx(10.24)
    assert session.plan_next_clip().stream_time == pytest.approx(10.24)
    # clip 0 plays until 7.68: nothing more is wanted before then, clip 1 then plays until 10.24
    assert not session.wants_clip(7.0, in_flight=0)
    assert session.wants_clip(7.7, in_flight=0) and not session.wants_clip(7.7, in_flight=1)
    assert not session.behind(10.0) and session.behind(10.3)
    with pytest.raises(ValueError, match="duration"):
        session.clip_delivered(session.plan_next_clip(), 11.0, duration=0.0)


def test_deliveries_must_match_a_plan_in_flight():
    session = live_session()
    plan = session.plan_next_clip()
    session.clip_delivered(plan, 0.0)
    with pytest.raises(ValueError, match="not in flight"):
        session.clip_delivered(plan, 1.0)
    with pytest.raises(ValueError, match="not in flight"):
        session.clip_failed(plan)


def test_time_must_not_go_backwards_or_be_nan():
    session = live_session()
    session.wants_clip(10.0)
    with pytest.raises(ValueError, match="backwards"):
        session.wants_clip(9.0)
    with pytest.raises(ValueError, match="finite"):
        session.position(float("nan"))


# -- state frames ----------------------------------------------------------------------------------


def test_state_is_reported_only_when_it_changes():
    session = JamSession()
    assert session.state_if_changed(0.0) == StateSnapshot(listeners=0, up_next=(), paused=False, behind=False)
    assert session.state_if_changed(0.1) is None
    session.set_listeners(3)
    assert session.state_if_changed(0.2).listeners == 3
    session.queue_prompt(Prompt("jazz"))
    assert session.state_if_changed(0.3).up_next == ("jazz",)
    first = session.plan_next_clip()
    assert session.state_if_changed(0.4).up_next == ()
    session.clip_delivered(first, 1.0)
    session.plan_next_clip()
    assert session.state_if_changed(1.0 + D / 2) is None
    assert session.state_if_changed(1.0 + D + 0.1).behind  # time alone can change "behind"
    session.pause(8.0)
    snapshot = session.state_if_changed(8.0)
    assert snapshot.paused and not snapshot.behind
    assert session.state_if_changed(9.0) is None
