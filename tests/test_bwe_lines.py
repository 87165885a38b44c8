"""Band replication (the DSP baseline), the tonal-line metric and the line remover."""

import numpy as np
import pytest

from snac.audio import resample
from snac.bwe import band_replicate
from snac.lines import find_lines, remove_lines
from snac.metrics import band_energy_db, mel_distance, mel_distance_low, tonal_prominence


def band_db(x, rate, lo, hi):
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / rate)
    return 10 * np.log10(spec[(f >= lo) & (f < hi)].sum() / spec.sum() + 1e-30)


def speechlike(rate, seconds=1.0, seed=0):
    """Pink-ish noise with an amplitude envelope: energy everywhere below the Nyquist, falling."""
    rng = np.random.default_rng(seed)
    n = int(rate * seconds)
    spec = np.fft.rfft(rng.standard_normal(n)) / np.sqrt(1 + np.fft.rfftfreq(n, 1 / rate) / 500)
    x = np.fft.irfft(spec, n) * (0.6 + 0.4 * np.sin(np.linspace(0, 12, n)))
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def test_band_replication_keeps_the_low_band_and_fills_the_top():
    y24 = speechlike(24000)
    out = band_replicate(y24, 24000, 48000)
    assert out.shape == (48000,) and out.dtype == np.float32
    up = resample(y24, 24000, 48000)
    # below the crossover (0.9 x 12 kHz) the output is the resampled input
    lo = np.fft.irfft(np.fft.rfft(out) * (np.fft.rfftfreq(48000, 1 / 48000) < 9000), 48000)
    ref = np.fft.irfft(np.fft.rfft(up) * (np.fft.rfftfreq(48000, 1 / 48000) < 9000), 48000)
    assert 10 * np.log10((ref ** 2).sum() / ((lo - ref) ** 2).sum()) > 30
    assert band_db(up, 48000, 13000, 22000) < -60  # the stock decode resampled: no top band
    top = band_db(out, 48000, 13000, 22000)
    assert -40 < top < band_db(out, 48000, 5400, 10800)  # filled, below the source band (slope <= 0)


def test_band_replication_invents_nothing_for_a_low_passed_decode():
    rate = 24000
    y = speechlike(rate)
    f = np.fft.rfftfreq(len(y), 1 / rate)
    y_lp = np.fft.irfft(np.fft.rfft(y) * (f < 4000), len(y)).astype(np.float32)  # nothing above 4 kHz
    out = band_replicate(y_lp, rate, 48000)
    # a decode with a source band sits near -25 dB there (test above); this one stays near silence
    assert band_db(out, 48000, 12000, 24000) < -50
    with pytest.raises(ValueError, match="must exceed"):
        band_replicate(y, 24000, 24000)


def test_tonal_prominence_sees_a_quiet_line_and_not_noise():
    rate = 48000
    rng = np.random.default_rng(1)
    noise = (0.05 * rng.standard_normal(rate * 2)).astype(np.float32)
    tone = (0.02 * np.sin(2 * np.pi * 15625 * np.arange(rate * 2) / rate)).astype(np.float32)
    clean_max, clean_mean = tonal_prominence(noise, rate)
    line_max, line_mean = tonal_prominence(noise + tone, rate)
    assert clean_max < 6 and line_max > 15 and line_mean > clean_mean
    lines = find_lines(noise + tone, rate)
    assert abs(lines[0][0] - 15625) < rate / 4096 and find_lines(noise, rate) == []


def test_remove_lines_takes_the_line_out_and_leaves_the_rest():
    rate = 48000
    rng = np.random.default_rng(2)
    noise = (0.05 * rng.standard_normal(rate * 2)).astype(np.float32)
    t = np.arange(rate * 2) / rate
    tones = (0.02 * np.sin(2 * np.pi * 15633 * t) + 0.01 * np.sin(2 * np.pi * 19582 * t)).astype(np.float32)
    cleaned, lines = remove_lines(noise + tones, rate)
    assert sorted(round(f / 100) for f, _ in lines[:2]) == [156, 196]
    assert tonal_prominence(cleaned, rate)[0] < 8
    snr = 10 * np.log10((noise ** 2).sum() / ((cleaned - noise) ** 2).sum())
    assert snr > 20  # the noise (the "speech") is kept
    same, none = remove_lines(noise, rate)
    assert none == [] and np.array_equal(same, noise)


def test_mel_distance_low_ignores_the_top_band():
    rate = 48000
    x = speechlike(rate, seed=3)
    f = np.fft.rfftfreq(len(x), 1 / rate)
    muffled = np.fft.irfft(np.fft.rfft(x) * (f < 12500), len(x)).astype(np.float32)
    assert mel_distance(x, muffled, rate) > 0.1
    assert mel_distance_low(x, muffled, rate) < 0.01
    assert band_energy_db(x, muffled, rate, 13000, 22000) < -30
