"""Stationary spectral lines in recordings: find them, take them out of training targets.

Many speech recordings carry a constant whine from the recording chain: a CRT's 15.625 kHz line
frequency, a monitor's or a USB interface's tone near 16, 19 or 20 kHz. It is quiet, but it sits in
the 12-24 kHz band a 48 kHz decoder exists to add, and it is the most predictable thing there: a
decoder fine-tuned on such targets learns to play the tone under every output, held-out speech
included (measured: see docs/quality.md). ``find_lines`` finds the lines of one signal: bins of its
time-averaged spectrum that stand ``threshold_db`` above the running median; ``remove_lines``
attenuates exactly those bins (and their window's main lobe) in every STFT frame down to the median
level, leaving the rest of the signal as it was (STFT round trip, ~-100 dB error).
"""

from __future__ import annotations

import numpy as np
import torch

N_FFT, HOP = 4096, 1024


def _spectrum(x: torch.Tensor, n_fft: int = N_FFT) -> torch.Tensor:
    window = torch.hann_window(n_fft, dtype=torch.float64)
    return torch.stft(x.double(), n_fft, n_fft // 4, window=window, return_complex=True)  # (bins, frames)


def _excess(spec: torch.Tensor, rate: int, median_hz: float) -> torch.Tensor:
    """(bins, frames) STFT -> (bins,) time-averaged level minus its running median over ``median_hz``, dB."""
    return power_excess_db(spec.abs().pow(2).mean(1), rate, median_hz)


def power_excess_db(power: torch.Tensor, rate: int, median_hz: float = 1000.0) -> torch.Tensor:
    """(bins,) a power spectrum (0 .. rate/2, e.g. a corpus average) -> its level in dB minus the level's
    running median over ``median_hz``: how far each bin stands out."""
    level = 10 * torch.log10(power.double() + 1e-20)
    half = max(1, int(median_hz / (rate / (2 * (power.shape[0] - 1))) / 2))
    padded = torch.nn.functional.pad(level[None, None], (half, half), mode="replicate")[0, 0]
    return level - padded.unfold(0, 2 * half + 1, 1).median(-1).values


def mean_power(x, n_fft: int = N_FFT) -> torch.Tensor:
    """(n_fft/2 + 1,) time-averaged power spectrum of mono ``x`` (hann window, hop n_fft/4), float64."""
    return _spectrum(torch.as_tensor(np.asarray(x, dtype=np.float32)), n_fft).abs().pow(2).mean(1)


def excess_db(x, rate: int, n_fft: int = N_FFT, median_hz: float = 1000.0) -> torch.Tensor:
    """(n_fft/2 + 1,) how far each bin of mono ``x``'s time-averaged spectrum stands above the running
    median over ``median_hz`` (dB): a stationary line stands out, a smooth band does not."""
    return power_excess_db(mean_power(x, n_fft), rate, median_hz)


def find_lines(x, rate: int, low_hz: float = 12000.0, threshold_db: float = 6.0,
               median_hz: float = 1000.0) -> list[tuple[float, float]]:
    """[(frequency Hz, prominence dB)] of the stationary lines of mono ``x`` above ``low_hz``,
    strongest first: local maxima of the time-averaged spectrum ``threshold_db`` over its running
    median. Empty for a signal shorter than one FFT frame."""
    x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    if len(x) < N_FFT:
        return []
    excess = _excess(_spectrum(x), rate, median_hz)
    hz = rate / N_FFT
    peaks = []
    for k in range(max(1, int(low_hz / hz)), len(excess) - 1):
        e = excess[k].item()
        if e >= threshold_db and e >= excess[k - 1].item() and e > excess[k + 1].item():
            peaks.append((k * hz, e))
    return sorted(peaks, key=lambda p: -p[1])


def remove_lines(x, rate: int, low_hz: float = 12000.0, threshold_db: float = 6.0,
                 median_hz: float = 1000.0, lobe_bins: int = 3, passes: int = 3
                 ) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """-> (``x`` with its stationary lines above ``low_hz`` attenuated to the running median, the lines
    found in the first pass). Each line's bin and ``lobe_bins`` on either side are scaled by the same
    factor in every frame (a filter: the hann window spreads a tone over +-2 bins, more when it lies
    between bins). Up to ``passes`` passes: a strong line's side lobes and a weaker line beside it
    show only once it is gone. Returns ``x`` unchanged when none is found."""
    x = np.asarray(x, dtype=np.float32)
    first: list[tuple[float, float]] = []
    for _ in range(passes):
        x, lines = _remove_once(x, rate, low_hz, threshold_db, median_hz, lobe_bins)
        first = first or lines
        if not lines:
            break
    return x, first


def _remove_once(x: np.ndarray, rate: int, low_hz: float, threshold_db: float, median_hz: float,
                 lobe_bins: int) -> tuple[np.ndarray, list[tuple[float, float]]]:
    lines = find_lines(x, rate, low_hz, threshold_db, median_hz)
    if not lines:
        return x, []
    t = torch.as_tensor(x)
    spec = _spectrum(t)
    excess = _excess(spec, rate, median_hz)
    hz = rate / N_FFT
    gain = torch.ones(spec.shape[0], dtype=torch.float64)
    for f, _ in lines:
        k = int(round(f / hz))
        lo, hi = max(0, k - lobe_bins), min(len(gain), k + lobe_bins + 1)
        gain[lo:hi] = torch.minimum(gain[lo:hi], 10 ** (-excess[lo:hi].clamp_min(0) / 20))
    window = torch.hann_window(N_FFT, dtype=torch.float64)
    y = torch.istft(spec * gain[:, None], N_FFT, HOP, window=window, length=len(t))
    return y.float().numpy(), lines
