"""The run directory of both trainers (snac/train/rundir.py): every check before anything in it is
renamed or written, no silent fresh start over an earlier run's leftovers, unreadable checkpoints
named, best_model.pt never replaced by a worse model, one trainer per directory, and best_model.pt
at the end of every run with val data."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers_train import REPO, load_trainer, one_thread, pycache_env, small_run_data, train_in_process  # noqa: F401
from snac.train.checkpoint import load_checkpoint

sys.path.insert(0, str(REPO / "scripts"))
from train_codec import main as codec_main  # noqa: E402

CODEC_SCRIPT = REPO / "scripts" / "train_codec.py"
TINY_CODEC = ["--model_config", "tiny_24khz", "--device", "cpu", "--batch_size", "2", "--segment_length", "0.08",
              "--no-adversarial", "--log_every", "1", "--checkpoint_every", "2", "--keep_last", "5"]
trainer = load_trainer()


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return small_run_data(tmp_path_factory.mktemp("data"), [0.5, 0.6])


def write_audio(root: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for i in range(2):
        t = np.arange(24000) / 24000
        sf.write(root / f"clip{i}.wav", 0.3 * np.sin(2 * np.pi * (200 + 100 * i) * t) + 0.03 * rng.standard_normal(len(t)),
                 24000)
    return root


@pytest.fixture
def audio(tmp_path):
    return {"train": write_audio(tmp_path / "train", 0), "val": write_audio(tmp_path / "val", 1)}


def codec(audio, out: Path, *flags: str) -> int:
    return codec_main(["--audio_dir", str(audio["train"]), "--val_dir", str(audio["val"]), "--val_seconds", "0.3",
                       "--output_dir", str(out), *TINY_CODEC, *flags])


def codec_process(audio, out: Path, env: dict, *flags: str, **popen) -> subprocess.Popen:
    args = [sys.executable, str(CODEC_SCRIPT), "--audio_dir", str(audio["train"]), "--val_dir", str(audio["val"]),
            "--val_seconds", "0.3", "--output_dir", str(out), *TINY_CODEC, *flags]
    return subprocess.Popen(args, cwd=REPO, text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **env}, **popen)


def replace(path: Path, content) -> None:
    """New content under ``path`` without touching its hard links (the trainers link checkpoints)."""
    tmp = path.with_name("tmp-replace")
    tmp.write_bytes(content) if isinstance(content, bytes) else torch.save(content, tmp)
    os.replace(tmp, path)


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def listing(directory: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(directory.iterdir())}


# ---------------------------------------------------------------- item 1: refusals touch nothing
@pytest.mark.slow
def test_codec_resume_refused_in_a_second_process_renames_nothing_and_auto_resumes(audio, tmp_path, pycache_env):
    """The issue's repro: a finished run; ``--resume`` with a checkpoint of another config (a real
    second process: rc 2, one line); the run dir is untouched, so ``--resume auto`` resumes it."""
    run, other = tmp_path / "run", tmp_path / "other"
    assert codec(audio, run, "--max_steps", "4") == 0
    assert codec(audio, other, "--max_steps", "2", "--model_config", str(bigger_tiny_config(tmp_path))) == 0
    before = listing(run)
    proc = codec_process(audio, run, pycache_env, "--max_steps", "2", "--resume", str(other / "checkpoint_iter2.pt"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and len(err.strip().splitlines()) == 1, err
    assert "holds a codec of another config (codebook_size 32 vs 64" in err
    assert listing(run) == before  # nothing renamed, moved or written
    weights = load_checkpoint(run / "best_model.pt")["model"]
    assert codec(audio, run, "--resume", "auto", "--max_steps", "2") == 0
    log = (run / "training.log").read_text()
    assert f"resumed from {run / 'latest.pt'} at iteration 4" in log and "starting fresh" not in log
    assert not [p for p in run.iterdir() if p.name.startswith("abandoned")]
    kept = load_checkpoint(run / "best_model.pt")["model"]
    assert all(torch.equal(weights[k], kept[k]) for k in weights)


def bigger_tiny_config(tmp_path: Path) -> Path:
    import json

    from snac.presets import TINY_24KHZ

    path = tmp_path / "tiny32.json"
    path.write_text(json.dumps({**TINY_24KHZ, "codebook_size": 32}))
    return path


@pytest.mark.parametrize("leftover", ["abandoned-latest.pt", "unreadable latest.pt", "best_model.pt", "model/"])
def test_codec_never_starts_fresh_over_leftovers_without_fresh(audio, tmp_path, capsys, leftover):
    run = tmp_path / "run"
    assert codec(audio, run, "--max_steps", "2") == 0
    for p in run.glob("*.pt"):
        if leftover == "abandoned-latest.pt" and p.name == "latest.pt":
            p.rename(run / "abandoned-latest.pt")
        elif leftover == "unreadable latest.pt" and p.name == "latest.pt":
            replace(p, p.read_bytes()[:100])
        elif p.name != leftover:
            p.unlink()
    if leftover != "model/":
        import shutil

        shutil.rmtree(run / "model")
    before = listing(run)
    assert codec(audio, run, "--resume", "auto", "--max_steps", "2") == 2
    err = error_line(capsys)
    assert "holds no checkpoint to resume but holds" in err and "--fresh" in err
    assert listing(run) == before
    assert codec(audio, run, "--fresh", "--max_steps", "2") == 0
    log = (run / "training.log").read_text()
    if not leftover.startswith("abandoned"):
        name = "latest.pt" if leftover.startswith("unreadable") else leftover.rstrip("/")
        assert f"--fresh: renamed {name} (of an earlier run) to abandoned-{name}" in log
        assert (run / f"abandoned-{name}").exists()


def test_decoder_never_starts_fresh_over_a_best_model_without_fresh(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_in_process(data, out, epochs=2, max_steps=2) == 0
    for p in out.glob("*.pt"):
        if p.name != "best_model.pt":
            p.unlink()
    before = listing(out)
    cfg = dict(epochs=2, max_steps=2, val_examples=0)
    from helpers_train import config

    assert trainer.train(config(data["root"], data["model"], data["train"], data["val"], out, resume="auto", **cfg)) == 2
    assert "holds no checkpoint to resume but holds best_model.pt" in error_line(capsys)
    assert listing(out) == before
    assert trainer.train(config(data["root"], data["model"], data["train"], data["val"], out, fresh=True, **cfg)) == 0
    assert (out / "abandoned-best_model.pt").exists() and (out / "best_model.pt").exists()


@pytest.mark.parametrize("trainer_name", ["decoder", "codec"])
def test_fresh_is_refused_where_resumable_checkpoints_are(data, audio, tmp_path, capsys, trainer_name):
    out = tmp_path / "run"
    if trainer_name == "codec":
        assert codec(audio, out, "--max_steps", "2") == 0
        assert codec(audio, out, "--fresh", "--max_steps", "2") == 2
    else:
        assert train_in_process(data, out, epochs=2, max_steps=2) == 0
        assert train_in_process(data, out, epochs=2, max_steps=2, fresh=True) == 2
    assert "--fresh, but" in error_line(capsys)


def test_codec_without_resume_refuses_a_dir_with_checkpoints(audio, tmp_path, capsys):
    out = tmp_path / "run"
    assert codec(audio, out, "--max_steps", "2") == 0
    assert codec(audio, out, "--max_steps", "2") == 2
    assert "already holds checkpoints (newest" in error_line(capsys)


# ---------------------------------------------------------------- item 2: skipped files, best val kept
def test_resume_auto_names_skipped_files_and_keeps_a_better_best_model(data, tmp_path):
    from helpers_train import config

    out = tmp_path / "run"
    assert train_in_process(data, out, epochs=2, max_steps=4, checkpoint_every=2) == 0
    # a newer best_model.pt than the newest readable checkpoint (its best val lower), latest.pt torn
    best = load_checkpoint(out / "best_model.pt")
    best["best_val_loss"] = 1e-9
    replace(out / "best_model.pt", best)
    replace(out / "latest.pt", (out / "latest.pt").read_bytes()[:200])
    (out / "checkpoint_iter4.pt").unlink()
    (out / "checkpoint_epoch2.pt").unlink()
    marker = (out / "best_model.pt").stat().st_mtime_ns
    assert trainer.train(config(data["root"], data["model"], data["train"], data["val"], out, resume="auto",
                                epochs=2, max_steps=6, checkpoint_every=2, val_examples=0)) == 0
    log = (out / "training.log").read_text()
    assert "skipped latest.pt: checkpoint" in log and "is unreadable" in log
    assert "at iteration 2 (epoch 2" in log
    assert "best val loss 0.0000 of best_model.pt kept" in log
    assert (out / "best_model.pt").stat().st_mtime_ns == marker  # no worse model replaced it


def test_codec_resume_keeps_a_better_best_model(audio, tmp_path):
    out = tmp_path / "run"
    assert codec(audio, out, "--max_steps", "2") == 0
    best = load_checkpoint(out / "best_model.pt")
    best["best_val"] = 1e-9
    replace(out / "best_model.pt", best)
    marker = (out / "best_model.pt").stat().st_mtime_ns
    assert codec(audio, out, "--resume", "auto", "--max_steps", "4") == 0
    assert "best val mel 0.0000 of best_model.pt kept" in (out / "training.log").read_text()
    assert (out / "best_model.pt").stat().st_mtime_ns == marker


# ---------------------------------------------------------------- item 5: the head at resume
def test_decoder_refuses_a_head_change_at_resume(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_in_process(data, out, epochs=2, max_steps=2) == 0
    before = listing(out)
    assert train_in_process(data, out, epochs=2, max_steps=4, resume="auto", head="lite") == 2
    err = error_line(capsys)
    assert "trains --head full, not --head lite: the head cannot change at resume" in err
    assert listing(out) == before


# ---------------------------------------------------------------- item 10: one trainer per run dir
def test_decoder_second_trainer_on_a_locked_dir_names_the_pid(data, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from snac.lock import acquire_dir_lock; "
                               f"l = acquire_dir_lock({str(out)!r}); print('held', flush=True); time.sleep(60)"],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert train_in_process(data, out, epochs=2, max_steps=2, resume="auto") == 2
        err = error_line(capsys)
        assert f"another training run (pid {holder.pid}) is writing to {out}" in err
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
    finally:
        holder.kill()
        holder.wait()
    assert train_in_process(data, out, epochs=2, max_steps=2, resume="auto") == 0  # the kernel dropped the lock


@pytest.mark.slow
def test_codec_second_trainer_on_a_running_dir_exits_2_naming_the_pid(audio, tmp_path, capsys, pycache_env):
    out = tmp_path / "run"
    first = codec_process(audio, out, pycache_env, "--max_steps", "100000", "--resume", "auto",
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for line in first.stdout:
            if " it 1/" in line:
                break
        assert codec(audio, out, "--max_steps", "2", "--resume", "auto") == 2
        assert f"another training run (pid {first.pid}) is writing to {out}" in error_line(capsys)
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert first.returncode == 0
    assert (out / "training.log").read_text().count("parameters at 24000 Hz") == 1  # the second wrote nothing


def test_the_lock_names_its_holder_and_is_free_once_closed(tmp_path):
    from snac.lock import acquire_dir_lock

    held = acquire_dir_lock(tmp_path, what="a test")
    try:
        assert (tmp_path / ".lock").read_text() == str(os.getpid())
        with pytest.raises(RuntimeError, match=f"a test \\(pid {os.getpid()}\\) is writing to"):
            acquire_dir_lock(tmp_path, what="a test")
    finally:
        held.close()
    acquire_dir_lock(tmp_path).close()


# ---------------------------------------------------------------- item 14: one pre-flight for both
@pytest.mark.parametrize("case", ["truncated", "garbage", "output under a file"])
@pytest.mark.parametrize("trainer_name", ["decoder", "codec"])
def test_bad_resume_file_or_output_dir_is_one_line_exit_2(data, audio, tmp_path, capsys, case, trainer_name):
    out, resume = tmp_path / "run", None
    if case == "output under a file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "run"
    else:
        src = tmp_path / "src"
        if trainer_name == "codec":
            assert codec(audio, src, "--max_steps", "2") == 0
        else:
            assert train_in_process(data, src, epochs=2, max_steps=2) == 0
        capsys.readouterr()
        resume = tmp_path / "bad.pt"
        resume.write_bytes((src / "latest.pt").read_bytes()[:300] if case == "truncated" else b"\x00garbage" * 40)
    flags = ["--resume", str(resume)] if resume else []
    if trainer_name == "codec":
        assert codec(audio, out, "--max_steps", "2", *flags) == 2
    else:
        assert train_in_process(data, out, epochs=2, max_steps=2, **({"resume": str(resume)} if resume else {})) == 2
    err = error_line(capsys)
    assert ("is unreadable" in err or "holds pickled objects" in err) if resume else ("is a file, so no directory can be made under it" in err)


# ---------------------------------------------------------------- item 19: validation on training audio
@pytest.mark.parametrize("where", ["same", "inside"])
def test_codec_refuses_val_dir_in_audio_dir_without_the_flag(audio, tmp_path, capsys, where):
    val = audio["train"] if where == "same" else write_audio(audio["train"] / "held", 3)
    flags = ["--audio_dir", str(audio["train"]), "--val_dir", str(val), "--output_dir", str(tmp_path / "run"),
             *TINY_CODEC, "--max_steps", "1"]
    assert codec_main(flags) == 2
    assert "overlaps --audio_dir" in error_line(capsys) and not (tmp_path / "run").exists()
    assert codec_main(flags + ["--allow_val_in_train"]) == 0


# ---------------------------------------------------------------- issue 25.3: best_model.pt at every end
def test_decoder_max_steps_run_without_a_validation_ends_with_best_model(data, tmp_path):
    out = tmp_path / "run"
    assert train_in_process(data, out, epochs=3, max_steps=1) == 0  # ends before the first epoch end
    log = (out / "training.log").read_text()
    assert "val it 1" in log and load_checkpoint(out / "best_model.pt")["iteration"] == 1


def test_codec_stopped_by_a_signal_and_by_max_minutes_ends_with_best_model(audio, tmp_path, monkeypatch):
    monkeypatch.setenv("SNAC48_FAULT", "step:2:TERM")
    assert codec(audio, tmp_path / "signal", "--max_steps", "100") == 0
    monkeypatch.delenv("SNAC48_FAULT")
    stopped = tmp_path / "signal"
    assert "stop signal received" in (stopped / "training.log").read_text()
    assert load_checkpoint(stopped / "best_model.pt")["iteration"] == load_checkpoint(stopped / "latest.pt")["iteration"]
    ticks = iter(range(0, 10**6, 30))
    from snac.train.codec import resolve_codec_config, run_codec_training

    cfg = resolve_codec_config(["--audio_dir", str(audio["train"]), "--val_dir", str(audio["val"]), "--val_seconds",
                                "0.3", "--output_dir", str(tmp_path / "minutes"), *TINY_CODEC, "--max_minutes", "1"])
    assert run_codec_training(cfg, clock=lambda: float(next(ticks))) == 0
    saved = load_checkpoint(tmp_path / "minutes" / "best_model.pt")
    assert saved["iteration"] == load_checkpoint(tmp_path / "minutes" / "latest.pt")["iteration"] < 100
