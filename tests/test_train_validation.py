"""Validation across resumes and short val sets: a changed validation resets the best val loss,
utterances shorter than the val window are validated whole, and the log and status.json name
the same epoch at the end."""

import json

import pytest

from helpers_train import (one_thread, read_metrics, save_tiny_model, tiny_snac, train_in_process,  # noqa: F401
                           write_cache)
from snac.train.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    model = tiny_snac()
    return {"root": root, "model": save_tiny_model(root / "model"),
            "train": write_cache(root / "train", model, [0.5, 0.8, 1.0, 0.3, 1.2, 0.6, 0.9, 0.7], seed=1),
            "val": write_cache(root / "val", model, [0.5, 0.6], seed=2),
            "short_val": write_cache(root / "short_val", model, [0.08, 0.15, 0.1], seed=3)}


def val_rows(out) -> list[dict]:
    return [m for m in read_metrics(out) if m["type"] == "val"]


def test_a_changed_validation_at_resume_resets_the_best_val_loss(data, tmp_path):
    assert train_in_process(data, tmp_path, batch_size=2, max_steps=2, val_every=2) == 0
    old_best = load_checkpoint(tmp_path / "latest.pt")["best_val_loss"]
    assert old_best is not None
    # a longer val window measures another loss: the old best cannot gate best_model.pt any more
    assert train_in_process(data, tmp_path, batch_size=2, max_steps=4, val_every=2, resume="auto",
                            val_segment_length=0.3) == 0
    log = (tmp_path / "training.log").read_text()
    assert f"best val loss {old_best:.4f} reset: validation changed (val_segment_length 0.2 -> 0.3)" in log
    assert "changed settings: val_segment_length" in log
    new_val = val_rows(tmp_path)[-1]
    assert new_val["iteration"] == 4 and new_val["best_val_loss"] == new_val["loss/total"]  # a fresh best
    assert load_checkpoint(tmp_path / "best_model.pt")["iteration"] == 4


def test_an_unchanged_validation_keeps_the_best_val_loss(data, tmp_path):
    assert train_in_process(data, tmp_path, batch_size=2, max_steps=2, val_every=2) == 0
    assert train_in_process(data, tmp_path, batch_size=2, max_steps=3, resume="auto") == 0
    assert "reset: validation changed" not in (tmp_path / "training.log").read_text()


def test_val_utterances_shorter_than_the_val_window_are_validated_whole(data, tmp_path):
    # every val utterance is under the 0.3 s window (3 coarse tokens) (was refused: "longer than every val utterance")
    assert train_in_process(data, tmp_path, batch_size=4, max_steps=2, val_every=2,
                            val_codes=data["short_val"], val_segment_length=0.3) == 0
    assert "3 of 3 val utterances are shorter than --val_segment_length 0.3 s" in \
        (tmp_path / "training.log").read_text()
    row = val_rows(tmp_path)[0]
    assert row["items"] == 3 and row["loss/total"] > 0


def test_the_last_log_line_and_status_name_the_same_epoch(data, tmp_path):
    # batch 2: iteration 4 ends epoch 1; the log said "epoch 2/3" where status.json said 1
    assert train_in_process(data, tmp_path, batch_size=2, max_steps=4) == 0
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["epoch"] == 1
    assert "finished at iteration 4 (epoch 1/3)" in (tmp_path / "training.log").read_text()
