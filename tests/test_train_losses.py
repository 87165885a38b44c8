"""The reconstruction loss: zero on a perfect output, blind to the padded tail, per-item means."""

import torch

from helpers_train import one_thread  # noqa: F401
from snac.train.losses import masked_l1, reconstruction_loss, stft_terms

N_FFTS = [64, 256]


def signals(b: int = 3, t: int = 4096, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = 0.3 * torch.randn(b, 1, t, generator=g)
    return target, target + 0.1 * torch.randn(b, 1, t, generator=g)


def test_a_perfect_prediction_costs_nothing_and_each_term_is_named():
    target, pred = signals()
    mask = torch.ones_like(target)
    perfect = reconstruction_loss(target.clone(), target, mask, N_FFTS, 1.0, 1.0)
    assert set(perfect) == {"loss/total", "loss/l1", "loss/stft"}
    assert all(v.abs().item() < 1e-6 for v in perfect.values())
    noisy = reconstruction_loss(pred, target, mask, N_FFTS, 2.0, 0.5)
    assert torch.allclose(noisy["loss/total"], 2.0 * noisy["loss/l1"] + 0.5 * noisy["loss/stft"])


def test_the_padded_tail_changes_nothing():
    target, pred = signals()
    mask = torch.ones_like(target)
    mask[0, :, 3000:] = 0  # item 0 has 3000 real samples
    target[0, :, 3000:] = 0
    base = reconstruction_loss(pred, target, mask, N_FFTS, 1.0, 1.0)
    wild = pred.clone()
    wild[0, :, 3000:] = 5.0 * torch.randn(1, 1096)  # whatever the model outputs over padding
    again = reconstruction_loss(wild, target, mask, N_FFTS, 1.0, 1.0)
    assert all(torch.allclose(base[k], again[k]) for k in base)
    noisy_target = target.clone()
    noisy_target[0, :, 3000:] = 5.0 * torch.randn(1, 1096)  # a target tail the mask excludes
    again = reconstruction_loss(pred, noisy_target, mask, N_FFTS, 1.0, 1.0)
    assert all(torch.allclose(base[k], again[k]) for k in base)


def test_losses_are_means_of_per_item_values_so_batching_does_not_matter():
    target, pred = signals(b=4)
    mask = torch.ones_like(target)
    mask[1, :, 2000:] = 0
    whole = reconstruction_loss(pred, target, mask, N_FFTS, 1.0, 1.0, reduce=False)
    halves = [reconstruction_loss(pred[i:i + 2], target[i:i + 2], mask[i:i + 2], N_FFTS, 1.0, 1.0,
                                  reduce=False) for i in (0, 2)]
    for k in whole:
        assert torch.allclose(whole[k], torch.cat([h[k] for h in halves]), atol=1e-6)


def test_silent_target_does_not_explode_spectral_convergence():
    """A window of digital silence once gave a 1e7 STFT loss: the SC denominator is floored."""
    t = 8192
    target = torch.zeros(2, 1, t)
    target[1] = 0.3 * torch.randn(1, t, generator=torch.Generator().manual_seed(1))
    pred = target + 1e-2 * torch.randn(2, 1, t, generator=torch.Generator().manual_seed(2))  # -40 dB noise
    per_item = reconstruction_loss(pred, target, torch.ones_like(target), N_FFTS, 0.0, 1.0, reduce=False)
    assert torch.isfinite(per_item["loss/stft"]).all()
    # log term ~ log(|S_p| / floor), the floor at 16-bit noise on silence: ~7; SC is ~1 at the -40 dB
    # floor instead of |S_p| / 1e-5
    assert per_item["loss/stft"][0] < 12.0
    # on a loud target the floor is far below the target's norm: plain spectral convergence
    from snac.train.losses import _magnitude
    s_t, s_p = _magnitude(target[1], 64), _magnitude(pred[1], 64)
    plain_sc = float((s_t - s_p).norm() / s_t.norm())
    assert plain_sc < 0.1


def test_a_padded_item_costs_what_the_same_item_unpadded_costs():
    # L1 and the STFT log term are means over the real audio only: padding must not dilute them
    target, pred = signals(b=1, t=3000, seed=3)
    pad = torch.randn(1, 1, 1000, generator=torch.Generator().manual_seed(4))
    padded_t, padded_p = torch.cat([target, pad], -1), torch.cat([pred, 2 * pad], -1)
    mask = torch.cat([torch.ones(1, 1, 3000), torch.zeros(1, 1, 1000)], -1)
    l1 = masked_l1(pred, target, torch.ones_like(target))
    assert torch.allclose(masked_l1(padded_p, padded_t, mask), l1, rtol=1e-6)
    assert torch.allclose(l1, (pred - target).abs().mean(), rtol=1e-6)  # the plain mean
    for n_fft in N_FFTS:
        _, log_whole = stft_terms(pred.flatten(1), target.flatten(1), torch.tensor([3000.0]), n_fft)
        _, log_padded = stft_terms((padded_p * mask).flatten(1), (padded_t * mask).flatten(1),
                                   torch.tensor([3000.0]), n_fft)
        assert torch.allclose(log_padded, log_whole, rtol=1e-5), n_fft


def test_spectral_convergence_on_a_loud_item_is_the_plain_formula():
    # reference: ||S_t - S_p||_F / ||S_t||_F from torch.stft directly (Hann, hop n/4, centred,
    # zero padded); on a loud item (RMS 0.3, 30x the -40 dBFS floor) the floor must not act
    target, pred = signals(b=1, t=8192, seed=5)
    for n_fft in N_FFTS:
        def mag(x):
            return torch.stft(x.flatten(1), n_fft, hop_length=n_fft // 4, window=torch.hann_window(n_fft),
                              center=True, pad_mode="constant", return_complex=True).abs()

        plain = (mag(target) - mag(pred)).norm() / mag(target).norm()
        sc, _ = stft_terms(pred.flatten(1), target.flatten(1), torch.tensor([8192.0]), n_fft)
        assert torch.allclose(sc, plain, rtol=1e-5), (n_fft, sc, plain)
