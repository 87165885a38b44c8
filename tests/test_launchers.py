"""train_decoder_48khz.sh and train_status.sh driven like a user would, with a tiny run on CPU."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers_train import save_tiny_model, tiny_snac, write_cache

ROOT = Path(__file__).resolve().parents[1]
LAUNCH, STATUS = ROOT / "train_decoder_48khz.sh", ROOT / "train_status.sh"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

pytestmark = pytest.mark.skipif(shutil.which("uv") is None or shutil.which("bash") is None,
                                reason="the launchers need bash and uv on PATH")


def sh(cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", *map(str, args)], cwd=cwd, capture_output=True, text=True, env=ENV,
                          timeout=timeout)


def wait_for(predicate, timeout: float = 90, every: float = 0.5):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out waiting")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A tiny base model, train/val code caches and a trainer config, as a user's working folder."""
    root = tmp_path_factory.mktemp("work")
    save_tiny_model(root / "base")
    model = tiny_snac()
    write_cache(root / "cache" / "train", model, [1.0] * 16, seed=0)
    write_cache(root / "cache" / "val", model, [0.8] * 2, seed=1)
    config = {"pretrained_model": "base", "train_codes": "cache/train", "val_codes": "cache/val",
              "batch_size": 4, "epochs": 200, "warmup_epochs": 1, "segment_length": 0.2,
              "val_segment_length": 0.2, "n_ffts": [128, 256], "num_workers": 0, "log_every": 1,
              "checkpoint_every": 5, "checkpoint_minutes": 0, "learning_rate": 1e-3,
              "warmup_learning_rate": 1e-3, "seed": 0, "output_dir": "runs/tiny"}
    (root / "tiny.json").write_text(json.dumps(config))
    yield root
    # never leave a trainer behind when a test fails half-way: stop the ones this module started
    for pid_file in root.glob("logs/*/train.pid"):
        try:
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    for status in root.glob("runs/*/status.json"):
        try:
            os.kill(int(json.loads(status.read_text())["pid"]), signal.SIGKILL)
        except (ProcessLookupError, ValueError, KeyError, TypeError):
            pass


def status_of(cwd: Path, *run_dirs: str) -> str:
    return sh(cwd, STATUS, *run_dirs).stdout


def wait_status(cwd: Path, *needles: str, run_dirs: tuple[str, ...] = ()) -> str:
    """Poll train_status.sh until its screen holds every needle; return that screen."""
    def check():
        screen = status_of(cwd, *run_dirs)
        return screen if all(n in screen for n in needles) else None
    return wait_for(check)


@pytest.mark.slow
def test_launch_status_double_launch_crash_stale_pid_and_resume(workdir):
    # ---- launch: PID and the follow/check/stop commands are printed, the PID file is written
    r = sh(workdir, LAUNCH, "cpu", "--config", "tiny.json")
    assert r.returncode == 0, r.stderr
    assert "tail -f logs/tiny/training.log" in r.stdout and "kill " in r.stdout
    pid = int((workdir / "logs" / "tiny" / "train.pid").read_text())
    assert f"PID       {pid}" in r.stdout
    # ---- status shows it running, with progress
    out = wait_status(workdir, "state        running", "phase ", run_dirs=("runs/tiny",))
    assert f"pid          {pid}" in out and "ETA" in out
    # ---- a second launch into the same run directory is refused while it lives
    r = sh(workdir, LAUNCH, "cpu", "--config", "tiny.json")
    assert r.returncode == 2 and f"a live run (PID {pid}) already writes to" in r.stderr
    # ---- SIGKILL the trainer after its first checkpoint: status reports a crash
    run = workdir / "runs" / "tiny"
    wait_for(lambda: any(run.glob("checkpoint_iter*.pt")))
    trainer_pid = json.loads((run / "status.json").read_text())["pid"]
    os.kill(trainer_pid, signal.SIGKILL)
    wait_status(workdir, "state        crashed (the process is gone", run_dirs=("runs/tiny",))
    reached = json.loads((run / "status.json").read_text())["iteration"]
    # ---- relaunch: the stale PID file is noticed and cleared, the run resumes and finishes
    wait_for(lambda: subprocess.run(["ps", "-p", str(pid), "-o", "stat="], capture_output=True,
                                    text=True).stdout.strip() in ("", "Z"))
    r = sh(workdir, LAUNCH, "cpu", "--config", "tiny.json", "--max_steps", str(reached + 4))
    assert r.returncode == 0, r.stderr
    assert f"cleared a stale PID file logs/tiny/train.pid (process {pid} is gone)" in r.stderr
    assert "resuming: --resume auto" in r.stdout
    out = wait_status(workdir, "state        finished")
    assert f"iteration {reached + 4}/" in out and "checkpoint   " in out
    assert "resumed from" in (run / "training.log").read_text().lower()
    # ---- --fresh never overwrites a run that has checkpoints
    r = sh(workdir, LAUNCH, "cpu", "--config", "tiny.json", "--fresh")
    assert r.returncode == 2 and "already holds checkpoints" in r.stderr


def test_status_reports_a_failed_run_with_its_error_and_plots(tmp_path):
    run = tmp_path / "runs" / "broken"
    run.mkdir(parents=True)
    now = time.time()
    (run / "status.json").write_text(json.dumps({
        "state": "failed", "pid": 999999999, "device": "cpu", "start_time": now - 100, "update_time": now - 5,
        "epoch": 2, "epochs": 15, "iteration": 120, "total_iterations": 900, "phase": "unfreeze",
        "train_loss": 1.5, "val_loss": 1.7, "best_val_loss": 1.6, "samples_per_s": 33.0, "eta_s": 500,
        "latest_checkpoint": None, "error": "RuntimeError: CUDA out of memory"}))
    rows = [{"type": "train", "iteration": i, "phase": "warmup" if i < 3 else "unfreeze", "loss/total": 2.0 / i,
             "loss/l1": 0.1, "loss/stft": 1.9 / i, "lr": 1e-4} for i in range(1, 6)]
    rows.append({"type": "val", "iteration": 5, "loss/total": 0.5, "loss/l1": 0.1, "loss/stft": 0.4})
    (run / "metrics.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    r = sh(tmp_path, STATUS, "runs/broken", "--plot")
    assert r.returncode == 0, r.stderr
    assert "state        crashed" in r.stdout and "last error   RuntimeError: CUDA out of memory" in r.stdout
    assert "iteration 120/900, phase unfreeze" in r.stdout and "best 1.6000" in r.stdout
    assert (run / "loss_curves.png").stat().st_size > 1000
    r = sh(tmp_path, STATUS, "runs/missing")
    assert r.returncode == 1 and "no such run directory" in r.stdout


def test_launcher_refuses_bad_input_with_a_sentence(workdir, tmp_path):
    r = sh(workdir, LAUNCH, "gpu0")
    assert r.returncode == 2 and "must be a GPU index" in r.stderr
    r = sh(workdir, LAUNCH, "cpu", "--config", "nope.json")
    assert r.returncode == 2 and "config file nope.json does not exist" in r.stderr
    r = sh(workdir, LAUNCH, "cpu", "--config", "tiny.json", "--train_codes", "cache/none",
           "--output_dir", str(tmp_path / "runs" / "x"))
    assert r.returncode == 2 and "cache/none" in r.stderr and "does not exist" in r.stderr
    assert not (tmp_path / "runs" / "x").exists()
    if shutil.which("nvidia-smi") is None:
        r = sh(workdir, LAUNCH, "0", "--config", "tiny.json")
        assert r.returncode == 2 and "nvidia-smi not found" in r.stderr


def preflight(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """The launcher's Python pre-flight as train_decoder_48khz.sh runs it (no nvidia-smi needed)."""
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "launcher.py"), "preflight", *args],
                          cwd=cwd, capture_output=True, text=True, env=ENV, timeout=120)


@pytest.fixture
def fake_trainer():
    """A live process whose command line names the trainer script (what the launcher's liveness
    check looks for); stopped by its own PID afterwards."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "finetune_decoder_48khz.py"])
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.mark.slow
def test_launcher_refuses_a_gpu_in_use_and_a_log_folder_of_another_run(workdir, tmp_path, fake_trainer):
    logs = tmp_path / "logs"
    busy = logs / "busy"
    busy.mkdir(parents=True)
    (busy / "launch.json").write_text(json.dumps({"output_dir": str(tmp_path / "runs" / "busy"), "device": "0,1"}))
    (busy / "train.pid").write_text(str(fake_trainer))
    flags = ("--", "--config", "tiny.json")
    r = preflight(workdir, "--device", "1", "--logs_root", str(logs), *flags, "--output_dir", str(tmp_path / "runs" / "new"))
    assert r.returncode == 2, r.stderr
    assert f"GPU 1 is in use by the live run {tmp_path / 'runs' / 'busy'} (PID {fake_trainer})" in r.stderr
    assert not (logs / "new").exists()  # nothing written by a refused launch
    # a log folder named like this run but written by a run in another directory
    other = logs / "x"
    other.mkdir()
    (other / "launch.json").write_text(json.dumps({"output_dir": "/elsewhere/runs/x", "device": "cpu"}))
    r = preflight(workdir, "--device", "cpu", "--logs_root", str(logs), *flags, "--output_dir", str(tmp_path / "runs" / "x"))
    assert r.returncode == 2
    assert f"log folder {other} belongs to the run directory /elsewhere/runs/x" in r.stderr
    assert "another name" in r.stderr and "\n" not in r.stderr.strip()


def test_status_usage_errors_name_the_script_and_a_non_run_directory_exits_1(tmp_path):
    r = sh(tmp_path, STATUS, "--bogus")
    assert r.returncode == 2 and "train_status.sh: error: unrecognized arguments: --bogus" in r.stderr
    assert "launcher.py" not in r.stderr
    (tmp_path / "not_a_run").mkdir()
    (tmp_path / "not_a_run" / "notes.txt").write_text("hello")
    r = sh(tmp_path, STATUS, "not_a_run")
    assert r.returncode == 1
    assert "state        not a run directory" in r.stdout and "pass a trainer --output_dir" in r.stdout
    r = sh(tmp_path, STATUS)  # nothing launched here, no runs/
    assert r.returncode == 1 and "no runs found" in r.stdout


def test_multi_node_flags_reach_torchrun_and_bad_ones_are_refused(workdir, tmp_path):
    flags = ("--config", "tiny.json", "--output_dir", str(tmp_path / "runs" / "mn"), "--dry_run")
    r = sh(workdir, LAUNCH, "cpu", "--nnodes", "2", "--node_rank", "1", "--master_addr", "10.0.0.7",
           "--master_port", "29511", *flags)
    assert r.returncode == 0, r.stderr
    # torchrun under launcher.py (a stop signal every worker saved for exits 0), with the node's flags
    assert "launcher.py torchrun --output_dir" in r.stdout
    assert ("--nnodes 2 --node_rank 1 --nproc_per_node 1 --rdzv_backend c10d "
            "--rdzv_endpoint 10.0.0.7:29511 --rdzv_id mn") in r.stdout and "--device cpu" in r.stdout
    assert "log: logs/mn/training.node1.log" in r.stdout
    assert not (workdir / "logs" / "mn" / "launch.json").exists()  # node 0 records the launch
    r = sh(workdir, LAUNCH, "cpu", "--nnodes", "2", "--node_rank", "0", "--master_addr", "n0", *flags)
    assert r.returncode == 0 and "--rdzv_endpoint n0:29500" in r.stdout, r.stderr
    assert (workdir / "logs" / "mn" / "launch.json").exists()
    for bad, message in ((["--nnodes", "2", "--master_addr", "n0"], "needs --node_rank 0..1"),
                         (["--nnodes", "2", "--node_rank", "2", "--master_addr", "n0"], "needs --node_rank 0..1"),
                         (["--nnodes", "2", "--node_rank", "0"], "needs --master_addr"),
                         (["--node_rank", "1"], "add --nnodes N"), (["--nnodes", "two"], "--nnodes must be"),
                         (["--master_port", "x"], "--master_port must be a port number")):
        r = sh(workdir, LAUNCH, "cpu", *bad, *flags)
        assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1, (bad, r.stderr)


def test_status_shows_every_nodes_last_log_line(tmp_path):
    run, logs = tmp_path / "runs" / "mn", tmp_path / "logs" / "mn"
    run.mkdir(parents=True)
    logs.mkdir(parents=True)
    (run / "status.json").write_text(json.dumps({"state": "running", "iteration": 7}))
    (logs / "launch.json").write_text(json.dumps({"output_dir": str(run), "device": "cpu"}))
    for k, last in enumerate(["it 7/100 | loss 1.2", "[rank 1] waiting"]):
        (logs / f"training.node{k}.log").write_text(f"start\n{last}\n\n")
    (logs / "training.node10.log").write_text("")
    screen = sh(tmp_path, STATUS, "runs/mn").stdout
    assert "node 0       it 7/100 | loss 1.2" in screen and "node 1       [rank 1] waiting" in screen
    assert screen.index("node 1 ") < screen.index("node 10 ") and "node 10      (empty log)" in screen
