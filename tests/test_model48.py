"""SNAC48: lengths, smart initialisation, parameter groups, save/load."""

import json

import pytest
import torch
import torchaudio.functional as AF

from helpers_perturb import perturb_parameters_
from snac.presets import SNAC_24KHZ, TINY_24KHZ, TINY_32KHZ
from snac import SNAC, SNAC48, load_model
from snac.train.phases import parameter_groups


def snr_db(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    return float(10 * torch.log10(reference.pow(2).sum() / (reference - estimate).pow(2).sum()))


def speechlike(seconds: float, sr: int) -> torch.Tensor:
    t = torch.arange(int(seconds * sr)) / sr
    voiced = sum(torch.sin(2 * torch.pi * 140 * h * t) / h for h in range(1, 12))
    envelope = 0.5 + 0.5 * torch.sin(2 * torch.pi * 3 * t)
    return (0.2 * voiced * envelope).reshape(1, 1, -1)


@pytest.fixture(scope="module")
def full_base():
    """A full-size 24 kHz base with every parameter off its init (Snake alphas not 1, biases not
    0), so a copy the smart initialisation skips shows up as a difference."""
    torch.manual_seed(0)
    return perturb_parameters_(SNAC(**SNAC_24KHZ), seed=1, absolute=1e-3).eval()


def test_from_snac_copies_every_quantizer_and_trunk_tensor():
    base = perturb_parameters_(SNAC(**TINY_24KHZ), seed=2)
    model = SNAC48.from_snac(base)
    theirs = base.state_dict()
    ours = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    assert ours and all(k in theirs for k in ours)  # same names as in the base
    assert [k for k in ours if not torch.equal(ours[k], theirs[k])] == []
    # the head's Snake starts as the base's final Snake; its conv bias as the base's final bias
    n = len(model.decoder.model)
    assert torch.equal(model.head.snake.alpha, base.decoder.model[n].alpha)
    assert torch.equal(model.head.conv.bias, base.decoder.model[n + 1].bias)


def test_decode_length_is_twice_the_base(full_base):
    model = SNAC48.from_snac(SNAC(**TINY_24KHZ)).eval()
    for n in (1, 3):
        codes = [torch.zeros(2, n * 4 // s, dtype=torch.long) for s in TINY_24KHZ["vq_strides"]]
        base_len = SNAC(**TINY_24KHZ).decode(codes).shape[-1]
        assert model.decode(codes).shape == (2, 1, 2 * base_len)
    assert model.sampling_rate == 48000 and model.factor == 2


def test_base_that_does_not_divide_48khz_is_refused():
    with pytest.raises(ValueError, match="divides 48000 Hz.*32000 Hz"):
        SNAC48.from_snac(SNAC(**TINY_32KHZ))


def test_smart_init_matches_stock_decode(full_base):
    """At step 0 the 48 kHz output keeps what the 24 kHz decoder does (same noise draws)."""
    model = SNAC48.from_snac(full_base).eval()
    with torch.inference_mode():
        codes = full_base.encode(speechlike(2.0, 24000))
        torch.manual_seed(7)
        stock = full_base.decode(codes)
        torch.manual_seed(7)  # the trunk draws the same noise; the head's noise gain starts at 0
        out48 = model.decode(codes)
    # every second output sample is the stock output, by construction of the initialisation
    assert (out48[..., ::2] - stock).abs().max() < 1e-5
    snr = snr_db(stock, AF.resample(out48, 48000, 24000))
    print(f"smart-init SNR (48k resampled to 24k vs stock, random full-size 24 kHz base): {snr:.1f} dB")
    assert snr >= 20.0
    # what limits that figure is the resampler's transition band near 12 kHz (a random base puts
    # energy there); below 8 kHz the two agree far better
    lowpass = lambda x: AF.lowpass_biquad(AF.lowpass_biquad(x, 24000, 8000), 24000, 8000)  # noqa: E731
    snr_low = snr_db(lowpass(stock), lowpass(AF.resample(out48, 48000, 24000)))
    print(f"smart-init SNR below 8 kHz: {snr_low:.1f} dB")
    assert snr_low >= 35.0


def test_smart_init_goes_through_the_parametrization(full_base):
    model = SNAC48.from_snac(full_base)
    head = model.head
    # the head's final conv is the base kernel dilated by 2 at the even taps around the centre
    base_w = full_base.decoder.model[7].weight
    centre = head.conv.weight.shape[-1] // 2
    assert torch.allclose(head.conv.weight[..., centre - 6:centre + 7:2], base_w, atol=1e-6)
    assert torch.equal(head.snake.alpha, full_base.decoder.model[6].alpha)
    for unit in head.residual:  # identities at init through zero magnitude
        assert torch.count_nonzero(unit.block[-1].weight) == 0
    assert torch.count_nonzero(head.noise.linear.weight) == 0


def test_parameter_groups_split_head_trunk_and_vq():
    model = SNAC48.from_snac(SNAC(**TINY_24KHZ))
    groups = parameter_groups(model)
    ids = {name: {id(p) for p in ps} for name, ps in groups.items()}
    assert not (ids["head"] & ids["decoder"]) and not (ids["head"] & ids["frozen"])
    assert not (ids["decoder"] & ids["frozen"])
    assert set().union(*ids.values()) == {id(p) for p in model.parameters()}
    assert id(model.head.snake.alpha) in ids["head"]  # the new Snake must reach the optimizer
    assert all(id(p) in ids["frozen"] for p in model.quantizer.parameters())
    base_groups = parameter_groups(SNAC(**TINY_24KHZ))
    c = TINY_24KHZ["decoder_dim"] // 2 ** len(TINY_24KHZ["decoder_rates"])  # channels at the output
    assert sum(p.numel() for p in base_groups["head"]) == c + (c * 7 + 1 + 1)  # Snake + conv (v, g, b)


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = SNAC48.from_snac(SNAC(**TINY_24KHZ))
    model.save_pretrained(tmp_path / "m48")
    loaded = SNAC48.from_pretrained(tmp_path / "m48")
    assert loaded.config == model.config
    assert loaded.config["base"]["vq_strides"] == [4, 2, 1]
    sd, sd2 = model.state_dict(), loaded.state_dict()
    assert list(sd) == list(sd2) and all(torch.equal(sd[k], sd2[k]) for k in sd)
    assert isinstance(load_model(tmp_path / "m48"), SNAC48)
    with pytest.raises(ValueError, match="48 kHz model"):
        SNAC.from_pretrained(tmp_path / "m48")
    codes = [torch.randint(0, 64, (1, 8 // s)) for s in (4, 2, 1)]
    torch.manual_seed(3)
    a = model.eval().decode(codes)
    torch.manual_seed(3)
    assert torch.equal(a, loaded.decode(codes))


def test_load_model_reads_a_training_checkpoint(tmp_path):
    model = SNAC48.from_snac(SNAC(**TINY_24KHZ))
    torch.save({"model": model.state_dict(), "model_config": model.config, "iteration": 3},
               tmp_path / "ckpt.pt")
    loaded = load_model(tmp_path / "ckpt.pt")
    assert isinstance(loaded, SNAC48)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


# ---------------------------------------------------------------- the lite head
LITE = {"type": "lite", "branch_channels": 8}


def test_lite_head_starts_as_the_stock_decode_interpolated(full_base):
    """Step 0 of the lite head with branch_init 0: every second sample IS the stock decode (exactly:
    the interpolator is 1 at 0 and exactly 0 at the other even taps), the samples between are the
    full head's start away from the file ends. With the default branch_init the branch adds a
    little (>= 40 dB below the decode), and every branch layer gets a gradient at step 0."""
    exact = SNAC48.from_snac(full_base, head={**LITE, "branch_init": 0.0}).eval()
    lite = SNAC48.from_snac(full_base, head=LITE)
    full = SNAC48.from_snac(full_base).eval()
    with torch.inference_mode():
        codes = full_base.encode(speechlike(1.0, 24000))
        outs = []
        for model in (full_base, exact, full, lite):
            torch.manual_seed(7)
            outs.append(model.decode(codes))
    stock, out_exact, out_full, out_lite = outs
    assert torch.equal(out_exact[..., ::2], stock)
    edge = 2 * 64  # the full head's long final conv sees the zero padding differently near the ends
    assert (out_exact - out_full)[..., edge:-edge].abs().max() < 1e-4
    assert lite.config["head"] == {"type": "lite", "upsample_factor": 2, "branch_channels": 8, "interp_taps": 6,
                                   "branch_init": 1e-3, "branch_gain": 1.0}
    deviation = (out_lite - out_exact).pow(2).mean().sqrt() / stock.pow(2).mean().sqrt()
    assert 0 < deviation < 1e-2, deviation
    torch.manual_seed(7)
    lite.decode([c.clone() for c in codes]).square().mean().backward()
    branch = [m for name, m in lite.head.named_children() if name.startswith("branch_")]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for m in branch for p in m.parameters())


def test_lite_head_round_trip_trains_and_old_configs_stay_full(tmp_path):
    torch.manual_seed(0)
    base = SNAC(**SNAC_24KHZ)
    lite = perturb_parameters_(SNAC48.from_snac(base, head={"type": "lite"}), seed=3)
    assert lite.config["head"]["branch_channels"] == 16  # min(16, the trunk's 64 channels)
    lite.save_pretrained(tmp_path / "lite")
    again = SNAC48.from_pretrained(tmp_path / "lite")
    assert isinstance(again.head, type(lite.head)) and again.config == lite.config
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), lite.state_dict().values()))
    # a lite export of before branch_gain (trained without one) loads with gain 1: the same decode
    legacy = json.loads((tmp_path / "lite" / "config.json").read_text())
    legacy["head"] = {k: v for k, v in legacy["head"].items() if k not in ("branch_gain", "branch_init")}
    (tmp_path / "lite" / "config.json").write_text(json.dumps(legacy))
    old_lite = SNAC48.from_pretrained(tmp_path / "lite")
    assert old_lite.head.branch_gain == 1.0 and old_lite.config["head"]["branch_gain"] == 1.0
    # a lite export of 2026-12-06 (trained with a fixed gain of 10) keeps it: the same decode
    (tmp_path / "lite" / "config.json").write_text(json.dumps({**legacy, "head": {**legacy["head"], "branch_gain": 10.0}}))
    gain10 = SNAC48.from_pretrained(tmp_path / "lite")
    assert gain10.head.branch_gain == 10.0 and gain10.config["head"]["branch_gain"] == 10.0
    codes = [torch.randint(0, 64, (1, 4 * 2 ** i)) for i in range(3)]
    with torch.inference_mode():
        torch.manual_seed(1)
        tenfold = gain10.eval().decode(codes)
        torch.manual_seed(1)
        plain = old_lite.eval().decode(codes)
    assert not torch.equal(tenfold, plain)
    # the branch's zero output conv still gets a gradient (through its weight-norm magnitude)
    fresh = SNAC48.from_snac(SNAC(**TINY_24KHZ), head=LITE)
    codes = [torch.randint(0, 64, (1, 4 * 2 ** i)) for i in range(3)]
    fresh.decode(codes).pow(2).sum().backward()
    assert fresh.head.branch_out.parametrizations.weight.original0.grad.abs().sum() > 0
    assert {id(p) for p in fresh.head.parameters()} == {id(p) for p in parameter_groups(fresh)["head"]}
    # a saved config of before the head types (no "type") builds today's full head
    old = SNAC48(TINY_24KHZ, head={"upsample_factor": 2, "final_kernel": 35})
    assert old.config["head"]["type"] == "full" and type(old.head).__name__ == "UpsampleHead"
    with pytest.raises(ValueError, match="head type 'tiny'"):
        SNAC48(TINY_24KHZ, head={"type": "tiny"})


# ---------------------------------------------------------------- the sinc head
def test_sinc_upsampler_keeps_the_samples_and_leaves_no_image():
    """A 9 kHz tone at 24 kHz, upsampled x2: the learned upsampler at its init (zero-stuffing) puts
    an image as loud as the tone at 24 - 9 = 15 kHz; the sinc head's fixed upsampler leaves none."""
    from snac.model48 import SincUpsample, upsampler

    t = torch.arange(4800) / 24000
    tone = torch.sin(2 * torch.pi * 9000 * t).reshape(1, 1, -1).repeat(1, 3, 1)
    sinc = SincUpsample(3, 2, cutoff=1.0)  # at cutoff 1 the kept samples stay exactly
    learned = upsampler(3, 2)
    with torch.no_grad():
        from snac.layers import set_weight_norm_weight
        w = torch.zeros_like(learned.weight)
        w[torch.arange(3), torch.arange(3), learned.padding[0]] = 1.0
        set_weight_norm_weight(learned, w)
        learned.bias.zero_()
        outs = {name: up(tone)[0, 0] for name, up in (("sinc", sinc), ("learned", learned))}
    assert torch.allclose(outs["sinc"][::2], tone[0, 0], atol=1e-6)  # the kept samples stay
    for factor, taps, cutoff in ((2, 48, 0.94), (3, 4, 0.9)):  # polyphase == zero-stuff + kernel (streaming's form)
        up = SincUpsample(4, factor, taps, cutoff)
        x = torch.randn(2, 4, 37, dtype=torch.float64)
        stuffed = x.new_zeros(2, 4, factor * 37)
        stuffed[..., ::factor] = x
        direct = torch.nn.functional.conv1d(stuffed, up.kernel.double(), padding=up.kernel.shape[-1] // 2, groups=4)
        assert torch.allclose(up(x), direct, atol=1e-12)
    for name, y in outs.items():
        y = y[1200:-1200] * torch.hann_window(len(y) - 2400, dtype=y.dtype)  # away from the ends
        spec = torch.fft.rfft(y).abs().pow(2)
        freqs = torch.fft.rfftfreq(len(y), 1 / 48000)
        at = lambda f: spec[(freqs - f).abs() < 100].max()  # noqa: E731
        image_db = float(10 * torch.log10(at(15000) / at(9000)))
        print(f"{name}: image at 15 kHz {image_db:.1f} dB re the 9 kHz tone")
        assert (image_db < -80) if name == "sinc" else (image_db > -1)


def test_sinc_head_starts_with_the_stock_samples_and_round_trips(tmp_path):
    base = perturb_parameters_(SNAC(**TINY_24KHZ), seed=5).eval()
    model = SNAC48.from_snac(base, head={"type": "sinc"}).eval()
    assert model.config["head"] == {"type": "sinc", "upsample_factor": 2, "final_kernel": 35, "sinc_taps": 48,
                                    "sinc_cutoff": 0.94}
    exact = SNAC48.from_snac(base, head={"type": "sinc", "sinc_cutoff": 1.0}).eval()
    with torch.inference_mode():
        codes = base.encode(speechlike(1.0, 24000))
        outs = []
        for m in (base, exact, model):
            torch.manual_seed(7)  # the trunk draws the same noise; the head's noise gain starts at 0
            outs.append(m.decode(codes))
    stock, out_exact, out48 = outs
    assert (out_exact[..., ::2] - stock).abs().max() < 1e-5  # cutoff 1: the stock samples exactly
    # the default cutoff (0.94 x 12 kHz) leaves out the features' top kHz, and the Snake now runs on
    # interpolated features (not linear between the kept samples): close to stock below 10 kHz, not
    # equal (22.6 dB on this random tiny base; cutoff 1: 26.7; the full head's start: 33.1)
    lowpass = lambda x: AF.lowpass_biquad(AF.lowpass_biquad(x, 24000, 10000), 24000, 10000)  # noqa: E731
    snr = snr_db(lowpass(stock), lowpass(AF.resample(out48, 48000, 24000)))
    print(f"sinc head at init, default cutoff: SNR below 10 kHz vs stock {snr:.1f} dB")
    assert snr >= 18
    assert sum(p.numel() for p in model.head.upsample.parameters()) == 0  # nothing to learn there
    trained = perturb_parameters_(model, seed=6)
    trained.save_pretrained(tmp_path / "sinc")
    again = SNAC48.from_pretrained(tmp_path / "sinc")
    assert again.config == trained.config
    with torch.inference_mode():
        torch.manual_seed(8)
        reloaded = again.decode(codes)
        torch.manual_seed(8)  # the same noise draws
        assert torch.equal(reloaded, trained.eval().decode(codes))
    with pytest.raises(ValueError, match="sinc_taps >= 1"):
        SNAC48(base.config, head={"type": "sinc", "sinc_taps": 0})
