"""Config precedence (defaults < --config JSON < flags), refusals, the curriculum."""

import json

import pytest

from helpers_train import one_thread  # noqa: F401
from snac.train.config import (FIELD_NAMES, ConfigError, TrainConfig, build_parser, epoch_plan,
                               resolve_config, stages_beyond)


def test_flags_beat_the_json_file_which_beats_the_defaults(tmp_path):
    cfg_file = tmp_path / "c.json"
    cfg_file.write_text(json.dumps({"train_codes": "a", "batch_size": 8, "learning_rate": 3e-5,
                                    "n_ffts": [512, 1024], "compile": True}))
    cfg = resolve_config(["--config", str(cfg_file), "--batch_size", "16", "--no-compile"])
    assert cfg.batch_size == 16  # flag wins
    assert cfg.learning_rate == 3e-5 and cfg.n_ffts == [512, 1024]  # from the file
    assert cfg.compile is False  # an explicit --no-compile wins too
    assert cfg.epochs == TrainConfig.epochs and cfg.warmup_learning_rate == 5e-5  # defaults
    assert cfg.to_dict()["config"] == str(cfg_file)
    assert resolve_config(["--train_codes", "a", "--n_ffts", "64, 128"]).n_ffts == [64, 128]


def test_every_flag_is_a_config_key_and_the_resolved_config_round_trips(tmp_path):
    parser_flags = {a.dest for a in build_parser()._actions if a.dest != "help"}
    assert parser_flags == set(FIELD_NAMES)
    cfg = resolve_config(["--train_codes", "x", "--segment_schedule",
                          '[{"epochs": [1, 1], "length": 1.0, "batch_multiplier": 4}]'])
    # a run directory's config.json (what the trainer writes) is itself a valid --config
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    again = resolve_config(["--config", str(tmp_path / "config.json")])
    assert {**again.to_dict(), "config": None} == cfg.to_dict()


@pytest.mark.parametrize("content,message", [
    ({"train_codes": "a", "batch_sise": 4}, "unknown key(s) batch_sise"),
    ({"train_codes": "a", "epochs": 2, "warmup_epochs": 2}, "--warmup_epochs (2) must be >= 0 and < --epochs (2)"),
    ({"train_codes": "a", "segment_schedule": [{"epochs": [1, 2], "length": 1}, {"epochs": [2, 3], "length": 2}]},
     "covered twice"),
    ({"train_codes": "a", "segment_schedule": [{"epochs": [0, 2], "length": 1}]}, "1-based inclusive"),
    ({"train_codes": "a", "batch_size": "many"}, "batch_size: expected int"),
    ({"train_codes": "a", "precision": "fp16"}, "--precision must be bf16 or fp32"),
    ({}, "--train_codes is required"),
    ({"train_codes": "a", "n_ffts": "1024,big"}, "--n_ffts must be a comma list of integers"),
    ({"train_codes": "a", "n_ffts": [1024, 4]}, "--n_ffts must list FFT sizes >= 8"),
    ({"train_codes": "a", "segment_schedule": "[{"}, "--segment_schedule is not valid JSON"),
    ({"train_codes": "a", "segment_schedule": {"epochs": [1, 2]}}, "--segment_schedule must be a JSON list"),
    ({"train_codes": "a", "segment_schedule": [[1, 2]]}, "entry 0 must be an object"),
    ({"train_codes": "a", "segment_schedule": [{"epochs": [1, 2]}]}, "entry 0 needs keys epochs and length"),
    ({"train_codes": "a", "segment_schedule": [{"epochs": [2, 1], "length": 1}]}, "first <= last"),
    ({"train_codes": "a", "segment_schedule": [{"epochs": [1, 2], "length": -1}]}, "length must be positive"),
    ({"train_codes": "a", "segment_schedule": [{"epochs": [1, 2], "length": 1, "batch_multiplier": 0}]},
     "batch_multiplier must be positive"),
])
def test_bad_values_fail_with_one_line(tmp_path, content, message):
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(content))
    with pytest.raises(ConfigError) as e:
        resolve_config(["--config", str(f)])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_curriculum_sets_length_and_batch_per_epoch():
    cfg = resolve_config(["--train_codes", "a", "--epochs", "6", "--batch_size", "8", "--segment_schedule",
                          '[{"epochs": [1, 2], "length": 1.0, "batch_multiplier": 4},'
                          ' {"epochs": [3, 4], "length": 2.0, "batch_multiplier": 2}]'])
    assert [epoch_plan(cfg, e) for e in range(1, 7)] == [(1.0, 32), (1.0, 32), (2.0, 16), (2.0, 16),
                                                        (4.0, 8), (4.0, 8)]


def test_shipped_configs_resolve_to_their_own_values():
    """Each shipped config resolves to exactly what its file says, the defaults elsewhere, and
    its curriculum covers every epoch."""
    from helpers_train import REPO

    paths = sorted((REPO / "configs").glob("*.json"))
    assert {p.name for p in paths} >= {"finetune_48khz.json", "finetune_24khz.json", "tiny_cpu.json"}
    defaults = TrainConfig(train_codes="x").to_dict()
    for path in paths:
        written = json.loads(path.read_text())
        resolved = resolve_config(["--config", str(path), "--train_codes", "x"]).to_dict()
        expected = {**defaults, **written, "train_codes": "x", "config": str(path)}
        assert resolved == expected, path.name
        cfg = resolve_config(["--config", str(path), "--train_codes", "x"])
        plans = [epoch_plan(cfg, e) for e in range(1, cfg.epochs + 1)]
        assert all(length > 0 and batch >= cfg.batch_size for length, batch in plans), path.name
    assert resolve_config(["--config", str(REPO / "configs" / "finetune_48khz.json"),
                           "--train_codes", "x"]).target_sample_rate == 48000


@pytest.mark.parametrize("content", ["[1, 2]", '"text"', "3"])
def test_a_config_file_that_is_not_a_json_object_is_one_line(tmp_path, content):
    f = tmp_path / "c.json"
    f.write_text(content)
    with pytest.raises(ConfigError, match="must hold a JSON object of flag names to values"):
        resolve_config(["--config", str(f)])


def test_epochs_shorter_than_the_schedule_cut_it_and_name_what_was_cut():
    # the shipped 48 kHz config's schedule runs to epoch 15; --epochs 2 was refused before
    from helpers_train import REPO

    cfg = resolve_config(["--config", str(REPO / "configs" / "finetune_48khz.json"), "--train_codes", "x",
                          "--epochs", "2"])
    first = cfg.segment_schedule[0]
    assert cfg.epochs == 2 and epoch_plan(cfg, 1) == (first["length"], 32 * first["batch_multiplier"])
    cut = stages_beyond([{"epochs": [1, 2], "length": 1.0, "batch_multiplier": 4},
                         {"epochs": [3, 6], "length": 2.0}], 2)
    assert cut == ["epochs 3-6 (2 s, batch x1)"]
    assert stages_beyond([{"epochs": [1, 4], "length": 1.0}], 2) == ["epochs 3-4 (1 s, batch x1)"]
    assert stages_beyond([{"epochs": [1, 2], "length": 1.0}], 2) == []


def test_help_shows_each_default_once_as_the_flag_takes_it(capsys):
    from snac.train.config import build_parser

    text = " ".join(build_parser().format_help().split())  # argparse wraps lines
    assert "(required) (default" not in text and "(default: None)" not in text
    device = text.index("--device DEVICE GPU")  # the help entry, not the usage line
    assert text.count("(default:", device, text.index("--num_workers NUM_WORKERS DataLoader")) == 1
    assert "(default: 1024,2048,4096,8192)" in text
