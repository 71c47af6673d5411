"""The server's cap on a clip's cost, and failed clips re-planned from the room's settings (pure)."""

from __future__ import annotations

import pytest

from jamserver.jam.prompt import Prompt
from jamserver.jam.session import MAX_ATTEMPTS, JamSession
from jamserver.jam.settings import Settings
from jamserver.jam.validation import ProtocolError, StepLimits, denoising_steps


def live_session(**kwargs) -> JamSession:
    session = JamSession(**kwargs)
    session.set_listeners(1)
    return session


def test_denoising_steps_follow_img2img():
    assert denoising_steps(50, 0.75) == 37
    assert denoising_steps(50, 0.001) == 1
    assert denoising_steps(1000, 1.0) == 1000


@pytest.mark.parametrize("changes, field, words", [
    ({"num_inference_steps": 999, "denoising": 1.0}, "num_inference_steps", "at most 50"),
    ({"num_inference_steps": 51}, "num_inference_steps", "at most 50"),
    ({"denoising": 1.0}, "denoising", "80 steps x denoising 1 = 80"),
])
def test_settings_above_the_caps_are_refused_naming_the_field(changes, field, words):
    session = JamSession(limits=StepLimits(max_steps=80 if "num_inference_steps" not in changes else 50,
                                           max_denoising_steps=60))
    if field == "denoising":
        session.update_settings(num_inference_steps=80, denoising=0.5)
    before = session.settings
    with pytest.raises(ProtocolError, match=words) as info:
        session.update_settings(**changes)
    assert info.value.field == field and info.value.code == "bad_field"
    assert session.settings == before


def test_a_prompt_whose_own_denoising_is_over_the_cap_is_refused():
    session = JamSession(limits=StepLimits(max_steps=60, max_denoising_steps=40))
    session.update_settings(denoising=0.5)
    session.queue_prompt(Prompt("fine", denoising=0.8))  # 50 x 0.8 = 40 steps
    with pytest.raises(ProtocolError, match="denoising") as info:
        session.queue_prompt(Prompt("too much", denoising=0.9))
    assert info.value.field == "denoising"
    with pytest.raises(ProtocolError, match="55 steps x denoising 0.8 = 44"):  # the queued prompt would run 44
        session.update_settings(num_inference_steps=55)


def test_defaults_are_fitted_to_low_caps():
    session = JamSession(limits=StepLimits(max_steps=20, max_denoising_steps=10))
    assert session.settings.num_inference_steps <= 20
    assert denoising_steps(session.settings.num_inference_steps, session.settings.denoising) <= 10


def test_a_failed_clip_is_re_planned_with_the_settings_of_the_moment():
    session = live_session()
    session.update_settings(num_inference_steps=40, seed_image_id="agile", denoising=0.9)
    failed = session.plan_next_clip()
    assert session.clip_failed(failed) is False
    session.update_settings(num_inference_steps=20, seed_image_id="og_beat", denoising=0.5)  # the host steps back
    again = session.plan_next_clip()
    assert (again.seq, again.attempt, again.alpha, again.start.prompt) == (0, 2, failed.alpha, failed.start.prompt)
    assert (again.num_inference_steps, again.seed_image_id, again.start.denoising) == (20, "og_beat", 0.5)


def test_a_prompt_with_its_own_denoising_keeps_it_when_re_planned():
    session = live_session()
    session.queue_prompt(Prompt("own", denoising=0.3))
    failed = session.plan_next_clip()
    session.clip_failed(failed)
    session.update_settings(denoising=0.6)
    assert session.plan_next_clip().start.denoising == 0.3


def test_repeated_failures_reset_the_settings_and_the_room_goes_on():
    session = live_session()
    session.update_settings(num_inference_steps=45, guidance=12.0, open_jam=True)
    plan = session.plan_next_clip()
    for attempt in range(1, MAX_ATTEMPTS + 1):
        assert plan.attempt == attempt
        reset = session.clip_failed(plan)
        plan = session.plan_next_clip()
    assert reset is True
    assert session.settings == Settings(open_jam=True)
    assert plan.num_inference_steps == Settings().num_inference_steps and plan.start.guidance == 7.0
    session.clip_delivered(plan, 0.0)
    assert session.plan_next_clip().seq == 1  # and on it goes
