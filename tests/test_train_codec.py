"""scripts/train_codec.py on a few seconds of synthetic audio: it learns, resumes bit-identically,
and exports a plain SNAC that both this package and upstream snac load. (The quantizer's training
path itself is tested in test_vq_train.py.)"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from snac import SNAC
from snac.presets import TINY_24KHZ
from snac.train.checkpoint import load_checkpoint
from snac.train.codec import resolve_codec_config, run_codec_training, window_samples
from snac.train.codec_data import LazyAudioWindows
from snac.train.gan_losses import mel_loss

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from train_codec import main  # noqa: E402
from helpers_train import pycache_env  # noqa: E402,F401 (a fixture)

# tiny everything: 1 pad multiple (2048 samples) per window, 4-channel discriminators
TINY_FLAGS = ["--model_config", "tiny_24khz", "--device", "cpu", "--batch_size", "2", "--segment_length", "0.08",
              "--mpd_channels", "4,4,4,4,4", "--mrd_channels", "4", "--log_every", "1", "--checkpoint_every", "0"]


@pytest.fixture(autouse=True)
def restore_threads():
    """The trainer sets torch's CPU threads to 1; later tests in this process get theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def audio_dir(tmp_path: Path) -> Path:
    """3 s of chirps + noise in three files of other rates and channel counts than the model's."""
    rng = np.random.default_rng(0)
    root = tmp_path / "audio"
    root.mkdir()
    for i, (rate, channels, seconds) in enumerate([(16000, 1, 1.5), (44100, 2, 1.0), (24000, 1, 0.5)]):
        t = np.arange(int(rate * seconds)) / rate
        x = 0.3 * np.sin(2 * np.pi * (200 + 150 * i) * t * (1 + t)) + 0.03 * rng.standard_normal(len(t))
        sf.write(root / f"clip{i}.wav", np.stack([x] * channels, 1) if channels > 1 else x, rate)
    return root


def train(audio_dir: Path, out: Path, *flags: str) -> int:
    return main(["--audio_dir", str(audio_dir), "--output_dir", str(out), *TINY_FLAGS, *flags])


def fixed_batch_mel(model: SNAC, audio_dir: Path) -> float:
    """Mean mel distance of ``model`` on 8 windows drawn with a fixed seed (noise seeded too)."""
    data = LazyAudioWindows(str(audio_dir), model.sampling_rate, window_samples(model, 0.25), seed=99,
                            warn=lambda _: None)
    audio, mask = data.sample(8)
    torch.manual_seed(0)
    with torch.no_grad():
        pred, _ = model(audio)
    return float(mel_loss(pred, audio, mask, model.sampling_rate).mean())


@pytest.mark.slow
def test_losses_finite_and_mel_distance_falls_in_30_steps(audio_dir, tmp_path):
    assert train(audio_dir, tmp_path / "init", "--max_steps", "0") == 0
    assert train(audio_dir, tmp_path / "run", "--max_steps", "30", "--learning_rate", "3e-3",
                 "--reseed_dead_codes", "5") == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["type"] == "train"]
    assert len(train_rows) == 30
    for r in train_rows:
        for key in ("loss/total", "loss/mel", "loss/adv", "loss/feat", "loss/commitment", "loss/codebook",
                    "disc/loss", "grad_norm", "vq/perplexity_0", "vq/used_2"):
            assert r[key] is not None and np.isfinite(r[key]), (r["iteration"], key)
    before = fixed_batch_mel(SNAC.from_pretrained(tmp_path / "init" / "model"), audio_dir)
    after = fixed_batch_mel(SNAC.from_pretrained(tmp_path / "run" / "model"), audio_dir)
    assert after < 0.9 * before, (before, after)  # measured: 5.91 -> 2.97
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "finished" and status["iteration"] == 30


def same(a, b, path="") -> None:
    """Recursive torch.equal over checkpoint dicts/lists."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    else:
        assert a == b, path


@pytest.mark.parametrize("stop_by", ["max_steps", pytest.param("sigterm", marks=pytest.mark.slow)])
def test_stop_and_resume_auto_is_bit_identical(audio_dir, tmp_path, monkeypatch, stop_by):
    """6 steps in one run == 3 steps stopped by --max_steps (or 4, stopped by a SIGTERM that the
    trainer catches: it saves and exits 0), then --resume auto to 6: every state torch.equal."""
    # validation at the end of each run (3 in the split run, 6 in both) must not move the training RNG
    flags = ("--reseed_dead_codes", "2", "--learning_rate", "1e-3", "--val_dir", str(audio_dir), "--val_seconds", "0.3",
             "--allow_val_in_train")
    assert train(audio_dir, tmp_path / "whole", "--max_steps", "6", *flags) == 0
    if stop_by == "max_steps":
        assert train(audio_dir, tmp_path / "split", "--max_steps", "3", *flags) == 0
    else:
        monkeypatch.setenv("SNAC48_FAULT", "step:3:TERM")  # this process sends itself SIGTERM after step 3
        assert train(audio_dir, tmp_path / "split", "--max_steps", "6", *flags) == 0
        monkeypatch.delenv("SNAC48_FAULT")
        # the signal lands between steps 3 and 4: step 4 (already begun) finishes, then it saves
        assert load_checkpoint(tmp_path / "split" / "latest.pt")["iteration"] == 4
        assert "stop signal received" in (tmp_path / "split" / "training.log").read_text()
    assert train(audio_dir, tmp_path / "split", "--max_steps", "6", "--resume", "auto", *flags) == 0
    whole = load_checkpoint(tmp_path / "whole" / "latest.pt")
    split = load_checkpoint(tmp_path / "split" / "latest.pt")
    assert whole["iteration"] == split["iteration"] == 6
    for key in ("model", "optimizer", "discriminator", "health", "rng", "data", "bad_total"):
        same(whole[key], split[key], key)
    assert "resumed from" in (tmp_path / "split" / "training.log").read_text()


def test_epochs_validation_best_model_and_a_code_cache_as_data(audio_dir, tmp_path):
    """Train on a code cache made with --embed_audio (its 48 kHz target audio, resampled to 24 kHz),
    validate on a folder: every epoch end validates and writes checkpoint_epoch{E}.pt, the lowest val
    mel is in best_model.pt (loadable), the end of the run validates once more."""
    from helpers_cache import load_script, save_tiny_model

    cache = tmp_path / "cache"
    assert load_script("cache_codes_multigpu.py").main([
        "--input_dir", str(audio_dir), "--output_dir", str(cache), "--pretrained_model",
        str(save_tiny_model(tmp_path / "encoder")), "--devices", "cpu", "--embed_audio"]) == 0
    # 3 s of audio = 72000 samples at 24 kHz; windows 2048 x batch 8 -> an epoch of 5 iterations
    assert train(cache, tmp_path / "run", "--max_steps", "12", "--batch_size", "8", "--val_dir", str(audio_dir),
                 "--val_seconds", "0.5", "--no-adversarial", "--learning_rate", "3e-3") == 0
    run = tmp_path / "run"
    log = (run / "training.log").read_text()
    assert "12 iterations, 5 an epoch" in log and "validation: 3 files" in log
    vals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in vals if r["type"] == "val"]
    assert [r["iteration"] for r in vals] == [5, 10, 12]
    assert all(np.isfinite(r["val/mel"]) and r["val/mel"] > 0 for r in vals)
    assert sorted(p.name for p in run.glob("checkpoint_epoch*.pt")) == ["checkpoint_epoch1.pt", "checkpoint_epoch2.pt"]
    best = load_checkpoint(run / "best_model.pt")
    lowest = min(vals, key=lambda r: r["val/mel"])
    assert best["iteration"] == lowest["iteration"] and best["best_val"] == lowest["val/mel"]
    assert load_checkpoint(run / "latest.pt")["best_val"] == lowest["val/mel"]
    from snac import load_model

    model = load_model(run / "best_model.pt")
    same(model.state_dict(), best["model"])
    status = json.loads((run / "status.json").read_text())
    assert status["val_loss"] == vals[-1]["val/mel"] and status["best_val_loss"] == lowest["val/mel"]


def test_an_epoch_checkpoint_is_never_replaced_when_the_epoch_length_changes(audio_dir, tmp_path):
    """3 s of audio, windows 2048 x 8: an epoch of 5 iterations, checkpoint_epoch1.pt at 5. Twice the
    audio on resume makes an epoch 9 iterations: its first end (iteration 9) must not overwrite the
    epoch-1 checkpoint of iteration 5 (a kept model), and the log says why the name differs."""
    flags = ["--batch_size", "8", "--no-adversarial"]
    run = tmp_path / "run"
    assert train(audio_dir, run, "--max_steps", "5", *flags) == 0
    assert load_checkpoint(run / "checkpoint_epoch1.pt")["iteration"] == 5
    for clip in list(audio_dir.glob("*.wav")):
        x, rate = sf.read(clip)
        sf.write(audio_dir / f"more_{clip.name}", x, rate)
    assert train(audio_dir, run, "--max_steps", "9", "--resume", "auto", *flags) == 0
    assert load_checkpoint(run / "checkpoint_epoch1.pt")["iteration"] == 5
    assert load_checkpoint(run / "checkpoint_epoch1_iter9.pt")["iteration"] == 9
    log = (run / "training.log").read_text()
    assert "an epoch is 9 iterations now, 5 in the run resumed" in log
    assert "checkpoint_epoch1.pt holds iteration 5, not 9" in log


def test_resume_with_changed_recipe_says_what_changed(audio_dir, tmp_path):
    """A resume that flips a recipe setting (here --no-adversarial after an adversarial start, the
    default) still resumes, and its log line names each changed setting with old and new value."""
    assert train(audio_dir, tmp_path / "run", "--max_steps", "1") == 0
    assert train(audio_dir, tmp_path / "run", "--max_steps", "2", "--resume", "auto") == 0
    assert train(audio_dir, tmp_path / "run", "--max_steps", "3", "--resume", "auto", "--no-adversarial",
                 "--learning_rate", "2e-4") == 0
    lines = [ln for ln in (tmp_path / "run" / "training.log").read_text().splitlines() if "resumed from" in ln]
    assert len(lines) == 2
    assert "changed settings" not in lines[0]  # only max_steps changed: not a recipe setting
    assert lines[1].endswith("changed settings: adversarial True -> False, learning_rate 0.0001 -> 0.0002")
    assert load_checkpoint(tmp_path / "run" / "latest.pt")["iteration"] == 3


def test_export_loads_here_and_in_upstream_snac(audio_dir, tmp_path):
    assert train(audio_dir, tmp_path / "run", "--max_steps", "2", "--export", str(tmp_path / "export")) == 0
    files = {p.name for p in (tmp_path / "export").iterdir()}
    assert {"config.json", "model.safetensors", "pytorch_model.bin"} <= files
    ours = SNAC.from_pretrained(tmp_path / "export")
    trained = load_checkpoint(tmp_path / "run" / "latest.pt")["model"]
    same(ours.state_dict(), trained)
    assert ours.config == SNAC(**TINY_24KHZ).config
    if os.environ.get("SNAC_SKIP_REFERENCE") == "1":
        pytest.skip("SNAC_SKIP_REFERENCE=1: no PyPI access for the reference wheel")
    from scripts._common import import_reference

    theirs = import_reference().SNAC.from_pretrained(str(tmp_path / "export"))
    same(theirs.state_dict(), trained)


def test_continues_from_pretrained_weights(audio_dir, tmp_path):
    torch.manual_seed(5)
    SNAC(**TINY_24KHZ).save_pretrained(tmp_path / "base")
    flags = [f for f in TINY_FLAGS if f not in ("--model_config", "tiny_24khz")]
    code = main(["--audio_dir", str(audio_dir), "--output_dir", str(tmp_path / "run"), *flags, "--max_steps", "1",
                 "--pretrained_model", str(tmp_path / "base"), "--no-adversarial"])
    assert code == 0
    base, tuned = SNAC.from_pretrained(tmp_path / "base"), SNAC.from_pretrained(tmp_path / "run" / "model")
    moved = [k for k, v in base.state_dict().items() if not torch.equal(v, tuned.state_dict()[k])]
    assert moved and len(moved) < len(base.state_dict()) + 1  # one step away from the base, same keys


@pytest.mark.parametrize("extra, message", [
    (["--pretrained_model", "x"], "--model_config and --pretrained_model both given"),
    (["--lr_gamma", "1.5"], "--lr_gamma must be in (0, 1]"),
])
def test_bad_flags_fail_with_one_line(audio_dir, tmp_path, capsys, extra, message):
    assert train(audio_dir, tmp_path / "run", *extra) == 2
    assert message in capsys.readouterr().err


def test_folder_without_audio_fails_with_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert train(tmp_path / "empty", tmp_path / "run", "--max_steps", "1") == 2
    assert "holds no readable audio" in capsys.readouterr().err


def test_iteration_and_timer_checkpoints_with_rotation(audio_dir, tmp_path):
    """checkpoint_iter{N}.pt every 2 steps (only the newest kept), and latest.pt from the timer
    after every step of a clock that advances a minute per reading."""
    ticks = iter(range(0, 10**6, 60))
    cfg = resolve_codec_config(["--audio_dir", str(audio_dir), "--output_dir", str(tmp_path / "run"), *TINY_FLAGS,
                                "--max_steps", "5", "--checkpoint_every", "2", "--keep_last", "1",
                                "--checkpoint_minutes", "1", "--no-adversarial"])
    assert run_codec_training(cfg, clock=lambda: float(next(ticks))) == 0
    assert sorted(p.name for p in (tmp_path / "run").glob("*.pt")) == ["checkpoint_iter4.pt", "latest.pt"]
    log = (tmp_path / "run" / "training.log").read_text()
    for line in ("saved latest.pt (iteration 1)", "saved checkpoint_iter2.pt, latest.pt (iteration 2)",
                 "saved latest.pt (iteration 3)", "saved latest.pt (iteration 5)"):
        assert line in log


def test_max_minutes_stops_saves_and_exports(audio_dir, tmp_path, monkeypatch):
    """35 s steps, --max_minutes 1: the budget is used up after step 2; latest.pt and the export hold it."""
    import snac.train.codec as codec

    now = [0.0]
    real_step = codec.codec_step

    def step_35_seconds(*args, **kwargs):
        now[0] += 35.0
        return real_step(*args, **kwargs)

    monkeypatch.setattr(codec, "codec_step", step_35_seconds)
    cfg = resolve_codec_config(["--audio_dir", str(audio_dir), "--output_dir", str(tmp_path / "run"), *TINY_FLAGS,
                                "--max_steps", "50", "--max_minutes", "1", "--no-adversarial"])
    assert run_codec_training(cfg, clock=lambda: now[0]) == 0
    assert load_checkpoint(tmp_path / "run" / "latest.pt")["iteration"] == 2
    assert "time limit reached (--max_minutes 1) at iteration 2" in (tmp_path / "run" / "training.log").read_text()
    assert (tmp_path / "run" / "model" / "config.json").is_file()


def test_bad_model_config_and_pretrained_fail_with_one_line(audio_dir, tmp_path, capsys):
    (tmp_path / "bad.json").write_text("{not json")
    assert train(audio_dir, tmp_path / "a", "--model_config", str(tmp_path / "bad.json")) == 2
    assert "is not valid JSON" in capsys.readouterr().err
    flags = [f for f in TINY_FLAGS if f not in ("--model_config", "tiny_24khz")]
    assert main(["--audio_dir", str(audio_dir), "--output_dir", str(tmp_path / "b"), *flags,
                 "--pretrained_model", str(tmp_path / "nowhere")]) == 2
    assert "--pretrained_model" in capsys.readouterr().err


@pytest.mark.slow
def test_two_gloo_processes_then_resume_on_one(audio_dir, tmp_path, pycache_env):
    """scripts/train_codec.py under torchrun, 2 CPU ranks on gloo: one writer, the validation split
    over the ranks and reduced (same value as one process of the saved weights), re-seeding on (its
    broadcast); then ONE process resumes the 2-rank run."""
    import subprocess

    out = tmp_path / "ddp"
    args = ["--audio_dir", str(audio_dir), "--output_dir", str(out), *TINY_FLAGS, "--no-adversarial",
            "--reseed_dead_codes", "1", "--val_dir", str(audio_dir), "--val_seconds", "0.3", "--allow_val_in_train",
            "--max_steps", "3"]
    env = {**os.environ, **pycache_env, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                str(REPO / "scripts" / "train_codec.py")]
    proc = subprocess.run([*torchrun, *args], capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (out / "training.log").read_text()
    assert log.count("it 1/3") == 1 and "x 2 x 2; 3 iterations" in log  # one writer; 2 ranks' batches
    ckpt = load_checkpoint(out / "latest.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2 and ckpt["iteration"] == 3
    vals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in vals if r["type"] == "val"][-1]["val/mel"]
    # the same weights validated by one process: the reduced 2-rank value equals the whole set's
    from snac.train.codec import load_clips, validate
    from snac.train.distributed import DistInfo

    model = SNAC(**ckpt["model_config"])
    model.load_state_dict(ckpt["model"])
    clips = load_clips(str(audio_dir), model.sampling_rate, print, max_seconds=0.3)
    alone = validate(model, clips, 1234, torch.device("cpu"), DistInfo(rank=0, world_size=1, local_rank=0))
    assert abs(alone - val) < 1e-5 * max(1.0, abs(alone)), (alone, val)
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "train_codec.py"), *args[:-1], "5",
                           "--resume", "auto"], capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "world size 2 -> 1" in (out / "training.log").read_text()
    assert load_checkpoint(out / "latest.pt")["iteration"] == 5


def train_status(run: Path) -> str:
    import subprocess

    return subprocess.run([sys.executable, str(REPO / "scripts" / "launcher.py"), "status", str(run)],
                          capture_output=True, text=True, timeout=60).stdout


@pytest.mark.slow
def test_group_sigterm_under_uv_run_saves_mid_run_exports_and_resumes(audio_dir, tmp_path, pycache_env):
    """`kill -TERM -- -PGID` (SLURM scancel, systemd) reaches uv and python; uv forwards it, so the
    trainer sees it twice within milliseconds: one stop request. It saves, exports, exits 0 mid-run."""
    import shutil
    import signal
    import subprocess

    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not on PATH")
    out = tmp_path / "run"
    cmd = [uv, "run", "--no-sync", "python", str(REPO / "scripts" / "train_codec.py"), "--audio_dir", str(audio_dir),
           "--output_dir", str(out), *TINY_FLAGS, "--max_steps", "1000"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **pycache_env}
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env=env)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if " it 2/1000" in line:
            running = train_status(out)  # train_status.sh's screen of a live codec run
            os.killpg(proc.pid, signal.SIGTERM)
            break
    lines += proc.stdout.readlines()
    assert proc.wait(timeout=120) == 0, "".join(lines)[-3000:]
    log = (out / "training.log").read_text()
    assert log.count("stop signal received: saving and exiting") == 1
    status = json.loads((out / "status.json").read_text())
    saved = load_checkpoint(out / "latest.pt")
    assert status["state"] == "stopped" and saved["iteration"] == status["iteration"]
    assert 2 <= saved["iteration"] < 1000  # the kill landed mid-run
    assert SNAC.from_pretrained(out / "model").config == SNAC(**TINY_24KHZ).config
    assert "state        running" in running and "phase codec" in running, running
    assert "state        stopped" in train_status(out)
    target = str(saved["iteration"] + 2)
    assert main(["--audio_dir", str(audio_dir), "--output_dir", str(out), *TINY_FLAGS, "--max_steps", target,
                 "--resume", "auto"]) == 0
    assert load_checkpoint(out / "latest.pt")["iteration"] == int(target)
