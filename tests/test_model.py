"""SNAC lengths, shapes, errors, weight-norm handling and save/load round trips."""

import json
import math

import pytest
import torch

from snac.presets import SNAC_24KHZ, TINY_24KHZ, TINY_32KHZ
from snac import SNAC, SNAC48, load_model
from snac.layers import set_weight_norm_weight, wn_conv1d


def layout_count(cfg: dict) -> tuple[int, int]:
    """(tensors, parameters) of a SNAC without attention, counted from the architecture as the
    upstream source describes it (not from our modules): every conv is weight-normed (dim 0:
    magnitude (out, 1, 1) or, transposed, (in, 1, 1); direction; bias), a Snake is one (1, C, 1)
    alpha, a NoiseBlock one bias-free 1x1 conv, a quantizer in_proj/out_proj 1x1 convs + codebook."""
    assert not cfg["attn_window_size"], "this count covers the attention-free 24 kHz layout"
    tensors = params = 0

    def conv(c_in, c_out, k, groups=1, bias=True, transposed=False):
        nonlocal tensors, params
        tensors += 2 + bias
        params += (c_in if transposed else c_out) + c_in * c_out // groups * k + (c_out if bias else 0)

    def snake(c):
        nonlocal tensors, params
        tensors += 1
        params += c

    def residual_units(c):  # dilations 1, 3, 9: Snake, k7 conv (depthwise), Snake, 1x1 conv
        for _ in range(3):
            snake(c)
            conv(c, c, 7, groups=c if cfg["depthwise"] else 1)
            snake(c)
            conv(c, c, 1)

    d = cfg["encoder_dim"]
    conv(1, d, 7)
    for stride in cfg["encoder_rates"]:  # residual units, Snake, strided conv (k = 2 * stride) doubling d
        residual_units(d)
        snake(d)
        conv(d, 2 * d, 2 * stride)
        d *= 2
    latent = d
    conv(latent, latent, 7, groups=latent if cfg["depthwise"] else 1)
    for _ in cfg["vq_strides"]:
        conv(latent, cfg["codebook_dim"], 1)
        conv(cfg["codebook_dim"], latent, 1)
        tensors += 1
        params += cfg["codebook_size"] * cfg["codebook_dim"]
    c = cfg["decoder_dim"]
    if cfg["depthwise"]:  # depthwise k7, then 1x1 to the decoder width
        conv(latent, latent, 7, groups=latent)
        conv(latent, c, 1)
    else:  # one dense k7 conv
        conv(latent, c, 7)
    for rate in cfg["decoder_rates"]:  # Snake, transposed conv halving the channels, noise, residual units
        snake(c)
        conv(c, c // 2, 2 * rate, transposed=True)
        c //= 2
        if cfg["noise"]:
            conv(c, c, 1, bias=False)
        residual_units(c)
    snake(c)
    conv(c, 1, 7)
    return tensors, params


def test_full_24khz_keys_and_parameter_count():
    model = SNAC(**SNAC_24KHZ)
    sd = model.state_dict()
    counted = layout_count(SNAC_24KHZ)
    assert (len(sd), sum(p.numel() for p in model.parameters())) == counted
    # the published hubertsiuzdak/snac_24khz checkpoint holds 269 tensors and 19,842,914
    # parameters (counted in its pytorch_model.bin; the upstream snac 1.2.1 package builds the same
    # layout, which tests/test_model_parity.py compares key by key): the count above must agree
    assert counted == (269, 19_842_914)
    # final layers of the decoder sit at model.6 (Snake), model.7 (conv), model.8 (Tanh)
    c_out = SNAC_24KHZ["decoder_dim"] // 2 ** len(SNAC_24KHZ["decoder_rates"])
    assert sd["decoder.model.6.alpha"].shape == (1, c_out, 1)
    assert sd["decoder.model.7.parametrizations.weight.original1"].shape == (1, c_out, 7)
    # a transposed conv's weight-norm magnitude is (in_channels, 1, 1)
    assert sd["decoder.model.2.block.1.parametrizations.weight.original0"].shape == (SNAC_24KHZ["decoder_dim"], 1, 1)
    assert sd["quantizer.quantizers.2.codebook.weight"].shape == (SNAC_24KHZ["codebook_size"], SNAC_24KHZ["codebook_dim"])
    hop = math.prod(SNAC_24KHZ["encoder_rates"])
    assert model.hop_length == hop and model.pad_multiple == hop * SNAC_24KHZ["vq_strides"][0]


@pytest.mark.parametrize("flags", [dict(), dict(noise=False), dict(depthwise=False)], ids=["tiny", "no-noise", "dense"])
def test_layout_count_of_other_configs(flags):
    cfg = dict(TINY_24KHZ, **flags)
    model = SNAC(**cfg)
    assert (len(model.state_dict()), sum(p.numel() for p in model.parameters())) == layout_count(cfg)


@pytest.mark.parametrize("cfg", [TINY_24KHZ, TINY_32KHZ], ids=["24k", "32k-attn"])
@pytest.mark.parametrize("extra", [-1, 0, 1, 999])
def test_odd_lengths_pad_and_trim(cfg, extra):
    model = SNAC(**cfg).eval()
    hop = math.prod(cfg["encoder_rates"])
    pad_to = hop * math.lcm(cfg["vq_strides"][0], cfg["attn_window_size"] or 1)
    length = pad_to * 2 + extra
    audio = torch.randn(2, 1, length) * 0.1
    with torch.inference_mode():
        codes = model.encode(audio)
        frames = math.ceil(length / pad_to) * pad_to // hop
        assert [c.shape for c in codes] == [(2, frames // s) for s in cfg["vq_strides"]]
        # every scale spans the same time: len_i * stride_i equal
        assert len({c.shape[-1] * s for c, s in zip(codes, cfg["vq_strides"])}) == 1
        decoded = model.decode(codes)
        assert decoded.shape == (2, 1, frames * hop)
        out, _ = model(audio)
        assert out.shape == audio.shape


def test_one_second_24khz_code_lengths():
    model = SNAC(**TINY_24KHZ).eval()
    with torch.inference_mode():
        codes = model.encode(torch.zeros(1, 1, 24000))
    assert [c.shape[-1] for c in codes] == [12, 24, 48]


@pytest.mark.parametrize("shape", [(24000,), (1, 24000), (1, 2, 24000)])
def test_bad_input_shape_names_expected_shape(shape):
    with pytest.raises(ValueError, match=r"\(B, 1, T\) at 24000 Hz"):
        SNAC(**TINY_24KHZ).encode(torch.zeros(shape))


def test_codes_of_mismatched_lengths_are_refused():
    model = SNAC(**TINY_24KHZ)
    codes = [torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long),
             torch.zeros(1, 9, dtype=torch.long)]
    with pytest.raises(ValueError, match="same time span"):
        model.decode(codes)


def test_set_weight_norm_weight_changes_the_effective_weight():
    conv = wn_conv1d(3, 2, kernel_size=5)
    target = torch.randn(2, 3, 5)
    conv.weight.data.copy_(target)  # the pitfall: the parametrization recomputes .weight
    assert not torch.allclose(conv.weight, target)
    set_weight_norm_weight(conv, target)
    assert torch.allclose(conv.weight, target, atol=1e-6)


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = SNAC(**TINY_32KHZ)
    model.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["vq_strides"] == [8, 4, 2, 1]
    loaded = SNAC.from_pretrained(tmp_path / "m")
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert type(load_model(tmp_path / "m")) is SNAC


def test_from_pretrained_reads_pytorch_model_bin(tmp_path):
    model = SNAC(**TINY_24KHZ)
    (tmp_path / "config.json").write_text(json.dumps(TINY_24KHZ))
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    loaded = SNAC.from_pretrained(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


class _Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_checkpoint_with_pickled_code_is_refused(tmp_path, capsys):
    sd = SNAC(**TINY_24KHZ).state_dict()
    sd["evil"] = _Payload()
    (tmp_path / "config.json").write_text(json.dumps(TINY_24KHZ))
    torch.save(sd, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pickled code"):
        SNAC.from_pretrained(tmp_path)
    assert "pickled code ran" not in capsys.readouterr().out


def test_strict_loading_refuses_missing_keys(tmp_path):
    model = SNAC(**TINY_24KHZ)
    model.save_pretrained(tmp_path)
    cfg = dict(TINY_24KHZ, noise=False)  # no NoiseBlocks: the checkpoint has extra keys
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RuntimeError, match="Unexpected key"):
        SNAC.from_pretrained(tmp_path)


def test_missing_directory_and_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        SNAC.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(TINY_24KHZ))
    with pytest.raises(FileNotFoundError, match="no weights"):
        SNAC.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope does not exist"):
        SNAC.from_pretrained(tmp_path / "nope")


def test_hub_id_path_downloads_config_and_weights(tmp_path, monkeypatch):
    """The hub branch, with the download replaced by a local folder in the hub's layout."""
    repo = tmp_path / "hub" / "someone" / "snac_tiny"
    SNAC(**TINY_24KHZ).save_pretrained(repo)
    asked = []

    def fake_download(repo_id, filename, **hub_kwargs):
        asked.append((repo_id, filename))
        path = tmp_path / "hub" / repo_id / filename
        return str(path) if path.exists() else None

    monkeypatch.setattr("snac.hub._hub_download", fake_download)
    model = SNAC.from_pretrained("someone/snac_tiny")
    assert model.sampling_rate == 24000
    # upstream's file first: a cache that upstream snac filled is reused as it is
    assert asked == [("someone/snac_tiny", "config.json"), ("someone/snac_tiny", "pytorch_model.bin")]
    SNAC48.from_snac(model).save_pretrained(tmp_path / "hub" / "someone" / "snac48_tiny")
    assert isinstance(SNAC48.from_pretrained("someone/snac48_tiny"), SNAC48)
    with pytest.raises(ValueError, match="SNAC48.from_pretrained"):
        SNAC.from_pretrained("someone/snac48_tiny")


def test_hub_download_failure_is_one_clear_error(monkeypatch):
    def failing(repo_id, filename, **hub_kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr("snac.hub._hub_download", failing)
    monkeypatch.setattr("snac.hub.hub_unreachable", lambda: None)  # the hub answers; the download fails
    with pytest.raises(RuntimeError, match="could not download someone/x from the Hugging Face hub"):
        SNAC.from_pretrained("someone/x")


def test_snake_in_place_path_is_bit_identical_and_training_keeps_only_its_inputs():
    """Without autograd Snake runs in place (faster); it must be the same bits as the plain formula,
    in fp32, bf16 input and under autocast. With autograd the forward is the same bits too, the
    recomputing backward equals the plain formula's gradient to float rounding (and passes
    gradcheck in float64), and only x and alpha are kept for it (the plain one keeps 3 more
    activation-sized tensors)."""
    from snac.layers import snake

    def plain(x, a):
        return x + (a + 1e-9).reciprocal() * torch.sin(a * x).pow(2)

    torch.manual_seed(0)
    a = torch.rand(1, 8, 1) + 0.5
    for x in (torch.randn(2, 8, 999) * 3, (torch.randn(2, 8, 999) * 3).bfloat16()):
        with torch.inference_mode():
            assert torch.equal(snake(x, a), plain(x, a))
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(snake(x, a), plain(x, a))
        grads = []
        for fn, xin, ain in ((snake, x, a), (plain, x, a), (plain, x.double(), a.double())):
            xg, ag = xin.clone().requires_grad_(), ain.clone().requires_grad_()
            y = fn(xg, ag)
            (y.double() * torch.linspace(-1, 1, y.shape[-1], dtype=torch.float64)).square().sum().backward()
            grads.append((y.detach(), xg.grad, ag.grad))
        (y, gx, ga), (y_plain, gx_plain, ga_plain), (_, gx_64, ga_64) = grads
        assert torch.equal(y, y_plain) and gx.dtype == x.dtype and ga.dtype == a.dtype
        if x.dtype == torch.float32:
            torch.testing.assert_close(gx, gx_plain, rtol=1e-5, atol=1e-5 * gx_plain.abs().max().item())
            torch.testing.assert_close(ga, ga_plain, rtol=1e-5, atol=0)
        else:  # bf16 x: the plain one rounds its two terms of dy/dx to bf16 apart; this one rounds once
            assert (gx.double() - gx_64).abs().max() <= (gx_plain.double() - gx_64).abs().max()
            torch.testing.assert_close(ga.double(), ga_64, rtol=1e-5, atol=0)
    x64 = torch.randn(2, 3, 40, dtype=torch.float64, requires_grad=True)
    a64 = (torch.rand(1, 3, 1, dtype=torch.float64) + 0.2).requires_grad_()
    assert torch.autograd.gradcheck(snake, (x64, a64))
    x1 = torch.randn(1, 3, 1, dtype=torch.float64, requires_grad=True)  # B = T = 1: nothing to sum over
    assert torch.autograd.gradcheck(snake, (x1, a64))
    saved = {}
    for fn in (snake, plain):
        kept = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
            xg = torch.randn(2, 8, 999, requires_grad=True)
            fn(xg, a.clone().requires_grad_())
        saved[fn] = sum(t.numel() for t in kept if t.numel() > 8)  # activation-sized tensors
    assert saved[snake] == 2 * 8 * 999 and saved[plain] == 4 * 2 * 8 * 999, saved
