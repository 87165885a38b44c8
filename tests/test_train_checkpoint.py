"""Atomic checkpoints: a kill during a save leaves the previous file loadable; rotation; newest
valid for --resume auto; stale temp cleanup; RNG state round trip; snac.load_model reads them."""

import random
import subprocess
import sys

import numpy as np
import torch

from helpers_train import REPO, one_thread, tiny_snac  # noqa: F401
from snac import load_model
from snac.train.checkpoint import (clean_stale_temps, find_latest_checkpoint, load_checkpoint, rng_state,
                             rotate_checkpoints, save_checkpoint, set_aside_newer, set_rng_state)


def state(iteration: int) -> dict:
    return {"model": {"w": torch.full((1000,), float(iteration))}, "iteration": iteration}


def test_a_kill_during_a_save_leaves_the_previous_checkpoint(tmp_path):
    save_checkpoint(state(1), tmp_path / "latest.pt")
    code = ("import torch; from snac.train.checkpoint import save_checkpoint; "
            f"save_checkpoint({{'model': {{'w': torch.zeros(1000)}}, 'iteration': 2}}, r'{tmp_path / 'latest.pt'}')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={"SNAC48_FAULT": "save:2", "PATH": ""},
                          capture_output=True)
    assert proc.returncode == -9  # SIGKILLed half-way through writing
    temps = [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert len(temps) == 1 and temps[0].stat().st_size > 0
    assert load_checkpoint(tmp_path / "latest.pt")["iteration"] == 1
    assert find_latest_checkpoint(tmp_path) == tmp_path / "latest.pt"
    assert clean_stale_temps(tmp_path) == temps and not temps[0].exists()


def test_resume_auto_takes_the_newest_valid_one_and_rotation_keeps_the_last(tmp_path):
    for it in (2, 4, 6, 8):
        save_checkpoint(state(it), tmp_path / f"checkpoint_iter{it}.pt")
    save_checkpoint(state(5), tmp_path / "checkpoint_epoch1.pt")
    save_checkpoint(state(99), tmp_path / "best_model.pt")  # never a resume source
    (tmp_path / "checkpoint_iter10.pt").write_bytes(b"torn")  # unreadable: skipped
    assert find_latest_checkpoint(tmp_path) == tmp_path / "checkpoint_iter8.pt"
    removed = rotate_checkpoints(tmp_path, keep_last=2)
    assert sorted(p.name for p in removed) == ["checkpoint_iter2.pt", "checkpoint_iter4.pt", "checkpoint_iter6.pt"]
    assert find_latest_checkpoint(tmp_path / "missing") is None


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    save_checkpoint({"model": {}, "iteration": 0, "rng": rng_state()}, tmp_path / "c.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(1), expected[2])


def test_snac_load_model_reads_a_training_checkpoint(tmp_path):
    model = tiny_snac()
    save_checkpoint({"model": model.state_dict(), "model_config": model.config, "iteration": 0},
                    tmp_path / "c.pt")
    loaded = load_model(tmp_path / "c.pt")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_resuming_an_older_checkpoint_sets_later_ones_aside_without_deleting(tmp_path):
    for it in (100, 200, 300):
        save_checkpoint(state(it), tmp_path / f"checkpoint_iter{it}.pt")
    save_checkpoint(state(300), tmp_path / "latest.pt")
    save_checkpoint(state(250), tmp_path / "best_model.pt")
    moved = set_aside_newer(tmp_path, 100)
    assert sorted(new.name for _, new in moved) == ["abandoned-best_model.pt", "abandoned-checkpoint_iter200.pt",
                                                    "abandoned-checkpoint_iter300.pt", "abandoned-latest.pt"]
    assert find_latest_checkpoint(tmp_path).name == "checkpoint_iter100.pt"
    assert load_checkpoint(tmp_path / "abandoned-checkpoint_iter300.pt")["iteration"] == 300  # kept
    assert rotate_checkpoints(tmp_path, keep_last=1) == []  # abandoned files are not rotated
    assert set_aside_newer(tmp_path, 100) == []
