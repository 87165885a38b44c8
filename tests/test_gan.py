"""Discriminators and losses of the adversarial recipe: shapes, learning, masking, the relative floor."""

import math

import pytest
import torch

from helpers_train import one_thread  # noqa: F401
from snac.train.losses import stft_loss
from snac.train.discriminators import BANDS, Discriminator
from snac.train.gan_losses import (discriminator_loss, feature_matching_loss,
                                   generator_adversarial_loss, mel_loss)

SMALL = dict(mpd_channels=(4, 8, 8, 8, 8), mrd_channels=4)  # the published layout, narrow


def small_discriminator(sample_rate: int, seed: int = 0, **kwargs) -> Discriminator:
    torch.manual_seed(seed)
    return Discriminator(sample_rate, **{**SMALL, **kwargs})


def harmonic(t: int, rate: int, f0: float = 220.0, amp: float = 0.3, seed: int = 0) -> torch.Tensor:
    """(1, 1, t) a tremolo tone with a little noise: speech-like level and spectrum."""
    g = torch.Generator().manual_seed(seed)
    time = torch.arange(t) / rate
    x = amp * torch.sin(2 * math.pi * f0 * time) * (1 + 0.5 * torch.sin(2 * math.pi * 3 * time))
    return (x + 0.01 * torch.randn(t, generator=g)).view(1, 1, t)


@pytest.mark.parametrize("rate", [24000, 48000])
def test_every_discriminator_gives_logits_and_features_of_the_documented_shapes(rate):
    t = rate // 8 + 1  # odd length: not a multiple of any period or hop
    disc = small_discriminator(rate)
    outs = disc(torch.randn(2, 1, t))
    assert disc.names == ["mpd2", "mpd3", "mpd5", "mpd7", "mpd11", "mrd2048", "mrd1024", "mrd512"]
    assert len(outs) == 8
    for name, (logits, features) in zip(disc.names, outs):
        if name.startswith("mpd"):
            p = int(name[3:])
            rows = math.ceil(math.ceil(t / p) / 3 ** 4)
            assert logits.shape == (2, 1, rows, p)
            assert len(features) == 5
        else:
            n_fft = int(name[3:])
            bins = n_fft // 2 + 1
            widths = [int(hi * bins) - int(lo * bins) for lo, hi in BANDS]
            assert logits.shape == (2, 1, t // (n_fft // 4) + 1, sum(math.ceil(w / 8) for w in widths))
            assert len(features) == 5 * len(BANDS)
        assert all(f.shape[0] == 2 and f.dim() == 4 for f in features)
        assert all(torch.isfinite(f).all() for f in [logits, *features])
    state = disc.state_dict()
    assert any(k.endswith("parametrizations.weight.original0") for k in state)
    assert not any(k.endswith("weight_g") for k in state)


def test_config_switches_pick_the_families_and_refuse_an_empty_set():
    assert small_discriminator(48000, multi_band=False).names == ["mpd2", "mpd3", "mpd5", "mpd7", "mpd11"]
    assert small_discriminator(48000, multi_period=False).names == ["mrd2048", "mrd1024", "mrd512"]
    with pytest.raises(ValueError, match="no discriminator left"):
        Discriminator(48000, multi_period=False, multi_band=False)
    edges = Discriminator(48000, multi_period=False, mrd_channels=2).band_edges_hz()
    assert edges[-1][1] == 24000 and abs(edges[-2][0] - 12000) < 24  # the top octave, within a bin


def test_the_discriminator_loss_falls_as_it_learns_tones_from_noise():
    rate, t, b = 8000, 2048, 4
    disc = small_discriminator(rate, periods=(2, 3), fft_sizes=(256,))
    opt = torch.optim.AdamW(disc.parameters(), lr=1e-2, betas=(0.8, 0.99))
    mask = torch.ones(b, 1, t)

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        real = torch.cat([harmonic(t, rate, f0=150 + 40 * step + 90 * i, seed=step * b + i) for i in range(b)])
        return real, 0.3 * torch.randn(b, 1, t, generator=torch.Generator().manual_seed(1000 + step))

    losses = []
    for step in range(30):
        real, fake = batch(step)
        loss = discriminator_loss(disc(real), disc(fake), mask)["disc/loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.3 * sum(losses[:5]) / 5, losses
    with torch.no_grad():  # unseen tones and noise: every discriminator scores the tones higher
        real, fake = batch(99)
        for (on_real, _), (on_fake, _) in zip(disc(real), disc(fake)):
            assert on_real.mean() > on_fake.mean() + 0.1


def test_adversarial_terms_are_zero_at_their_targets_and_feature_matching_on_identical_maps():
    disc = small_discriminator(24000)
    x = harmonic(3001, 24000)
    mask = torch.ones_like(x)
    outs = disc(x)
    assert feature_matching_loss(outs, outs, mask).abs().max() == 0
    ones = [(torch.ones_like(logits), feats) for logits, feats in outs]
    zeros = [(torch.zeros_like(logits), feats) for logits, feats in outs]
    assert generator_adversarial_loss(ones, mask).abs().max() == 0
    assert discriminator_loss(ones, zeros, mask)["disc/loss"].abs().max() == 0
    both_wrong = discriminator_loss(zeros, ones, mask)
    assert torch.allclose(both_wrong["disc/real"], torch.full((1,), 8.0))  # 8 discriminators, (1 - 0)^2 each


def padded_pair(rate: int = 24000, real_len: int = 3000, t: int = 4096):
    """Item 0 has real_len real samples then padding; item 1 is full. -> pred, target, mask."""
    target = torch.cat([harmonic(t, rate, seed=1), harmonic(t, rate, f0=330, seed=2)])
    pred = target + 0.05 * torch.randn(2, 1, t, generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(target)
    mask[0, :, real_len:] = 0
    target[0, :, real_len:] = 0
    return pred, target, mask


def test_garbage_in_the_padding_changes_no_loss():
    pred, target, mask = padded_pair()
    wild = pred.clone()
    wild[0, :, 3000:] = 5.0 * torch.randn(1, 1096, generator=torch.Generator().manual_seed(4))
    disc = small_discriminator(24000)
    real = disc(target, mask)

    def all_losses(p):
        fake = disc(p, mask)
        return torch.stack([mel_loss(p, target, mask, 24000), generator_adversarial_loss(fake, mask),
                            feature_matching_loss(real, fake, mask),
                            discriminator_loss(real, fake, mask)["disc/loss"]])

    assert torch.equal(all_losses(pred), all_losses(wild))


def test_mel_loss_of_a_padded_item_equals_that_of_the_same_item_unpadded():
    pred, target, mask = padded_pair()
    per_item = mel_loss(pred, target, mask, 24000)
    alone = mel_loss(pred[:1, :, :3000], target[:1, :, :3000], torch.ones(1, 1, 3000), 24000)
    assert torch.allclose(per_item[0], alone[0], rtol=1e-5)
    assert mel_loss(target, target, mask, 24000).abs().max() == 0


def test_mel_loss_is_finite_on_digital_silence_and_on_loud_input():
    t = 4001
    silence = torch.zeros(2, 1, t)
    mask = torch.ones_like(silence)
    assert mel_loss(silence, silence, mask, 48000).abs().max() == 0
    noise = 0.1 * torch.randn(2, 1, t, generator=torch.Generator().manual_seed(5))
    for pred, target in [(noise, silence), (silence, noise), (100 * noise, 100 * noise.flip(-1))]:
        assert torch.isfinite(mel_loss(pred, target, mask, 48000)).all()


def test_mel_loss_under_bf16_autocast_is_the_float32_loss():
    pred, target, mask = padded_pair()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = mel_loss(pred, target, mask, 24000)
    assert under.dtype == torch.float32
    assert torch.allclose(under, mel_loss(pred, target, mask, 24000))


def test_log_terms_ignore_the_level_of_an_item_and_inaudible_noise_on_silence():
    """Property of the relative floor: (1) scaling both signals of an item by any gain that keeps it
    above 16-bit noise leaves the mel and STFT losses unchanged (the old absolute eps did not);
    (2) noise below 16-bit quantisation noise (-110 dBFS) on a digitally silent target costs less
    than -60 dBFS noise on a speech-level item (with eps 1e-5 it cost ~log(3e-5 / 1e-5) per bin
    at n_fft 2048, over 10x more)."""
    rate, t = 24000, 8192
    target = harmonic(t, rate)
    pred = target + 1e-3 * torch.randn(1, 1, t, generator=torch.Generator().manual_seed(6))  # -60 dBFS
    mask = torch.ones_like(target)
    n_ffts = [256, 2048]
    base_mel, base_stft = mel_loss(pred, target, mask, rate), stft_loss(pred, target, mask, n_ffts)
    for gain in (0.25, 4.0):
        assert torch.allclose(mel_loss(gain * pred, gain * target, mask, rate), base_mel, rtol=1e-4)
        # the STFT loss's spectral convergence has its own absolute floor (-40 dBFS); this level clears it
        assert torch.allclose(stft_loss(gain * pred, gain * target, mask, n_ffts), base_stft, rtol=1e-4)
    silence = torch.zeros_like(target)
    hiss = 10 ** (-110 / 20) * torch.randn(1, 1, t, generator=torch.Generator().manual_seed(7))
    assert mel_loss(hiss, silence, mask, rate) < base_mel
    assert stft_loss(hiss, silence, mask, n_ffts) < base_stft


def test_bad_shapes_are_refused_with_a_sentence():
    x = torch.zeros(1, 1, 100)
    with pytest.raises(ValueError, match=r"\(B, 1, T\)"):
        mel_loss(x, torch.zeros(1, 1, 99), torch.ones(1, 1, 100), 24000)
    with pytest.raises(ValueError, match="mono audio"):
        small_discriminator(24000)(torch.zeros(1, 2, 100))
