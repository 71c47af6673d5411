import dataclasses

import pytest

from pipeline.audio.params import ExifTag, SpectrogramParams


def test_defaults_match_the_original_geometry():
    params = SpectrogramParams()
    assert (params.hop_length, params.win_length, params.n_fft) == (441, 4410, 17640)
    assert params.clip_samples() == 512 * 441
    assert params.clip_samples(256) == 256 * 441
    assert params.num_channels == 1 and SpectrogramParams(stereo=True).num_channels == 2


def test_exif_uses_original_tag_numbers():
    exif = SpectrogramParams(stereo=True, max_frequency=8000).to_exif()
    assert exif[11000] == 44100
    assert exif[11005] == 1
    assert exif[11010] == 10 and exif[11020] == 100 and exif[11030] == 400
    assert exif[11040] == 512 and exif[11050] == 0 and exif[11060] == 8000
    assert exif[11070] == pytest.approx(0.25) and exif[11080] == pytest.approx(30e6)
    assert set(exif) == {int(tag) for tag in ExifTag}


def test_exif_round_trip_and_partial_tags():
    params = SpectrogramParams(stereo=True, num_frequencies=256, max_frequency=12000, power_for_image=0.5)
    assert SpectrogramParams.from_exif(params.to_exif()) == dataclasses.replace(params)
    # Missing tags keep defaults, unknown tags are ignored, EXIF rationals/strings of numbers are accepted.
    assert SpectrogramParams.from_exif({11040: "256", 999: "junk"}).num_frequencies == 256
    assert SpectrogramParams.from_exif({}) == SpectrogramParams()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sample_rate", 0),
        ("step_size_ms", -10),
        ("window_duration_ms", 500),  # longer than the padded FFT
        ("num_frequencies", 0),
        ("min_frequency", -1),
        ("max_frequency", 30000),  # above Nyquist
        ("power_for_image", 0.0),
        ("max_value", float("nan")),
        ("num_griffin_lim_iters", -1),
        ("stereo", "yes"),
        ("sample_rate", "44100"),
    ],
)
def test_nonsense_values_raise_value_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SpectrogramParams(**{field: value})


def test_bad_exif_value_names_the_tag():
    with pytest.raises(ValueError, match="11000"):
        SpectrogramParams.from_exif({11000: "fast"})
