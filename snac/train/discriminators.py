"""Discriminators of the adversarial recipe: multi-period (HiFi-GAN) and multi-band complex-STFT (DAC).

Written from the papers' descriptions (Kong et al. 2020, HiFi-GAN; Kumar et al. 2023, DAC); the
channel counts, kernels, strides, band splits and hop = n_fft / 4 are DAC's published settings.

Every sub-discriminator maps audio (B, 1, T) to ``(logits, features)``: logits (B, 1, L, W) and a
list of per-layer feature maps (B, C, L_k, W_k), all with time on dim 2 (MPD: rows of the
period-folded signal; MRD: STFT frames) so the losses can mask frames that lie in the padding
(see ``gan_losses.map_frame_mask``). Every conv is weight-normed with the parametrization API.

Sizing by sample rate: the bands are fractions of Nyquist, so at 48 kHz the top two bands of the
multi-band discriminator are 12-18 and 18-24 kHz (the octave the 48 kHz head adds), at 24 kHz
6-9 and 9-12 kHz. DAC keeps periods 2, 3, 5, 7, 11 and FFT sizes 2048, 1024, 512 at every rate it
trained (16, 24, 44.1 kHz), and so do the defaults here; both are arguments.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

PERIODS = (2, 3, 5, 7, 11)
FFT_SIZES = (2048, 1024, 512)
BANDS = ((0.0, 0.1), (0.1, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0))  # fractions of Nyquist
MPD_CHANNELS = (32, 128, 512, 1024, 1024)  # HiFi-GAN's period discriminator
MRD_CHANNELS = 32  # DAC's band stacks
LEAK = 0.1  # LeakyReLU slope after every conv but the last

Output = tuple[torch.Tensor, list[torch.Tensor]]  # (logits (B, 1, L, W), features [(B, C, L_k, W_k)])


def wn_conv2d(*args, **kwargs) -> nn.Conv2d:
    return weight_norm(nn.Conv2d(*args, **kwargs))


def _stack(convs: nn.ModuleList, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Conv + LeakyReLU through each layer, keeping every activation as a feature map."""
    features = []
    for conv in convs:
        x = F.leaky_relu(conv(x), LEAK)
        features.append(x)
    return x, features


class PeriodDiscriminator(nn.Module):
    """Folds the waveform by ``period`` and runs 2-D convs along time only (kernel (5, 1)).

    (B, 1, T) -> pad right to T' = ceil(T / p) * p -> (B, 1, T'/p, p); four (5, 1) convs of stride
    (3, 1) and one of stride 1, then a (3, 1) conv to one channel: logits (B, 1, L, p) with
    L = ceil(T' / p / 81). Features: the five conv activations.
    """

    def __init__(self, period: int, channels: tuple[int, ...] = MPD_CHANNELS):
        super().__init__()
        if period < 1:
            raise ValueError(f"period must be a positive number of samples, got {period}")
        self.period = period
        ins = (1, *channels[:-1])
        strides = [3] * (len(channels) - 1) + [1]
        self.convs = nn.ModuleList(wn_conv2d(c_in, c_out, (5, 1), (s, 1), padding=(2, 0))
                                   for c_in, c_out, s in zip(ins, channels, strides))
        self.post = wn_conv2d(channels[-1], 1, (3, 1), padding=(1, 0))

    def forward(self, x: torch.Tensor) -> Output:
        pad = -x.shape[-1] % self.period
        if pad:
            # reflect needs more samples than the pad; a period is at most a few samples
            x = F.pad(x, (0, pad), mode="reflect" if x.shape[-1] > pad else "constant")
        x = x.unflatten(-1, (-1, self.period))  # (B, 1, T'/p, p)
        x, features = _stack(self.convs, x)
        return self.post(x), features


class BandDiscriminator(nn.Module):
    """DAC's multi-band complex-STFT discriminator at one FFT size.

    (B, 1, T) -> STFT (Hann, hop n_fft/4, centred, zero-padded): L = T // hop + 1 frames ->
    real and imaginary parts as 2 channels (B, 2, L, n_fft/2 + 1) -> split along frequency into
    bands -> per band five (3, 9)/(3, 3) convs, three of them halving frequency -> the band outputs
    concatenated along frequency -> a (3, 3) conv to one channel: logits (B, 1, L, sum of band
    widths after three halvings). Features: 5 activations per band, bands in order.
    """

    def __init__(self, n_fft: int, bands: tuple[tuple[float, float], ...] = BANDS,
                 channels: int = MRD_CHANNELS):
        super().__init__()
        if n_fft < 8 or n_fft % 4:
            raise ValueError(f"FFT size must be a multiple of 4 of at least 8 (hop = n_fft / 4), got {n_fft}")
        self.n_fft, self.hop = n_fft, n_fft // 4
        bins = n_fft // 2 + 1
        # band edges in bins, as DAC rounds them: int(fraction * bins)
        self.edges = [(int(lo * bins), int(hi * bins)) for lo, hi in bands]
        if any(not 0 <= lo < hi <= bins for lo, hi in self.edges):
            raise ValueError(f"bands {bands} must be increasing fractions of Nyquist in [0, 1], each at "
                             f"least one bin wide at n_fft {n_fft}")
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

        def band_stack() -> nn.ModuleList:
            c = channels
            return nn.ModuleList([
                wn_conv2d(2, c, (3, 9), (1, 1), padding=(1, 4)),
                wn_conv2d(c, c, (3, 9), (1, 2), padding=(1, 4)),
                wn_conv2d(c, c, (3, 9), (1, 2), padding=(1, 4)),
                wn_conv2d(c, c, (3, 9), (1, 2), padding=(1, 4)),
                wn_conv2d(c, c, (3, 3), (1, 1), padding=(1, 1)),
            ])

        self.band_convs = nn.ModuleList(band_stack() for _ in self.edges)
        self.post = wn_conv2d(channels, 1, (3, 3), padding=(1, 1))

    def spectrogram(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, T) -> (B, 2, L, n_fft/2 + 1): real and imaginary STFT parts, time on dim 2."""
        # the STFT runs in float32 (half-precision FFTs need power-of-two sizes and lose range)
        spec = torch.stft(x.squeeze(1).float(), self.n_fft, self.hop, window=self.window.float(),
                          center=True, pad_mode="constant", return_complex=True)  # (B, F, L)
        return torch.view_as_real(spec).permute(0, 3, 2, 1).to(x.dtype)

    def forward(self, x: torch.Tensor) -> Output:
        spec = self.spectrogram(x)
        outs, features = [], []
        for (lo, hi), convs in zip(self.edges, self.band_convs):
            band, band_features = _stack(convs, spec[..., lo:hi])
            outs.append(band)
            features += band_features
        return self.post(torch.cat(outs, dim=-1)), features


class Discriminator(nn.Module):
    """All sub-discriminators of the adversarial recipe behind one call.

    ``forward(audio (B, 1, T), mask (B, 1, T) or None) -> list of (logits, features)``, one entry
    per sub-discriminator in the order of ``names`` (``mpd2`` … ``mpd11``, then ``mrd2048`` …).
    With a mask the padded tail is zeroed first, so whatever a generator writes there is unseen.
    ``normalize`` applies DAC's input normalisation: remove each item's mean, scale its peak to
    0.8 (over the real samples), so the discriminators judge the sound, not the level.
    """

    def __init__(self, sample_rate: int, multi_period: bool = True, multi_band: bool = True,
                 periods: tuple[int, ...] = PERIODS, fft_sizes: tuple[int, ...] = FFT_SIZES,
                 bands: tuple[tuple[float, float], ...] = BANDS,
                 mpd_channels: tuple[int, ...] = MPD_CHANNELS, mrd_channels: int = MRD_CHANNELS,
                 normalize: bool = True):
        super().__init__()
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be a positive rate in Hz, got {sample_rate}")
        if not (multi_period and periods) and not (multi_band and fft_sizes):
            raise ValueError("no discriminator left: turn on multi_period (with periods) or multi_band "
                             "(with fft_sizes), or leave the adversarial recipe off")
        self.sample_rate = sample_rate
        self.normalize = normalize
        discs: dict[str, nn.Module] = {}
        if multi_period:
            discs.update({f"mpd{p}": PeriodDiscriminator(p, tuple(mpd_channels)) for p in periods})
        if multi_band:
            discs.update({f"mrd{n}": BandDiscriminator(n, tuple(map(tuple, bands)), mrd_channels)
                          for n in fft_sizes})
        self.discriminators = nn.ModuleDict(discs)

    @property
    def names(self) -> list[str]:
        return list(self.discriminators)

    def band_edges_hz(self) -> list[tuple[float, float]]:
        """The multi-band discriminator's bands in Hz at this sample rate (for logs and docs)."""
        nyquist = self.sample_rate / 2
        first = next((d for d in self.discriminators.values() if isinstance(d, BandDiscriminator)), None)
        if first is None:
            return []
        bins = first.n_fft // 2 + 1
        return [(lo / (bins - 1) * nyquist, min(hi / (bins - 1), 1.0) * nyquist) for lo, hi in first.edges]

    def prepare(self, audio: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 1, T) -> (B, 1, T): padded tail zeroed; with ``normalize``, zero mean and peak 0.8."""
        if audio.dim() != 3 or audio.shape[1] != 1:
            raise ValueError(f"discriminators take mono audio of shape (B, 1, T), got {tuple(audio.shape)}")
        if mask is None:
            mask = torch.ones_like(audio)
        elif mask.shape != audio.shape:
            raise ValueError(f"mask {tuple(mask.shape)} must have the audio's shape {tuple(audio.shape)}")
        mask = mask.to(audio.dtype)
        audio = audio * mask
        if self.normalize:
            valid = mask.sum(-1, keepdim=True).clamp_min(1.0)
            audio = (audio - audio.sum(-1, keepdim=True) / valid) * mask
            audio = 0.8 * audio / (audio.abs().amax(-1, keepdim=True) + 1e-9)
        return audio

    def forward(self, audio: torch.Tensor, mask: torch.Tensor | None = None) -> list[Output]:
        x = self.prepare(audio, mask)
        return [d(x) for d in self.discriminators.values()]
