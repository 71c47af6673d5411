"""A room's settings: the original app's defaults, refusals naming the field, caps lowering the defaults."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from jamserver.jam.session import JamSession
from jamserver.jam.settings import Settings, fit_settings
from jamserver.jam.validation import StepLimits, denoising_steps


def test_default_settings_match_the_original_app_with_cut_ins_on():
    assert asdict(Settings()) == {"seed_image_id": "og_beat", "mask_image_id": None, "num_inference_steps": 50,
                                  "alpha_velocity": 0.25, "denoising": 0.75, "guidance": 7.0, "open_jam": False,
                                  "cut_in": True}


@pytest.mark.parametrize("changes, field", [
    ({"num_inference_steps": 0}, "num_inference_steps"),
    ({"alpha_velocity": 0.0}, "alpha_velocity"),
    ({"denoising": float("nan")}, "denoising"),
    ({"guidance": 31}, "guidance"),
    ({"open_jam": "yes"}, "open_jam"),
    ({"seed_image_id": ""}, "seed_image_id"),
    ({"steps": 20}, "steps"),
])
def test_bad_settings_are_value_errors_naming_the_field(changes, field):
    session = JamSession()
    with pytest.raises(ValueError, match=field) as info:
        session.update_settings(**changes)
    assert info.value.field == field
    assert session.settings == Settings()


def test_the_servers_caps_lower_the_default_steps_and_keep_the_rest():
    wanted = Settings(num_inference_steps=50, denoising=1.0, guidance=9.0)
    fitted = fit_settings(wanted, StepLimits(max_steps=40, max_denoising_steps=24))
    assert fitted.num_inference_steps == 24  # 40 steps x denoising 1.0 would still run 40
    assert denoising_steps(fitted.num_inference_steps, fitted.denoising) <= 24
    assert (fitted.denoising, fitted.guidance) == (1.0, 9.0)
    assert fit_settings(Settings(), StepLimits()) == Settings()  # within the caps nothing changes


def test_a_session_starts_from_its_fitted_defaults():
    session = JamSession(Settings(num_inference_steps=50), limits=StepLimits(max_steps=20, max_denoising_steps=20))
    assert session.settings.num_inference_steps == 20
    assert session.plan_next_clip().num_inference_steps == 20
