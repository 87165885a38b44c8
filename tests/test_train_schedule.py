"""The LR curve: OneCycleLR's shape, any plan length, and resumes that change
the flags (new lr / weight decay used) or the batch size (curve refitted, no jump, ends on time)."""

import math

import pytest
import torch

from helpers_train import one_thread, read_metrics, small_run_data, train_in_process  # noqa: F401
from snac.train.checkpoint import load_checkpoint
from snac.train.schedule import OneCycleSchedule, one_cycle



@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return small_run_data(tmp_path_factory.mktemp("data"), [0.5, 0.6])


run = train_in_process


def train_lrs(out) -> dict[int, float]:
    """{iteration: lr that step used}; rows after a resume supersede earlier ones."""
    return {m["iteration"]: m["lr"] for m in read_metrics(out) if m["type"] == "train"}


def one_param_optimizer() -> torch.optim.Optimizer:
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)


def test_the_curve_has_one_cycles_shape():
    # OneCycleLR's documented curve: cosine from max/25 up to max at pct_start, then down to max/25e4
    peak, pct = 2e-3, 0.25
    assert one_cycle(0.0, peak, pct) == pytest.approx(peak / 25)
    assert one_cycle(pct / 2, peak, pct) == pytest.approx((peak / 25 + peak) / 2)  # cosine: half-way at mid-rise
    assert one_cycle(pct, peak, pct) == pytest.approx(peak)
    assert one_cycle((1 + pct) / 2, peak, pct) == pytest.approx((peak + peak / 25e4) / 2)
    assert one_cycle(1.0, peak, pct) == pytest.approx(peak / 25e4)
    opt = one_param_optimizer()
    schedule = OneCycleSchedule(opt, peak, pct, 5)  # steps 0..4 sit at progress 0, 1/4, ..., 1
    for step in range(5):
        assert opt.param_groups[0]["lr"] == one_cycle(step / 4, peak, pct)
        schedule.step()


@pytest.mark.parametrize("total", range(1, 13))
def test_any_plan_length_works(total):
    # torch's OneCycleLR raised ZeroDivisionError where pct_start * total rounds to 1 (total 10 here)
    opt = one_param_optimizer()
    schedule = OneCycleSchedule(opt, 1e-3, 0.1, total)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(total - 1):
        schedule.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert all(math.isfinite(lr) and 0 < lr <= 1e-3 for lr in lrs)
    if total > 1:
        assert lrs[-1] == pytest.approx(1e-3 / 25 / 1e4)  # the last step is the curve's end


def test_a_ten_step_unfreeze_phase_trains(data, tmp_path):
    # 8 rows, batch 4: 2 steps per epoch; 5 unfreeze epochs = 10 steps (pct_start 0.1 -> 1 step)
    assert run(data, tmp_path, batch_size=4, epochs=6, val_codes=None) == 0
    assert load_checkpoint(tmp_path / "latest.pt")["iteration"] == 12


@pytest.mark.parametrize("new_batch", [1, 4])
def test_resume_with_another_batch_continues_the_curve_and_ends_on_the_last_step(data, tmp_path, new_batch):
    # batch 2: 4 steps per epoch, 8 unfreeze steps; cut after 2 of them (iteration 6)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert run(data, whole, batch_size=2, epochs=3) == 0
    assert run(data, cut, batch_size=2, epochs=3, max_steps=6) == 0
    assert run(data, cut, batch_size=new_batch, epochs=3, resume="auto") == 0
    uninterrupted, resumed = train_lrs(whole), train_lrs(cut)
    # the first step after the resume uses the lr the uninterrupted run used at that step (no jump)
    assert resumed[7] == pytest.approx(uninterrupted[7], rel=1e-12)
    # the curve ends on the last step of the new plan: 2 steps done + the rest of epoch 2 and epoch 3
    last = max(resumed)
    steps_left = 4 // new_batch + 8 // new_batch  # the rest of epoch 2 (4 rows) and epoch 3 (8 rows)
    assert last == 6 + steps_left
    final = load_checkpoint(cut / "latest.pt")["scheduler"]
    assert final["last_epoch"] == final["total_steps"] == 2 + steps_left
    assert resumed[last] == pytest.approx(1e-3 / 25 / 1e4, rel=1e-9)  # lr of the last step: the curve's end
    # every lr of the resumed part lies on one smooth curve: no step falls back up after the peak
    after = [resumed[i] for i in sorted(resumed) if i > 7]
    assert all(b <= a for a, b in zip(after, after[1:]))


def test_new_lr_weight_decay_and_warmup_lr_at_resume_are_used_and_recorded(data, tmp_path):
    # batch 2: warmup epoch 1 = iterations 1-4; cut at 2, resume with new values
    assert run(data, tmp_path, batch_size=2, epochs=3, max_steps=2) == 0
    assert run(data, tmp_path, batch_size=2, epochs=3, resume="auto", learning_rate=2e-3,
               warmup_learning_rate=3e-4, weight_decay=0.05, max_steps=7) == 0
    lrs = train_lrs(tmp_path)
    assert lrs[3] == lrs[4] == 3e-4  # the head's new constant warmup lr
    assert lrs[5] == pytest.approx(2e-3 / 25)  # the curve starts at the new peak / 25
    ckpt = load_checkpoint(tmp_path / "latest.pt")
    assert all(g["weight_decay"] == 0.05 for g in ckpt["optimizer"]["param_groups"])
    schedule = OneCycleSchedule(one_param_optimizer(), 2e-3, 0.1, 8)
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(schedule.lr_at(3))  # next step's lr
    assert ckpt["config"]["learning_rate"] == 2e-3 and ckpt["config"]["weight_decay"] == 0.05


def test_the_lite_branch_output_group_follows_the_curve_times_its_scale(data, tmp_path):
    """--branch_lr_scale: the lite head's branch_out conv is its own AdamW group whose lr is the
    head's times the scale, in warmup and on the one-cycle curve, and a resume takes the new flag."""
    opt = torch.optim.AdamW([{"params": [torch.nn.Parameter(torch.zeros(1))]},
                             {"params": [torch.nn.Parameter(torch.zeros(1))], "lr_scale": 7.0}], lr=1.0)
    schedule = OneCycleSchedule(opt, 2e-3, 0.25, 6)
    for _ in range(5):
        assert opt.param_groups[1]["lr"] == pytest.approx(7 * opt.param_groups[0]["lr"])
        schedule.step()
    # batch 2: warmup epoch 1 = iterations 1-4; stop at 2 (warmup), then at 6 (unfreeze)
    lite = {"head": "lite", "head_channels": 4, "batch_size": 2, "epochs": 3}
    assert run(data, tmp_path, **lite, branch_lr_scale=7.0, max_steps=2) == 0
    ckpt = load_checkpoint(tmp_path / "latest.pt")
    groups, warmup_lr = ckpt["optimizer"]["param_groups"], ckpt["config"]["warmup_learning_rate"]
    assert [g["name"] for g in groups] == ["head", "branch_out", "decoder"]
    assert groups[0]["lr"] == warmup_lr == train_lrs(tmp_path)[2] and groups[1]["lr"] == pytest.approx(7 * warmup_lr)
    assert len(groups[1]["params"]) == 3  # bias, weight-norm magnitude and direction: 1 + 1 + 4 x 7 = 30 values
    assert "its branch's output conv (30 parameters) trains at 7x the head's lr" in \
        (tmp_path / "training.log").read_text()
    assert run(data, tmp_path, **lite, branch_lr_scale=3.0, resume="auto", max_steps=6) == 0
    ckpt = load_checkpoint(tmp_path / "latest.pt")
    groups = ckpt["optimizer"]["param_groups"]
    assert ckpt["phase"] == "unfreeze" and groups[0]["lr"] != warmup_lr  # on the curve now
    assert groups[1]["lr"] == pytest.approx(3 * groups[0]["lr"]) and groups[2]["lr"] == groups[0]["lr"]
