"""Regression tests of trainer bugs found in review: latest.pt must follow a best_model.pt save,
and OneCycleLR must never run past its end after a resume whose curriculum changed."""

import pytest

from helpers_train import one_thread, small_run_data, train_in_process  # noqa: F401
from snac.train.checkpoint import load_checkpoint



@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return small_run_data(tmp_path_factory.mktemp("data"), [0.5, 0.6])


run = train_in_process


def test_a_best_model_save_also_writes_latest_so_the_run_can_resume(data, tmp_path):
    # --val_every 1: iteration 1 improves on inf and saves best_model.pt; max_steps stops right there.
    # latest.pt must exist and hold iteration 1 (before: only best_model.pt, so --resume auto
    # found nothing and started over).
    assert run(data, tmp_path, max_steps=1, val_every=1) == 0
    latest = load_checkpoint(tmp_path / "latest.pt")
    assert latest["iteration"] == 1 and latest["best_val_loss"] is not None


def test_resume_with_a_larger_batch_never_runs_the_scheduler_past_its_end(data, tmp_path):
    # 8 rows, batch 2: 4 steps per epoch; cut 2 steps into the unfreeze phase (epoch 2 of 3)
    assert run(data, tmp_path, batch_size=2, epochs=3, max_steps=6) == 0
    assert load_checkpoint(tmp_path / "latest.pt")["scheduler"]["last_epoch"] == 2
    # resumed at batch 4 the plan has 4 unfreeze steps, but 2 done + 3 left = 5 are needed
    assert run(data, tmp_path, batch_size=4, epochs=3, resume="auto") == 0
    final = load_checkpoint(tmp_path / "latest.pt")
    assert final["iteration"] == 9 and final["scheduler"]["last_epoch"] == final["scheduler"]["total_steps"] == 5
