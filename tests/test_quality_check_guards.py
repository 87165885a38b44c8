"""scripts/quality_check.py's bookkeeping with stand-in stage scripts (seconds, no training): a stage
is finished only when its trainer says so, every attempt's time is kept, the settings file is written
first, paths compare normalised, the folder is locked, a stop reports how the stage really ended, and
only the val files the cache accepted are evaluated (issue 24, items 3, 7, 8, 10-13)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
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


@pytest.fixture
def folders(tmp_path):
    for name in ("train", "val"):
        (tmp_path / name).mkdir()
    return tmp_path


def args_for(root: Path, *extra: str):
    return qc.parse_args(["--train_dir", str(root / "train"), "--val_dir", str(root / "val"),
                          "--output_dir", str(root / "out"), "--device", "cpu", *extra])


def stages(root: Path, *extra: str):
    (root / "out").mkdir(exist_ok=True)
    return qc.Stages(root / "out", args_for(root, *extra))


def fake_trainer(tmp_path: Path, states: dict[str, list[str]]) -> Path:
    """A stand-in trainer: run k of a run dir writes ``states[run dir name][k]`` to its status.json
    (iteration 3 when finished, 2 otherwise) and exits 0, as the real one does after a SIGTERM."""
    script = tmp_path / "trainer.py"
    script.write_text(
        "import json, sys, pathlib, time\n"
        "run = pathlib.Path(sys.argv[1]); run.mkdir(parents=True, exist_ok=True)\n"
        "n = len(list(run.glob('attempt-*'))); (run / f'attempt-{n}').touch(); time.sleep(0.2)\n"
        f"state = {states!r}[run.name][n]\n"
        "iteration = 3 if state == 'finished' else 2\n"
        "(run / 'status.json').write_text(json.dumps({'state': state, 'iteration': iteration}))\n")
    return script


def test_a_fine_tune_stopped_from_outside_is_not_finished_and_every_attempt_is_timed(folders, monkeypatch):
    script = fake_trainer(folders, {"adversarial_recipe": ["stopped", "finished"], "seed_recipe": ["finished"]})
    monkeypatch.setattr(qc, "finetune_command", lambda args, recipe, base, caches, run_dir, seed: [script, run_dir])
    args = args_for(folders, "--finetune_steps", "3")
    with pytest.raises(SystemExit, match="stage 'adversarial_recipe' ended with its trainer stopped at iteration 2, "
                                         "not finished .* rerun the same command to resume it"):
        qc.stage_finetune(stages(folders, "--finetune_steps", "3"), args, Path("base"), {})
    recorded = json.loads((folders / "out" / "stages.json").read_text())
    assert "adversarial_recipe" not in recorded["stages"]
    assert [a["end"] for a in recorded["attempts"]["adversarial_recipe"]] == ["trainer stopped"]
    # the rerun resumes the stage; its time is both attempts'
    st = stages(folders, "--finetune_steps", "3")
    qc.stage_finetune(st, args, Path("base"), {})
    rec = st.done("adversarial_recipe")
    assert rec["iterations"] == 3 and [a["end"] for a in rec["attempts"]] == ["trainer stopped", "finished"]
    assert rec["seconds"] == pytest.approx(sum(a["seconds"] for a in rec["attempts"])) and rec["seconds"] > 0.4


def test_the_settings_file_is_written_before_the_base_stage(folders):
    bad = folders / "not_a_model"
    bad.mkdir()
    argv = ["--train_dir", str(folders / "train"), "--val_dir", str(folders / "val"),
            "--output_dir", str(folders / "out"), "--device", "cpu", "--base_model", str(bad)]
    with pytest.raises(SystemExit, match="cannot load a SNAC"):
        qc.main(argv)
    assert json.loads((folders / "out" / "stages.json").read_text())["attempts"]["base"][0]["end"] == "failed"
    # the rerun and --overwrite reach the base stage again instead of "not a quality-check folder"
    for extra in ([], ["--overwrite"]):
        with pytest.raises(SystemExit, match="cannot load a SNAC"):
            qc.main(argv + extra)
    torch.manual_seed(0)
    SNAC(**TINY_24KHZ).save_pretrained(folders / "tiny")
    st = stages(folders, "--base_model", str(folders / "tiny"))  # a fixed --base_model: nothing finished, taken
    assert qc.stage_base(st, args_for(folders, "--base_model", str(folders / "tiny"))).is_dir()
    assert st.done("base")["source"] == str(folders / "tiny")


def test_paths_spelled_otherwise_are_the_same_setting_and_a_change_is_named(folders, monkeypatch):
    st = stages(folders)
    st.attempt("base", "base", 1.0, "finished")
    st.finish("base", source="x")
    monkeypatch.chdir(folders)
    same = qc.parse_args(["--train_dir", "train/", "--val_dir", "./val", "--output_dir", str(folders / "out") + "/",
                          "--device", "cpu"])
    assert qc.Stages(folders / "out", same).done("base")  # accepted, the finished stage kept
    with pytest.raises(SystemExit) as e:
        stages(folders, "--seed", "1")
    message = str(e.value)
    assert "other settings (--seed 0 there, 1 now)" in message and "finished stages (base) are kept" in message
    assert "--overwrite" not in message


def test_a_second_quality_check_on_a_folder_in_use_names_the_pid(folders):
    out = folders / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import importlib.util, sys, time, pathlib\n"
        f"spec = importlib.util.spec_from_file_location('qc', {str(REPO / 'scripts' / 'quality_check.py')!r})\n"
        "qc = importlib.util.module_from_spec(spec); spec.loader.exec_module(qc)\n"
        f"lock = qc.lock_folder(pathlib.Path({str(out)!r})); print('locked', flush=True); time.sleep(60)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        second = subprocess.run([sys.executable, str(REPO / "scripts" / "quality_check.py"),
                                 "--train_dir", str(folders / "train"), "--val_dir", str(folders / "val"),
                                 "--output_dir", str(out), "--device", "cpu"],
                                capture_output=True, text=True, timeout=120)
    finally:
        holder.kill()
        holder.wait()
    assert second.returncode != 0
    assert second.stderr.strip().splitlines() == [
        f"error: another quality check (pid {holder.pid}) is running in {out}; wait for it to end or stop it "
        f"(kill {holder.pid}), then rerun"]
    assert not (out / "stages.json").exists()  # the second check wrote nothing


@pytest.mark.parametrize("body,how", [
    ("import time; time.sleep(30)", "it was killed by SIGTERM before it could save (exit -15)"),
    ("import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *a: sys.exit(1))\nprint('up', flush=True)\n"
     "time.sleep(30)", "it stopped and saved what it had (exit 1)"),
])
def test_a_stop_during_a_stage_reports_how_the_stage_ended(folders, body, how):
    script = folders / "stage.py"
    script.write_text(body)
    st = stages(folders)
    log = folders / "out" / "logs" / "cache_train.log"

    def stop_when_running():
        deadline = time.time() + 30
        while time.time() < deadline and (st.child is None or ("up" in body and "up" not in log.read_text())):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop_when_running, daemon=True).start()
    with pytest.raises(SystemExit) as e:
        st.run("cache", [script], step="cache_train")
    assert str(e.value) == f"stopped by SIGTERM during stage 'cache_train': {how}; rerun the same command to continue"
    assert st.record["attempts"]["cache"][0]["end"] == "stopped by SIGTERM"


def test_only_the_val_files_the_cache_accepted_are_evaluated(folders):
    torch.manual_seed(0)
    base = SNAC(**TINY_24KHZ).eval()
    base.save_pretrained(folders / "base")
    SNAC48.from_snac(base).save_pretrained(folders / "m48")
    t = np.arange(24000) / 48000
    sf.write(str(folders / "val" / "a.wav"), (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 48000)
    (folders / "val" / "empty.wav").write_bytes(b"")
    cache = folders / "cache_val"
    cache.mkdir()
    manifest = {k: None for k in ("model_id", "model_config", "hop_length", "vq_strides", "model_sample_rate",
                                  "target_sample_rate", "input_root", "embed_audio")}
    manifest.update(format_version=FORMAT_VERSION, rows=1,
                    rejected=[{"path": "empty.wav", "reason": "empty audio (0 samples)"}])
    (cache / "manifest.json").write_text(json.dumps(manifest))
    st = stages(folders, "--val_limit", "5")
    ev = qc.stage_evaluate(st, args_for(folders), folders / "base",
                           {r: folders / "m48" for r in ("seed_recipe", "adversarial_recipe")}, cache)
    assert list(ev) == [""]  # --val_dir: one group
    assert ev[""]["files"] == 1 and ev[""]["result"]["counts"]["seed_recipe"] == 1
    assert ev[""]["result"]["skipped"] == {"empty.wav": "rejected by the cache: empty audio (0 samples)"}
    st.finish("base", source="x")
    for recipe in ("seed_recipe", "adversarial_recipe"):
        st.finish(recipe, iterations=1)
    results = qc.build_results(st, args_for(folders), ev)
    json.dumps(results, allow_nan=False)
    assert results["stages"]["evaluate"]["attempts"][0]["end"] == "finished"
    assert "Not evaluated: 1 file skipped: rejected by the cache (empty.wav)." in qc.markdown(results)
