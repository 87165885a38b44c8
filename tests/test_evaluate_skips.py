"""Files no metric can score (silent, unreadable, too short for the FFTs) are left out of every
metric and counted; metrics.json is strict JSON (issue 24, items 4, 8 and 9)."""

import json

import numpy as np
import pytest
import soundfile as sf

from snac.evaluation import read_reference, Skipped
from snac.metrics import min_samples
from test_evaluate_scoring import _run, _tone, models  # noqa: F401 (a fixture)


def _strict(path):
    return json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{path} holds {c}"))


def test_silent_unreadable_and_too_short_files_are_skipped_and_counted(models, tmp_path):  # noqa: F811
    data = tmp_path / "data"
    _tone(data / "a.wav", 48000)
    _tone(data / "b.wav", 48000, seconds=0.5)
    sf.write(str(data / "silent.wav"), np.zeros(48000, dtype=np.float32), 48000)
    sf.write(str(data / "silent2.wav"), np.zeros(24000, dtype=np.float32), 48000)
    (data / "empty.wav").write_bytes(b"")  # unreadable
    _tone(data / "short.wav", 48000, seconds=800 / 48000)  # shorter than the largest FFT
    out = tmp_path / "out"
    assert _run(models, data, out) == 0
    report = _strict(out / "metrics.json")
    assert report["settings"]["files"] == 2 and report["counts"] == {"stock 24 kHz": 2, "band replication 48 kHz": 2,
                                                                     "model 48 kHz": 2}
    assert {r["file"] for r in report["files"]} == {"a.wav", "b.wav"}
    assert set(report["settings"]["skipped"]) == {"silent.wav", "silent2.wav", "empty.wav", "short.wav"}
    mean = report["mean"]["model 48 kHz"]
    assert all(v is None or abs(v) < 1e3 for v in mean.values()), mean  # no 5.5e6 from a silent file
    assert mean["si_sdr"] is not None
    md = (out / "report.md").read_text()
    assert "2 files skipped: silent (silent.wav, silent2.wav)" in md
    assert "1 file skipped: unreadable (empty.wav)" in md and "1 file skipped: too short (short.wav)" in md


def test_a_file_silent_in_its_first_max_seconds_is_skipped(models, tmp_path):  # noqa: F811
    data = tmp_path / "data"
    _tone(data / "a.wav", 48000)
    x = np.zeros(48000, dtype=np.float32)
    x[36000:] = 0.1 * np.sin(np.arange(12000) * 0.3)  # sound only after 0.75 s
    sf.write(str(data / "late.wav"), x, 48000)
    out = tmp_path / "out"
    assert _run(models, data, out, "--max_seconds", "0.5") == 0
    report = _strict(out / "metrics.json")
    assert report["settings"]["skipped"] == {"late.wav": "silent (its first 0.5 s)"}
    assert all(v is None or np.isfinite(v) for v in report["mean"]["model 48 kHz"].values())


def test_every_file_skipped_is_one_line(models, tmp_path):  # noqa: F811
    (tmp_path / "data").mkdir()
    sf.write(str(tmp_path / "data" / "z.wav"), np.zeros(4800), 48000)
    with pytest.raises(SystemExit, match="no file of --input_dir .* can be scored: 1 file skipped: silent"):
        _run(models, tmp_path / "data", tmp_path / "out")


def test_min_samples_is_what_the_metrics_need(tmp_path):
    from snac.metrics import all_metrics

    rng = np.random.default_rng(0)
    ok = rng.standard_normal(min_samples()).astype(np.float32)
    assert all(v is not None for v in all_metrics(ok, ok, 48000, optional=False).values())
    with pytest.raises(RuntimeError):
        all_metrics(ok[:-1], ok[:-1], 48000, optional=False)
    sf.write(str(tmp_path / "s.wav"), ok[:-1], 48000)
    with pytest.raises(Skipped, match="too short"):
        read_reference(tmp_path / "s.wav", None, (48000,))
