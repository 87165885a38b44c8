"""tools/compare_bases.py and tools/tonal_lines.py on tiny models and two generated files."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers_perturb import perturb_parameters_
from snac import SNAC
from snac.presets import TINY_24KHZ

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import compare_bases  # noqa: E402
import tonal_lines  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("tools")
    rate = 48000
    t = np.arange(int(0.6 * rate)) / rate
    (root / "val").mkdir()
    for i in range(2):  # a tone under noise; the second file also has a 15 kHz line
        x = 0.3 * np.sin(2 * np.pi * (200 + 100 * i) * t) + 0.01 * np.random.default_rng(i).standard_normal(len(t))
        x += 0.05 * i * np.sin(2 * np.pi * 15000 * t)
        sf.write(root / "val" / f"{i}.wav", x.astype(np.float32), rate)
    for name, seed in (("a", 1), ("b", 2)):
        torch.manual_seed(0)
        perturb_parameters_(SNAC(**{**TINY_24KHZ, "noise": False}), seed=seed).save_pretrained(root / name)
    return root


def test_compare_bases_prints_one_row_per_base_and_writes_json(setup, capsys):
    out = setup / "bases.json"
    assert compare_bases.main(["--base", f"one={setup / 'a'}", "--base", f"two={setup / 'b'}",
                               "--val_dir", str(setup / "val"), "--output", str(out)]) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| one") or line.startswith("| two")]
    rows = json.loads(out.read_text())["rows"]
    assert [r["base"] for r in rows] == ["one", "two"] and len(table) == 2
    for r in rows:
        assert r["own"] != r["shuffled"] and len(r["code_use"]) == len(TINY_24KHZ["vq_strides"])
        assert r["gain_percent"] == pytest.approx(100 * (1 - r["own"] / r["shuffled"]))
    assert rows[0]["own"] != rows[1]["own"]  # two different models measured, not one twice
    with pytest.raises(SystemExit, match="no audio file"):
        compare_bases.main(["--base", f"one={setup / 'a'}", "--val_dir", str(setup / "a")])


def test_tonal_lines_reports_every_system_and_the_mirror_test(setup, capsys):
    out = setup / "tonal"
    assert tonal_lines.main(["--base", str(setup / "a"), "--val_dir", str(setup / "val"), "--init", "full",
                             "--init", "sinc", "--output_dir", str(out)]) == 0
    report = json.loads((out / "tonal.json").read_text())
    assert report["files"] == 2
    assert list(report["systems"]) == ["reference", "base_24k", "smart_init", "smart_init_sinc"]
    ref = report["systems"]["reference"]
    assert any(abs(f - 15000) < 30 and db > 10 for f, db in ref["lines"])  # the line put in the files
    for name in ("smart_init", "smart_init_sinc"):
        assert {"mirror_mean_db", "random_mean_db"} <= set(report["systems"][name])
    assert "mean excess at the mirrors" in capsys.readouterr().out
