"""scripts/quality_check.py's issue-27 wiring, in-process with tiny models and stand-in trainers:
--seeds (one run per recipe and seed; the mean and min..max over seeds), --speech_dir (two groups,
each its own table, files per language reported), the band_replication system, the new metric
columns, the low-passed files' 'invented' band and the listening links of results.md."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from snac import SNAC, SNAC48
from snac.cache.format import FORMAT_VERSION
from snac.presets import TINY_24KHZ

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("quality_check", REPO / "scripts" / "quality_check.py")
qc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(qc)
pytestmark = pytest.mark.usefixtures("restore_signal_handlers")  # Stages installs handlers


def test_seed_stats_gives_the_mean_and_spread_over_seeds():
    stats = qc.seed_stats([1.0, 2.0, 6.0])
    assert stats["mean"] == pytest.approx(3.0) and (stats["min"], stats["max"], stats["n"]) == (1.0, 6.0, 3)
    assert stats["std"] == pytest.approx(np.std([1.0, 2.0, 6.0], ddof=1))  # sample std, as documented
    assert qc.seed_stats([None, 2.5]) == {"mean": 2.5, "min": 2.5, "max": 2.5, "std": None, "n": 1}
    assert qc.seed_stats([None]) == {"mean": None, "min": None, "max": None, "std": None, "n": 0}


class FakeStages:
    def __init__(self, iterations: dict[str, int]):
        self.iterations = iterations

    def done(self, name):
        return {"iterations": self.iterations[name]} if name in self.iterations else None


def test_system_rows_average_the_recipes_over_seeds_and_leave_the_rest_alone():
    args = qc.parse_args(["--train_dir", str(REPO), "--val_dir", str(REPO), "--seeds", "0,1,2"])
    mel = {"baseline": 0.7, "smart_init": 0.6, "band_replication": 0.65,
           "seed_recipe_seed0": 0.5, "seed_recipe_seed1": 0.4, "seed_recipe_seed2": 0.9,
           "adversarial_recipe_seed0": 0.3, "adversarial_recipe_seed1": None, "adversarial_recipe_seed2": 0.5}
    result = {"mean": {n: {"mel_distance": v, "tonal_max_db": 10.0} for n, v in mel.items()},
              "counts": dict.fromkeys(mel, 4)}
    st = FakeStages({f"{r}_seed{s}": 7 for r in qc.RECIPE_CONFIGS for s in (0, 1, 2)})
    rows = {row["system"]: row for row in qc.system_rows(st, args, result)}
    assert list(rows) == list(qc.SYSTEMS)
    assert rows["baseline"]["mel_distance"] == 0.7 and rows["baseline"]["spread"] == {}
    assert rows["baseline"]["seeds"] is None and rows["band_replication"]["iterations"] is None
    seed = rows["seed_recipe"]
    assert seed["mel_distance"] == pytest.approx(0.6) and seed["iterations"] == 7 and seed["seeds"] == [0, 1, 2]
    assert seed["spread"]["mel_distance"]["min"] == 0.4 and seed["spread"]["mel_distance"]["max"] == 0.9
    assert seed["per_seed"]["2"]["mel_distance"] == 0.9
    adv = rows["adversarial_recipe"]  # a seed whose metric failed is left out of the mean and the spread
    assert adv["mel_distance"] == pytest.approx(0.4) and adv["spread"]["mel_distance"]["n"] == 2
    assert qc.cell(seed, "mel_distance", ".3f") == "0.600 (0.400..0.900)"
    assert qc.cell(rows["baseline"], "mel_distance", ".3f") == "0.700"
    assert qc.cell(seed, "lsd_high", ".2f") == "n/a"


def test_seeds_flag_is_checked_and_each_recipe_runs_once_per_seed(tmp_path, monkeypatch):
    for name in ("train", "val"):
        (tmp_path / name).mkdir()
    base = ["--train_dir", str(tmp_path / "train"), "--val_dir", str(tmp_path / "val"),
            "--output_dir", str(tmp_path / "out"), "--device", "cpu"]
    assert qc.parse_args(base).seed_list == [0] and qc.parse_args([*base, "--seed", "5"]).seed_list == [5]
    for bad, message in (("0,x", "--seeds must be comma-separated integers"), ("1,1", "a seed is repeated")):
        with pytest.raises(SystemExit):
            qc.parse_args([*base, "--seeds", bad])
    script = tmp_path / "trainer.py"
    script.write_text("import json, sys, pathlib\nrun = pathlib.Path(sys.argv[1]); run.mkdir(parents=True)\n"
                      "(run / 'status.json').write_text(json.dumps({'state': 'finished', 'iteration': 3}))\n"
                      "(run / 'seed').write_text(sys.argv[2])\n")
    monkeypatch.setattr(qc, "finetune_command", lambda args, recipe, base, caches, run_dir, seed: [script, run_dir, seed])
    args = qc.parse_args([*base, "--seeds", "3,4", "--finetune_steps", "3"])
    (tmp_path / "out").mkdir()
    checkpoints = qc.stage_finetune(qc.Stages(tmp_path / "out", args), args, Path("base"), {})
    assert list(checkpoints) == ["adversarial_recipe_seed3", "seed_recipe_seed3", "adversarial_recipe_seed4",
                                 "seed_recipe_seed4"]
    for name, path in checkpoints.items():
        recipe, seed = name.rsplit("_seed", 1)
        assert path == tmp_path / "out" / "runs" / recipe / f"seed{seed}" / "latest.pt"
        assert (path.parent / "seed").read_text() == seed
    stages = json.loads((tmp_path / "out" / "stages.json").read_text())
    assert stages["settings"]["seeds"] == "3,4" and all(stages["stages"][n]["iterations"] == 3 for n in checkpoints)


def test_parse_args_refuses_a_bad_data_choice(tmp_path, capsys):
    (tmp_path / "speech" / "train").mkdir(parents=True)
    cases = [([], "pass --speech_dir SPEECH"),
             (["--speech_dir", str(tmp_path / "speech"), "--train_dir", str(tmp_path)], "drop --train_dir/--val_dir"),
             (["--speech_dir", str(tmp_path / "speech")], "lacks splits.json, val_heldout, val_seen")]
    for flags, message in cases:
        with pytest.raises(SystemExit):
            qc.parse_args(flags)
        assert message in capsys.readouterr().err


def tone(path: Path, seed: int, cutoff: float | None = None, rate: int = 48000) -> None:
    t = np.arange(int(0.6 * rate)) / rate
    x = sum(0.2 / k * np.sin(2 * np.pi * (150 + 20 * seed) * k * t) for k in range(1, 100) if 170 * k < rate / 2)
    x = x + 0.01 * np.random.default_rng(seed).standard_normal(len(t))
    if cutoff is not None:  # a low-passed recording: nothing in the band
        spec = np.fft.rfft(x)
        spec[np.fft.rfftfreq(len(x), 1 / rate) > cutoff] = 0
        x = np.fft.irfft(spec, len(x))
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.5 * x / np.abs(x).max()).astype(np.float32), rate)


@pytest.fixture
def speech(tmp_path):
    """A prepare_speech.py-shaped folder: two held-out languages (one low-passed), one seen language."""
    root = tmp_path / "speech"
    tone(root / "train" / "running" / "fr" / "t.wav", 0)
    tone(root / "val_seen" / "running" / "fr" / "s.wav", 1)
    tone(root / "val_heldout" / "running" / "ru" / "r1.wav", 2)
    tone(root / "val_heldout" / "running" / "el" / "e.wav", 4, cutoff=5000.0)
    folders = {"train": {"files": 1, "languages": {"running/fr": {"files": 1}}},
               "val_seen": {"files": 1, "languages": {"running/fr": {"files": 1}}},
               "val_heldout": {"files": 2, "languages": {"running/el": {"files": 1}, "running/ru": {"files": 1}}}}
    (root / "splits.json").write_text(json.dumps({"heldout": ["el", "ru"], "val_fraction": 0.5, "seed": 0,
                                                  "folders": folders}))
    return root


@pytest.mark.slow
def test_speech_dir_reports_two_groups_with_seeds_listening_links_and_the_low_passed_files(speech, tmp_path):
    torch.manual_seed(0)
    base = SNAC(**TINY_24KHZ).eval()
    base.save_pretrained(tmp_path / "base")
    SNAC48.from_snac(base).save_pretrained(tmp_path / "m48")
    cache = tmp_path / "cache_val"  # the val_seen cache: nothing rejected
    cache.mkdir()
    manifest = {k: None for k in ("model_id", "model_config", "hop_length", "vq_strides", "model_sample_rate",
                                  "target_sample_rate", "input_root", "embed_audio")}
    (cache / "manifest.json").write_text(json.dumps({**manifest, "format_version": FORMAT_VERSION, "rows": 1,
                                                     "rejected": []}))
    flags = ["--speech_dir", str(speech), "--output_dir", str(tmp_path / "out"), "--device", "cpu", "--seeds", "0,1"]
    args = qc.parse_args(flags)
    assert args.train_dir == str(speech / "train") and args.val_dir == str(speech / "val_seen")
    (tmp_path / "out").mkdir()
    st = qc.Stages(tmp_path / "out", args)
    checkpoints = {f"{r}_seed{s}": tmp_path / "m48" for s in (0, 1) for r in ("adversarial_recipe", "seed_recipe")}
    evs = qc.stage_evaluate(st, args, tmp_path / "base", checkpoints, cache)
    st.finish("base", source="x")
    for name in checkpoints:
        st.finish(name, iterations=2)
    results = qc.build_results(st, args, evs)
    json.dumps(results, allow_nan=False)
    out = tmp_path / "out"
    assert list(results["groups"]) == ["heldout_languages", "heldout_files"]
    held, seen = results["groups"]["heldout_languages"], results["groups"]["heldout_files"]
    assert held["languages"] == {"running/el": 1, "running/ru": 1} and seen["languages"] == {"running/fr": 1}
    assert results["splits"]["folders"]["val_heldout"]["files"] == 2 and results["settings"]["seeds"] == [0, 1]
    assert held["low_passed_files"] == 1 and held["band_files"] == 1 and seen["low_passed_files"] == 0
    for row in held["systems"]:
        for key in qc.METRICS:
            assert row[key] is not None and np.isfinite(row[key]), (row["system"], key)
        assert row["ref_tonal_max_db"] == held["systems"][0]["ref_tonal_max_db"]  # the same references
    assert all(row["invented_band_db"] is None for row in seen["systems"])  # no low-passed file there
    recipe = {row["system"]: row for row in held["systems"]}["seed_recipe"]
    assert recipe["seeds"] == [0, 1] and recipe["spread"]["mel_distance"]["n"] == 2
    # the listening links: every system's wav (every seed's run) and a spectrogram grid, relative paths
    assert [item["file"] for item in held["listening"]] == ["running/el/e.wav", "running/ru/r1.wav"]
    for group in (held, seen):
        for item in group["listening"]:
            assert len(item["audio"]) == 7 and (out / item["spectrogram"]).is_file()
            assert all((out / path).is_file() for path in item["audio"].values())
    md = qc.markdown(results)
    assert "## heldout_languages" in md and "## heldout_files" in md
    assert md.count("| band_replication | - |") == 2 and "ref. lines max dB" in md and "mel dist. 0-12 kHz" in md
    assert "running/el 1, running/ru 1" in md and "1 have no top band" in md
    assert re.search(r"\| seed_recipe \| 2 \| \d\.\d{3} \(\d\.\d{3}\.\.\d\.\d{3}\)", md)
    for link in re.findall(r"\]\(([^)]+)\)", md):
        assert (out / link).is_file(), link


@pytest.mark.slow
def test_speech_dir_and_seeds_end_to_end(speech, tmp_path):
    """The real stages with a tiny base: --speech_dir and --seeds 0,1 give a run per recipe and seed,
    two group tables with spreads, and a rerun skips every finished stage."""
    import subprocess
    import sys

    for i in range(3):  # enough windows for the tiny base and the fine-tunes
        tone(speech / "train" / "running" / "fr" / f"t{i}.wav", 10 + i)
    out = tmp_path / "out"
    flags = ["--speech_dir", str(speech), "--output_dir", str(out), "--device", "cpu", "--seeds", "0,1",
             "--base_minutes", "0.02", "--base_config", "tiny_24khz", "--finetune_steps", "2", "--epochs", "2",
             "--finetune_flags", "--batch_size 2 --segment_length 0.2 --val_segment_length 0.4"]

    def check():
        return subprocess.run([sys.executable, str(REPO / "scripts" / "quality_check.py"), *flags], cwd=REPO,
                              capture_output=True, text=True, timeout=900)

    proc = check()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    for recipe in qc.RECIPE_CONFIGS:
        for seed in (0, 1):
            assert (out / "runs" / recipe / f"seed{seed}" / "latest.pt").is_file()
            assert results["stages"][f"{recipe}_seed{seed}"]["attempts"][-1]["end"] == "finished"
    for group in ("heldout_languages", "heldout_files"):
        rows = {row["system"]: row for row in results["groups"][group]["systems"]}
        assert list(rows) == list(qc.SYSTEMS)
        assert rows["adversarial_recipe"]["spread"]["mel_distance"]["n"] == 2
        assert rows["seed_recipe"]["iterations"] == 2 and rows["seed_recipe"]["seeds"] == [0, 1]
        assert np.isfinite(rows["band_replication"]["mel_distance_low"])
    assert results["groups"]["heldout_languages"]["low_passed_files"] == 1
    assert "## heldout_languages" in proc.stdout and "## heldout_files" in proc.stdout
    again = check()
    assert again.returncode == 0 and "$ python" not in again.stdout, again.stderr[-3000:]
