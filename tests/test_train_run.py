"""The training run, in process on a tiny model: phases, checkpoint cadence (mocked clock), best
model, resume mid-epoch with the curriculum, val loss going down, the 24 kHz mode, bad input."""

import json

import pytest
import torch

from helpers_train import (TINY_24KHZ, TINY_32KHZ, config, load_trainer, one_thread, read_metrics,  # noqa: F401
                           save_tiny_model, tiny_snac, write_cache)
from snac import SNAC, SNAC48, load_model
import snac.train.loop as loop
import snac.train.plan as plan_module
from snac.train.checkpoint import load_checkpoint, save_checkpoint
from snac.train.config import TrainConfig
from snac.train.phases import make_optimizer, parameter_groups, set_phase

trainer = load_trainer()
DURATIONS = [0.5, 0.8, 1.0, 0.3, 1.2, 0.6, 0.9, 0.7]  # 8 rows: 0.3 s = 4 coarse tokens


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    model = tiny_snac()
    model_dir = save_tiny_model(root / "model")
    return {"root": root, "model": model_dir, "train": write_cache(root / "train", model, DURATIONS, seed=1),
            "val": write_cache(root / "val", model, [0.5, 0.6, 0.4], seed=2)}


def run(data, out, clock=None, **overrides) -> int:
    cfg = config(data["root"], data["model"], data["train"], data["val"], out, val_examples=0, **overrides)
    return trainer.train(cfg, **({"clock": clock} if clock else {}))


def log_lines(out, needle: str) -> list[str]:
    return [line for line in (out / "training.log").read_text().splitlines() if needle in line]


def equal_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_phases_train_exactly_the_right_parameters(data, tmp_path):
    base = load_model(data["model"])
    assert run(data, tmp_path, epochs=2, batch_size=4) == 0
    after_warmup = load_checkpoint(tmp_path / "checkpoint_epoch1.pt")["model"]
    final = load_checkpoint(tmp_path / "checkpoint_epoch2.pt")
    assert final["phase"] == "unfreeze" and final["frozen"]["frozen_groups"] == ["frozen"]
    assert load_checkpoint(tmp_path / "checkpoint_epoch1.pt")["frozen"]["trained_groups"] == ["head"]
    base_sd = base.state_dict()
    for name, value in after_warmup.items():
        if name.startswith("quantizer.") or name.startswith("decoder."):
            assert torch.equal(value, base_sd[name]), f"{name} changed during warmup"
    # the head trained, its Snake alpha (smart-initialised from the base's final Snake) included
    n = len(SNAC48.from_snac(base).decoder.model)
    assert not torch.equal(after_warmup["head.snake.alpha"], base_sd[f"decoder.model.{n}.alpha"])
    changed = [k for k in after_warmup if k.startswith("decoder.") and not torch.equal(final["model"][k], after_warmup[k])]
    assert changed, "the decoder did not train after the phase switch"
    assert all(torch.equal(final["model"][k], base_sd[k]) for k in base_sd if k.startswith("quantizer."))
    # SNAC (24 kHz mode): encoder and VQ frozen in both phases; warmup trains the output layers only
    snac = SNAC(**base.config)
    info = set_phase(snac, "warmup")
    head = {id(p) for p in parameter_groups(snac)["head"]}
    assert {id(p) for p in snac.parameters() if p.requires_grad} == head and info["trainable_params"] > 0
    set_phase(snac, "unfreeze")
    assert not any(p.requires_grad for p in list(snac.encoder.parameters()) + list(snac.quantizer.parameters()))
    assert all(p.requires_grad for p in snac.decoder.parameters())
    optimizer = make_optimizer(snac, TrainConfig(train_codes="x"))
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in snac.decoder.parameters()}


def test_checkpoint_cadence_iterations_timer_epochs_and_best(data, tmp_path, monkeypatch):
    now = [0.0]
    real_step, real_val = loop.train_step, loop.run_validation
    val_calls = []

    def step_35_seconds(*args, **kwargs):
        now[0] += 35.0  # every step takes 35 s of (fake) wall time
        return real_step(*args, **kwargs)

    def val_nan_at_the_end(model, loader, device, cfg, autocast, examples):
        losses, kept = real_val(model, loader, device, cfg, autocast, examples)
        val_calls.append(losses["loss/total"])
        if len(val_calls) == 5:  # the last validation (iteration 9) diverges
            losses = {**losses, "loss/total": float("nan")}
        return losses, kept

    monkeypatch.setattr(loop, "train_step", step_35_seconds)
    monkeypatch.setattr(loop, "run_validation", val_nan_at_the_end)
    # 8 rows, batch 3: 3 steps per epoch, 9 in all; iteration checkpoints at 4 and 8
    assert run(data, tmp_path, clock=lambda: now[0], batch_size=3, checkpoint_every=4,
               checkpoint_minutes=1, keep_last=1) == 0
    # timer: saves at the first step >= 60 s after the previous save of any kind
    # (t=70 at it 2; the epoch save at it 3 resets it; iteration save at 4; it 6 is 70 s after 4)
    timer_saves = [int(line.split("iteration ")[1].rstrip(")")) for line in log_lines(tmp_path, "saved latest.pt (")]
    assert timer_saves == [2, 6]
    assert [ln.split("saved ")[1] for ln in log_lines(tmp_path, "saved checkpoint_iter")] == \
        ["checkpoint_iter4.pt, latest.pt (iteration 4)", "checkpoint_iter8.pt, latest.pt (iteration 8)"]
    names = sorted(p.name for p in tmp_path.glob("*.pt"))
    assert names == ["best_model.pt", "checkpoint_epoch1.pt", "checkpoint_epoch2.pt", "checkpoint_epoch3.pt",
                     "checkpoint_iter8.pt", "latest.pt"]  # keep_last=1 rotated checkpoint_iter4.pt away
    assert load_checkpoint(tmp_path / "latest.pt")["iteration"] == 9
    # validation at each iteration checkpoint and epoch end; best = lowest finite, never the NaN
    vals = [m for m in read_metrics(tmp_path) if m["type"] == "val"]
    assert [m["iteration"] for m in vals] == [3, 4, 6, 8, 9] and vals[-1]["loss/total"] is None
    best = load_checkpoint(tmp_path / "best_model.pt")
    finite = [(m["loss/total"], m["iteration"]) for m in vals[:-1]]
    assert (best["best_val_loss"], best["iteration"]) == min(finite)
    assert load_checkpoint(tmp_path / "latest.pt")["best_val_loss"] == min(finite)[0]
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["state"] == "finished" and status["iteration"] == 9 and status["latest_checkpoint"].endswith("latest.pt")


def test_the_eta_after_the_warmup_uses_the_unfreeze_pace(data, tmp_path, monkeypatch):
    """Head-only warmup steps of 10 s, whole-decoder steps of 40 s (8 rows, batch 3: 3 steps an epoch,
    9 in all, epoch 1 the warmup): from the phase switch on the ETA is 40 s per step left, not the
    run's average pace, which would promise the end far too early."""
    now, calls = [0.0], [0]
    real_step = loop.train_step

    def step(*args, **kwargs):
        calls[0] += 1
        now[0] += 10.0 if calls[0] <= 3 else 40.0
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", step)
    assert run(data, tmp_path, clock=lambda: now[0], batch_size=3, checkpoint_minutes=0, log_every=1) == 0
    etas = {r["iteration"]: r["eta_s"] for r in read_metrics(tmp_path) if r["type"] == "train"}
    assert etas[2] == 70.0  # in the warmup: its own pace, 10 s x 7 steps left
    assert [etas[i] for i in (4, 5, 6, 7, 8, 9)] == [200.0, 160.0, 120.0, 80.0, 40.0, 0.0]


def test_max_minutes_stops_after_the_step_that_used_it_up(data, tmp_path, monkeypatch):
    """--max_minutes 1 with 35 s steps: the budget is used up after step 2 (70 s): latest.pt holds
    iteration 2, the log says why, the run exits 0 as 'finished' (quality_check.py reads it)."""
    now = [0.0]
    real_step = loop.train_step

    def step_35_seconds(*args, **kwargs):
        now[0] += 35.0
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", step_35_seconds)
    assert run(data, tmp_path, clock=lambda: now[0], batch_size=3, max_minutes=1, checkpoint_minutes=0,
               log_every=1) == 0
    assert load_checkpoint(tmp_path / "latest.pt")["iteration"] == 2
    # the ETA shown counts down to the time limit, not to the end of the (longer) plan
    etas = [r["eta_s"] for r in read_metrics(tmp_path) if r["type"] == "train"]
    assert etas == [25.0, 0.0]
    assert log_lines(tmp_path, "time limit reached (--max_minutes 1) at iteration 2")
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["state"] == "finished" and status["iteration"] == 2


def test_resume_continues_mid_epoch_with_its_phase_curriculum_and_best(data, tmp_path):
    curriculum = dict(batch_size=2, epochs=3, segment_schedule=[{"epochs": [2, 3], "length": 0.35,
                                                                 "batch_multiplier": 2}])
    assert run(data, tmp_path / "whole", **curriculum) == 0
    # epoch 1: 0.2 s windows, batch 2 -> 4 steps; epochs 2-3: 0.35 s (4 tokens), batch 4 -> 2 steps each
    assert run(data, tmp_path / "cut", max_steps=5, **curriculum) == 0
    cut = load_checkpoint(tmp_path / "cut" / "latest.pt")
    assert (cut["iteration"], cut["phase"], cut["batch_size"], cut["window_tokens"]) == (5, "unfreeze", 4, 4)
    assert cut["data_state"]["epoch"] == 1 and cut["data_state"]["consumed"] == 4  # mid-epoch 2
    best_before = cut["best_val_loss"]
    assert run(data, tmp_path / "cut", resume="auto", **curriculum) == 0
    resumed = log_lines(tmp_path / "cut", "resumed from")
    assert len(resumed) == 1 and "at iteration 5 (epoch 2, 4 items in; phase unfreeze" in resumed[0]
    assert len(log_lines(tmp_path / "cut", "it 1/")) == 1  # the log was appended, not truncated
    assert "epoch 2/3 (unfreeze): window 0.341 s (4 coarse tokens), batch 4 x 1, 1 of 2 steps left" in \
        (tmp_path / "cut" / "training.log").read_text()
    final, whole = load_checkpoint(tmp_path / "cut" / "latest.pt"), load_checkpoint(tmp_path / "whole" / "latest.pt")
    assert final["iteration"] == whole["iteration"] == 8
    assert equal_state(final["model"], whole["model"])  # same weights as the uninterrupted run
    vals = [m["loss/total"] for m in read_metrics(tmp_path / "cut") if m["type"] == "val"]
    assert final["best_val_loss"] == min(vals) <= best_before


def test_val_loss_goes_down_on_a_tiny_model(data, tmp_path):
    assert run(data, tmp_path, epochs=5, batch_size=2, learning_rate=3e-3, warmup_learning_rate=3e-3) == 0
    vals = [m["loss/total"] for m in read_metrics(tmp_path) if m["type"] == "val"]
    assert len(vals) == 5 and vals[-1] < 0.9 * vals[0], vals


def test_24khz_mode_and_its_checkpoint_seeds_a_48khz_run(data, tmp_path):
    # the stock decoder at 24 kHz, trained on the 48 kHz cache (targets resampled per window)
    assert run(data, tmp_path / "r24", target_sample_rate=24000, n_ffts="64,128", max_steps=3, batch_size=4) == 0
    ckpt = load_checkpoint(tmp_path / "r24" / "latest.pt")
    assert "base" not in ckpt["model_config"] and ckpt["phase"] == "unfreeze"
    snac24 = load_model(tmp_path / "r24" / "latest.pt")
    assert isinstance(snac24, SNAC)
    assert run(data, tmp_path / "r48", pretrained_model=tmp_path / "r24" / "latest.pt", max_steps=1,
               checkpoint_every=1, epochs=2) == 0
    # the 48 kHz run started from the fine-tuned 24 kHz decoder (warmup leaves the trunk as it was)
    first = load_checkpoint(tmp_path / "r48" / "checkpoint_iter1.pt")["model"]
    trunk = {k: v for k, v in snac24.state_dict().items() if k.startswith("decoder.") and k in first}
    assert trunk and all(torch.equal(first[k], v) for k, v in trunk.items())


@pytest.mark.parametrize("case", ["missing cache", "empty cache", "foreign cache", "segment too long",
                                  "warmup >= epochs", "unknown key", "other base model", "existing run"])
def test_bad_input_fails_before_model_work_with_one_line(data, tmp_path, monkeypatch, capsys, case):
    def no_model_work(*a, **k):
        raise AssertionError("model work started before the input was checked")

    monkeypatch.setattr(plan_module, "load_model", no_model_work)
    monkeypatch.setattr(loop, "build_model", no_model_work)
    out = tmp_path / "run"
    overrides, expect = {}, ""
    if case == "missing cache":
        overrides, expect = {"train_codes": tmp_path / "nope"}, "does not exist"
    elif case == "empty cache":
        (tmp_path / "empty").mkdir()
        overrides, expect = {"train_codes": tmp_path / "empty"}, "no manifest.json"
    elif case == "foreign cache":
        other = write_cache(tmp_path / "c32", tiny_snac(TINY_32KHZ), [0.5], seed=3)
        overrides, expect = {"val_codes": other}, "different config"
    elif case == "segment too long":
        overrides, expect = {"segment_length": 5.0}, "longer than every training utterance"
    elif case == "warmup >= epochs":
        overrides, expect = {"warmup_epochs": 3, "epochs": 3}, "--warmup_epochs (3) must be >= 0 and < --epochs (3)"
    elif case == "unknown key":
        (tmp_path / "c.json").write_text('{"learning_rat": 1}')
        overrides, expect = {"config": tmp_path / "c.json"}, "unknown key(s) learning_rat"
    elif case == "other base model":
        foreign = SNAC(**dict(TINY_24KHZ, decoder_dim=64))  # same rates, another model
        save_checkpoint({"model": {}, "iteration": 3, "model_config": SNAC48.from_snac(foreign).config,
                         "base_model_config": foreign.config}, tmp_path / "foreign.pt")
        overrides, expect = {"resume": tmp_path / "foreign.pt"}, "another base model"
    elif case == "existing run":
        out.mkdir()
        save_checkpoint({"model": {"w": torch.ones(1)}, "iteration": 7}, out / "latest.pt")
        before = (out / "latest.pt").read_bytes()
        expect = "already holds checkpoints (newest latest.pt); pass --resume auto"
    args = trainer_args(data, out, **overrides)
    assert trainer.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert expect in err and len(err.splitlines()) == 1, err
    if case == "existing run":  # a finished checkpoint is never overwritten by a failing start
        assert (out / "latest.pt").read_bytes() == before and sorted(p.name for p in out.iterdir()) == ["latest.pt"]
    else:
        assert not out.exists()


def trainer_args(data, out, **overrides) -> list[str]:
    from helpers_train import base_args

    return base_args(data["root"], data["model"], data["train"], data["val"], out, **overrides)


def test_lite_head_trains_resumes_and_exports_its_head(data, tmp_path):
    """--head lite --head_channels 4: the run builds the lite head, its checkpoints record it, and a
    resumed run rebuilds the same head from the checkpoint."""
    assert run(data, tmp_path, batch_size=3, max_steps=2, head="lite", head_channels=4) == 0
    ckpt = load_checkpoint(tmp_path / "latest.pt")
    assert ckpt["model_config"]["head"] == {"type": "lite", "upsample_factor": 2, "branch_channels": 4,
                                            "interp_taps": 6, "branch_init": 1e-3, "branch_gain": 1.0}
    assert any(k.startswith("head.branch_out.") for k in ckpt["model"])
    assert run(data, tmp_path, batch_size=3, max_steps=3, head="lite", head_channels=4, resume="auto") == 0
    again = load_checkpoint(tmp_path / "latest.pt")
    assert again["iteration"] == 3 and again["model_config"] == ckpt["model_config"]
    assert not equal_state(again["model"], ckpt["model"])  # it trained on
    # a lite run of before --branch_lr_scale (one lr for the head: two optimizer groups) resumes only
    # with --branch_lr_scale 1, and says so in one line; its checkpoint is left as it was
    old = tmp_path / "old"
    assert run(data, old, batch_size=3, max_steps=2, head="lite", head_channels=4, branch_lr_scale=1.0) == 0
    saved = load_checkpoint(old / "latest.pt")
    assert [g["name"] for g in saved["optimizer"]["param_groups"]] == ["head", "decoder"]
    assert run(data, old, batch_size=3, max_steps=3, head="lite", head_channels=4, resume="auto") != 0
    error = log_lines(old, "error:")[-1]
    assert "param groups ['head', 'decoder']" in error and "resume with --branch_lr_scale 1" in error
    assert load_checkpoint(old / "latest.pt")["iteration"] == 2
    assert run(data, old, batch_size=3, max_steps=3, head="lite", head_channels=4, branch_lr_scale=1.0,
               resume="auto") == 0
