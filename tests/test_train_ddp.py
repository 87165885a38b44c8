"""torchrun with 2 CPU processes on gloo: rank 0 alone writes, validation is split and reduced,
the phase switch re-wraps DDP, and a single process resumes the 2-process run."""

import json
import sys

import pytest

from helpers_train import (SCRIPT, base_args, one_thread, pycache_env, read_metrics, run_script,  # noqa: F401
                           save_tiny_model, tiny_snac, write_cache)
from snac.train.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow  # torchrun with 2 gloo processes


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    model = tiny_snac()
    return {"root": root, "model": save_tiny_model(root / "model"),
            "train": write_cache(root / "train", model, [0.5, 0.8, 1.0, 0.3, 1.2, 0.6, 0.9, 0.7, 0.4], seed=1),
            "val": write_cache(root / "val", model, [0.5, 0.6, 0.4], seed=2)}


def test_two_gloo_processes_then_resume_on_one(data, tmp_path, pycache_env):
    out = tmp_path / "run"
    # 9 rows over 2 ranks (5 each, one repeated), batch 2 per rank -> 3 steps per epoch
    args = base_args(data["root"], data["model"], data["train"], data["val"], out, batch_size=2, epochs=3,
                     checkpoint_every=4, val_examples=1, max_steps=5)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                str(SCRIPT)]
    proc = run_script(args, env=pycache_env, module=torchrun, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (out / "training.log").read_text()
    assert log.count(" it 1/") == 1 and "world size 2" in log  # one writer
    assert "phase switch at iteration 3: warmup -> unfreeze" in log
    assert len(list(out.glob("events.out.tfevents.*"))) == 1
    vals = [m for m in read_metrics(out) if m["type"] == "val"]
    assert vals and all(m["items"] == 3 for m in vals)  # 2 + 1 val rows on the two ranks, reduced
    ckpt = load_checkpoint(out / "latest.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rng_per_rank"]) == 2 and ckpt["iteration"] == 5
    assert ckpt["data_state"] == {"epoch": 1, "consumed": 8, "seed": 0, "num_rows": 9, "world_size": 2}
    # the same run continued by ONE process: the rest of epoch 2 is re-sharded, the LR curve refitted
    args = base_args(data["root"], data["model"], data["train"], data["val"], out, batch_size=2, epochs=3,
                     checkpoint_every=4, val_examples=0, resume="auto")
    proc = run_script(args, env=pycache_env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "world size 2 -> 1" in proc.stdout
    final = load_checkpoint(out / "latest.pt")
    # epoch 2: 1 remaining item -> 1 step; epoch 3: 9 items / batch 2 -> 5 steps
    assert final["iteration"] == 5 + 1 + 5 and final["world_size"] == 1
    assert final["scheduler"]["last_epoch"] == final["scheduler"]["total_steps"]  # ended exactly at its end
    assert json.loads((out / "status.json").read_text())["state"] == "finished"
