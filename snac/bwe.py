"""A classical bandwidth extension: the baseline a learned 48 kHz head has to beat.

``band_replicate(y, rate_in, rate_out)`` takes a decode at ``rate_in`` (e.g. the stock 24 kHz SNAC
decode), resamples it to ``rate_out`` (soxr, which keeps everything up to ~91% of the input's
Nyquist) and fills the band above with spectral band replication, in the STFT domain:

1. Crossover ``f_c`` = ``crossover`` x the input's Nyquist (0.9: 10.8 kHz for 24 kHz): below it the
   resampled decode is kept as it is.
2. Patches: the source band is the upper half of the kept band, [f_c/2, f_c). It is copied up by
   whole multiples of its width (a first copy to [f_c, 1.5 f_c), a second to [1.5 f_c, 2 f_c), ...)
   until the output's Nyquist. Each shift is a multiple of n_fft/hop bins, so a copied bin's phase
   advances by whole turns from frame to frame and the overlap-add stays coherent (the copy is the
   source band modulated up, not a smear).
3. Envelope: per frame, the decoded band's own spectral tilt, ``s`` = dB per octave between the power
   densities of [f_c/4, f_c/2) and [f_c/2, f_c), clipped to [``min_slope_db``, ``max_slope_db``]
   (speech falls off: the slope may not rise), smoothed over ``smooth_frames`` frames. Each 1/6-octave
   sub-band of the patched range is scaled so its power density continues the source band's density
   along that slope: density(f) = density(source) + s * log2(f / centre of the source band). A frame
   whose source band is silent stays silent; a recording low-passed below f_c/2 has (almost) nothing
   to copy, so nothing is invented.

No training, no parameters beyond these; ``BandReplication(base)`` wraps a SNAC so the evaluation can
score it as a system that decodes codes at ``rate_out``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .audio import resample

N_FFT, HOP = 1024, 256


def _bands(f_lo: float, f_hi: float, per_octave: int = 6) -> list[tuple[float, float]]:
    """Edges of ``per_octave`` log-spaced sub-bands covering [f_lo, f_hi)."""
    n = max(1, math.ceil(per_octave * math.log2(f_hi / f_lo)))
    edges = f_lo * (f_hi / f_lo) ** (np.arange(n + 1) / n)
    return list(zip(edges[:-1], edges[1:]))


def _smooth(x: torch.Tensor, frames: int) -> torch.Tensor:
    """Moving average along the last axis (frames), same length, edges averaged over what exists."""
    if frames <= 1:
        return x
    kernel = torch.ones(1, 1, frames, dtype=x.dtype)
    pad = frames // 2
    num = torch.nn.functional.conv1d(x.view(1, 1, -1), kernel, padding=pad)[..., :x.shape[-1]]
    den = torch.nn.functional.conv1d(torch.ones(1, 1, x.shape[-1], dtype=x.dtype), kernel, padding=pad)
    return (num / den)[..., :x.shape[-1]].view(-1)


def band_replicate(y, rate_in: int, rate_out: int, *, crossover: float = 0.9, min_slope_db: float = -18.0,
                   max_slope_db: float = 0.0, smooth_frames: int = 5) -> np.ndarray:
    """(T,) mono decode at ``rate_in`` -> (round(T * rate_out / rate_in),) float32 at ``rate_out``
    with the band above ``crossover`` x the input's Nyquist filled by band replication (module doc)."""
    if rate_out <= rate_in:
        raise ValueError(f"band replication widens the band: rate_out {rate_out} must exceed rate_in {rate_in}")
    x = torch.as_tensor(np.asarray(resample(np.asarray(y, dtype=np.float32), rate_in, rate_out)))
    n = len(x)
    if n < N_FFT:
        return x.numpy()
    window = torch.hann_window(N_FFT, dtype=torch.float64)
    spec = torch.stft(x.double(), N_FFT, HOP, window=window, return_complex=True)  # (bins, frames)
    bins, frames = spec.shape
    hz = rate_out / N_FFT
    step = N_FFT // HOP  # shifts in multiples of this keep each copied bin's phase coherent
    top = int(crossover * rate_in / 2 / hz) // step * step  # first replaced bin
    width = top // 2 // step * step  # the source band [top - width, top)
    src = slice(top - width, top)
    power = spec.abs().pow(2)

    def density(lo: int, hi: int) -> torch.Tensor:  # (frames,) mean power per bin
        return power[lo:hi].mean(0) + 1e-20

    d_src = density(top - width, top)
    d_low = density(top - 2 * width, top - width)
    slope = (10 * torch.log10(d_src / d_low)).clamp(min_slope_db, max_slope_db)  # dB per octave
    slope = _smooth(slope, smooth_frames)
    log_src = _smooth(10 * torch.log10(d_src), smooth_frames)
    centre = (top - width / 2) * hz

    out = spec.clone()
    out[top:] = 0
    for k in range(1, math.ceil((bins - top) / width) + 1):
        lo, hi = top + (k - 1) * width, min(top + k * width, bins)
        out[lo:hi] = spec[src][: hi - lo]  # shift by k * width bins
    for f_lo, f_hi in _bands(top * hz, rate_out / 2):
        lo, hi = int(round(f_lo / hz)), min(int(round(f_hi / hz)), bins)
        if hi <= lo:
            continue
        have = out[lo:hi].abs().pow(2).mean(0) + 1e-20
        want_db = log_src + slope * math.log2(math.sqrt(f_lo * f_hi) / centre)
        gain = torch.sqrt(10 ** (want_db / 10) / have)
        out[lo:hi] *= _smooth(gain, smooth_frames)
    z = torch.istft(out, N_FFT, HOP, window=window, length=n)
    return z.float().numpy()


class BandReplication(torch.nn.Module):
    """A system for the evaluation: ``base``'s own decode, widened to ``rate`` by ``band_replicate``.

    ``decode(codes)`` -> (B, 1, T * rate / base rate). Holds ``base`` (not a copy) and no parameters."""

    def __init__(self, base: torch.nn.Module, rate: int):
        super().__init__()
        self.base = base
        self.sampling_rate = rate
        self.base_sampling_rate = base.sampling_rate

    def __getattr__(self, name):  # hop_length, vq_strides, ...: the base's
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("base"), name)

    def widen(self, y: np.ndarray) -> np.ndarray:
        """(T,) decode of ``base`` -> (T * rate / base rate,) band-replicated at ``rate``."""
        return band_replicate(y, self.base_sampling_rate, self.sampling_rate)

    @torch.no_grad()
    def decode(self, codes: list[torch.Tensor]) -> torch.Tensor:
        y = self.base.decode(codes)  # (B, 1, T)
        rows = [self.widen(r[0].float().cpu().numpy()) for r in y]
        return torch.from_numpy(np.stack(rows))[:, None].to(y.device)
