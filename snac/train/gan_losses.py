"""Losses of the adversarial recipe, masked to the real audio of each item.

- ``discriminator_loss`` / ``generator_adversarial_loss``: least-squares GAN (real -> 1, fake -> 0).
- ``feature_matching_loss``: L1 between the discriminators' feature maps of real and generated audio.
- ``mel_loss``: DAC's multi-scale log10 mel distance.
- ``floor_magnitudes``: the relative log-magnitude floor shared with ``stft_loss``.

Masking follows the reconstruction losses: ``mask`` (B, 1, T) is 1 on the real samples of an
item; padded tails are zeroed in both signals (the discriminators zero them themselves); frames
centred in the padding are left out; each value is a per-item mean, so an item weighs the same
whatever its valid length, and every function returns (B,) per item (the caller takes the batch
mean). As in DAC, the adversarial and feature terms are sums over discriminators (and layers)
and the mel term a sum over its scales, so DAC's weights (mel 15, feature 2, adversarial 1) apply.
"""

from __future__ import annotations

import functools
import warnings

import torch
import torchaudio.functional as AF

# The log floor is relative: each item's magnitudes are floored 80 dB below the peak magnitude of
# its target at that scale, so the log terms are invariant to the item's level. Digital silence
# has no level, so the floor never drops below the magnitude of 16-bit quantisation noise
# (RMS 2^-15 / sqrt(12), -101 dBFS): noise a 16-bit file cannot even hold costs nothing on a silent
# target, where an absolute eps of 1e-5 charged it ~log(|S| / 1e-5). Items too quiet for their
# -80 dB floor to clear that level are floored at it instead (their level no longer cancels).
RELATIVE_FLOOR_DB = -80.0
SILENCE_FLOOR_DBFS = -101.0

MEL_BANDS = (5, 10, 20, 40, 80, 160, 320)
MEL_WINDOWS = (32, 64, 128, 256, 512, 1024, 2048)


def white_noise_magnitude(window: torch.Tensor, dbfs: float = SILENCE_FLOOR_DBFS) -> float:
    """RMS STFT magnitude per bin of white noise of RMS ``dbfs`` under ``window`` (n_fft,)."""
    return 10 ** (dbfs / 20) * float(window.double().pow(2).sum().sqrt())


def floor_magnitudes(pred: torch.Tensor, target: torch.Tensor, frame_mask: torch.Tensor,
                     silence_floor: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """Clamp both magnitudes at the item's floor, ready for a log.

    pred, target: (B, F, L) magnitudes (STFT bins or mel bands by frames); frame_mask: (B, L),
    1 for the frames that count; silence_floor: a float or (F, 1), the floor where the target is
    silent. Floor per item = max(target's peak over counted frames * 10^(-80/20), silence_floor).
    """
    counted = target.detach() * frame_mask[:, None, :]
    peak = counted.flatten(1).amax(1)[:, None, None]  # (B, 1, 1)
    floor = peak * 10 ** (RELATIVE_FLOOR_DB / 20)
    floor = torch.maximum(floor, torch.as_tensor(silence_floor, dtype=floor.dtype, device=floor.device))
    floor = floor.clamp_min(torch.finfo(floor.dtype).tiny)  # an empty mel filter on silence
    return torch.maximum(pred, floor), torch.maximum(target, floor)


def centred_frame_mask(valid: torch.Tensor, frames: int, hop: int) -> torch.Tensor:
    """(B,) valid lengths -> (B, frames) float: frame f (centred at f * hop) counts if that sample is
    real; frame 0 always counts so every item has one."""
    centres = torch.arange(frames, device=valid.device) * hop
    mask = (centres[None, :] < valid[:, None]).float()
    mask[:, 0] = 1.0
    return mask


def _check(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> None:
    if pred.dim() != 3 or pred.shape[1] != 1 or pred.shape != target.shape or mask.shape != pred.shape:
        raise ValueError(f"pred {tuple(pred.shape)}, target {tuple(target.shape)} and mask "
                         f"{tuple(mask.shape)} must all be (B, 1, T) of one shape")


@functools.lru_cache(maxsize=64)
def _mel_filters(n_fft: int, n_mels: int, sample_rate: int, device: torch.device,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (filterbank (n_fft/2 + 1, n_mels), silence floor (n_mels, 1)); Slaney mel scale and area
    normalisation, 0 Hz to Nyquist (librosa's defaults, which DAC's mel loss uses)."""
    with warnings.catch_warnings():
        # at 320 bands on short windows some low filters fall between bins and are all zero: they
        # compare floor with floor and cost nothing, which is the intended reading
        warnings.filterwarnings("ignore", message=".*mel filterbank has all zero values.*")
        fb = AF.melscale_fbanks(n_fft // 2 + 1, 0.0, sample_rate / 2, n_mels, sample_rate,
                                norm="slaney", mel_scale="slaney")
    noise = white_noise_magnitude(torch.hann_window(n_fft))
    return fb.to(device, dtype), (noise * fb.sum(0))[:, None].to(device, dtype)


def mel_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, sample_rate: int,
             n_mels: tuple[int, ...] = MEL_BANDS, windows: tuple[int, ...] = MEL_WINDOWS) -> torch.Tensor:
    """(B, 1, T) x3 -> (B,) sum over scales of the mean |log10 mel(target) - log10 mel(pred)|.

    Per scale: magnitude STFT (Hann, hop window/4, centred, zero-padded), mel filterbank, the
    relative floor, log10; the mean runs over mel bands and the frames centred on real samples.
    """
    _check(pred, target, mask)
    if len(n_mels) != len(windows):
        raise ValueError(f"mel loss needs one band count per window: {len(n_mels)} counts, {len(windows)} windows")
    mask = mask.float()
    pred, target = (pred.float() * mask).flatten(1), (target.float() * mask).flatten(1)  # (B, T)
    valid = mask.flatten(1).sum(1)
    total = pred.new_zeros(pred.shape[0])
    with torch.autocast(pred.device.type, enabled=False):  # the filterbank matmul stays float32
        for bands, n_fft in zip(n_mels, windows):
            total = total + _mel_distance(pred, target, valid, sample_rate, bands, n_fft)
    return total


def _mel_distance(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, sample_rate: int,
                  bands: int, n_fft: int) -> torch.Tensor:
    """(B, T) x2 masked signals, (B,) valid lengths -> (B,) mean |log10 mel difference| at one scale."""
    fb, silence = _mel_filters(n_fft, bands, sample_rate, pred.device, pred.dtype)
    window = torch.hann_window(n_fft, device=pred.device)
    mels = [torch.stft(x, n_fft, n_fft // 4, window=window, center=True, pad_mode="constant",
                       return_complex=True).abs().transpose(1, 2) @ fb  # (B, L, n_mels)
            for x in (pred, target)]
    frames = centred_frame_mask(valid, mels[0].shape[1], n_fft // 4)  # (B, L)
    m_p, m_t = floor_magnitudes(*(m.transpose(1, 2) for m in mels), frames, silence)
    diff = (m_t.log10() - m_p.log10()).abs().mean(1)  # (B, L)
    return (diff * frames).sum(1) / frames.sum(1)


def map_frame_mask(valid: torch.Tensor, length: int, frames: int) -> torch.Tensor:
    """(B,) valid lengths -> (B, frames) float for a map whose dim 2 spans ``length`` samples:
    frame f counts if its centre, (f + 1/2) * length / frames, is a real sample; frame 0 always."""
    centres = (torch.arange(frames, device=valid.device) + 0.5) * (length / frames)
    mask = (centres[None, :] < valid[:, None]).float()
    mask[:, 0] = 1.0
    return mask


def _map_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, C, L, W) map and (B, 1, T) sample mask -> (B,) mean over channels, width and real frames."""
    frames = map_frame_mask(mask.flatten(1).sum(1), mask.shape[-1], x.shape[2]).to(x.dtype)  # (B, L)
    per_frame = x.mean(dim=(1, 3))  # (B, L)
    return (per_frame * frames).sum(1) / frames.sum(1)


def discriminator_loss(real: list, fake: list, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """LSGAN loss of the discriminators: sum over discriminators of mean (1 - D(real))^2 + mean D(fake)^2.

    real, fake: ``Discriminator`` outputs (lists of (logits, features)) for the target and the
    generated audio (detached); mask (B, 1, T). -> {'disc/loss', 'disc/real', 'disc/fake'}, each
    (B,): the total and its two halves.
    """
    if len(real) != len(fake):
        raise ValueError(f"{len(real)} real and {len(fake)} fake discriminator outputs: pass both "
                         "through the same Discriminator")
    on_real = sum(_map_mean((1 - r.float()) ** 2, mask) for r, _ in real)
    on_fake = sum(_map_mean(f.float() ** 2, mask) for f, _ in fake)
    return {"disc/loss": on_real + on_fake, "disc/real": on_real, "disc/fake": on_fake}


def generator_adversarial_loss(fake: list, mask: torch.Tensor) -> torch.Tensor:
    """(B,) sum over discriminators of mean (1 - D(generated))^2: the generator wants 'real' (1)."""
    return sum(_map_mean((1 - f.float()) ** 2, mask) for f, _ in fake)


def feature_matching_loss(real: list, fake: list, mask: torch.Tensor) -> torch.Tensor:
    """(B,) sum over discriminators and layers of mean |features(real) - features(generated)|.

    The real features are detached: this term trains the generator only.
    """
    if len(real) != len(fake) or any(len(r[1]) != len(f[1]) for r, f in zip(real, fake)):
        raise ValueError("real and generated feature maps differ in number: pass both through the "
                         "same Discriminator")
    return sum(_map_mean((fr.detach().float() - ff.float()).abs(), mask)
               for (_, real_maps), (_, fake_maps) in zip(real, fake)
               for fr, ff in zip(real_maps, fake_maps))
