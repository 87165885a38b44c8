"""snac.audio resampling (libsoxr) checked against analytic signals, not against itself.

Covers: sines and band-limited pulses land where the continuous signal says; impulses keep their
area and symmetry; resampled_length is the real length; windows and streamed blocks equal the
whole-file resample; the module imports without torch; odd rates stay within a memory bound.
"""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers_cache import write_audio
from snac.audio import (StreamResampler, iter_resampled_blocks, load_audio, read_window, resample,
                        resampled_length, source_span)

AUDIO_PY = Path(__file__).resolve().parents[1] / "snac" / "audio.py"
PAIRS = [(44100, 48000), (48000, 24000), (24001, 24000), (6001, 48000), (96001, 48000), (16000, 48000),
         (48000, 44100), (383999, 24000)]


def snr_db(y: np.ndarray, ref: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref ** 2) / np.sum((y - ref) ** 2)))


@pytest.mark.parametrize("orig_sr, new_sr", PAIRS)
def test_sine_comes_out_as_the_same_sine_at_the_new_rate(orig_sr, new_sr):
    nyquist = min(orig_sr, new_sr) / 2
    n = orig_sr // 4  # 0.25 s
    for f in (0.05 * nyquist, 0.4 * nyquist, 0.8 * nyquist):
        x = 0.5 * np.sin(2 * np.pi * f * np.arange(n) / orig_sr + 0.3)
        y = resample(x.astype(np.float32), orig_sr, new_sr).astype(np.float64)
        ref = 0.5 * np.sin(2 * np.pi * f * np.arange(len(y)) / new_sr + 0.3)
        edge = len(y) // 10  # the signal starts and stops abruptly; judge the middle 80%
        # measured >= 74 dB at 0.8 Nyquist (near the passband edge), >= 126 dB at 0.05 and 0.4
        assert snr_db(y[edge:-edge], ref[edge:-edge]) >= 60, (orig_sr, new_sr, f)


@pytest.mark.parametrize("orig_sr, new_sr", PAIRS)
def test_band_limited_pulse_matches_the_continuous_pulse_sampled_at_the_new_rate(orig_sr, new_sr):
    """g(t) = Blackman-windowed sinc with cutoff at 0.6 of the lower Nyquist, centred off-grid:
    sampled at orig_sr and resampled, it must equal g sampled at new_sr."""
    cutoff = 0.3 * min(orig_sr, new_sr)  # Hz
    centre, half_width = 0.0513, 0.02  # s; half_width * cutoff >> 1, so g is band-limited to ~1e-5

    def g(t: np.ndarray) -> np.ndarray:
        u = (t - centre) / half_width
        window = np.where(np.abs(u) < 1, 0.42 + 0.5 * np.cos(np.pi * u) + 0.08 * np.cos(2 * np.pi * u), 0)
        return np.sinc(2 * cutoff * (t - centre)) * window

    x = g(np.arange(orig_sr // 10) / orig_sr)  # 0.1 s, the pulse well inside
    y = resample(x.astype(np.float32), orig_sr, new_sr).astype(np.float64)
    ref = g(np.arange(len(y)) / new_sr)
    assert np.abs(y - ref).max() < 1e-5  # peak is 1: -100 dB; measured <= 3e-7


@pytest.mark.parametrize("orig_sr, new_sr", [(44100, 48000), (48000, 44100), (16000, 48000), (96000, 48000),
                                             (24001, 24000), (6001, 48000)])
def test_unit_impulse_keeps_its_area_and_is_symmetric_about_its_instant(orig_sr, new_sr):
    step_src = orig_sr // math.gcd(orig_sr, new_sr)
    at = step_src * max(1, orig_sr // (2 * step_src))  # ~0.5 s, on a sample whose time is on both grids
    x = np.zeros(at + orig_sr // 2, np.float64)
    x[at] = 1.0
    y = resample(x, orig_sr, new_sr).astype(np.float64)
    centre = at * new_sr // orig_sr  # exact: at * new_sr / orig_sr is an integer
    assert abs(y.sum() - new_sr / orig_sr) < 1e-4 * new_sr / orig_sr  # DC gain 1 -> area = ratio
    assert np.argmax(y) == centre
    half = min(centre, len(y) - 1 - centre)
    np.testing.assert_allclose(y[centre - half:centre], y[centre + 1:centre + half + 1][::-1],
                               atol=1e-6 * y.max())  # linear phase, no delay


def test_resampled_length_is_the_length_resample_returns():
    rates = [4000, 6001, 8000, 16000, 22050, 24000, 24001, 44100, 48000, 96001, 192000, 383999]
    rng = np.random.default_rng(0)
    for (a, b), n in itertools.product(itertools.permutations(rates, 2), (1, 2, 3, 7, 100, 1001, 4411)):
        got = len(resample(rng.standard_normal(n).astype(np.float32), a, b))
        assert got == resampled_length(n, a, b), (a, b, n)
    # integer arithmetic, so hours of audio at odd rates don't hit float rounding: n*b/a rounded half up
    assert resampled_length(3 * 3600 * 96001, 96001, 48000) == 3 * 3600 * 48000
    assert resampled_length(1, 48000, 24000) == 1 and resampled_length(3, 48000, 24000) == 2


def test_tensor_in_tensor_out_with_batch_axes_and_dtype_kept():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 1000)).astype(np.float32)
    rows = np.stack([resample(r, 44100, 48000) for r in x.reshape(6, 1000)]).reshape(2, 3, -1)
    assert np.array_equal(resample(x, 44100, 48000), rows)  # batch axes are independent signals
    t = resample(torch.from_numpy(x), 44100, 48000)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32 and torch.equal(t, torch.from_numpy(rows))
    assert resample(torch.from_numpy(x).to(torch.bfloat16), 44100, 48000).dtype == torch.bfloat16
    assert resample(torch.from_numpy(x).double(), 44100, 48000).dtype == torch.float64
    with pytest.raises(ValueError, match="not differentiable"):
        resample(torch.zeros(10, requires_grad=True), 44100, 48000)


@pytest.mark.parametrize("sr", [44100, 16000, 96000, 24001])
def test_read_window_equals_the_slice_of_the_whole_file_resample(tmp_path, sr):
    path = write_audio(tmp_path / "w.wav", 3.0, sr, channels=2, seed=3)
    x, _ = load_audio(path, mono=True)
    full = resample(x, sr, 48000)
    rms = np.sqrt(np.mean(full ** 2))
    for start in list(range(0, len(full), 9973)) + [len(full) - 100]:
        window = read_window(path, start, 2048, 48000)
        ref = full[start:start + 2048]
        assert len(window) == len(ref)
        # documented tolerance 1e-5 of the RMS; measured <= 1.3e-6 (float32 rounding)
        assert np.abs(window - ref).max() < 1e-5 * rms, (sr, start)


def test_source_span_without_its_margin_would_get_the_edges_wrong():
    """The margin is what makes windows exact (issue 9 item 17): the same cut without it is off."""
    sr, target = 44100, 48000
    x = (0.3 * np.random.default_rng(2).standard_normal(sr)).astype(np.float32)
    full = resample(x, sr, target)
    start, end = 20000, 24096
    src_start, src_end, skip = source_span(start, end, sr, target, len(x))
    assert np.abs(resample(x[src_start:src_end], sr, target)[skip:skip + end - start] - full[start:end]).max() < 1e-5
    bare_start, bare_end = start * sr // target, -(-end * sr // target)  # no margin
    bare = resample(x[bare_start:bare_end], sr, target)[:end - start]
    assert np.abs(bare - full[start:end]).max() > 0.01


@pytest.mark.parametrize("sr, channels, mono", [(96001, 2, True), (44100, 1, True), (24001, 2, False),
                                                (48000, 1, True)])
def test_streamed_blocks_concatenate_to_the_one_shot_resample(tmp_path, sr, channels, mono):
    path = write_audio(tmp_path / "s.wav", 2.3, sr, channels=channels, seed=5)
    x, _ = load_audio(path, mono=mono)
    one_shot = resample(x, sr, 24000)
    blocks = list(iter_resampled_blocks(path, 24000, block_seconds=0.5, mono=mono))
    assert all(b.shape[-1] == 12000 for b in blocks[:-1]) and 0 < blocks[-1].shape[-1] <= 12000
    assert all(b.dtype == np.float32 for b in blocks)
    streamed = np.concatenate(blocks, axis=-1)
    assert streamed.shape == one_shot.shape == (*x.shape[:-1], resampled_length(x.shape[-1], sr, 24000))
    assert np.array_equal(streamed, one_shot)  # same libsoxr stream: bit-identical


def test_stream_resampler_rejects_misuse():
    r = StreamResampler(44100, 48000, channels=2)
    with pytest.raises(ValueError, match="2 channels"):
        r.process(np.zeros(100, np.float32))
    r.flush()
    with pytest.raises(RuntimeError, match="flushed"):
        r.process(np.zeros((2, 10), np.float32))
    with pytest.raises(ValueError, match="block_seconds"):
        next(iter_resampled_blocks("x.wav", 24000, block_seconds=0))


def _run_python(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    return json.loads(out.stdout.strip().splitlines()[-1])


# snac/audio.py loaded as a file, not through the snac package (whose __init__ imports the model)
_LOAD_AUDIO_MODULE = f"""
import importlib.util, json, resource, sys
spec = importlib.util.spec_from_file_location("snac_audio_alone", {str(AUDIO_PY)!r})
audio = importlib.util.module_from_spec(spec)
spec.loader.exec_module(audio)
"""


def test_audio_module_imports_without_torch():
    result = _run_python(_LOAD_AUDIO_MODULE + """
import numpy as np
audio.resample(np.zeros(1000, np.float32), 44100, 48000)
print(json.dumps({"torch": "torch" in sys.modules}))
""")
    assert result == {"torch": False}


def test_resampling_a_second_at_odd_rates_stays_under_200_mb():
    result = _run_python(_LOAD_AUDIO_MODULE + """
import numpy as np
def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
audio.resample(np.zeros(1000, np.float32), 44100, 48000)  # libsoxr's own setup, before the baseline
base = peak_mb()
rng = np.random.default_rng(0)
for orig, new in ((96001, 48000), (383999, 24000), (4000, 383999), (24001, 24000), (6001, 48000)):
    y = audio.resample(rng.standard_normal(orig).astype(np.float32), orig, new)
print(json.dumps({"increase_mb": peak_mb() - base}))
""")
    assert result["increase_mb"] < 200, result  # measured ~11 MB; torchaudio's sinc kernel took GBs


def test_streaming_memory_is_flat_in_the_file_length(tmp_path):
    path = tmp_path / "long.wav"
    sr, seconds = 48000, 240  # 23 MB as 16-bit; 46 MB as float32 if it were read whole
    with sf.SoundFile(path, "w", sr, 1, subtype="PCM_16") as f:
        rng = np.random.default_rng(0)
        for _ in range(seconds):
            f.write((0.1 * rng.standard_normal(sr)).astype(np.float32))
    result = _run_python(_LOAD_AUDIO_MODULE + f"""
def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
for _ in audio.iter_resampled_blocks({str(path)!r}, 24000, block_seconds=1.0):  # warm-up: one block
    break
base = peak_mb()
total = sum(len(b) for b in audio.iter_resampled_blocks({str(path)!r}, 24000, block_seconds=1.0))
print(json.dumps({{"increase_mb": peak_mb() - base, "total": total}}))
""")
    assert result["total"] == seconds * 24000
    assert result["increase_mb"] < 10, result  # the file as float32 is 46 MB
