import numpy as np
import pytest
import torch

from pipeline.dsp import SpectrogramConverter, mel_filter_bank
from pipeline.params import SpectrogramParams

SAMPLE_RATE = 44100
CLIP = 512 * 441


def chords_and_clicks(seconds: float = 5.12, seed: int = 0) -> np.ndarray:
    """A test clip with both partials (chords) and transients (noise bursts)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    audio = np.zeros_like(t)
    for index, root in enumerate((220.0, 196.0, 174.6, 261.6)):
        segment = (t >= index * 1.28) & (t < (index + 1) * 1.28)
        local = t[segment] - index * 1.28
        for ratio in (1.0, 1.26, 1.5):
            audio[segment] += 0.2 * np.sin(2 * np.pi * root * ratio * local) * np.exp(-local)
    for onset in np.arange(0.0, seconds, 0.32):
        start = int(onset * SAMPLE_RATE)
        burst = rng.standard_normal(2000) * np.exp(-np.arange(2000) / 300)
        audio[start : start + 2000] += 0.3 * burst[: len(audio[start : start + 2000])]
    return (0.8 * audio / np.abs(audio).max()).astype(np.float32)


def spectral_convergence(converter: SpectrogramConverter, audio: torch.Tensor, target: torch.Tensor) -> float:
    """|| g * mel(audio) - target || / || target || with the best scalar gain g."""
    mel = converter.mel_from_audio(audio)
    gain = (mel * target).sum() / (mel * mel).sum()
    return float((gain * mel - target).norm() / target.norm())


@pytest.fixture(scope="module")
def converter() -> SpectrogramConverter:
    return SpectrogramConverter(SpectrogramParams())


@pytest.fixture(scope="module")
def clip() -> torch.Tensor:
    return torch.from_numpy(chords_and_clicks())


def test_mel_filter_bank_equals_librosa_htk_without_norm():
    from librosa.filters import mel

    expected = mel(sr=44100, n_fft=17640, n_mels=512, fmin=0, fmax=10000, htk=True, norm=None).T
    bank = mel_filter_bank(SpectrogramParams()).numpy()
    assert bank.shape == (8821, 512)
    np.testing.assert_allclose(bank, expected, atol=1e-6)


def test_forward_matches_a_plain_torch_stft_and_has_512_frames(converter, clip):
    mel = converter.mel_from_audio(clip)
    assert mel.shape == (512, 512)
    window = torch.hann_window(4410, periodic=True)
    spectrum = torch.stft(clip * 32768, 17640, 441, 4410, window, center=True, pad_mode="reflect", return_complex=True)
    expected = mel_filter_bank(SpectrogramParams()).T @ spectrum.abs()[:, :512]
    torch.testing.assert_close(mel, expected, rtol=1e-4, atol=1e-3 * float(expected.max()))


def test_loud_tone_lands_in_the_right_mel_row(converter):
    t = torch.arange(CLIP) / SAMPLE_RATE
    mel = converter.mel_from_audio(0.5 * torch.sin(2 * torch.pi * 1000.0 * t))
    expected_row = int(np.argmax(mel_filter_bank(SpectrogramParams())[400].numpy()))  # 1000 Hz = fine bin 400
    assert abs(int(mel.mean(dim=-1).argmax()) - expected_row) <= 1


def test_batched_forward_and_inverse_equal_one_by_one(converter, clip):
    other = torch.roll(clip, 12345) * 0.5
    batch = torch.stack([clip, other])[:, None]  # (2, 1, samples): any leading dims
    mel = converter.mel_from_audio(batch)
    assert mel.shape == (2, 1, 512, 512)
    torch.testing.assert_close(mel[1, 0], converter.mel_from_audio(other), rtol=1e-4, atol=1e-2)
    audio = converter.audio_from_mel(mel, iterations=3)
    assert audio.shape == (2, 1, CLIP)
    single = converter.audio_from_mel(mel[1, 0], iterations=3)
    torch.testing.assert_close(audio[1, 0], single, rtol=1e-3, atol=1e-4)


def test_inverse_reaches_the_original_quality_bound(converter, clip):
    target = converter.mel_from_audio(clip)
    audio = converter.audio_from_mel(target)
    assert audio.shape == (CLIP,) and audio.dtype == torch.float32
    # The original method (lstsq + 32 Griffin-Lim iterations) measures about 0.07 on such clips.
    assert spectral_convergence(converter, audio, target) < 0.085
    # Output is float PCM at the input's scale.
    assert 0.3 < float(audio.abs().max()) < 1.5


def test_more_iterations_improve_and_initial_phase_is_used(converter, clip):
    target = converter.mel_from_audio(clip)
    rough = spectral_convergence(converter, converter.audio_from_mel(target, iterations=0), target)
    fine = spectral_convergence(converter, converter.audio_from_mel(target, iterations=8), target)
    assert fine < rough
    window = torch.hann_window(4410, periodic=True)
    true_phase = torch.stft(clip, 4410, 441, window=window, center=True, return_complex=True)[:, :512].angle()
    from_truth = converter.audio_from_mel(target, iterations=0, initial_phase=true_phase)
    assert spectral_convergence(converter, from_truth, target) < rough


def test_any_frame_count_and_bad_inputs(converter):
    audio = converter.audio_from_mel(torch.rand(512, 100) * 1e5, iterations=1)
    assert audio.shape == (100 * 441,)
    with pytest.raises(ValueError, match="mel"):
        converter.audio_from_mel(torch.rand(500, 10))
    with pytest.raises(ValueError, match="iterations"):
        converter.audio_from_mel(torch.rand(512, 10), iterations=-1)
    with pytest.raises(ValueError, match="audio"):
        converter.mel_from_audio(torch.zeros(100))
    with pytest.raises(ValueError, match="audio"):
        converter.mel_from_audio(np.zeros(CLIP))
