"""Streaming decode (snac.stream): equal to the offline decode for any split, the latency the layers
imply and no more, position-seeded noise, the TTS token layout, one clear error per bad input."""

import copy
import random

import pytest
import torch

from helpers_perturb import perturb_parameters_
from snac import SNAC, SNAC48
from snac.infer import noise_disabled, position_noise
from snac.layers import NoiseBlock
from snac.presets import TINY_24KHZ, TINY_32KHZ
from snac.stream import StreamingDecoder, frames_from_interleaved, interleave

TOL = 1e-5
NAMES = ("snac24", "snac32_attention", "snac48_full", "snac48_lite", "snac48_sinc")


@pytest.fixture(scope="module")
def models():
    base = perturb_parameters_(SNAC(**TINY_24KHZ).eval(), 1)
    return {
        "snac24": base,
        # attention windows of 32 latent frames = 4 coarse frames: the output comes a window at a time
        "snac32_attention": perturb_parameters_(SNAC(**TINY_32KHZ).eval(), 2),
        "snac48_full": perturb_parameters_(SNAC48.from_snac(base).eval(), 3),
        "snac48_lite": perturb_parameters_(SNAC48.from_snac(base, head={"type": "lite"}).eval(), 4),
        "snac48_sinc": perturb_parameters_(SNAC48.from_snac(base, head={"type": "sinc"}).eval(), 5),
    }


def random_codes(model, frames: int, batch: int = 2, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    s0, size = model.vq_strides[0], 64  # the tiny presets' codebook_size
    return [torch.randint(0, size, (batch, frames * s0 // s), generator=gen) for s in model.vq_strides]


def frame_slice(codes, strides, start: int, stop: int) -> list[torch.Tensor]:
    return [c[:, start * strides[0] // s:stop * strides[0] // s] for c, s in zip(codes, strides)]


def stream(model, codes, sizes, lookahead_ms=None) -> tuple[torch.Tensor, list[int], StreamingDecoder]:
    """Push ``sizes`` frames at a time; returns (all output, samples out after each push, decoder)."""
    dec = StreamingDecoder(model, lookahead_ms)
    pieces, done, start = [], [], 0
    for k in sizes:
        pieces.append(dec.push(frame_slice(codes, model.vq_strides, start, start + k)))
        start += k
        done.append(sum(p.shape[-1] for p in pieces))
    pieces.append(dec.flush())
    return torch.cat(pieces, -1), done, dec


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("split", ["one_frame_at_a_time", "random_pushes"])
def test_stream_equals_offline_decode(models, name, split):
    model = models[name]
    frames = 12  # 3 attention windows for the 32 kHz config
    codes = random_codes(model, frames)
    rng = random.Random(name)
    sizes = [1] * frames
    if split == "random_pushes":
        sizes = []
        while sum(sizes) < frames:
            sizes.append(min(rng.randint(1, 5), frames - sum(sizes)))
    with noise_disabled(model), torch.no_grad():
        offline = model.decode(codes)
        out, _, _ = stream(model, codes, sizes)
    assert out.shape == offline.shape  # exactly the offline length, batch of 2 advancing together
    assert (out - offline).abs().max() <= TOL


@pytest.mark.parametrize("name", NAMES)
def test_seeded_noise_stream_equals_seeded_offline_decode(models, name):
    model = models[name]
    codes = random_codes(model, 8)
    with torch.no_grad():
        with noise_disabled(model):
            quiet = model.decode(codes)
        with position_noise(model, 7):
            offline = model.decode(codes)
            out, _, _ = stream(model, codes, [1, 3, 2, 2])
        with position_noise(model, 8):
            other_seed = model.decode(codes)
    assert (out - offline).abs().max() <= TOL
    assert (offline - quiet).abs().max() > 1e-3  # the noise is on
    assert (offline - other_seed).abs().max() > 1e-3  # and depends on the seed
    assert all(b.position_seed is None for b in model.modules() if isinstance(b, NoiseBlock))  # restored


def test_noise_block_default_draw_is_unchanged():
    """Without a position seed the NoiseBlock draws exactly as before (upstream parity)."""
    block = perturb_parameters_(NoiseBlock(4), 0)
    x = torch.randn(2, 4, 50)
    torch.manual_seed(3)
    with torch.no_grad():
        y = block(x)
        torch.manual_seed(3)
        expected = x + torch.randn(2, 1, 50) * block.linear(x)
    assert torch.equal(y, expected)


def decode_latent(model, z: torch.Tensor) -> torch.Tensor:
    """The decoder alone: quantized latent (B, D, T) -> audio."""
    return model.head(model.decoder.model(z)) if isinstance(model, SNAC48) else model.decoder(z)


@pytest.mark.parametrize("name", NAMES)
def test_latency_is_the_receptive_field(models, name):
    """After each push, the emitted samples do not depend on any later frame (the offline decode with
    the next frame's codes changed keeps them; their gradient on the later latent is exactly 0), and
    the first sample held back does depend on it (a nonzero gradient, in float64: through the
    receptive field's edge taps the effect is far below float32 rounding). So the latency is what the
    layers need, no more and no less."""
    model = models[name]
    frames, s0 = 12, model.vq_strides[0]
    codes = random_codes(model, frames, batch=1)
    exact = copy.deepcopy(model).double()
    with noise_disabled(model), noise_disabled(exact):
        with torch.no_grad():
            offline = model.decode(codes)
            _, done, dec = stream(model, codes, [1] * frames)
            z = exact.quantizer.from_codes(codes)
        assert dec.latency_samples == max((n + 1) * dec.samples_per_frame - e for n, e in enumerate(done))
        z.requires_grad_(True)
        y = decode_latent(exact, z)[0, 0]
        for n in range(1, frames):
            emitted = done[n - 1]  # after frames 0 .. n-1
            held, = torch.autograd.grad(y[emitted], z, retain_graph=True)
            assert held[..., n * s0:].abs().max() > 0
            if emitted:
                last, = torch.autograd.grad(y[emitted - 1], z, retain_graph=True)
                assert torch.count_nonzero(last[..., n * s0:]) == 0
            changed = [c.clone() for c in codes]
            for c, s in zip(changed, model.vq_strides):  # every code of frame n (the first not yet pushed)
                per = s0 // s
                c[:, n * per:(n + 1) * per] = (c[:, n * per:(n + 1) * per] + 17) % 64
            with torch.no_grad():
                moved = model.decode(changed)
            assert torch.allclose(moved[..., :emitted], offline[..., :emitted], rtol=0, atol=1e-6)
            assert not torch.allclose(moved, offline, rtol=0, atol=1e-6)


def test_snac_24khz_layout_latency_by_hand(models):
    """The tiny 24 kHz preset has snac_24khz's layout (rates 8 8 4 2, hop 512): derived by hand,
    k7 input conv 3 frames, then per block the transposed conv's padding and three residual units
    (3 + 9 + 27 samples) at that block's rate, then the k7 output conv."""
    spf, by_hand, scale = 512, 3 * 512, 512
    for rate in (8, 8, 4, 2):
        scale //= rate
        by_hand += ((rate + 1) // 2 + 39) * scale
    by_hand += 3
    assert StreamingDecoder(models["snac24"]).latency_samples == by_hand == 4757


@pytest.mark.parametrize("name", ["snac24", "snac48_lite"])
def test_short_lookahead_emits_on_time_and_ends_at_offline_length(models, name):
    model = models[name]
    frames = 10
    codes = random_codes(model, frames)
    with noise_disabled(model), torch.no_grad():
        offline = model.decode(codes)
        exact, _, dec_exact = stream(model, codes, [1] * frames)
        for ms in (0.0, 50.0):
            out, done, dec = stream(model, codes, [1] * frames, lookahead_ms=ms)
            lag = round(ms * dec.sampling_rate / 1000)
            assert dec.latency_samples == lag < dec_exact.latency_samples
            assert done == [max(0, (n + 1) * dec.samples_per_frame - lag) for n in range(frames)]
            assert out.shape == offline.shape
            d = (out - offline).abs().max()
            assert 1e-5 < d < 2.0  # approximate, not garbage
        same, _, dec = stream(model, codes, [1] * frames, lookahead_ms=1e6)  # more than needed: exact
    assert dec.latency_samples == dec_exact.latency_samples and torch.equal(same, exact)


def test_frames_from_interleaved_layout():
    tokens = torch.arange(14)  # two frames, strides 4/2/1
    c0, c1, c2 = frames_from_interleaved(tokens, [4, 2, 1])
    assert c0.tolist() == [[0, 7]]
    assert c1.tolist() == [[1, 4, 8, 11]]
    assert c2.tolist() == [[2, 3, 5, 6, 9, 10, 12, 13]]
    batch = torch.stack([tokens, tokens + 100])
    assert frames_from_interleaved(batch, [4, 2, 1])[2][1].tolist() == [t + 100 for t in c2[0].tolist()]
    codes = [torch.randint(0, 50, (2, 3 * 8 // s)) for s in (8, 4, 2, 1)]  # 15 tokens a frame
    back = frames_from_interleaved(interleave(codes, [8, 4, 2, 1]), [8, 4, 2, 1])
    assert all(torch.equal(a, b) for a, b in zip(back, codes))


@pytest.mark.parametrize("name", ["snac24", "snac48_full"])
def test_interleaved_tokens_stream_equals_offline(models, name):
    model = models[name]
    codes = random_codes(model, 6, batch=1)
    tokens = interleave(codes, model.vq_strides)[0]  # what a TTS emits, 7 tokens a frame
    dec = StreamingDecoder(model)
    with noise_disabled(model), torch.no_grad():
        offline = model.decode(codes)
        out = torch.cat([dec.push(frames_from_interleaved(tokens[j:j + 7], model.vq_strides, 64))
                         for j in range(0, len(tokens), 7)] + [dec.flush()], -1)
    assert (out - offline).abs().max() <= TOL


def test_bad_input_one_clear_error_each(models):
    model = models["snac24"]
    codes = random_codes(model, 2)
    dec = StreamingDecoder(model)
    with pytest.raises(ValueError, match="not a whole number"):
        dec.push([codes[0][:, :1], codes[1][:, :1], codes[2][:, :3]])  # a partial frame
    with pytest.raises(TypeError, match="integer tensor"):
        dec.push([c.float() for c in codes])
    bad = [c.clone() for c in codes]
    bad[1][0, 0] = 64
    with pytest.raises(ValueError, match=r"must lie in \[0, 64\)"):
        dec.push(bad)
    with pytest.raises(ValueError, match="list of 3 code tensors"):
        dec.push(codes[:2])
    dec.push(codes)
    with pytest.raises(ValueError, match="batch size 1"):
        dec.push([c[:1] for c in codes])
    dec.flush()
    with pytest.raises(RuntimeError, match="after flush"):
        dec.push(codes)
    with pytest.raises(ValueError, match="not whole frames of 7 tokens"):
        frames_from_interleaved(torch.arange(10), [4, 2, 1])
    with pytest.raises(ValueError, match=r"must be \[0, 64\)"):
        frames_from_interleaved(torch.arange(7) + 60, [4, 2, 1], codebook_size=64)
    with pytest.raises(TypeError, match="must be integers"):
        frames_from_interleaved(torch.zeros(7), [4, 2, 1])
    with pytest.raises(ValueError, match="lookahead_ms"):
        StreamingDecoder(model, lookahead_ms=-1)


def test_attention_stream_of_partial_windows_refused_at_flush(models):
    model = models["snac32_attention"]
    dec = StreamingDecoder(model)
    dec.push(random_codes(model, 2))  # half a window
    with pytest.raises(ValueError, match="attention window"):
        dec.flush()


def test_inference_stream_writes_the_seeded_offline_decode(models, tmp_path, capsys):
    """inference.py --stream: the wav written frame by frame is the position-seeded offline decode of
    the same codes (trimmed to the input), and the first-audio latency and speed are printed."""
    import importlib.util

    import numpy as np
    import soundfile as sf

    from snac.infer import load_codes

    spec = importlib.util.spec_from_file_location("inference_script", "inference.py")
    inference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(inference)
    base, m48 = models["snac24"], models["snac48_lite"]
    base.save_pretrained(tmp_path / "base")
    m48.save_pretrained(tmp_path / "m48")
    rate = base.sampling_rate
    audio = 0.3 * np.sin(2 * np.pi * 220 * np.arange(int(0.5 * rate)) / rate)
    sf.write(str(tmp_path / "in.wav"), audio.astype(np.float32), rate)
    out = tmp_path / "out.wav"
    assert inference.main(["--checkpoint", str(tmp_path / "m48"), "--base_model", str(tmp_path / "base"),
                           "--input", str(tmp_path / "in.wav"), "--output", str(out), "--device", "cpu",
                           "--stream", "--seed", "3", "--save_codes", "--subtype", "FLOAT"]) == 0
    printed = capsys.readouterr().out
    assert "first audio after" in printed and "x real time" in printed
    written, written_rate = sf.read(str(out), dtype="float32")
    codes, _ = load_codes(tmp_path / "out.codes.npz")
    with position_noise(m48, 3), torch.no_grad():
        offline = m48.decode([c[None] for c in codes])[0, 0, :len(written)].numpy()
    assert written_rate == m48.sampling_rate and len(written) == 2 * len(audio)
    assert np.abs(written - np.clip(offline, -1, 1)).max() <= TOL
    with pytest.raises(SystemExit):
        inference.parse_args(["--checkpoint", "x", "--input", "a", "--output", "b.wav", "--stream_lookahead_ms", "5"])
