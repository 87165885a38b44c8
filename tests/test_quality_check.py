"""scripts/quality_check.py end to end with a budget of seconds: a tiny base trained here, codes
cached, both recipes fine-tuned, every system evaluated; a rerun skips the finished stages and a
run of other settings in the same folder is refused. (The numbers mean nothing at this scale: only
their shape and finiteness are checked. The metrics themselves are tested in test_quality_metrics.py
and test_evaluate_scoring.py.)"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from snac import SNAC

pytestmark = pytest.mark.slow  # the quality check end to end, every stage a subprocess

REPO = Path(__file__).resolve().parents[1]
SYSTEMS = ["baseline", "smart_init", "band_replication", "seed_recipe", "adversarial_recipe"]


def write_speechlike(folder: Path, names: list[str], rate: int, seed: int) -> None:
    """Harmonic chirps with noise bursts and a silent gap: energy up to the Nyquist, like a recording."""
    rng = np.random.default_rng(seed)
    for i, name in enumerate(names):
        t = np.arange(int(rate * 0.9)) / rate
        f0 = 140 + 40 * i
        x = sum(0.2 / k * np.sin(2 * np.pi * k * f0 * t * (1 + 0.3 * t)) for k in range(1, 12))
        x = x + 0.02 * rng.standard_normal(len(t))
        x[int(0.6 * rate):int(0.7 * rate)] = 0.0  # silence, masked out of the scores
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, x.astype(np.float32), rate)


def quality_check(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "quality_check.py"), *flags],
                          cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, list[str], subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("qc")
    write_speechlike(root / "train", ["a.wav", "b.wav", "c.flac"], 44100, 0)
    write_speechlike(root / "val", ["x.wav", "sub/y.flac"], 44100, 1)
    flags = ["--train_dir", str(root / "train"), "--val_dir", str(root / "val"), "--output_dir", str(root / "out"),
             "--device", "cpu", "--base_minutes", "0.02", "--base_config", "tiny_24khz", "--finetune_steps", "2",
             "--epochs", "2", "--finetune_flags", "--batch_size 2 --segment_length 0.2 --val_segment_length 0.4"]
    # `kill PID` of the quality check (not its group) while a fine-tune runs: the trainer gets the
    # signal too (no orphan left writing) and saves; the check exits non-zero saying how to continue
    first = subprocess.Popen([sys.executable, str(REPO / "scripts" / "quality_check.py"), *flags], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    trainer_log = root / "out" / "runs" / "adversarial_recipe" / "training.log"
    for line in first.stdout:
        if line.startswith("[adversarial_recipe] $"):
            deadline = time.time() + 120
            while not (trainer_log.is_file() and trainer_log.stat().st_size) and time.time() < deadline:
                time.sleep(0.05)  # until the trainer is up and logging (its stop handler installed)
            os.kill(first.pid, signal.SIGTERM)
            break
    _, err = first.communicate(timeout=120)
    assert first.returncode != 0 and "stopped by SIGTERM during stage 'adversarial_recipe'" in err, err[-2000:]
    assert "signal SIGTERM received" in trainer_log.read_text()  # the trainer itself stopped, cleanly
    assert not live_processes_naming(root / "out" / "runs")
    # the same command again finishes every stage
    proc = quality_check(*flags)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[adversarial_recipe] $" in proc.stdout and "[cache_train]" not in proc.stdout  # cache was done
    return root / "out", flags, proc


def live_processes_naming(path: Path) -> list[int]:
    """PIDs of live (non-zombie) processes whose command line mentions ``path``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX":
                continue
            if str(path) in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_every_stage_runs_and_results_are_complete(finished):
    out, _, proc = finished
    results = json.loads((out / "results.json").read_text())
    assert [row["system"] for row in results["systems"]] == SYSTEMS
    for row in results["systems"]:
        for key in ("mel_distance", "lsd_high", "high_band_energy_db", "stft_distance"):
            assert isinstance(row[key], float) and math.isfinite(row[key]), (row["system"], key, row[key])
        assert row["files"] == 2, row  # both val files scored
    assert [row["iterations"] for row in results["systems"]] == [None, 0, None, 2, 2]
    assert list(results["groups"]) == ["val"] and results["groups"]["val"]["systems"] == results["systems"]
    for key in ("base_mel_distance_init", "base_mel_distance_trained", "base_mel_distance_shuffled"):
        assert math.isfinite(results[key]) and results[key] > 0, key
    assert set(results["stages"]) == {"base", "cache", "adversarial_recipe", "seed_recipe", "evaluate"}
    assert all(rec["seconds"] > 0 and rec["attempts"] for rec in results["stages"].values())
    # the fine-tune stopped by the SIGTERM and its resumed run both count
    assert [a["end"] for a in results["stages"]["adversarial_recipe"]["attempts"]] == ["stopped by SIGTERM",
                                                                                      "finished"]
    assert "trained here" in results["base_model"]
    # everything needed to recompute the numbers is there
    base = SNAC.from_pretrained(out / "base_model")
    assert base.config["decoder_dim"] == 32  # the tiny preset
    for system in SYSTEMS:
        for rel in ("x.wav", "sub/y.wav"):
            audio, rate = sf.read(out / "audio" / system / rel)
            assert rate == 48000 and len(audio) > 0.8 * 48000 and np.isfinite(audio).all(), (system, rel)
    assert len(results["spectrograms"]) == 2 and all((out / p).is_file() for p in results["spectrograms"])
    table = (out / "results.md").read_text()
    assert all(f"| {s} |" in table for s in SYSTEMS) and all(f"| {s} |" in proc.stdout for s in SYSTEMS)


def test_rerun_skips_finished_stages_and_other_settings_are_refused(finished):
    out, flags, _ = finished
    stages = json.loads((out / "stages.json").read_text())["stages"]
    logs = {p.name: p.read_text() for p in (out / "logs").iterdir()}
    again = quality_check(*flags)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "$ python" not in again.stdout  # no stage's script ran again
    assert {p.name: p.read_text() for p in (out / "logs").iterdir()} == logs
    assert {k: v for k, v in json.loads((out / "stages.json").read_text())["stages"].items()
            if k != "evaluate"} == {k: v for k, v in stages.items() if k != "evaluate"}
    other = quality_check(*[("3" if f == "2" and flags[i - 1] == "--finetune_steps" else f)
                            for i, f in enumerate(flags)])
    assert other.returncode != 0 and "holds a quality check with other settings (--finetune_steps 2 there, 3 now)" \
        in other.stderr
    assert json.loads((out / "results.json").read_text())["systems"][3]["iterations"] == 2  # untouched
