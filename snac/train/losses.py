"""Reconstruction losses masked to the real audio of each item.

Every loss is a mean over items of a per-item value, so an item weighs the same whatever its
valid length, and the value is the same however items are split into batches or across ranks.
"""

from __future__ import annotations

import torch

from snac.train.gan_losses import centred_frame_mask, floor_magnitudes, white_noise_magnitude

# Spectral convergence divides by the target's spectral norm; on a silent or near-silent window
# that norm is ~0 and the ratio explodes (a 1e7 loss spike was seen on a window of silence).
# The denominator is floored at the norm of white noise at this RMS (-40 dBFS) over the window.
SC_FLOOR_RMS = 1e-2


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, 1, T) x3 -> (B,) mean |pred - target| over the masked-in samples of each item."""
    num = ((pred - target).abs() * mask).flatten(1).sum(1)
    return num / mask.flatten(1).sum(1).clamp_min(1.0)


def _magnitude(x: torch.Tensor, n_fft: int) -> torch.Tensor:
    """(B, T) -> (B, n_fft/2 + 1, frames) STFT magnitude, hop n_fft/4, Hann window, centred."""
    window = torch.hann_window(n_fft, device=x.device, dtype=x.dtype)
    # constant (zero) padding: reflect padding needs T > n_fft/2, short windows would fail
    spec = torch.stft(x, n_fft, hop_length=n_fft // 4, window=window, center=True,
                      pad_mode="constant", return_complex=True)
    return spec.abs()


def stft_terms(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
               n_fft: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) x2 already masked, (B,) real samples -> ((B,) spectral convergence, (B,) log term) at one
    FFT size. SC = ||S_t - S_p||_F / max(||S_t||_F, noise floor); the log term is the mean
    |log S_t - log S_p| over the frames centred on real audio."""
    s_p, s_t = _magnitude(pred, n_fft), _magnitude(target, n_fft)
    # white noise of RMS r: E|S|^2 = r^2 * sum(window^2) in each of the n_fft/2+1 bins of
    # each of the valid/hop frames
    window_energy = torch.hann_window(n_fft, device=pred.device).pow(2).sum()
    floor = SC_FLOOR_RMS * (valid / (n_fft // 4) * window_energy * (n_fft // 2 + 1)).clamp_min(1.0).sqrt()
    sc = (s_t - s_p).flatten(1).norm(dim=1) / torch.maximum(s_t.flatten(1).norm(dim=1), floor)
    frame_mask = centred_frame_mask(valid, s_t.shape[-1], n_fft // 4)  # (B, frames)
    # log floor relative to the item's level (see gan_losses.floor_magnitudes)
    silence = white_noise_magnitude(torch.hann_window(n_fft))
    s_p, s_t = floor_magnitudes(s_p, s_t, frame_mask, silence)
    log_diff = (torch.log(s_t) - torch.log(s_p)).abs().mean(1)  # (B, frames)
    return sc, (log_diff * frame_mask).sum(1) / frame_mask.sum(1)


def stft_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
              n_ffts: list[int]) -> torch.Tensor:
    """(B, 1, T) x3 -> (B,) multi-scale STFT loss, averaged over FFT sizes.

    Per size: spectral convergence ||S_t - S_p||_F / ||S_t||_F plus mean |log S_t - log S_p|
    (:func:`stft_terms`). The padded tail is zeroed in both signals and frames centred in it are
    left out of the log term, so padding costs nothing and earns nothing.
    """
    pred = (pred * mask).flatten(1).float()
    target = (target * mask).flatten(1).float()
    valid = mask.flatten(1).sum(1)  # (B,) real samples per item
    total = pred.new_zeros(pred.shape[0])
    for n_fft in n_ffts:
        sc, log_mag = stft_terms(pred, target, valid, n_fft)
        total = total + sc + log_mag
    return total / len(n_ffts)


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                        n_ffts: list[int], l1_weight: float, stft_weight: float,
                        reduce: bool = True) -> dict[str, torch.Tensor]:
    """{'loss/total', 'loss/l1', 'loss/stft'}: batch means (or (B,) per item with reduce=False)."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ: "
                         "the window geometry does not match the model")
    pred = pred.float()
    l1 = masked_l1(pred, target, mask)
    stft = stft_loss(pred, target, mask, n_ffts) if stft_weight > 0 else torch.zeros_like(l1)
    out = {"loss/total": l1_weight * l1 + stft_weight * stft, "loss/l1": l1, "loss/stft": stft}
    return {k: v.mean() for k, v in out.items()} if reduce else out
