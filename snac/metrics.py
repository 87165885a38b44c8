"""Objective metrics of decoded audio against a reference (evaluation, not training losses).

All functions take mono float arrays (numpy or torch, shape (T,)) of equal length at one sample
rate and return a Python float. Lower is better except for SI-SDR, PESQ and STOI.

- ``mel_distance``: mean |log10 mel(ref) - log10 mel(est)| over several resolutions.
- ``stft_distance``: multi-resolution STFT distance, spectral convergence + mean |log magnitude|
  difference, averaged over FFT sizes.
- ``si_sdr``: scale-invariant signal-to-distortion ratio in dB.
- ``band_lsd``: log-spectral distance (dB, RMS over bins, mean over frames) restricted to a band,
  by default the 12-24 kHz band that a 48 kHz decoder adds over a 24 kHz one.
- ``band_energy_db``: that band's energy in the estimate relative to the reference (dB; 0 is right,
  very negative is "muffled", positive is hiss or ringing).

``silence_db`` (mel distance, band LSD, band energy): frames of the reference quieter than its loudest
frame by more than this many dB are left out, so silence between words (where any decoder is near
right, and resampler leakage is as loud as the real band) does not dilute or dominate the figure.
- ``pesq_wb`` / ``stoi``: at 16 kHz through the optional packages ``pesq`` and ``pystoi``
  (``uv sync --extra eval``); None when the package is missing.

``all_metrics`` computes them all; a metric that fails on a signal (PESQ finds no utterance, ...)
is None there and its error is reported to the caller, who counts it: nothing is dropped silently.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torchaudio.functional as AF

EPS = 1e-5
MEL_RESOLUTIONS = ((2048, 512, 128), (512, 128, 80))  # (n_fft, hop, n_mels)
STFT_SIZES = (512, 1024, 2048, 4096)
BAND_N_FFT = 2048  # the band metrics' FFT (band_lsd, band_energy_db, band_share_db)


def min_samples() -> int:
    """Shortest signal every metric here can score: torch.stft pads n_fft // 2 on each side by
    reflection, which needs more samples than that at the largest FFT size used."""
    return max(*STFT_SIZES, *(n for n, _, _ in MEL_RESOLUTIONS), BAND_N_FFT) // 2 + 1


def _tensor(x) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(x, dtype=np.float32) if not isinstance(x, torch.Tensor) else x).float()
    if x.dim() != 1:
        raise ValueError(f"metrics take mono signals of shape (T,), got {tuple(x.shape)}")
    return x


def _pair(ref, est) -> tuple[torch.Tensor, torch.Tensor]:
    ref, est = _tensor(ref), _tensor(est)
    if ref.shape != est.shape:
        raise ValueError(f"reference and estimate lengths differ ({len(ref)} vs {len(est)}); trim them first")
    return ref, est


def _magnitude(x: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    window = torch.hann_window(n_fft)
    return torch.stft(x, n_fft, hop, window=window, return_complex=True).abs()  # (n_fft/2+1, frames)


@functools.lru_cache(maxsize=16)
def _mel_fbank(n_fft: int, n_mels: int, sample_rate: int) -> torch.Tensor:
    return AF.melscale_fbanks(n_fft // 2 + 1, 0.0, sample_rate / 2, n_mels, sample_rate,
                              norm="slaney", mel_scale="slaney")  # (freqs, n_mels)


def active_frames(ref_magnitude: torch.Tensor, silence_db: float | None) -> torch.Tensor:
    """(bins, frames) magnitude of the reference -> (frames,) bool: the frames whose energy is within
    ``silence_db`` dB of the loudest frame (all of them when ``silence_db`` is None; never none)."""
    energy = ref_magnitude.double().pow(2).sum(0)
    if silence_db is None:
        return torch.ones_like(energy, dtype=torch.bool)
    keep = energy >= energy.max() * 10 ** (-silence_db / 10)
    keep[energy.argmax()] = True  # a silent file still has one frame to score
    return keep


def mel_distance(ref, est, sample_rate: int, silence_db: float | None = None) -> float:
    """Mean absolute difference of log10 mel spectrograms, averaged over ``MEL_RESOLUTIONS``,
    over the reference's non-silent frames when ``silence_db`` is given."""
    ref, est = _pair(ref, est)
    total = 0.0
    for n_fft, hop, n_mels in MEL_RESOLUTIONS:
        fb = _mel_fbank(n_fft, n_mels, sample_rate)
        sr = _magnitude(ref, n_fft, hop)
        keep = active_frames(sr, silence_db)
        mr = (sr.T @ fb).clamp_min(EPS).log10()[keep]  # (frames kept, n_mels)
        me = (_magnitude(est, n_fft, hop).T @ fb).clamp_min(EPS).log10()[keep]
        total += (mr - me).abs().mean().item()
    return total / len(MEL_RESOLUTIONS)


def stft_distance(ref, est, sizes: tuple[int, ...] = STFT_SIZES) -> float:
    """Spectral convergence + mean |log10 magnitude difference|, averaged over FFT sizes (hop n/4)."""
    ref, est = _pair(ref, est)
    total = 0.0
    for n_fft in sizes:
        mr, me = _magnitude(ref, n_fft, n_fft // 4), _magnitude(est, n_fft, n_fft // 4)
        sc = torch.linalg.norm(mr - me) / torch.linalg.norm(mr).clamp_min(EPS)
        log = (mr.clamp_min(EPS).log10() - me.clamp_min(EPS).log10()).abs().mean()
        total += (sc + log).item()
    return total / len(sizes)


def si_sdr(ref, est) -> float:
    """Scale-invariant SDR in dB (both signals made zero-mean)."""
    ref, est = _pair(ref, est)
    ref, est = ref.double() - ref.double().mean(), est.double() - est.double().mean()
    energy = ref.pow(2).sum()
    if energy <= 0:
        return float("nan")
    target = (est @ ref) / energy * ref
    noise = est - target
    return (10 * torch.log10(target.pow(2).sum().clamp_min(1e-20) / noise.pow(2).sum().clamp_min(1e-20))).item()


def _band_powers(ref, est, sample_rate: int, low_hz: float, high_hz: float | None, n_fft: int,
                 silence_db: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (P_ref, P_est): (bins in [low_hz, high_hz], non-silent frames) power spectra, float64."""
    ref, est = _pair(ref, est)
    high_hz = sample_rate / 2 if high_hz is None else min(high_hz, sample_rate / 2)
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    band = (freqs >= low_hz) & (freqs <= high_hz)
    if not band.any():
        raise ValueError(f"no FFT bin in [{low_hz}, {high_hz}] Hz at {sample_rate} Hz")
    mr = _magnitude(ref, n_fft, n_fft // 4)
    keep = active_frames(mr, silence_db)
    pr = mr[band][:, keep].pow(2).double()  # (bins, frames)
    pe = _magnitude(est, n_fft, n_fft // 4)[band][:, keep].pow(2).double()
    return pr, pe


def band_lsd(ref, est, sample_rate: int, low_hz: float = 12000.0, high_hz: float | None = 24000.0,
             n_fft: int = BAND_N_FFT, silence_db: float | None = None) -> float:
    """Log-spectral distance (dB) over the bins in [low_hz, high_hz]: per frame the RMS over bins of
    10*log10(P_ref / P_est), then the mean over frames. Frames where the reference band is silent
    (below -100 dB of the loudest frame) are skipped: there is nothing there to reproduce; with
    ``silence_db`` so are the frames where the whole reference is silent."""
    pr, pe = _band_powers(ref, est, sample_rate, low_hz, high_hz, n_fft, silence_db)
    floor = 1e-10
    frame_energy = pr.mean(0)
    keep = frame_energy > frame_energy.max() * 1e-10
    if not keep.any():
        return float("nan")
    diff = 10 * (pr[:, keep] + floor).log10() - 10 * (pe[:, keep] + floor).log10()
    return diff.pow(2).mean(0).sqrt().mean().item()


def band_energy_db(ref, est, sample_rate: int, low_hz: float = 12000.0, high_hz: float | None = 24000.0,
                   n_fft: int = BAND_N_FFT, silence_db: float | None = None) -> float:
    """10*log10(band energy of est / band energy of ref) over the bins in [low_hz, high_hz] (and the
    reference's non-silent frames with ``silence_db``): 0 dB is the right level, -30 dB is a decoder
    with next to nothing in the band. NaN when the reference has no energy there."""
    pr, pe = _band_powers(ref, est, sample_rate, low_hz, high_hz, n_fft, silence_db)
    ref_energy = pr.sum().item()
    if ref_energy <= 0:
        return float("nan")
    return 10 * math.log10(max(pe.sum().item(), 1e-30) / ref_energy)


def band_share_db(ref, sample_rate: int, low_hz: float, high_hz: float | None, n_fft: int = BAND_N_FFT,
                  silence_db: float | None = None) -> float:
    """10*log10(energy of ``ref`` in [low_hz, high_hz] / its whole energy), over its non-silent frames
    with ``silence_db``: how much of the band a recording really holds (a 44.1 kHz file low-passed at
    8 kHz has a Nyquist of 22 kHz and next to nothing above 12 kHz: around -70 dB here)."""
    x = _tensor(ref)
    pr, _ = _band_powers(x, x, sample_rate, low_hz, high_hz, n_fft, silence_db)
    mag = _magnitude(x, n_fft, n_fft // 4)
    total = mag[:, active_frames(mag, silence_db)].double().pow(2).sum().item()
    return 10 * math.log10(max(pr.sum().item(), 1e-30) / total) if total > 0 else float("-inf")


def _at_16k(x: torch.Tensor, sample_rate: int) -> np.ndarray:
    return AF.resample(x, sample_rate, 16000).numpy().astype(np.float64) if sample_rate != 16000 \
        else x.numpy().astype(np.float64)


def pesq_wb(ref, est, sample_rate: int) -> float | None:
    """Wide-band PESQ (MOS-LQO, 1-4.6) at 16 kHz; None when ``pesq`` is not installed. Raises what
    ``pesq`` raises when it cannot score the pair (e.g. no utterance detected in a synthetic signal)."""
    try:
        from pesq import pesq
    except ImportError:
        return None
    ref, est = _pair(ref, est)
    return float(pesq(16000, _at_16k(ref, sample_rate), _at_16k(est, sample_rate), "wb"))


def stoi(ref, est, sample_rate: int) -> float | None:
    """STOI (0-1) at 16 kHz; None when ``pystoi`` is not installed."""
    try:
        from pystoi import stoi as _stoi
    except ImportError:
        return None
    ref, est = _pair(ref, est)
    value = _stoi(_at_16k(ref, sample_rate), _at_16k(est, sample_rate), 16000, extended=False)
    return None if value is None or math.isnan(value) else float(value)


def optional_metrics_available() -> dict[str, bool]:
    """Which optional metric packages are importable."""
    out = {}
    for name in ("pesq", "pystoi"):
        try:
            __import__(name)
            out[name] = True
        except ImportError:
            out[name] = False
    return out


def all_metrics(ref, est, sample_rate: int, band_hz: tuple[float, float] | None = (12000.0, 24000.0),
                optional: bool = True, errors: dict[str, str] | None = None,
                silence_db: float | None = None) -> dict[str, float | None]:
    """Every metric of this module as a dict (``pesq_wb``/``stoi`` None when unavailable).

    ``band_hz=None`` leaves ``lsd_high_band`` and ``high_band_energy_db`` out (None): the reference
    has no such band. ``silence_db`` applies to the mel distance and the band metrics. A metric
    that raises is None in the result and its error (``"Type: first line"``) is put in ``errors``
    when a dict is given; without one the exception propagates.
    """
    metrics = {"mel_distance": lambda: mel_distance(ref, est, sample_rate, silence_db),
               "stft_distance": lambda: stft_distance(ref, est),
               "si_sdr": lambda: si_sdr(ref, est),
               "lsd_high_band": lambda: None if band_hz is None else band_lsd(
                   ref, est, sample_rate, *band_hz, silence_db=silence_db),
               "high_band_energy_db": lambda: None if band_hz is None else band_energy_db(
                   ref, est, sample_rate, *band_hz, silence_db=silence_db)}
    if optional:
        metrics["pesq_wb"] = lambda: pesq_wb(ref, est, sample_rate)
        metrics["stoi"] = lambda: stoi(ref, est, sample_rate)
    out: dict[str, float | None] = {}
    for name, compute in metrics.items():
        try:
            out[name] = compute()
        except Exception as e:
            if errors is None:
                raise
            text = str(e).strip().splitlines()
            errors[name] = f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")
            out[name] = None
    return out


def mel_distance_low(ref, est, sample_rate: int, low_rate: int = 24000, silence_db: float | None = None) -> float:
    """``mel_distance`` of both signals resampled to ``low_rate`` (default 24 kHz: the 0-12 kHz band a
    stock 24 kHz decoder covers): shows whether a 48 kHz head made the band it inherited worse."""
    from .audio import resample

    ref, est = _pair(ref, est)
    if sample_rate <= low_rate:
        return mel_distance(ref, est, sample_rate, silence_db)
    r, e = (torch.as_tensor(resample(x.numpy(), sample_rate, low_rate)) for x in (ref, est))
    return mel_distance(r, e, low_rate, silence_db)


def tonal_prominence(x, sample_rate: int, low_hz: float = 12000.0, high_hz: float | None = 24000.0,
                     n_fft: int = 4096, median_hz: float = 1000.0) -> tuple[float, float]:
    """Stationary spectral lines in [low_hz, high_hz]: the time-averaged power spectrum in dB (every
    frame, ``n_fft`` bins) minus its running median over ``median_hz``; -> (max, mean of the positive
    part) of that difference, in dB. A tone under the whole signal stands out by tens of dB; a
    smooth band (noise, speech, silence) by a few dB (the average's own fluctuation)."""
    from .lines import excess_db

    x = _tensor(x)
    if len(x) < n_fft:
        raise ValueError(f"{len(x)} samples: tonal prominence needs at least n_fft={n_fft}")
    high_hz = sample_rate / 2 if high_hz is None else min(high_hz, sample_rate / 2)
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    band = (freqs >= low_hz) & (freqs <= high_hz)
    if not band.any():
        raise ValueError(f"no FFT bin in [{low_hz}, {high_hz}] Hz at {sample_rate} Hz")
    excess = excess_db(x, sample_rate, n_fft, median_hz)[band]
    return excess.max().item(), excess.clamp_min(0).mean().item()
