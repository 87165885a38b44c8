"""Both trainers on two torchrun "nodes" (c10d rendezvous on localhost, gloo, CPU, one process each):

- the loss curve and the final weights of 2 nodes x 1 process equal 1 node x 2 processes (the same
  global batch: same ranks, same data, same seeds);
- only rank 0 writes: the rank-1 node writes nothing in the run directory, the data or its cwd;
- the rank-1 node SIGKILLed mid-run: the survivor fails within seconds with the error in its log
  and status.json (state failed), writes no checkpoint past the last complete one, and exits non-zero
  (a rank cannot save alone: a checkpoint holds every rank's RNG and data state); the job rerun
  with --resume auto ends bit-identical to the uninterrupted run (both trainers; the decoder trainer
  also resumed before and after its phase switch, on an epoch that does not split evenly over the ranks);
- the same checkpoint resumed on ONE process continues (the rule: the decoder trainer re-shards the
  rest of its epoch and refits the LR schedule; the codec trainer continues its global window
  stream; both reseed the model noise) and says 'world size 2 -> 1'.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers_multinode import (free_port, kill_node, node_env, run_nodes, start_node, stopped_in, wait_for, wait_node,
                               written)
from helpers_train import REPO, SCRIPT, base_args, pycache_env, save_tiny_model, tiny_snac, write_cache  # noqa: F401
from snac.train.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow
MAX_STEPS = 6


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    model = tiny_snac()
    audio = root / "audio"
    audio.mkdir()
    rng = np.random.default_rng(0)
    for i, seconds in enumerate([0.6, 0.4, 0.5]):
        t = np.arange(int(24000 * seconds)) / 24000
        sf.write(audio / f"clip{i}.wav", 0.3 * np.sin(2 * np.pi * (200 + 90 * i) * t)
                 + 0.03 * rng.standard_normal(len(t)), 24000)
    return {"root": root, "model": save_tiny_model(root / "model"), "audio": audio,
            "train": write_cache(root / "train", model, [0.5, 0.8, 1.0, 0.3, 1.2, 0.6, 0.9, 0.7, 0.4], seed=1)}


def decoder(data, out, *extra) -> tuple:
    return SCRIPT, [*base_args(data["root"], data["model"], data["train"], None, out, batch_size=2, epochs=3,
                               max_steps=MAX_STEPS, checkpoint_every=2), *extra]


def codec(data, out, *extra) -> tuple:
    return REPO / "scripts" / "train_codec.py", [
        "--audio_dir", data["audio"], "--output_dir", out, "--model_config", "tiny_24khz", "--device", "cpu",
        "--batch_size", "2", "--segment_length", "0.08", "--no-adversarial", "--log_every", "1",
        "--max_steps", str(MAX_STEPS), "--checkpoint_every", "2", *extra]


def losses(out) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["iteration"]: r["loss/total"] for r in rows if r["type"] == "train"}


def weights(out) -> dict:
    return load_checkpoint(out / "latest.pt")["model"]


def assert_same_weights(a, b) -> None:
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def ok(results) -> None:
    for code, out in results:
        assert code == 0, out[-3000:]


@pytest.mark.parametrize("trainer", [decoder, codec], ids=["decoder", "codec"])
def test_two_nodes_equal_one_node_only_rank0_writes_a_dead_node_resumes_bit_identically(
        trainer, data, tmp_path, pycache_env):
    # ---- 1 node x 2 processes, then 2 nodes x 1 process: the same curve, the same weights
    one = tmp_path / "one_node"
    script, args = trainer(data, one)
    ok(run_nodes(tmp_path, script, args, pycache_env, nnodes=1, nproc=2, tag="one"))
    two = tmp_path / "two_nodes"
    script, args = trainer(data, two)
    ok(run_nodes(tmp_path, script, args, pycache_env, tag="two"))
    curve = losses(one)
    assert sorted(curve) == list(range(1, MAX_STEPS + 1)) and losses(two) == curve
    assert_same_weights(weights(one), weights(two))
    # ---- only rank 0 writes: one node wrote the run directory, the other nothing anywhere of ours
    wrote = [written(tmp_path, f"two{k}", [two, data["root"]]) for k in range(2)]
    assert sorted(map(bool, wrote)) == [False, True], wrote
    quiet = wrote.index(set())
    assert not any((tmp_path / f"two-cwd{quiet}").iterdir())
    # ---- the rank-1 node dies mid-run: its trainer stops itself after step 3 (before that step's
    # checkpoints), then the whole node is SIGKILLed; rank 0 is blocked in the next collective
    run = tmp_path / "killed"
    script, args = trainer(data, run)
    port = free_port()
    envs = [node_env(tmp_path, f"kill{k}", pycache_env) for k in range(2)]
    envs[1]["SNAC48_FAULT"] = "step:3:STOP"
    nodes = [start_node(k, port, script, args, tmp_path / f"cwd{k}", envs[k], tmp_path / f"node{k}.log")
             for k in range(2)]
    stopped = wait_for(lambda: stopped_in(nodes[1]), 300, nodes)
    assert stopped, (tmp_path / "node1.log").read_text()[-3000:]
    assert written(tmp_path, "kill0", [run]) and not written(tmp_path, "kill1", [run]), \
        "the rendezvous ranked the second node first (ranks follow the agents' pids): rerun"
    victim, survivor, rank0 = nodes[1], nodes[0], 0
    kill_node(victim)
    code = wait_node(survivor, 120)
    node_log = (tmp_path / f"node{rank0}.log").read_text()
    assert code != 0, node_log[-3000:]
    kept = load_checkpoint(run / "latest.pt")["iteration"]
    assert kept == 2  # the last checkpoint all ranks completed; nothing after it
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed" and status["error"], status
    assert not list(run.glob("*.tmp*"))  # no half-written checkpoint
    alone = tmp_path / "resumed_alone"
    shutil.copytree(run, alone)
    # ---- the job rerun on the same 2 nodes: bit-identical to the uninterrupted run
    script, args = trainer(data, run, "--resume", "auto")
    ok(run_nodes(tmp_path, script, args, pycache_env, tag="rerun"))
    resumed = {i: v for i, v in losses(run).items() if i > kept}
    assert_same_weights(weights(run), weights(one))
    assert resumed == {i: v for i, v in curve.items() if i > kept}
    # ---- resumed on ONE process (another world size): continues to the end, and says so
    script, args = trainer(data, alone, "--resume", "auto")
    proc = subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=REPO, env={**node_env(tmp_path, "alone", pycache_env)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "world size 2 -> 1" in (alone / "training.log").read_text()
    final = load_checkpoint(alone / "latest.pt")
    assert final["iteration"] == MAX_STEPS and final["world_size"] == 1
    after = {i: v for i, v in losses(alone).items() if i > kept}
    assert sorted(after) == list(range(kept + 1, MAX_STEPS + 1)) and all(np.isfinite(list(after.values())))


@pytest.mark.parametrize("fault", ["step:3", "step:5"], ids=["before_phase_switch", "after_phase_switch"])
def test_decoder_ddp_resume_is_bit_identical(fault, data, tmp_path, pycache_env):
    # 9 rows on 2 ranks x batch 2: each epoch's last step pads rank 1 with a repeated item. A resume
    # mid-epoch (from iteration 2, warmup; from iteration 4, after the switch at 3) must pad with the
    # same one (before: the first item still left, so rank 1's last batch differed)
    env = {**node_env(tmp_path, "x", pycache_env)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(SCRIPT)]
    runs = {}
    for name, steps in (("whole", [{}]), ("resumed", [{"SNAC48_FAULT": fault}, {}])):
        out = tmp_path / name
        for k, extra in enumerate(steps):
            args = decoder(data, out, *(["--resume", "auto"] if k else []))[1]
            subprocess.run([*cmd, *map(str, args)], env={**env, **extra}, cwd=REPO, capture_output=True, timeout=300)
        runs[name] = weights(out)
    assert load_checkpoint(tmp_path / "resumed" / "latest.pt")["iteration"] == MAX_STEPS
    assert_same_weights(runs["whole"], runs["resumed"])
