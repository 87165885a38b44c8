"""snac.metrics and scripts/evaluate.py on a generated folder."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from snac.presets import TINY_24KHZ
from snac import SNAC, SNAC48
from snac.metrics import band_lsd, mel_distance, si_sdr, stft_distance

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("evaluate_script", ROOT / "scripts" / "evaluate.py")
evaluate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(evaluate)

RATE = 48000


def _signal(seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    harmonics = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 40))
    return (0.1 * harmonics + 0.02 * rng.standard_normal(len(t))).astype(np.float32)


def test_metrics_of_identical_signals_are_perfect():
    x = _signal()
    assert mel_distance(x, x, RATE) == 0.0
    assert stft_distance(x, x) == 0.0
    assert band_lsd(x, x, RATE) == 0.0
    assert si_sdr(x, x) > 100
    assert si_sdr(x, 0.5 * x) > 100  # scale invariant


def test_band_lsd_sees_the_missing_high_band_that_mel_distance_barely_sees():
    x = _signal()
    lowpassed = AF.resample(AF.resample(torch.from_numpy(x), RATE, 24000), 24000, RATE).numpy()[:len(x)]
    noisy = x + 0.01 * np.random.default_rng(1).standard_normal(len(x)).astype(np.float32)
    assert band_lsd(x, lowpassed, RATE) > 5 * band_lsd(x, noisy, RATE)
    assert band_lsd(x, lowpassed, RATE, 0, 10000) < 1.0  # the band below 10 kHz is kept
    assert si_sdr(x, noisy) > si_sdr(x, 0.7 * x + 0.1 * np.roll(x, 100))


def test_evaluate_writes_markdown_json_and_spectrograms(tmp_path):
    torch.manual_seed(0)
    base = SNAC(**TINY_24KHZ)
    base.save_pretrained(tmp_path / "base")
    SNAC48.from_snac(base).save_pretrained(tmp_path / "m48")
    data = tmp_path / "heldout"
    (data / "spk").mkdir(parents=True)
    sf.write(str(data / "a.wav"), _signal(0.8, 1), RATE)
    sf.write(str(data / "spk" / "b.flac"), np.stack([_signal(0.6, 2)] * 2, 1), RATE)
    sf.write(str(data / "c.wav"), _signal(0.5, 3)[::3], 16000)  # below the band: left out of the LSD
    out = tmp_path / "report"
    assert evaluate.main(["--checkpoint", str(tmp_path / "m48"), "--base_model", str(tmp_path / "base"),
                          "--input_dir", str(data), "--output_dir", str(out), "--device", "cpu",
                          "--spectrograms", "2", "--no_optional"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    systems = ["stock 24 kHz", "band replication 48 kHz", "model 48 kHz"]
    assert list(report["mean"]) == systems
    assert report["counts"] == dict.fromkeys(systems, 3)
    for means in report["mean"].values():
        assert all(np.isfinite(means[k]) for k in ("mel_distance", "stft_distance", "si_sdr", "lsd_high_band",
                                                   "mel_distance_low", "tonal_max_db", "tonal_mean_db",
                                                   "ref_tonal_max_db", "invented_band_db"))
        assert means["pesq_wb"] is None and means["stoi"] is None
    lsd = [r["lsd_high_band"] for r in report["files"] if r["file"] == "c.wav"]
    assert lsd == [None, None, None]
    # the stock decode has (almost) nothing above 12 kHz: its band distance is the larger one
    mean = report["mean"]
    assert mean["stock 24 kHz"]["lsd_high_band"] > mean["model 48 kHz"]["lsd_high_band"]
    assert mean["stock 24 kHz"]["lsd_high_band"] > mean["band replication 48 kHz"]["lsd_high_band"]
    # the low band of the band replication is the stock decode's
    assert abs(mean["band replication 48 kHz"]["mel_distance_low"] - mean["stock 24 kHz"]["mel_distance_low"]) < 0.05
    assert len(list((out / "spectrograms").glob("*.png"))) == 2
    md = (out / "report.md").read_text()
    assert "| model 48 kHz |" in md and "| band replication 48 kHz |" in md and "LSD 12-24 kHz" in md
    assert "mel dist. 0-12 kHz" in md and "ref. lines max dB" in md and "PESQ-WB and STOI skipped" in md
