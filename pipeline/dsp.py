"""Audio <-> mel spectrogram, batched in torch on any device.

Forward: centred STFT magnitude (periodic Hann window, zero padded to n_fft) -> HTK mel bank, exactly the
original riffusion analysis. Magnitudes are in the original's units (int16 full scale), so mel values,
images and their EXIF max values are interchangeable with images made by the original.

Inverse: the original ran a least-squares inverse mel and 32
Griffin-Lim iterations at n_fft 17640. The window is only 4410 samples long, and zero padding a frame to
17640 points merely interpolates its spectrum: every 4th bin of the padded spectrum *is* the 4410-point
spectrum. So we invert the mel bank onto that coarse grid with a precomputed non-negative inverse, start
the phase from integrated instantaneous frequencies, and run fast Griffin-Lim with 4x smaller FFTs.
"""

from __future__ import annotations

import math

import torch

from pipeline.params import SpectrogramParams

# Original riffusion analysed int16 samples; we take float PCM in [-1, 1] and scale to match it.
PCM_SCALE = 32768.0
# Fast Griffin-Lim iterations after the phase-gradient start (measured in benchmarks/bench_dsp.py).
FAST_ITERATIONS = 20
FAST_GRIFFIN_LIM_MOMENTUM = 0.9
# Multiplicative NNLS updates after the ridge inverse of the mel bank.
MEL_FIT_ITERATIONS = 2
RIDGE = 1e-3


def hz_to_mel(frequency_hz: torch.Tensor) -> torch.Tensor:
    """HTK mel scale."""
    return 2595.0 * torch.log10(1.0 + frequency_hz / 700.0)


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filter_bank(params: SpectrogramParams, n_fft: int | None = None) -> torch.Tensor:
    """Triangular HTK mel filters without normalisation, shape (n_fft // 2 + 1, num_frequencies).

    `n_fft` defaults to the params' padded FFT size; other sizes give the same filters sampled on
    another frequency grid (used to invert onto the unpadded spectrum).
    """
    n_fft = params.n_fft if n_fft is None else n_fft
    bin_hz = torch.linspace(0.0, params.sample_rate / 2.0, n_fft // 2 + 1, dtype=torch.float64)
    mel_edges = torch.linspace(
        hz_to_mel(torch.tensor(float(params.min_frequency), dtype=torch.float64)).item(),
        hz_to_mel(torch.tensor(float(params.max_frequency), dtype=torch.float64)).item(),
        params.num_frequencies + 2,
        dtype=torch.float64,
    )
    edges_hz = mel_to_hz(mel_edges)
    widths = edges_hz[1:] - edges_hz[:-1]
    distance = edges_hz[:, None] - bin_hz[None, :]  # (num_frequencies + 2, bins)
    rising = -distance[:-2] / widths[:-1, None]
    falling = distance[2:] / widths[1:, None]
    weights = torch.clamp(torch.minimum(rising, falling), min=0.0)
    return weights.T.to(torch.float32).contiguous()


def coarse_mel_filter_bank(params: SpectrogramParams, n_fft: int, fine: torch.Tensor | None = None) -> torch.Tensor:
    """The mel bank seen from a coarser FFT grid, (n_fft // 2 + 1, num_frequencies).

    Padded-spectrum magnitudes between two coarse bins are close to the linear interpolation of the
    coarse magnitudes, so each fine filter row is split between its two neighbouring coarse bins.
    """
    fine = (mel_filter_bank(params) if fine is None else fine).to(torch.float64)
    position = torch.arange(fine.shape[0], dtype=torch.float64) * n_fft / params.n_fft
    lower = position.floor().to(torch.int64)
    upper_weight = (position - lower)[:, None]
    bins = n_fft // 2 + 1
    coarse = torch.zeros(bins + 1, fine.shape[1], dtype=torch.float64)
    coarse.index_add_(0, lower, fine * (1.0 - upper_weight))
    coarse.index_add_(0, lower + 1, fine * upper_weight)
    return coarse[:bins].to(torch.float32)


class FrameGrid:
    """A centred STFT with its own framing, so Griffin-Lim iterations skip torch.stft's overheads.

    Spectra are laid out (batch, frames, bins): the layout FFTs want, transposed only at the ends.
    """

    def __init__(self, n_fft: int, hop_length: int, win_length: int, device: torch.device) -> None:
        if win_length != n_fft:
            raise ValueError(f"FrameGrid needs win_length == n_fft, got {win_length} and {n_fft}")
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.window = torch.hann_window(n_fft, periodic=True, dtype=torch.float32, device=device)
        self._envelopes: dict[int, torch.Tensor] = {}

    def stft(self, audio: torch.Tensor, frames: int) -> torch.Tensor:
        """(batch, samples) -> (batch, frames, bins), reflect padded like torch.stft(center=True)."""
        half = self.n_fft // 2
        padded = torch.nn.functional.pad(audio[:, None, :], (half, half), mode="reflect")[:, 0]
        framed = padded.unfold(-1, self.n_fft, self.hop_length)[:, :frames]
        return torch.fft.rfft(framed * self.window, dim=-1)

    def istft(self, spectrum: torch.Tensor, length: int) -> torch.Tensor:
        """(batch, frames, bins) -> (batch, length) by windowed overlap-add (least-squares inverse)."""
        frames = spectrum.shape[1]
        pieces = torch.fft.irfft(spectrum, n=self.n_fft, dim=-1) * self.window
        total = (frames - 1) * self.hop_length + self.n_fft
        audio = torch.nn.functional.fold(
            pieces.transpose(1, 2),
            output_size=(1, total),
            kernel_size=(1, self.n_fft),
            stride=(1, self.hop_length),
        )[:, 0, 0]
        audio = audio / self._envelope(frames)
        half = self.n_fft // 2
        audio = audio[:, half : half + length]
        if audio.shape[-1] < length:
            audio = torch.nn.functional.pad(audio, (0, length - audio.shape[-1]))
        return audio

    def _envelope(self, frames: int) -> torch.Tensor:
        if frames not in self._envelopes:
            squares = (self.window**2)[None, :, None].expand(1, self.n_fft, frames)
            total = (frames - 1) * self.hop_length + self.n_fft
            envelope = torch.nn.functional.fold(
                squares, output_size=(1, total), kernel_size=(1, self.n_fft), stride=(1, self.hop_length)
            )[0, 0, 0]
            self._envelopes[frames] = envelope.clamp(min=1e-3 * float(envelope.max()))
        return self._envelopes[frames]


def phase_from_magnitude_gradient(magnitude: torch.Tensor, grid: FrameGrid) -> torch.Tensor:
    """A phase start from the magnitude alone, (batch, bins, frames) -> unit complex (batch, frames, bins).

    Phase-gradient reconstruction without the heap: the log-magnitude slopes give each bin's
    instantaneous frequency and each frame's group delay (Gaussian-window relations, Hann's
    gamma = 0.25645 * L^2). Spectral peaks follow their instantaneous frequency through time; every
    other bin takes its peak's phase plus the group delay integrated across frequency, which keeps
    partials and onsets coherent, so Griffin-Lim starts close to a consistent spectrogram.
    """
    batch, bins, frames = magnitude.shape
    device = magnitude.device
    hop, n_fft = grid.hop_length, grid.n_fft
    gamma = 0.25645 * n_fft**2
    log_mag = torch.log(magnitude + 1e-6 * magnitude.amax(dim=(-2, -1), keepdim=True) + 1e-30)
    d_freq = torch.zeros_like(log_mag)
    d_freq[:, 1:-1] = (log_mag[:, 2:] - log_mag[:, :-2]) / 2
    d_time = torch.zeros_like(log_mag)
    d_time[:, :, 1:-1] = (log_mag[:, :, 2:] - log_mag[:, :, :-2]) / 2

    # Time direction: bin-centre advance (exact, integer arithmetic) + the slope correction.
    bin_index = torch.arange(bins, device=device)
    frame_index = torch.arange(frames, device=device)
    cycles = (bin_index[:, None] * frame_index[None, :] * hop) % n_fft
    centre_phase = 2 * math.pi * cycles.to(torch.float32) / n_fft
    correction = hop * n_fft / gamma * d_freq
    steps = (correction[..., 1:] + correction[..., :-1]) / 2
    time_phase = centre_phase + torch.nn.functional.pad(torch.cumsum(steps, dim=-1), (1, 0))

    # Frequency direction: group delay, plus pi per bin because frames are referenced at their start.
    delay = -gamma / (hop * n_fft) * d_time
    steps = (delay[:, 1:] + delay[:, :-1]) / 2
    freq_phase = torch.nn.functional.pad(torch.cumsum(steps, dim=1), (0, 0, 1, 0)) - math.pi * bin_index[:, None]

    peak = _peak_of_region(magnitude)
    phase = torch.gather(time_phase, 1, peak) + freq_phase - torch.gather(freq_phase, 1, peak)
    return torch.polar(torch.ones_like(phase), phase).transpose(1, 2).contiguous()


def _peak_of_region(magnitude: torch.Tensor) -> torch.Tensor:
    """For every cell, the bin index of the spectral peak between the two minima around it."""
    batch, bins, frames = magnitude.shape
    is_minimum = torch.zeros_like(magnitude, dtype=torch.bool)
    is_minimum[:, 1:-1] = (magnitude[:, 1:-1] <= magnitude[:, :-2]) & (magnitude[:, 1:-1] < magnitude[:, 2:])
    region = torch.cumsum(is_minimum.to(torch.int64), dim=1)
    column = torch.arange(batch * frames, device=magnitude.device).reshape(batch, 1, frames)
    region_id = (region + column * (bins + 1)).reshape(-1)
    values = magnitude.reshape(-1)
    slots = batch * frames * (bins + 1)
    region_max = torch.zeros(slots, device=magnitude.device).scatter_reduce(
        0, region_id, values, "amax", include_self=False
    )
    at_peak = values >= region_max[region_id]
    bin_of = torch.arange(bins, device=magnitude.device)[None, :, None].expand(batch, bins, frames).reshape(-1)
    peak_bin = torch.zeros(slots, dtype=torch.int64, device=magnitude.device).scatter_reduce(
        0, region_id[at_peak], bin_of[at_peak], "amax", include_self=False
    )
    return peak_bin[region_id].reshape(batch, bins, frames)


def fast_griffin_lim(
    magnitude: torch.Tensor, phase: torch.Tensor, grid: FrameGrid, iterations: int
) -> torch.Tensor:
    """Fast Griffin-Lim (Perraudin et al.): projections with momentum; returns (batch, frames, bins).

    `magnitude` is (batch, bins, frames), `phase` unit complex (batch, frames, bins).
    """
    target = magnitude.transpose(1, 2).contiguous()
    frames = target.shape[1]
    length = frames * grid.hop_length
    estimate = target * phase
    previous: torch.Tensor | None = None
    for _ in range(iterations):
        rebuilt = grid.stft(grid.istft(estimate, length), frames)
        projected = target * torch.sgn(rebuilt)
        estimate = projected if previous is None else projected + FAST_GRIFFIN_LIM_MOMENTUM * (projected - previous)
        previous = projected
    return target * torch.sgn(estimate)


class SpectrogramConverter:
    """Converts between PCM and mel spectrograms for one set of parameters on one device.

    Filter banks and their inverses are built once here, so converting a clip costs only FFTs and
    small matrix products.
    """

    def __init__(self, params: SpectrogramParams, device: str | torch.device = "cpu") -> None:
        self.params = params
        self.device = torch.device(device)
        self.window = torch.hann_window(params.win_length, periodic=True, dtype=torch.float32, device=self.device)
        bank = mel_filter_bank(params)
        # Filters are zero above max_frequency: skip those bins in every product.
        self._used_bins = int(torch.nonzero(bank.sum(dim=1)).max().item()) + 1
        self.mel_bank = bank[: self._used_bins].to(self.device)
        # Inversion works on the unpadded (win_length) spectrum: 4x smaller FFTs, same information.
        self._grid = FrameGrid(params.win_length, params.hop_length, params.win_length, self.device)
        coarse = coarse_mel_filter_bank(params, params.win_length, bank).to(torch.float64)
        coarse_used = int(torch.nonzero(coarse.sum(dim=1)).max().item()) + 1
        coarse = coarse[:coarse_used]
        gram = coarse.T @ coarse
        ridge = RIDGE * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=torch.float64)
        self._mel_inverse = (coarse @ torch.linalg.inv(gram + ridge)).to(torch.float32).to(self.device)
        self._coarse_bank = coarse.to(torch.float32).to(self.device)

    # ------------------------------------------------------------------ forward
    def stft_magnitude(self, audio: torch.Tensor) -> torch.Tensor:
        """|STFT| of (..., samples) float PCM -> (..., n_fft // 2 + 1, samples // hop), original units."""
        audio = self._as_audio(audio)
        p = self.params
        minimum = p.n_fft // 2 + 1
        if audio.shape[-1] < minimum:
            raise ValueError(f"audio must have at least {minimum} samples for n_fft {p.n_fft}, got {audio.shape[-1]}")
        leading = audio.shape[:-1]
        spectrum = torch.stft(
            audio.reshape(-1, audio.shape[-1]) * PCM_SCALE,
            n_fft=p.n_fft,
            hop_length=p.hop_length,
            win_length=p.win_length,
            window=self.window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )
        frames = audio.shape[-1] // p.hop_length
        magnitude = spectrum[..., :frames].abs()
        return magnitude.reshape(*leading, *magnitude.shape[-2:])

    def mel_from_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """(..., samples) PCM in [-1, 1] -> (..., num_frequencies, samples // hop) mel magnitudes."""
        magnitude = self.stft_magnitude(audio)[..., : self._used_bins, :]
        return torch.matmul(self.mel_bank.T, magnitude)

    # ------------------------------------------------------------------ inverse
    def audio_from_mel(
        self,
        mel: torch.Tensor,
        *,
        iterations: int | None = None,
        initial_phase: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(..., num_frequencies, frames) mel -> (..., frames * hop) float PCM (not loudness normalised).

        `iterations` defaults to FAST_ITERATIONS (not params.num_griffin_lim_iters: the better start
        needs far fewer). `initial_phase` (..., win_length // 2 + 1, frames), radians or unit complex,
        replaces the phase-gradient start, e.g. to continue from a previous clip.
        """
        mel = self._as_mel(mel)
        iterations = FAST_ITERATIONS if iterations is None else int(iterations)
        if iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {iterations}")
        leading, frames = mel.shape[:-2], mel.shape[-1]
        if frames == 0:
            return torch.zeros(*leading, 0, device=self.device)
        magnitude = self.linear_from_mel(mel.reshape(-1, *mel.shape[-2:]))  # (batch, bins, frames)
        if initial_phase is None:
            phase = phase_from_magnitude_gradient(magnitude, self._grid)
        else:
            phase = self._as_phase(initial_phase, magnitude.shape)
        spectrum = fast_griffin_lim(magnitude, phase, self._grid, iterations)
        audio = self._grid.istft(spectrum, frames * self.params.hop_length) / PCM_SCALE
        return audio.reshape(*leading, audio.shape[-1])

    def linear_from_mel(self, mel: torch.Tensor) -> torch.Tensor:
        """Non-negative (..., win_length // 2 + 1, frames) magnitudes whose mel is close to `mel`.

        A clipped ridge inverse gives the start, then multiplicative NNLS updates (which keep values
        non-negative) pull the fit closer. Bins above max_frequency stay zero.
        """
        mel = mel.clamp(min=0)
        estimate = torch.matmul(self._mel_inverse, mel).clamp(min=0)
        target = torch.matmul(self._coarse_bank, mel)
        tiny = torch.finfo(mel.dtype).tiny
        for _ in range(MEL_FIT_ITERATIONS):
            fitted = torch.matmul(self._coarse_bank, torch.matmul(self._coarse_bank.T, estimate))
            estimate = estimate * target / (fitted + tiny)
        bins = self._grid.n_fft // 2 + 1
        padding = torch.zeros(*mel.shape[:-2], bins - estimate.shape[-2], mel.shape[-1], device=mel.device)
        return torch.cat([estimate, padding], dim=-2)

    # ------------------------------------------------------------------ helpers
    def _as_phase(self, phase: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        phase = torch.as_tensor(phase, device=self.device)
        if not phase.is_complex():
            phase = torch.polar(torch.ones_like(phase, dtype=torch.float32), phase.to(torch.float32))
        phase = phase.to(torch.complex64)
        try:
            return phase.reshape(shape).transpose(1, 2).contiguous()
        except RuntimeError:
            raise ValueError(f"initial_phase must have {tuple(shape[-2:])} per clip, got {tuple(phase.shape)}") from None

    def _as_audio(self, audio: torch.Tensor) -> torch.Tensor:
        if not isinstance(audio, torch.Tensor):
            raise ValueError(f"audio must be a torch.Tensor, got {type(audio).__name__}")
        if audio.ndim < 1:
            raise ValueError("audio must have a samples dimension, got a scalar")
        if not audio.is_floating_point():
            raise ValueError(f"audio must be floating point PCM in [-1, 1], got dtype {audio.dtype}")
        return audio.to(device=self.device, dtype=torch.float32)

    def _as_mel(self, mel: torch.Tensor) -> torch.Tensor:
        if not isinstance(mel, torch.Tensor):
            raise ValueError(f"mel must be a torch.Tensor, got {type(mel).__name__}")
        if mel.ndim < 2 or mel.shape[-2] != self.params.num_frequencies:
            raise ValueError(
                f"mel must be shaped (..., {self.params.num_frequencies}, frames), got {tuple(mel.shape)}"
            )
        return mel.to(device=self.device, dtype=torch.float32)
