"""Faults: SIGKILL at several points then --resume auto ends bit-identical to an uninterrupted run;
a group SIGTERM under uv run (and under torchrun via the launcher) saves and exits 0 (signals together are one request, a later one exits at once); the non-finite step guard."""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from helpers_train import (SCRIPT, REPO, base_args, config, load_trainer, one_thread, pycache_env,  # noqa: F401
                           read_metrics, run_script, small_run_data)
import snac.train.loop as loop
from snac.train.checkpoint import load_checkpoint
from snac.train.distributed import StopFlag

trainer = load_trainer()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return small_run_data(tmp_path_factory.mktemp("data"), [0.5, 0.6, 0.4])


def flags(data, out, **overrides) -> list[str]:
    values = dict(batch_size=3, checkpoint_every=2, val_examples=0)  # 3 steps per epoch, 9 in all
    values.update(overrides)
    return base_args(data["root"], data["model"], data["train"], data["val"], out, **values)


@pytest.mark.slow
def test_killed_at_any_point_and_resumed_ends_bit_identical(data, tmp_path, pycache_env):
    from snac.train.config import resolve_config

    # 3 steps per epoch (9 in all); iteration checkpoints at 2, 4, 6, 8; epoch checkpoints at 3, 6, 9
    assert trainer.train(resolve_config(flags(data, tmp_path / "whole"))) == 0
    reference = load_checkpoint(tmp_path / "whole" / "latest.pt")
    out = tmp_path / "cut"
    # each stage resumes the previous one from the newest valid checkpoint (iteration in column 3)
    stages = [("step:3", None),  # SIGKILL in warmup (end of epoch 1, before its saves)
              ("step:4", 2),     # SIGKILL in the first step after the phase switch
              ("step:5", 3),     # SIGKILL mid-epoch 2 (unfreeze)
              ("save:6", 4),     # SIGKILL half-way through writing a checkpoint at iteration 6
              (None, 4)]         # runs to the end
    outputs = []
    for fault, resumed_at in stages:
        env = {**pycache_env, **({"SNAC48_FAULT": fault} if fault else {})}
        proc = run_script(flags(data, out, resume="auto", num_workers=1), env=env)
        outputs.append(proc.stdout)
        assert proc.returncode == (-9 if fault else 0), (fault, proc.stdout[-2000:], proc.stderr[-2000:])
        if resumed_at is not None:
            assert f"at iteration {resumed_at} (" in proc.stdout, (fault, proc.stdout[-1500:])
    assert "removed stale temporary file" in outputs[-1]  # the torn file of the killed save
    final = load_checkpoint(out / "latest.pt")
    assert final["iteration"] == reference["iteration"] == 9
    assert final["model"].keys() == reference["model"].keys()
    assert all(torch.equal(final["model"][k], reference["model"][k]) for k in reference["model"])
    opt_a, opt_b = final["optimizer"]["state"], reference["optimizer"]["state"]
    assert all(torch.equal(opt_a[i]["exp_avg"], opt_b[i]["exp_avg"]) for i in opt_b)
    assert final["scheduler"]["last_epoch"] == reference["scheduler"]["last_epoch"]


def sigterm_group_at_step_2(cmd: list[str], env: dict, timeout: float = 300) -> tuple[int, str]:
    """Run ``cmd`` in its own process group, SIGTERM the whole group once step 2 is logged; -> (exit
    status, everything it printed)."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1", **env})
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if " it 2/" in line:
            os.killpg(proc.pid, signal.SIGTERM)
            break
    lines += proc.stdout.readlines()
    return proc.wait(timeout=timeout), "".join(lines)


@pytest.mark.slow
def test_group_sigterm_under_uv_run_with_workers_saves_mid_run_and_exits_zero(data, tmp_path, pycache_env):
    # `kill -TERM -- -PGID` (SLURM scancel, systemd) reaches uv, python and both DataLoader workers;
    # uv forwards it, so python sees SIGTERM twice within milliseconds: one stop request
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not on PATH")
    out = tmp_path / "run"
    cmd = [uv, "run", "--no-sync", "python", str(SCRIPT)] + flags(data, out, epochs=50, checkpoint_every=0,
                                                                   val_codes=None, num_workers=2)
    code, output = sigterm_group_at_step_2(cmd, pycache_env)  # the whole group, workers included
    assert code == 0, output[-3000:]
    log = (out / "training.log").read_text()
    assert log.count("signal SIGTERM received: saving and exiting") == 1
    status = json.loads((out / "status.json").read_text())
    saved = load_checkpoint(out / "latest.pt")
    # the kill landed mid-run: 50 epochs of 3 steps were planned, the run stopped a few steps in
    assert status["state"] == "stopped" and saved["iteration"] == status["iteration"]
    assert 2 <= saved["iteration"] < status["total_iterations"] == 150


def test_signals_together_are_one_stop_request_and_a_later_one_exits_at_once(monkeypatch):
    exits, now = [], [100.0]
    monkeypatch.setattr(os, "_exit", exits.append)
    flag = StopFlag(coalesce_s=1.0, clock=lambda: now[0])
    flag._handle(signal.SIGTERM, None)
    now[0] += 0.005
    flag._handle(signal.SIGTERM, None)  # forwarded by uv: the same request
    flag._handle(signal.SIGINT, None)
    assert flag.signum == signal.SIGTERM and exits == []
    now[0] += 2.0
    flag._handle(signal.SIGINT, None)  # a second Ctrl-C, seconds later: exit at once
    assert exits == [128 + signal.SIGINT]


def test_non_finite_steps_are_skipped_counted_and_too_many_stop_the_run(data, tmp_path, monkeypatch):
    real_step, calls = loop.train_step, [0]
    bad_calls: set[int] = set()

    def sometimes_nan(step_model, batch, cfg, params, autocast):
        calls[0] += 1
        metrics, finite = real_step(step_model, batch, cfg, params, autocast)
        if calls[0] in bad_calls:
            for p in params:
                p.grad.fill_(float("nan"))
            return {**metrics, "loss/total": torch.tensor(float("nan"))}, torch.tensor(False)
        return metrics, finite

    monkeypatch.setattr(loop, "train_step", sometimes_nan)
    bad_calls.update({2})
    assert trainer.train(config(data["root"], data["model"], data["train"], data["val"], tmp_path / "a",
                                batch_size=3, max_bad_steps=2, val_examples=0)) == 0
    rows = [m for m in read_metrics(tmp_path / "a") if m["type"] == "train"]
    assert [m["bad_steps"] for m in rows] == [0] + [1] * 8
    assert rows[1]["loss/total"] is None  # NaN written as null: strict JSON
    final = load_checkpoint(tmp_path / "a" / "latest.pt")["model"]
    assert all(torch.isfinite(v).all() for v in final.values())

    calls[0] = 0
    bad_calls.clear()
    bad_calls.update({5, 6})  # iteration 6 ends epoch 2 and is an iteration checkpoint
    out = tmp_path / "b"
    assert trainer.train(config(data["root"], data["model"], data["train"], data["val"], out, batch_size=3,
                                max_bad_steps=2, checkpoint_every=2, val_examples=0)) == trainer.EXIT_BAD_STEPS
    assert "2 non-finite steps in a row (--max_bad_steps 2)" in (out / "training.log").read_text()
    assert json.loads((out / "status.json").read_text())["state"] == "failed"
    # nothing was saved at the failing step (no checkpoint_iter6.pt / checkpoint_epoch2.pt)
    assert load_checkpoint(out / "latest.pt")["iteration"] == 4
    assert not (out / "checkpoint_iter6.pt").exists() and not (out / "checkpoint_epoch2.pt").exists()


def test_a_stop_signal_saves_first_then_validates_once_for_best_model(data, tmp_path, monkeypatch):
    # SIGTERM during step 2: step 3 stops the run. Iteration 3 ends epoch 1 and is an iteration
    # checkpoint, both of which validate first in a normal run; after a signal the run saves first
    # (the grace period may be short), then validates once so best_model.pt exists (issue 25.3).
    monkeypatch.setenv("SNAC48_FAULT", "step:2:TERM")
    out = tmp_path / "run"
    assert trainer.train(config(data["root"], data["model"], data["train"], data["val"], out, batch_size=3,
                                checkpoint_every=3, val_examples=0)) == 0
    assert [m["iteration"] for m in read_metrics(out) if m["type"] == "val"] == [3]
    log = (out / "training.log").read_text()
    assert log.index("saved checkpoint_iter3.pt, latest.pt") < log.index("val it 3") < log.index("saved best_model.pt")
    assert load_checkpoint(out / "latest.pt")["iteration"] == 3  # saved at the step the stop came
    assert load_checkpoint(out / "best_model.pt")["iteration"] == 3


@pytest.mark.slow
def test_group_sigterm_under_torchrun_via_the_launcher_exits_zero_once_every_worker_saved(data, tmp_path, pycache_env):
    # torchrun itself exits 1 (SignalException) on a group SIGTERM although its workers saved;
    # the launcher's documented multi-GPU path (launcher.py torchrun) exits 0 when they did
    out = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "scripts" / "launcher.py"), "torchrun", "--output_dir", str(out), "--",
           "--standalone", "--nproc_per_node", "2", str(SCRIPT)] + flags(data, out, epochs=50, checkpoint_every=0,
                                                                          val_codes=None, batch_size=2)
    code, output = sigterm_group_at_step_2(cmd, pycache_env)  # torchrun, both workers and the launcher
    assert code == 0, output[-3000:]
    assert "every worker saved and stopped" in output
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "stopped" and load_checkpoint(out / "latest.pt")["iteration"] == status["iteration"]


@pytest.mark.slow
def test_launcher_torchrun_passes_on_a_failure_without_a_stop_signal(tmp_path):
    # a run dir whose status.json says 'stopped' at latest.pt's iteration (an earlier, clean stop):
    # a torchrun that fails now, with no signal, must not be reported as a clean stop
    from snac.train.checkpoint import save_checkpoint

    save_checkpoint({"model": {}, "iteration": 4}, tmp_path / "latest.pt")
    (tmp_path / "status.json").write_text(json.dumps({"state": "stopped", "iteration": 4}))
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "launcher.py"), "torchrun", "--output_dir", str(tmp_path),
                        "--", "--standalone", "--nproc_per_node", "1", str(tmp_path / "missing.py")],
                       cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode != 0 and "every worker saved" not in r.stdout
