"""snac.audio: loading, mono, resampling, windowed reads and FLAC bytes."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers_cache import write_audio
from snac.audio import (AudioError, audio_info, decode_flac, encode_flac, load_audio, read_window, resample,
                        resampled_length, to_mono)


def test_load_audio_shapes_and_mono(tmp_path):
    p = write_audio(tmp_path / "s.wav", 0.5, 22050, channels=2)
    x, sr = load_audio(p)
    assert sr == 22050 and x.shape == (2, 11025) and x.dtype == np.float32
    m, _ = load_audio(p, mono=True)
    assert m.shape == (11025,) and np.allclose(m, x.mean(0), atol=1e-7)
    assert np.array_equal(to_mono(m), m)
    assert audio_info(p) == (11025, 22050, 2)


@pytest.mark.parametrize("content, match", [(b"", "cannot read"), (b"garbage" * 20, "cannot read")])
def test_unreadable_files_raise_one_line_errors(tmp_path, content, match):
    p = tmp_path / "bad.wav"
    p.write_bytes(content)
    with pytest.raises(AudioError, match=match) as e:
        load_audio(p)
    assert "\n" not in str(e.value) and "bad.wav" in str(e.value)


def test_missing_and_non_finite_audio(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such audio file"):
        load_audio(tmp_path / "nope.wav")
    p = tmp_path / "nan.wav"
    sf.write(p, np.array([0.0, np.inf, 0.1], np.float32), 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN or Inf"):
        load_audio(p)


def test_resample_length_and_types():
    x = np.random.default_rng(0).standard_normal(1001).astype(np.float32)
    for sr in (8000, 16000, 44100, 48000, 96000):
        y = resample(x, sr, 24000)
        assert isinstance(y, np.ndarray) and len(y) == resampled_length(1001, sr, 24000)
    t = resample(torch.from_numpy(x).reshape(1, 1, -1), 44100, 48000)
    assert isinstance(t, torch.Tensor) and t.shape == (1, 1, resampled_length(1001, 44100, 48000))
    assert resample(x, 24000, 24000) is x
    with pytest.raises(ValueError):
        resample(x, 0, 24000)


@pytest.mark.parametrize("sr", [8000, 22050, 44100, 48000, 96000])
def test_read_window_matches_resampling_the_whole_file(tmp_path, sr):
    p = write_audio(tmp_path / "w.flac", 1.5, sr, channels=2, seed=3)
    x, _ = load_audio(p, mono=True)
    full = resample(x, sr, 48000)
    for start, frames in [(0, 1000), (12345, 4096), (len(full) - 300, 4096), (len(full) + 5, 10)]:
        w = read_window(p, start, frames, 48000)
        ref = full[start:start + frames]
        assert w.dtype == np.float32 and len(w) == len(ref)
        assert np.allclose(w, ref, atol=1e-5)
    assert len(read_window(p, 7, None, 48000)) == len(full) - 7


def test_flac_bytes_round_trip_and_partial_decode():
    x = (0.5 * np.sin(np.arange(48000) / 10)).astype(np.float32)
    data = encode_flac(x, 48000)
    y, sr = decode_flac(data)
    assert sr == 48000 and len(y) == len(x) and np.abs(y - x).max() < 2 ** -14
    w, _ = decode_flac(data, 1000, 500)
    assert np.array_equal(w, y[1000:1500])
    assert len(decode_flac(data, 47990, 500)[0]) == 10 and len(decode_flac(data, 10 ** 6, 5)[0]) == 0
    with pytest.raises(AudioError, match="damaged"):
        decode_flac(b"not flac")


@pytest.mark.parametrize("seconds,text", [(0.42, "0.4 s"), (59.9, "59.9 s"), (75, "1.2 min"), (5400, "1.50 h")])
def test_durations_read_at_every_scale(seconds, text):
    """Tiny runs printed '0.000 h' (issue 25, item 8)."""
    from snac.audio import format_duration

    assert format_duration(seconds) == text
