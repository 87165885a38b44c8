"""Each refusal of the trainers and the checkpoint loader alone (issue 24 item 21): every case below
is built so that only the guard under test can fire, and its one-line message is checked. (The other
guards' own tests are listed in the closing note of issue 24.)"""

from __future__ import annotations

import json

import pytest
import torch

from helpers_train import base_args, load_trainer, one_thread, small_run_data, tiny_snac  # noqa: F401
from snac import SNAC48
from snac.presets import TINY_24KHZ
from snac.train.checkpoint import save_checkpoint
from snac.train.codec import resolve_codec_config, run_codec_training
from snac.train.config import ConfigError

trainer = load_trainer()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return small_run_data(tmp_path_factory.mktemp("data"), [0.5, 0.6])


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# ---------------------------------------------------------------- decoder trainer
def test_decoder_refuses_a_codec_checkpoint(data, tmp_path, capsys):
    # a readable checkpoint with model + iteration (the loader accepts it) but of the other trainer
    save_checkpoint({"kind": "codec", "model": {}, "iteration": 1, "model_config": dict(TINY_24KHZ)},
                    tmp_path / "codec.pt")
    args = base_args(tmp_path, data["model"], data["train"], data["val"], tmp_path / "run", resume=tmp_path / "codec.pt")
    assert trainer.main(args) == 2
    assert "is not a checkpoint of finetune_decoder_48khz.py (a codec checkpoint)" in one_line(capsys)


def test_decoder_refuses_a_48khz_pretrained_model_at_another_target_rate(data, tmp_path, capsys):
    # the base (24 kHz) can reach 24 kHz, so only the pretrained model's own rate is wrong
    model48 = SNAC48.from_snac(tiny_snac())
    save_checkpoint({"model": model48.state_dict(), "iteration": 0, "model_config": model48.config},
                    tmp_path / "m48.pt")
    args = base_args(tmp_path, tmp_path / "m48.pt", data["train"], data["val"], tmp_path / "run",
                     target_sample_rate=24000)
    assert trainer.main(args) == 2
    assert "--pretrained_model decodes at 48000 Hz, not --target_sample_rate 24000" in one_line(capsys)


def test_decoder_refuses_fresh_with_resume(data, tmp_path, capsys):
    args = base_args(tmp_path, data["model"], data["train"], data["val"], tmp_path / "run", resume="auto", fresh=True)
    assert trainer.main(args) == 2
    assert "--fresh and --resume auto both given: drop one" in one_line(capsys)


@pytest.mark.parametrize("case, message", [
    ("garbage .pt", "is unreadable"),
    ("directory without config.json", "has no config.json"),
])
def test_decoder_refuses_an_unreadable_pretrained_model(data, tmp_path, capsys, case, message):
    if case == "garbage .pt":
        model = tmp_path / "m.pt"
        model.write_bytes(b"\x00not a checkpoint" * 20)
    else:
        model = tmp_path / "empty_model"
        model.mkdir()
    assert trainer.main(base_args(tmp_path, model, data["train"], data["val"], tmp_path / "run")) == 2
    err = one_line(capsys)
    assert f"--pretrained_model {model}" in err and message in err


def test_decoder_refuses_a_file_as_a_code_cache(data, tmp_path, capsys):
    (tmp_path / "codes").write_text("not a cache")
    args = base_args(tmp_path, data["model"], tmp_path / "codes", data["val"], tmp_path / "run")
    assert trainer.main(args) == 2
    assert "--train_codes" in (err := one_line(capsys)) and "is a file, not a directory" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer of a machine without CUDA")
def test_both_trainers_refuse_a_gpu_without_cuda(data, tmp_path, capsys):
    assert trainer.main(base_args(tmp_path, data["model"], data["train"], data["val"], tmp_path / "a", device="0")) == 2
    assert "asks for a GPU but CUDA is not available; pass --device cpu" in one_line(capsys)
    cfg = resolve_codec_config(["--audio_dir", str(tmp_path), "--output_dir", str(tmp_path / "b"), "--device", "0"])
    assert run_codec_training(cfg) == 2
    assert "asks for a GPU but CUDA is not available" in one_line(capsys)


# ---------------------------------------------------------------- codec trainer
@pytest.fixture
def audio(tmp_path):
    import numpy as np
    import soundfile as sf

    root = tmp_path / "audio"
    root.mkdir()
    sf.write(root / "a.wav", 0.3 * np.sin(np.arange(24000) / 10), 24000)
    return root


def codec_flags(audio, tmp_path, *extra: str) -> list[str]:
    return ["--audio_dir", str(audio), "--output_dir", str(tmp_path / "run"), "--device", "cpu", *extra]


def test_codec_refuses_a_decoder_checkpoint(audio, tmp_path, capsys):
    save_checkpoint({"model": {}, "iteration": 1, "model_config": dict(TINY_24KHZ),
                     "base_model_config": dict(TINY_24KHZ)}, tmp_path / "decoder.pt")
    cfg = resolve_codec_config(codec_flags(audio, tmp_path, "--model_config", "tiny_24khz",
                                           "--resume", str(tmp_path / "decoder.pt")))
    assert run_codec_training(cfg) == 2
    assert "is not a checkpoint of train_codec.py; resume it with its own trainer" in one_line(capsys)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content, message", [
    (None, "neither a preset"),
    ("[1, 2]", "must hold a JSON object of SNAC constructor arguments"),
    (json.dumps({"no_such_argument": 1}), "not a SNAC config"),
])
def test_codec_refuses_a_bad_model_config_before_any_work(audio, tmp_path, capsys, content, message):
    path = tmp_path / "config.json"
    if content is not None:
        path.write_text(content)
    cfg = resolve_codec_config(codec_flags(audio, tmp_path, "--model_config", str(path)))
    assert run_codec_training(cfg) == 2
    assert message in one_line(capsys)


def test_codec_refuses_an_unloadable_pretrained_model(audio, tmp_path, capsys):
    (tmp_path / "empty_model").mkdir()  # a directory without config.json
    cfg = resolve_codec_config(codec_flags(audio, tmp_path, "--pretrained_model", str(tmp_path / "empty_model")))
    assert run_codec_training(cfg) == 2
    err = one_line(capsys)
    assert "cannot load a SNAC" in err and "has no config.json" in err


@pytest.mark.parametrize("extra, message", [
    (["--fresh", "--resume", "auto"], "--fresh and --resume auto both given"),
    (["--max_steps", "-1"], "--max_steps must be >= 0"),
    (["--max_minutes", "0"], "--max_minutes must be > 0"),
    (["--batch_size", "0"], "--batch_size must be >= 1"),
    (["--segment_length", "0"], "--segment_length must be > 0 seconds"),
    (["--val_seconds", "0"], "--val_seconds must be > 0"),
    (["--learning_rate", "0"], "learning rates must be > 0"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--precision", "fp16"], "--precision must be bf16 or fp32"),
    (["--reseed_dead_codes", "-1"], "--reseed_dead_codes must be >= 0 steps"),
    (["--keep_last", "0"], "--log_every, --keep_last and --max_bad_steps must be >= 1"),
    (["--mpd_channels", "4,4"], "--mpd_channels needs 5 channel counts"),
])
def test_codec_flag_checks_each_alone(audio, tmp_path, extra, message):
    with pytest.raises(ConfigError) as e:
        resolve_codec_config(codec_flags(audio, tmp_path, *extra))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_codec_requires_audio_dir_and_output_dir(tmp_path):
    with pytest.raises(ConfigError, match="--audio_dir is required"):
        resolve_codec_config(["--output_dir", str(tmp_path)])
    with pytest.raises(ConfigError, match="--output_dir is required"):
        resolve_codec_config(["--audio_dir", str(tmp_path)])


def test_discriminators_of_another_recipe_are_refused_at_restore():
    from snac.train.adversarial import Adversary
    from snac.train.codec import CodecConfig
    from snac.train.distributed import DistInfo

    def adversary(**flags):
        cfg = CodecConfig(mpd_channels=[4] * 5, mrd_channels=4, **flags)
        return Adversary(cfg, DistInfo(), torch.device("cpu"), sample_rate=24000)

    saved = {"discriminator": adversary().state_dict()}
    with pytest.raises(ValueError, match="the checkpoint's discriminators .* differ from this run's"):
        adversary(multi_band=False).restore(saved, print)


@pytest.mark.parametrize("extra, message", [
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--batch_size", "0"], "--batch_size must be >= 1"),
    (["--learning_rate", "0"], "--learning_rate must be a positive number"),
    (["--onecycle_pct_start", "1"], "--onecycle_pct_start must be in (0, 1)"),
    (["--weight_decay", "-1"], "--weight_decay must be >= 0"),
    (["--l1_weight", "0", "--stft_weight", "0"], "must be >= 0 and not both 0"),
    (["--n_ffts", "4"], "--n_ffts must list FFT sizes >= 8"),
    (["--mel_weight", "-1"], "--mel_weight must be >= 0"),
    (["--disc_learning_rate", "0"], "--disc_learning_rate must be a positive number"),
    (["--disc_start_step", "-1"], "--disc_start_step must be >= 0"),
    (["--adversarial", "--no-multi_period", "--no-multi_band"], "--adversarial needs a discriminator"),
    (["--mrd_channels", "0"], "--mrd_channels (0) must be positive"),
    (["--grad_clip", "-1"], "--grad_clip must be >= 0"),
    (["--max_bad_steps", "0"], "--max_bad_steps must be >= 1"),
    (["--checkpoint_every", "-1"], "--checkpoint_every must be >= 0"),
    (["--checkpoint_minutes", "-1"], "--checkpoint_minutes must be >= 0"),
    (["--keep_last", "0"], "--keep_last must be >= 1"),
    (["--val_every", "0"], "--val_every must be >= 1"),
    (["--val_examples", "-1"], "--val_examples must be >= 0"),
    (["--log_every", "0"], "--log_every must be >= 1"),
    (["--limit", "0"], "--limit must be >= 1"),
    (["--max_steps", "0"], "--max_steps must be >= 1"),
    (["--max_minutes", "0"], "--max_minutes must be > 0"),
    (["--num_workers", "-1"], "--num_workers must be >= 0"),
    (["--target_sample_rate", "0"], "--target_sample_rate must be positive"),
    (["--head", "huge"], "--head must be one of full, lite, sinc"),
    (["--head_channels", "8"], "--head_channels 8: only for --head lite"),
])
def test_decoder_flag_checks_each_alone(extra, message):
    from snac.train.config import resolve_config

    with pytest.raises(ConfigError) as e:
        resolve_config(["--train_codes", "a", *extra])
    assert message in str(e.value) and "\n" not in str(e.value)
