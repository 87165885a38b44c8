"""The adversarial recipe in the training script (--adversarial): a tiny run logs finite losses of
both networks everywhere; kill/resume is bit-identical for both networks and both optimizers; a
plain checkpoint resumed with --adversarial starts fresh discriminators; torchrun with 2 gloo
processes; the export holds the generator only. Discriminators are a few channels wide here."""

import importlib.util
import json
import math
import sys

import pytest
import torch
from safetensors.torch import load_file

from helpers_train import (REPO, SCRIPT, base_args, config, load_trainer, one_thread, pycache_env,  # noqa: F401
                           read_metrics, run_script, small_run_data)
from snac.train.checkpoint import load_checkpoint
from snac.train.config import ConfigError, resolve_config

trainer = load_trainer()
TINY_DISC = dict(mpd_channels="4,8", mrd_channels=4)  # a few hundred discriminator weights per band


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return small_run_data(tmp_path_factory.mktemp("data"), [0.5, 0.6, 0.4])


def adv_flags(data, out, **overrides) -> list[str]:
    # batch 3 over 8 rows: 3 steps per epoch, 9 in all; warmup (1-3) plain, unfreeze (4-9) adversarial,
    # iteration 4 trains the discriminators alone (--disc_start_step 1)
    values = dict(batch_size=3, val_examples=0, adversarial=True, disc_start_step=1, **TINY_DISC)
    values.update(overrides)
    return base_args(data["root"], data["model"], data["train"], data["val"], out, **values)


def equal_tensors(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(equal_tensors(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(equal_tensors(x, y) for x, y in zip(a, b))
    return torch.equal(a, b) if torch.is_tensor(a) else a == b


def test_config_defaults_flags_and_json():
    plain = resolve_config(["--train_codes", "x"])
    adv = resolve_config(["--train_codes", "x", "--adversarial"])
    assert (plain.mel_weight, adv.mel_weight, adv.feat_weight, adv.adv_weight) == (0.0, 15.0, 2.0, 1.0)
    assert adv.disc_learning_rate == 1e-4 and adv.disc_start_step == 0 and not adv.adversarial_warmup
    assert resolve_config(["--train_codes", "x", "--mel_weight", "5"]).mel_weight == 5.0  # without --adversarial
    gan = resolve_config(["--config", str(REPO / "configs/finetune_48khz_gan.json"), "--train_codes", "x"])
    assert gan.adversarial and gan.target_sample_rate == 48000 and gan.mel_weight == 15.0
    tiny = resolve_config(["--config", str(REPO / "configs/tiny_cpu_gan.json"), "--train_codes", "x"])
    assert tiny.adversarial and tiny.mpd_channels == [4, 8, 8]
    with pytest.raises(ConfigError, match="needs a discriminator"):
        resolve_config(["--train_codes", "x", "--adversarial", "--no-multi_period", "--no-multi_band"])
    with pytest.raises(ConfigError, match="--mpd_channels must be a comma list"):
        resolve_config(["--train_codes", "x", "--mpd_channels", "4,x"])


@pytest.mark.slow
def test_tiny_adversarial_run_logs_finite_losses_and_exports_the_generator_only(data, tmp_path):
    out = tmp_path / "run"
    assert trainer.train(resolve_config(adv_flags(data, out, checkpoint_every=3))) == 0
    rows = read_metrics(out)
    train = [r for r in rows if r["type"] == "train"]
    assert [r["iteration"] for r in train] == list(range(1, 10))
    # warmup: plain step (+ mel, whose weight defaults to 15 with --adversarial); no discriminators
    assert all("disc/loss" not in r and r["loss/mel"] is not None for r in train[:3])
    # iteration 4: the discriminators alone (the generator waits: no gradient)
    assert "disc/loss" in train[3] and "loss/adv" not in train[3] and train[3]["grad_norm"] == 0
    keys = ["loss/total", "loss/l1", "loss/stft", "loss/mel", "loss/adv", "loss/feat", "disc/loss",
            "disc/real", "disc/fake", "disc/grad_norm", "grad_norm"]
    for r in train[4:]:
        assert all(isinstance(r[k], float) and math.isfinite(r[k]) for k in keys), r
        expected = (r["loss/l1"] + r["loss/stft"] + 15 * r["loss/mel"] + r["loss/adv"] + 2 * r["loss/feat"])
        assert r["loss/total"] == pytest.approx(expected, rel=1e-5)
        assert r["disc/loss"] == pytest.approx(r["disc/real"] + r["disc/fake"], rel=1e-5)
    line = [x for x in (out / "training.log").read_text().splitlines() if " it 9/9 " in x][0]
    assert all(word in line for word in (" mel ", " adv ", " feat ", "| disc loss ", " real ", " fake "))
    # validation: best model by the reconstruction loss; the mel distance logged beside it
    vals = [r for r in rows if r["type"] == "val"]
    assert all(r["loss/total"] == pytest.approx(r["loss/l1"] + r["loss/stft"]) and r["loss/mel"] > 0 for r in vals)
    best = load_checkpoint(out / "best_model.pt")
    assert best["best_val_loss"] == min(r["loss/total"] for r in vals)
    # TensorBoard gets the same scalars; the status screen shows them
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(out)).Reload().Tags()["scalars"]
    assert {"train/loss/adv", "train/loss/feat", "train/loss/mel", "train/disc/loss", "train/disc/real",
            "train/disc/fake", "train/disc/grad_norm", "val/loss/mel"} <= set(tags)
    screen = "\n".join(load_script("launcher").describe(out, tmp_path / "logs", plot=False))
    assert "discriminators " in screen and "disc         loss " in screen and "adv " in screen
    # every checkpoint holds the discriminators and their optimizer; 6 discriminator steps (iterations 4-9)
    ckpt = load_checkpoint(out / "latest.pt")
    assert ckpt["discriminator"]["disc_steps"] == 6 and ckpt["discriminator"]["optimizer"]["state"]
    assert all("discriminator" in load_checkpoint(p) for p in out.glob("checkpoint_*.pt"))
    # the export: the generator's weights alone, equal to the checkpoint's
    export_dir = tmp_path / "export"
    assert load_script("export_pretrained").main(["--checkpoint", str(out / "best_model.pt"),
                                                  "--output_dir", str(export_dir)]) == 0
    exported = load_file(export_dir / "model.safetensors")
    assert exported.keys() == best["model"].keys()
    assert not any("discriminator" in k or k.startswith(("mpd", "mrd")) for k in exported)


@pytest.mark.slow
def test_killed_adversarial_run_resumes_bit_identical(data, tmp_path, pycache_env):
    assert trainer.train(resolve_config(adv_flags(data, tmp_path / "whole", checkpoint_every=2))) == 0
    reference = load_checkpoint(tmp_path / "whole" / "latest.pt")
    out = tmp_path / "cut"
    # checkpoints at 2, 3 (epoch), 4, 6 (iteration and epoch), 8, 9; kills at 5 (after the
    # discriminator-only step 4) and at 7 (mid-epoch 3, both networks training)
    stages = [("step:5", None), ("step:7", 4), (None, 6)]
    for fault, resumed_at in stages:
        env = {**pycache_env, **({"SNAC48_FAULT": fault} if fault else {})}
        proc = run_script(adv_flags(data, out, checkpoint_every=2, resume="auto"), env=env)
        assert proc.returncode == (-9 if fault else 0), (fault, proc.stdout[-2000:], proc.stderr[-2000:])
        if fault:  # the kill landed mid-run: the newest checkpoint is behind the killed step
            assert load_checkpoint(out / "latest.pt")["iteration"] == int(fault.split(":")[1]) - 1
        if resumed_at is not None:
            assert f"at iteration {resumed_at} (" in proc.stdout, (fault, proc.stdout[-1500:])
    final = load_checkpoint(out / "latest.pt")
    assert final["iteration"] == reference["iteration"] == 9
    assert equal_tensors(final["model"], reference["model"])
    assert equal_tensors(final["optimizer"]["state"], reference["optimizer"]["state"])
    disc_a, disc_b = final["discriminator"], reference["discriminator"]
    assert disc_a["disc_steps"] == disc_b["disc_steps"] == 6
    assert equal_tensors(disc_a["model"], disc_b["model"])
    assert equal_tensors(disc_a["optimizer"]["state"], disc_b["optimizer"]["state"])


def test_plain_checkpoint_resumed_with_adversarial_starts_fresh_discriminators(data, tmp_path):
    out = tmp_path / "run"
    plain = dict(batch_size=3, val_examples=0, checkpoint_every=4, max_steps=4, mel_weight=5.0)
    assert trainer.train(config(data["root"], data["model"], data["train"], data["val"], out, **plain)) == 0
    rows = [r for r in read_metrics(out) if r["type"] == "train"]
    # --mel_weight without --adversarial: the mel term joins the plain loss, no discriminator anywhere
    assert all(r["loss/total"] == pytest.approx(r["loss/l1"] + r["loss/stft"] + 5 * r["loss/mel"], rel=1e-5)
               and "disc/loss" not in r for r in rows)
    assert "discriminator" not in load_checkpoint(out / "latest.pt")
    assert trainer.train(resolve_config(adv_flags(data, out, resume="auto", max_steps=6))) == 0
    log = (out / "training.log").read_text()
    assert "the checkpoint has no discriminator state (a non-adversarial run): starting fresh discriminators" in log
    assert "changed settings: adversarial" in log
    final = load_checkpoint(out / "latest.pt")
    assert final["iteration"] == 6 and final["discriminator"]["disc_steps"] == 2


@pytest.mark.slow
def test_two_gloo_processes_with_adversarial(data, tmp_path, pycache_env):
    out = tmp_path / "run"
    args = adv_flags(data, out, batch_size=2, checkpoint_every=4, max_steps=5, adversarial_warmup=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(SCRIPT)]
    proc = run_script(args, env=pycache_env, module=torchrun, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (out / "training.log").read_text()
    assert log.count(" it 5/") == 1 and "world size 2" in log  # one writer
    # 8 rows, 2 per rank per step: 2 steps per epoch; one set of checkpoints, no stray temp files
    names = {p.name for p in out.iterdir() if p.name.endswith(".pt") or ".tmp" in p.name}
    expected = {"checkpoint_epoch1.pt", "checkpoint_epoch2.pt", "checkpoint_iter4.pt", "latest.pt"}
    assert expected <= names <= expected | {"best_model.pt"}, names
    ckpt = load_checkpoint(out / "latest.pt")
    assert ckpt["world_size"] == 2 and ckpt["iteration"] == 5
    assert ckpt["discriminator"]["disc_steps"] == 5  # adversarial from the warmup on
    train = [r for r in read_metrics(out) if r["type"] == "train"]
    assert all(math.isfinite(r["disc/loss"]) for r in train) and all(math.isfinite(r["loss/adv"]) for r in train[1:])
