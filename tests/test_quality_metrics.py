"""The quality testbed's measurements: silence masking, the band's energy and share, and the
shuffled-codes control (snac/metrics.py, snac/evaluation.py)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio.functional as AF

from snac import SNAC
from snac.evaluation import codes_information, shuffle_codes
from snac.metrics import band_energy_db, band_lsd, band_share_db, mel_distance
from snac.presets import TINY_24KHZ

RATE = 48000
REPO = Path(__file__).resolve().parents[1]


def noise(seconds: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(int(seconds * RATE)).astype(np.float32) * 0.1


def test_silence_db_leaves_out_the_references_silent_frames():
    """An estimate that is wrong only where the reference is silent (room noise 60 dB down): perfect
    with the mask, not without."""
    ref = np.concatenate([noise(0.5, 0), 1e-3 * noise(0.5, 5)])
    est = ref.copy()
    est[RATE // 2 + 4096:] = noise(0.5, 1)[: len(est) - RATE // 2 - 4096]  # noise in the silence
    assert mel_distance(ref, est, RATE) > 0.5
    assert mel_distance(ref, est, RATE, silence_db=40) < 0.02  # only the frames at the edge see it
    assert band_lsd(ref, est, RATE, silence_db=40) < 0.5 < band_lsd(ref, est, RATE)


def test_band_energy_is_the_level_of_the_estimates_band():
    ref = noise(1.0, 2)
    assert abs(band_energy_db(ref, 0.1 * ref, RATE)) - 20 < 1e-6 and band_energy_db(ref, 0.1 * ref, RATE) < 0
    assert abs(band_energy_db(ref, ref, RATE)) < 1e-9
    lowpassed = AF.lowpass_biquad(torch.from_numpy(ref), RATE, 6000.0)
    lowpassed = AF.lowpass_biquad(AF.lowpass_biquad(lowpassed, RATE, 6000.0), RATE, 6000.0).numpy()
    assert band_energy_db(ref, lowpassed, RATE) < -30  # 'muffled'


def test_band_share_tells_a_low_passed_recording_from_a_full_band_one():
    white = noise(1.0, 3)
    # white noise holds (22 - 12) / 24 of its energy in 12-22 kHz: -3.8 dB
    assert abs(band_share_db(white, RATE, 12000, 22000) - 10 * math.log10(10 / 24)) < 0.3
    x = torch.from_numpy(white)
    for _ in range(4):
        x = AF.lowpass_biquad(x, RATE, 5000.0)
    assert band_share_db(x.numpy(), RATE, 12000, 22000) < -50


def test_shuffled_codes_keep_every_level_and_its_nesting_but_not_the_order():
    strides = [4, 2, 1]
    n = 12
    codes = [torch.arange(n * 4 // s) for s in strides]  # each token's value is its own index
    out = shuffle_codes(codes, strides, torch.Generator().manual_seed(0))
    assert [len(c) for c in out] == [len(c) for c in codes]
    order = out[0]
    assert not torch.equal(order, codes[0]) and sorted(order.tolist()) == list(range(n))
    for c, s in zip(out, strides):
        per = 4 // s
        expected = torch.cat([torch.arange(k * per, (k + 1) * per) for k in order.tolist()])
        assert torch.equal(c, expected)  # the finer tokens under coarse token k moved with it


def test_the_control_shows_no_information_when_the_decoder_ignores_the_codes(tmp_path):
    """A decoder that gets nothing from the quantizer decodes shuffled codes exactly as its own:
    the control must then read 0, and it reads more for the same model with its codes connected."""
    import soundfile as sf

    t = np.arange(RATE) / RATE
    for i in range(2):
        x = np.sin(2 * np.pi * (300 + 200 * i) * t) * (t > 0.3 + 0.2 * i) * 0.5  # silence, then a tone
        sf.write(tmp_path / f"{i}.wav", x.astype(np.float32), RATE)
    files = sorted(tmp_path.glob("*.wav"))
    torch.manual_seed(0)
    model = SNAC(**{**TINY_24KHZ, "noise": False}).eval()
    connected = codes_information(model, files)
    for q in model.quantizer.quantizers:  # out_proj's magnitude 0: every code decodes to zero
        q.out_proj.parametrizations.weight.original0.data.zero_()
        q.out_proj.bias.data.zero_()
    cut = codes_information(model, files)
    assert cut["own"] == cut["shuffled"] and cut["files"] == 2
    assert connected["own"] != connected["shuffled"]
    # codebook use: per level, the distinct codes of both files' codes over the codebook size (of
    # the model as it is now: with the projections out at 0 every level encodes the whole latent)
    from snac.audio import load_audio, resample
    from snac.infer import encode_audio
    distinct = [set() for _ in model.vq_strides]
    for f in files:
        audio = resample(load_audio(f, mono=True)[0], RATE, model.sampling_rate)
        for seen, c in zip(distinct, encode_audio(model, audio)):
            seen.update(c.tolist())
    assert cut["code_use"] == pytest.approx([len(d) / TINY_24KHZ["codebook_size"] for d in distinct])
    assert 0 < min(connected["code_use"]) and max(connected["code_use"]) < 1


def test_load_model_needs_no_earlier_import_of_the_model_classes(tmp_path):
    """load_model used to fail with KeyError 'snac' unless snac.model had been imported already."""
    torch.manual_seed(0)
    SNAC(**TINY_24KHZ).save_pretrained(tmp_path / "m")
    code = f"from snac.hub import load_model; print(type(load_model({str(tmp_path / 'm')!r})).__name__)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "SNAC"
