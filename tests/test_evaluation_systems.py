"""snac/evaluation.py with the band-replication system and the issue-27 metrics: chunked decoding
widens the whole decode (right length, a filled top band, no chunk seams), every row has the new
metric keys, and a low-passed file reports the band energy each system invents."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from snac import SNAC, SNAC48
from snac.bwe import BandReplication
from snac.evaluation import evaluate_systems
from snac.infer import noise_disabled
from snac.metrics import band_share_db
from snac.presets import TINY_24KHZ

RATE = 48000
NEW_KEYS = ("mel_distance_low", "tonal_max_db", "tonal_mean_db", "ref_tonal_max_db", "ref_tonal_mean_db",
            "invented_band_db")


def speechlike(seconds: float, seed: int, rate: int = RATE, cutoff: float | None = None) -> np.ndarray:
    """Harmonics up to the Nyquist plus a little noise; ``cutoff``: low-passed there (FFT mask)."""
    t = np.arange(int(rate * seconds)) / rate
    x = sum(0.3 / k * np.sin(2 * np.pi * 180 * k * t) for k in range(1, 120) if 180 * k < rate / 2)
    x = x + 0.02 * np.random.default_rng(seed).standard_normal(len(t))
    if cutoff is not None:
        spec = np.fft.rfft(x)
        spec[np.fft.rfftfreq(len(x), 1 / rate) > cutoff] = 0
        x = np.fft.irfft(spec, len(x))
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    model = SNAC(**TINY_24KHZ).eval()
    with torch.no_grad():  # off the initial values, so the decode is not near silence
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def run(files, root, base, systems, tmp_path, chunk_seconds):
    with torch.no_grad():
        return evaluate_systems(files, root, base, systems, rate=RATE, band_hz=(12000.0, 22000.0), silence_db=40.0,
                                min_band_db=-50.0, chunk_seconds=chunk_seconds, audio_dir=tmp_path / "audio")


def test_band_replication_decodes_chunked_to_the_right_length_with_a_top_band_and_no_seams(base, tmp_path):
    sf.write(tmp_path / "a.wav", speechlike(2.0, 0), RATE)
    files = [tmp_path / "a.wav"]
    systems = {"baseline": base, "band_replication": BandReplication(base, RATE)}
    with noise_disabled(base):  # noise is drawn per chunk: chunked and whole differ by it alone
        chunked = run(files, tmp_path, base, systems, tmp_path / "chunked", chunk_seconds=0.5)
        whole = run(files, tmp_path, base, systems, tmp_path / "whole", chunk_seconds=None)
    y, rate = sf.read(tmp_path / "chunked" / "audio" / "band_replication" / "a.wav")
    assert rate == RATE and len(y) == 2 * RATE
    stock, _ = sf.read(tmp_path / "chunked" / "audio" / "baseline" / "a.wav")
    # the stock decode resampled has no top band (but the wav's 16-bit noise), the replication fills it
    assert band_share_db(y, RATE, 13000, 22000) > band_share_db(stock, RATE, 13000, 22000) + 15
    # widened once over the whole decode: chunking the decode changes (next to) nothing, no seams
    y_whole, _ = sf.read(tmp_path / "whole" / "audio" / "band_replication" / "a.wav")
    assert np.abs(y - y_whole).max() < 2e-3  # PCM_16 wavs: a few LSB of decode differences
    for result in (chunked, whole):
        row = next(r for r in result["rows"] if r["system"] == "band_replication")
        assert all(k in row for k in NEW_KEYS)
        assert row["high_band_energy_db"] > next(
            r for r in result["rows"] if r["system"] == "baseline")["high_band_energy_db"] + 20


def test_every_row_has_the_new_metrics_and_low_passed_files_report_invention(base, tmp_path):
    sf.write(tmp_path / "full.wav", speechlike(1.0, 1), RATE)
    sf.write(tmp_path / "lp.wav", speechlike(1.0, 2, cutoff=5000.0), RATE)  # low-passed: no top band
    files = sorted(tmp_path.glob("*.wav"))
    systems = {"baseline": base, "smart_init": SNAC48.from_snac(base).eval(),
               "band_replication": BandReplication(base, RATE)}
    result = run(files, tmp_path, base, systems, tmp_path, chunk_seconds=None)
    rows = {(r["file"], r["system"]): r for r in result["rows"]}
    assert result["band_empty"] == 1 and result["no_band"] == 1
    for name in systems:
        full, lp = rows[("full.wav", name)], rows[("lp.wav", name)]
        assert set(NEW_KEYS) <= set(full) and set(NEW_KEYS) <= set(lp)
        # a file with the band: tonal figures of the output and the reference, nothing 'invented'
        assert all(np.isfinite(full[k]) for k in ("mel_distance_low", "tonal_max_db", "tonal_mean_db",
                                                  "ref_tonal_max_db", "ref_tonal_mean_db"))
        assert full["invented_band_db"] is None and full["ref_tonal_max_db"] == rows[("full.wav", "baseline")][
            "ref_tonal_max_db"]
        # a low-passed file: no band metrics, the share of the output's energy in the band instead
        assert lp["lsd_high_band"] is None and lp["tonal_max_db"] is None and np.isfinite(lp["invented_band_db"])
        assert result["mean"][name]["invented_band_db"] == pytest.approx(lp["invented_band_db"])  # lp files only
        assert result["mean"][name]["tonal_max_db"] == pytest.approx(full["tonal_max_db"])
    # the stock decode resampled cannot put anything in the band; the replication copies up what the
    # (untrained, full-band) tiny decode has below 12 kHz: the column tells them apart
    assert rows[("lp.wav", "baseline")]["invented_band_db"] < -60
    assert rows[("lp.wav", "band_replication")]["invented_band_db"] > -40
