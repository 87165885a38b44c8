"""Pre-flight: local paths are checked before any network access, a bad --output_dir is one line
(exit 2) before any work, and the other refusals of a run's inputs each name their fix."""

import os

import pytest

from helpers_train import base_args, load_trainer, one_thread, small_run_data  # noqa: F401
import snac.train.loop as loop
import snac.train.plan as plan_module

trainer = load_trainer()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return small_run_data(tmp_path_factory.mktemp("data"), [0.5, 0.6])


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if the hub is contacted or model work starts."""
    def network(*a, **k):
        raise AssertionError("the hub was contacted before the local paths were checked")

    def model_work(*a, **k):
        raise AssertionError("model work started before the input was checked")

    monkeypatch.setattr(plan_module, "resolve_pretrained", network)
    monkeypatch.setattr(plan_module, "load_model", model_work)
    monkeypatch.setattr(loop, "build_model", model_work)


def one_error_line(capsys, args) -> str:
    assert trainer.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("flag", ["train_codes", "val_codes", "resume", "pretrained_model"])
def test_local_path_typos_are_reported_before_the_hub_is_contacted(data, tmp_path, capsys, no_work, flag):
    # the default --pretrained_model is a hub id: before, a typo elsewhere waited for its download
    overrides = {"pretrained_model": "hubertsiuzdak/snac_24khz", flag: tmp_path / "typo"}
    if flag == "pretrained_model":
        overrides[flag] = tmp_path / "model_typo.pt"
    err = one_error_line(capsys, base_args(tmp_path, data["model"], data["train"], data["val"],
                                           tmp_path / "run", **overrides))
    assert f"--{flag}" in err and "does not exist" in err


def test_an_unreachable_hub_names_the_flag_that_takes_a_local_directory(data, tmp_path, capsys, monkeypatch):
    def offline(spec):
        raise RuntimeError(f"could not download {spec} from the Hugging Face hub (ConnectionError: offline)")

    monkeypatch.setattr(plan_module, "resolve_pretrained", offline)
    err = one_error_line(capsys, base_args(tmp_path, "hubertsiuzdak/snac_24khz", data["train"], data["val"],
                                           tmp_path / "run"))
    assert "--pretrained_model takes a local model directory" in err


@pytest.mark.parametrize("where", ["under a file", "a file"])
def test_a_bad_output_dir_is_one_line_and_exit_2_before_any_work(data, tmp_path, capsys, no_work, where):
    (tmp_path / "f").write_text("not a directory")
    out = tmp_path / "f" / "run" if where == "under a file" else tmp_path / "f"
    err = one_error_line(capsys, base_args(tmp_path, data["model"], data["train"], data["val"], out))
    assert "--output_dir" in err and "is a file" in err and "choose another --output_dir" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_output_dir_without_permission_is_one_line(data, tmp_path, capsys, no_work):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    err = one_error_line(capsys, base_args(tmp_path, data["model"], data["train"], data["val"], locked / "run"))
    assert "no permission to write" in err


@pytest.mark.parametrize("case,message", [
    ("missing", "does not exist; pass an existing .pt file"),
    ("pickled", "holds pickled objects, not a checkpoint"),
    ("truncated", "is unreadable"),
    ("not ours", "is not a training checkpoint of this script"),
])
def test_load_checkpoint_refuses_what_it_cannot_use_with_one_line(tmp_path, case, message):
    import fractions

    import torch

    from snac.train.checkpoint import load_checkpoint, save_checkpoint

    path = tmp_path / "c.pt"
    if case == "pickled":  # an arbitrary Python object: weights_only loading must refuse it
        torch.save({"model": {}, "iteration": 1, "extra": fractions.Fraction(1, 3)}, path)
    elif case == "truncated":
        save_checkpoint({"model": {"w": torch.ones(100)}, "iteration": 1}, path)
        path.write_bytes(path.read_bytes()[:200])
    elif case == "not ours":
        torch.save({"weights": torch.ones(2)}, path)
    with pytest.raises(ValueError) as e:
        load_checkpoint(path)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_fewer_training_rows_than_ranks_is_refused(data, tmp_path):
    from helpers_train import config
    from snac.train.distributed import DistInfo

    cfg = config(data["root"], data["model"], data["train"], data["val"], tmp_path / "run")
    with pytest.raises(plan_module.PreflightError, match="has 8 rows, fewer than the 9 ranks"):
        plan_module.preflight(cfg, DistInfo(rank=0, world_size=9))


@pytest.mark.parametrize("rate,message", [
    (36000, "--target_sample_rate 36000 must equal the base rate 24000 or be a multiple of it"),
    (12000, "--target_sample_rate 12000 must equal the base rate 24000 or be a multiple of it"),
])
def test_a_target_rate_the_base_cannot_reach_is_refused(data, tmp_path, capsys, monkeypatch, rate, message):
    monkeypatch.setattr(loop, "build_model", lambda *a, **k: pytest.fail("model work before the rate check"))
    err = one_error_line(capsys, base_args(tmp_path, data["model"], data["train"], data["val"], tmp_path / "run",
                                           target_sample_rate=rate))
    assert message in err


def test_resuming_a_checkpoint_at_another_rate_is_refused(data, tmp_path, capsys):
    from helpers_train import train_in_process

    out = tmp_path / "run"
    assert train_in_process(data, out, max_steps=1) == 0  # a 48 kHz run
    err = one_error_line(capsys, base_args(tmp_path, data["model"], data["train"], data["val"], out,
                                           resume="auto", target_sample_rate=24000))
    assert "decodes at 48000 Hz but --target_sample_rate is 24000" in err


def test_a_cache_made_with_other_weights_is_refused_before_any_work(data, tmp_path, capsys, monkeypatch):
    from helpers_train import save_tiny_model
    other = save_tiny_model(tmp_path / "other", seed=7)  # same config, other weights
    monkeypatch.setattr(loop, "build_model", lambda *a, **k: (_ for _ in ()).throw(
        AssertionError("model work started before the cache's weights were checked")))
    err = one_error_line(capsys, base_args(tmp_path, other, data["train"], data["val"], tmp_path / "run"))
    assert "--train_codes" in err and "other weights" in err and "--overwrite" in err
    assert not (tmp_path / "run" / "latest.pt").exists()


def test_checkpoints_record_the_base_weights_fingerprint(data, tmp_path):
    import torch
    from helpers_train import train_in_process
    from snac.cache.format import weights_fingerprint
    from snac import SNAC
    assert train_in_process(data, tmp_path / "run", max_steps=1) == 0
    ckpt = torch.load(tmp_path / "run" / "latest.pt", map_location="cpu", weights_only=False)
    assert ckpt["base_weights_fingerprint"] == weights_fingerprint(SNAC.from_pretrained(data["model"]))
