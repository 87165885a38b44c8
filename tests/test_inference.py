"""inference.py and snac.infer: lengths and rates, chunked == whole decoding, codes round trip."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers_perturb import perturb_parameters_

from snac.presets import TINY_24KHZ, TINY_32KHZ
from snac import SNAC, SNAC48, load_model
from snac.audio import load_audio, resample
from snac.infer import decode_codes, decoder_context_frames, encode_audio, load_codes, noise_disabled

ROOT = Path(__file__).resolve().parents[1]


def _load_script():
    spec = importlib.util.spec_from_file_location("inference_script", ROOT / "inference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


inference = _load_script()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny random base in hub layout, its SNAC48 as an exported dir and as a training checkpoint."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    base = SNAC(**TINY_24KHZ).eval()
    with torch.no_grad():  # off the initial values, so a weight that is not loaded shows
        for p in base.parameters():
            p.add_(0.05 * torch.randn_like(p))
    base.save_pretrained(root / "base")
    m48 = SNAC48.from_snac(base).eval()
    m48.save_pretrained(root / "m48")
    torch.save({"model": m48.state_dict(), "model_config": m48.config,
                "config": {"pretrained_model": str(root / "base")}}, root / "ckpt48.pt")
    torch.save({"model": base.state_dict(), "model_config": base.config}, root / "ckpt24.pt")
    return root


def _write(path: Path, seconds: float, rate: int, channels: int = 1, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    x = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(n)
    # channels differ (gain and noise), so a downmix that kept channel 0 would not pass
    data = np.stack([x * (1 - 0.3 * c) + 0.05 * rng.standard_normal(n) for c in range(channels)],
                    axis=1) if channels > 1 else x
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data.astype(np.float32), rate)
    return n


def library_decode(model_spec, base_dir: Path, audio_path: Path, chunk_seconds=30.0, seed=0) -> np.ndarray:
    """What the library gives for a file: whole-file read + resample, chunked encode, seeded decode."""
    base = SNAC.from_pretrained(base_dir)
    audio, rate = load_audio(audio_path, mono=True)
    codes = encode_audio(base, resample(audio, rate, base.sampling_rate), chunk_seconds)
    return decode_codes(load_model(model_spec).eval(), codes, chunk_seconds, seed=seed)


@pytest.mark.parametrize("rate,channels", [(16000, 1), (44100, 2), (48000, 1), (24000, 3)])
def test_any_rate_and_channels_give_48khz_trimmed_to_input_duration(models, tmp_path, rate, channels):
    n = _write(tmp_path / "in.wav", 1.37, rate, channels)
    out = tmp_path / "out.wav"
    assert inference.main(["--checkpoint", str(models / "ckpt48.pt"), "--input", str(tmp_path / "in.wav"),
                           "--output", str(out), "--device", "cpu", "--subtype", "FLOAT",
                           "--chunk_seconds", "0.5"]) == 0
    info = sf.info(str(out))
    assert (info.samplerate, info.channels) == (48000, 1)
    assert info.frames == math.ceil(n * 48000 / rate)
    # the streamed read/resample/encode and the seeded chunked decode are the library's, sample for sample
    written, _ = sf.read(str(out), dtype="float32")
    expected = library_decode(models / "ckpt48.pt", models / "base", tmp_path / "in.wav", 0.5)
    np.testing.assert_allclose(written, np.clip(expected[:info.frames], -1, 1), rtol=0, atol=1e-5)


def test_folder_keeps_layout_and_writes_codes_and_stock_decode(models, tmp_path):
    n_a = _write(tmp_path / "in" / "a.flac", 0.9, 22050)
    n_b = _write(tmp_path / "in" / "deep" / "er" / "b.wav", 2.1, 48000, 2)
    out = tmp_path / "out"
    assert inference.main(["--checkpoint", str(models / "m48"), "--base_model", str(models / "base"),
                           "--input", str(tmp_path / "in"), "--output", str(out), "--device", "cpu",
                           "--save_codes", "--compare", "--seed", "5", "--subtype", "FLOAT"]) == 0
    assert sf.info(str(out / "a.wav")).frames == math.ceil(n_a * 48000 / 22050)
    assert sf.info(str(out / "deep" / "er" / "b.wav")).frames == n_b
    stock = sf.info(str(out / "deep" / "er" / "b.stock_24khz.wav"))
    assert (stock.samplerate, stock.frames) == (24000, n_b // 2)
    codes, meta = load_codes(out / "deep" / "er" / "b.codes.npz")
    assert [len(c) * s for c, s in zip(codes, TINY_24KHZ["vq_strides"])] == [len(codes[-1])] * 3
    assert meta["source_sample_rate"] == 48000 and meta["source_num_samples"] == n_b
    # both decodes equal the library's on the same codes and seed
    for name, spec, frames in [("b.wav", models / "m48", n_b), ("b.stock_24khz.wav", models / "base", n_b // 2)]:
        written, _ = sf.read(str(out / "deep" / "er" / name), dtype="float32")
        expected = decode_codes(load_model(spec), codes, 30.0, seed=5)[:frames]
        np.testing.assert_allclose(written, np.clip(expected, -1, 1), rtol=0, atol=1e-5)
    expected_b = library_decode(models / "m48", models / "base", tmp_path / "in" / "deep" / "er" / "b.wav", seed=5)
    written_b, _ = sf.read(str(out / "deep" / "er" / "b.wav"), dtype="float32")
    np.testing.assert_allclose(written_b, np.clip(expected_b[:n_b], -1, 1), rtol=0, atol=1e-5)


def test_from_codes_reproduces_the_audio_decode(models, tmp_path):
    _write(tmp_path / "x.wav", 1.0, 32000)
    args = ["--checkpoint", str(models / "ckpt48.pt"), "--device", "cpu", "--seed", "3"]
    assert inference.main(args + ["--input", str(tmp_path / "x.wav"), "--output", str(tmp_path / "a.wav"),
                                  "--save_codes"]) == 0
    assert inference.main(args + ["--from_codes", "--input", str(tmp_path / "a.codes.npz"),
                                  "--output", str(tmp_path / "b.wav")]) == 0
    a, _ = sf.read(str(tmp_path / "a.wav"))
    b, _ = sf.read(str(tmp_path / "b.wav"))
    assert a.shape == b.shape and np.array_equal(a, b)


def test_plain_snac_checkpoint_decodes_at_its_own_rate(models, tmp_path):
    n = _write(tmp_path / "x.wav", 0.5, 48000)
    assert inference.main(["--checkpoint", str(models / "ckpt24.pt"), "--input", str(tmp_path / "x.wav"),
                           "--output", str(tmp_path / "y.wav"), "--device", "cpu"]) == 0
    info = sf.info(str(tmp_path / "y.wav"))
    assert (info.samplerate, info.frames) == (24000, n // 2)


def test_base_model_of_another_config_is_refused_in_one_line(models, tmp_path):
    SNAC(**dict(TINY_24KHZ, codebook_size=32)).save_pretrained(tmp_path / "other")
    _write(tmp_path / "x.wav", 0.5, 24000)
    with pytest.raises(SystemExit) as e:
        inference.main(["--checkpoint", str(models / "m48"), "--base_model", str(tmp_path / "other"),
                        "--input", str(tmp_path / "x.wav"), "--output", str(tmp_path / "y.wav")])
    msg = str(e.value)
    assert "codebook_size: 32 vs 64" in msg and "\n" not in msg


@pytest.mark.parametrize("config,use_48", [(TINY_24KHZ, False), (TINY_24KHZ, True), (TINY_32KHZ, False),
                                           (TINY_24KHZ, "lite")])
def test_chunked_decoding_matches_whole_file_decoding(config, use_48):
    """With the noise off, overlapping chunks reproduce the whole-file decode to float rounding."""
    torch.manual_seed(1)
    base = SNAC(**config).eval()
    model = SNAC48.from_snac(base).eval() if use_48 is True else base
    if use_48 == "lite":  # trained-looking: the branch (zero at init) must be covered by the context too
        model = perturb_parameters_(SNAC48.from_snac(base, head={"type": "lite", "branch_channels": 4}), 5).eval()
    rate = config["sampling_rate"]
    audio = 0.1 * torch.randn(int(rate * 5.3))
    with torch.inference_mode():
        whole_codes = base.encode(audio.reshape(1, 1, -1))
    chunk_codes = encode_audio(base, audio, chunk_seconds=1.0)
    for w, c in zip(whole_codes, chunk_codes):
        assert torch.equal(w[0], c)
    with noise_disabled(model), torch.inference_mode():
        whole = model.decode(whole_codes)[0, 0].numpy()
        chunked = decode_codes(model, chunk_codes, chunk_seconds=1.0)
    assert chunked.shape == whole.shape
    assert np.abs(chunked - whole).max() < 1e-5
    # the computed context is needed: half of it leaves visible seams
    half = decoder_context_frames(model) // 2 // 4 * 4
    with noise_disabled(model), torch.inference_mode():
        short = decode_codes(model, chunk_codes, chunk_seconds=1.0, context_frames=half)
    assert np.abs(short - whole).max() > 1e-4


def test_noise_disabled_restores_the_noise():
    torch.manual_seed(0)
    model = SNAC(**TINY_24KHZ).eval()
    codes = [torch.randint(0, 64, (1, n)) for n in (2, 4, 8)]
    with torch.inference_mode():
        with noise_disabled(model):
            a, b = model.decode(codes), model.decode(codes)
        assert torch.equal(a, b)
        assert not torch.equal(model.decode(codes), model.decode(codes))


@pytest.mark.parametrize("precision,min_snr_db", [("bf16", 20.0), ("fp16", 35.0)])
def test_reduced_precision_decode_is_close_to_fp32_and_written_as_float(models, tmp_path, precision, min_snr_db):
    """--precision bf16/fp16 runs the decoder under autocast; the output stays float32 and close to
    the fp32 decode (noise off; measured on this tiny model: bf16 37 dB, fp16 56 dB SNR)."""
    torch.manual_seed(2)
    base = SNAC(**TINY_24KHZ).eval()
    model = perturb_parameters_(SNAC48.from_snac(base), seed=4).eval()
    with torch.inference_mode():
        codes = [c[0] for c in base.encode(0.1 * torch.randn(1, 1, 24000))]
    with noise_disabled(model):
        ref = decode_codes(model, codes, chunk_seconds=None)
        low = decode_codes(model, codes, chunk_seconds=None, precision=precision)
    assert low.dtype == np.float32 and low.shape == ref.shape
    snr = 10 * np.log10((ref ** 2).sum() / ((ref - low) ** 2).sum())
    assert min_snr_db < snr < 200, snr  # close, and not silently fp32
    with pytest.raises(ValueError, match="precision must be one of"):
        decode_codes(model, codes, precision="int8")
    _write(tmp_path / "x.wav", 0.5, 24000)
    assert inference.main(["--checkpoint", str(models / "ckpt48.pt"), "--input", str(tmp_path / "x.wav"),
                           "--output", str(tmp_path / "y.wav"), "--device", "cpu", "--precision", precision]) == 0
    assert sf.info(str(tmp_path / "y.wav")).samplerate == 48000


def test_convolutions_run_in_ieee_fp32_unless_tf32_is_asked_for(models, tmp_path, monkeypatch):
    """inference.py encodes and decodes with cuDNN's TF32 off (torch's default is on), --tf32 on;
    the process's setting is restored after the run."""
    from snac.compiling import conv_precision, conv_tf32

    seen = {}
    real_encode, real_decode = inference.encode_blocks, inference.iter_decode

    def encode(*a, **k):
        seen["encode"] = conv_tf32()
        return real_encode(*a, **k)

    def decode(*a, **k):
        for block in real_decode(*a, **k):
            seen["decode"] = conv_tf32()
            yield block

    monkeypatch.setattr(inference, "encode_blocks", encode)
    monkeypatch.setattr(inference, "iter_decode", decode)
    _write(tmp_path / "x.wav", 0.3, 24000)
    for flags, expect in (([], False), (["--tf32"], True)):
        seen.clear()
        with conv_precision(not expect):
            assert inference.main(["--checkpoint", str(models / "ckpt48.pt"), "--input", str(tmp_path / "x.wav"),
                                   "--output", str(tmp_path / "y.wav"), "--device", "cpu", *flags]) == 0
            assert seen == {"encode": expect, "decode": expect}
            assert conv_tf32() is (not expect)
