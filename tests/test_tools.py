"""tools/compare_bases.py, tools/tonal_lines.py and tools/line_source.py on tiny models and two generated files."""

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
import line_source  # noqa: E402
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


def test_remove_periodic_takes_out_a_periodic_level_and_spread_and_keeps_the_rest():
    g = torch.Generator().manual_seed(0)
    t, period = 8 * 500, 8
    level = torch.randn(1, 3, period, generator=g)
    gain = 1 + 0.5 * torch.rand(1, 3, period, generator=g)
    noise = torch.randn(1, 3, t, generator=g)
    h = noise * gain.repeat(1, 1, t // period) + level.repeat(1, 1, t // period) + 2.0
    folded = lambda x: x.reshape(1, 3, -1, period)  # noqa: E731
    flat = line_source.remove_periodic(h, period)
    means = folded(flat).mean(-2)
    assert torch.allclose(means, means.mean(-1, keepdim=True).expand_as(means), atol=1e-5)  # every phase alike
    assert torch.allclose(flat.mean(-1), h.mean(-1), atol=1e-5)  # the channel mean kept
    assert not torch.allclose(folded(flat).std(-2), folded(flat).std(-2).mean(-1, keepdim=True).expand(1, 3, period),
                              rtol=0.05)  # the spread still varies by phase
    both = line_source.remove_periodic(h, period, scale=True)
    spread = folded(both).std(-2, correction=0)
    assert torch.allclose(spread, spread[..., :1].expand_as(spread), rtol=1e-4)  # and now the spread is alike
    assert torch.allclose(both.mean(-1), h.mean(-1), atol=1e-4)
    # a period that is not the signal's changes it little (here only the noise's chance phase means)
    other = line_source.remove_periodic(h, 61)
    assert (other - h).pow(2).mean() < 0.05 * (h - h.mean(-1, keepdim=True)).pow(2).mean()
    assert line_source.stage_periods({"decoder_rates": [8, 8, 4, 2]}) == [64, 8, 2]


def test_line_source_runs_every_condition_and_writes_json(setup, capsys):
    out = setup / "source.json"
    assert line_source.main(["--base", str(setup / "a"), "--val_dir", str(setup / "val"), "--period", "8",
                             "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["files"] == 2
    assert list(report["conditions"]) == ["as is", "period 8 level removed", "period 8 level+spread removed"]
    assert report["conditions"]["as is"]["band_energy_db"] == 0.0
    rows = report["conditions"].values()
    assert all(len(r["probes_48k"]) == 4 and len(r["trunk_24k"]) == 4 for r in rows)
    assert len({json.dumps(r["probes_48k"]) for r in rows}) > 1  # the removals changed the output
    assert "period 8 level+spread removed |" in capsys.readouterr().out
