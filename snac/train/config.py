"""The trainer's one config object: defaults, flags, JSON config files and validation.

Precedence: dataclass defaults < ``--config FILE.json`` < flags given on the command line.
Every option is a field of :class:`TrainConfig`, so every flag is also a valid JSON key and the
resolved config (``asdict``) is what goes into ``config.json`` and into every checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from ..compiling import BACKEND_HELP, check_backend
from ..model48 import HEAD_TYPES
from ..presets import DEFAULT_BASE


class ConfigError(ValueError):
    """A bad option; the message is one line that names the option and the fix."""


def _opt(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    # ---- inputs ----
    config: str | None = _opt(None, "JSON file whose keys are these flags; explicit flags win over it")
    pretrained_model: str = _opt(
        DEFAULT_BASE,
        "hub id, local model dir, or a .pt checkpoint of this script (its 24 kHz mode for a 48 kHz run)")
    train_codes: str | None = _opt(None, "code cache directory of the training set (required)")
    val_codes: str | None = _opt(None, "code cache directory of the validation set (none: no validation, "
                                       "no best_model.pt)")
    limit: int | None = _opt(None, "use only the first N rows of the train and of the val cache")
    # ---- hardware ----
    device: str | None = _opt(None, "GPU index or 'cpu' (default: 0 when CUDA exists, else cpu); under "
                                    "torchrun each rank uses its LOCAL_RANK GPU")
    num_workers: int = _opt(2, "DataLoader worker processes per rank (0 = load in the main process)")
    precision: str | None = _opt(None, "bf16 (autocast) or fp32 (default: bf16 on CUDA, fp32 on CPU)")
    compile: bool = _opt(False, "wrap the model in torch.compile (each graph compiled is logged and counted)")
    compile_backend: str = _opt("inductor", BACKEND_HELP)
    seed: int = _opt(1234, "seed of windows, shuffling, model noise: same seed -> same run")
    # ---- schedule ----
    target_sample_rate: int = _opt(48000, "48000: new x2 head (SNAC48); 24000: fine-tune the stock decoder")
    head: str = _opt("full", "the new head: 'full' (every output layer at the new rate), 'sinc' (the full head "
                             "with a fixed image-free upsampler) or 'lite' (the stock output layers at the base "
                             "rate, sinc-interpolated, + a narrow learned branch)")
    head_channels: int | None = _opt(None, "channels of the lite head's branch (default: min(16, the trunk's))")
    branch_lr_scale: float = _opt(30.0, "lite head: lr multiplier of the branch's output conv, in its own AdamW "
                                        "group (1: one lr for the whole head, as lite runs before it had)")
    batch_size: int = _opt(32, "windows per step per rank (scaled by a curriculum's batch_multiplier)")
    epochs: int = _opt(15, "passes over the training rows (one random window per row per epoch)")
    warmup_epochs: int = _opt(1, "first epochs train only the output head; must be < epochs")
    learning_rate: float = _opt(1e-5, "peak lr of the OneCycleLR that trains head + decoder after warmup")
    warmup_learning_rate: float = _opt(5e-5, "constant lr of the head during the warmup epochs")
    onecycle_pct_start: float = _opt(0.1, "fraction of the post-warmup steps spent rising to learning_rate")
    weight_decay: float = _opt(0.0, "AdamW weight decay")
    segment_length: float = _opt(4.0, "training window in seconds (rounded down to whole coarse tokens)")
    segment_schedule: list | None = _opt(
        None, 'curriculum: JSON list of {"epochs": [a, b], "length": s, "batch_multiplier": m}, epochs '
              '1-based inclusive; epochs it does not cover use --segment_length and --batch_size')
    val_segment_length: float = _opt(4.0, "fixed window of every validation item (seconds)")
    max_steps: int | None = _opt(None, "stop after this many iterations (smoke runs, benchmarks)")
    max_minutes: float | None = _opt(None, "stop after this many minutes of training in this process (saves "
                                           "latest.pt, exits 0; the LR curve is not shortened: a budget, not a plan)")
    # ---- loss ----
    l1_weight: float = _opt(1.0, "weight of the waveform L1 loss")
    stft_weight: float = _opt(1.0, "weight of the multi-scale STFT loss")
    n_ffts: list = _opt([1024, 2048, 4096, 8192], "FFT sizes of the multi-scale STFT loss (comma list)")
    grad_clip: float = _opt(0.0, "clip the gradient norm to this (0 = no clipping; the norm is logged)")
    max_bad_steps: int = _opt(20, "exit non-zero after this many non-finite steps in a row")
    mel_weight: float | None = _opt(None, "weight of DAC's multi-scale mel loss (default: 15 with "
                                          "--adversarial, else 0 = off; usable without --adversarial)")
    # ---- adversarial recipe (snac/train/adversarial.py); all ignored unless --adversarial ----
    adversarial: bool = _opt(False, "train against discriminators (multi-period + multi-band STFT) with "
                                    "LSGAN, feature-matching and mel losses (DAC's recipe)")
    adversarial_warmup: bool = _opt(False, "the warmup (head-only) epochs are adversarial too (default: the "
                                           "discriminators start with the unfreeze phase)")
    disc_start_step: int = _opt(0, "the first N adversarial iterations train the discriminators alone (the "
                                   "generator waits) so fresh discriminators catch up with the decoder")
    adv_weight: float = _opt(1.0, "weight of the generator's LSGAN adversarial loss")
    feat_weight: float = _opt(2.0, "weight of the feature-matching loss")
    disc_learning_rate: float = _opt(1e-4, "constant lr of the discriminators' AdamW (betas 0.8, 0.99)")
    multi_period: bool = _opt(True, "use the multi-period discriminator (periods 2, 3, 5, 7, 11)")
    multi_band: bool = _opt(True, "use the multi-band complex-STFT discriminator (FFT 2048, 1024, 512)")
    mpd_channels: list = _opt([32, 128, 512, 1024, 1024], "channels of the period discriminator's convs "
                                                          "(comma list; smaller for smoke tests)")
    mrd_channels: int = _opt(32, "channels of each band stack of the multi-band discriminator")
    # ---- checkpoints, validation, logs ----
    output_dir: str = _opt("runs/finetune_48khz", "run directory: logs, metrics, checkpoints")
    resume: str | None = _opt(None, "checkpoint path, or 'auto' = newest valid one in --output_dir "
                                    "(starts fresh when there is none)")
    fresh: bool = _opt(False, "start over in an --output_dir that holds only leftovers of a run (unreadable or "
                              "abandoned-* checkpoints, best_model.pt, model/): they are renamed abandoned-*; "
                              "refused where resumable checkpoints are")
    checkpoint_every: int = _opt(5000, "write checkpoint_iter{N}.pt every N iterations (0 = never)")
    checkpoint_minutes: float = _opt(30.0, "write latest.pt after this much wall time without a save (0 = never)")
    keep_last: int = _opt(3, "iteration checkpoints kept (older ones are deleted)")
    val_every: int | None = _opt(None, "validate every N iterations (default: each epoch end and each "
                                       "iteration checkpoint)")
    val_examples: int = _opt(3, "val items whose audio and spectrogram go to TensorBoard")
    log_every: int = _opt(50, "iterations per log line / metrics row / status update")

    # -------------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        if self.mel_weight is None:  # the sentinel: DAC's weight in the adversarial recipe, else off
            self.mel_weight = 15.0 if self.adversarial else 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def resolved_device(self) -> str:
        import torch

        if self.device is not None:
            return self.device
        return "0" if torch.cuda.is_available() else "cpu"


FIELD_NAMES = [f.name for f in fields(TrainConfig)]


INT_LISTS = ("n_ffts", "mpd_channels")  # comma lists on the command line, JSON lists in a file


def _parse_int_list(name: str, value: Any) -> list[int]:
    if isinstance(value, str):
        value = [v for v in value.replace(" ", "").split(",") if v]
    try:
        return [int(v) for v in value]
    except (TypeError, ValueError):
        raise ConfigError(f"--{name} must be a comma list of integers such as 1024,2048, got {value!r}")


def _parse_schedule(value: Any) -> list | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--segment_schedule is not valid JSON ({e.msg}); pass a list like "
                              '[{"epochs": [1, 2], "length": 1.0, "batch_multiplier": 4}]')
    return value


def _flag_type(f) -> Any:
    """argparse type of a field (the JSON path gets the same conversion through ``_coerce``)."""
    name = f.name
    if name in INT_LISTS:
        return str
    if name == "segment_schedule":
        return str
    default = f.default if f.default is not MISSING else None
    ann = str(f.type)
    if "int" in ann and "float" not in ann:
        return int
    if "float" in ann:
        return float
    if isinstance(default, bool):
        return bool
    return str


def help_default(help_text: str, default: Any) -> str:
    """' (default: X)' for --help, written as the flag takes it (a comma list for a list); nothing
    when the help already says it (a sentinel explained in words) or the flag is required."""
    if default is None or "(default:" in help_text or "(required)" in help_text:
        return ""
    if isinstance(default, list):
        default = ",".join(str(v) for v in default)
    return f" (default: {default})"


def build_parser(config_class: type = TrainConfig,
                 description: str = "Fine-tune a SNAC decoder at 48 kHz (or 24 kHz) from cached codes."
                 ) -> argparse.ArgumentParser:
    """argparse built from a config dataclass (TrainConfig, or the codec trainer's, whose fields
    follow the same conventions); defaults are SUPPRESSed so we know which flags were given."""
    parser = argparse.ArgumentParser(description=description, argument_default=argparse.SUPPRESS)
    for f in fields(config_class):
        default = f.default if f.default is not MISSING else f.default_factory()
        help_text = f.metadata["help"] + help_default(f.metadata["help"], default)
        if isinstance(default, bool):
            parser.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, help=help_text)
        else:
            parser.add_argument(f"--{f.name}", type=_flag_type(f), help=help_text)
    return parser


def _coerce(name: str, value: Any, config_class: type = TrainConfig) -> Any:
    """Convert a JSON or flag value to the field's type; one-line error on mismatch."""
    if name in INT_LISTS:
        return _parse_int_list(name, value)
    if name == "segment_schedule":
        return _parse_schedule(value)
    f = next(f for f in fields(config_class) if f.name == name)
    if value is None:
        return None
    kind = _flag_type(f)
    default = f.default
    try:
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise TypeError
            return value
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected {kind.__name__}, got {value!r}")


def load_config_file(path: str, config_class: type = TrainConfig) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file; pass an existing JSON file")
    except json.JSONDecodeError as e:
        raise ConfigError(f"--config {path} is not valid JSON (line {e.lineno}: {e.msg})")
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path} must hold a JSON object of flag names to values")
    unknown = sorted(set(data) - {f.name for f in fields(config_class)})
    if unknown:
        raise ConfigError(f"--config {path} has unknown key(s) {', '.join(unknown)}; "
                          f"valid keys are the flag names (see --help)")
    data.pop("config", None)  # a run's config.json records the file it came from: not followed
    return data


def resolve_config(argv: list[str] | None = None) -> TrainConfig:
    """defaults < --config JSON < explicit flags, then :func:`validate`."""
    return resolve_dataclass_config(argv, TrainConfig, build_parser(), validate)


def resolve_dataclass_config(argv: list[str] | None, config_class: type, parser: argparse.ArgumentParser,
                             check: Any) -> Any:
    """defaults < --config JSON < explicit flags for any config dataclass built like TrainConfig,
    then ``check(cfg)`` (raises ConfigError)."""
    explicit = vars(parser.parse_args(argv))
    values: dict[str, Any] = {}
    if explicit.get("config"):
        values.update(load_config_file(explicit["config"], config_class))
    values.update(explicit)
    cfg = config_class(**{k: _coerce(k, v, config_class) for k, v in values.items()})
    check(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    """Every value check in one place; raises ConfigError with a one-line message."""
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(msg)

    need(cfg.train_codes is not None, "--train_codes is required: a code cache directory made by "
                                      "cache_codes_multigpu.py")
    need(cfg.epochs >= 1, f"--epochs must be >= 1, got {cfg.epochs}")
    need(0 <= cfg.warmup_epochs < cfg.epochs,
         f"--warmup_epochs ({cfg.warmup_epochs}) must be >= 0 and < --epochs ({cfg.epochs}), so the "
         "decoder trains after the head; lower it or raise --epochs")
    need(cfg.batch_size >= 1, f"--batch_size must be >= 1, got {cfg.batch_size}")
    for name in ("learning_rate", "warmup_learning_rate", "segment_length", "val_segment_length", "branch_lr_scale"):
        value = getattr(cfg, name)
        need(math.isfinite(value) and value > 0, f"--{name} must be a positive number, got {value}")
    need(0 < cfg.onecycle_pct_start < 1, f"--onecycle_pct_start must be in (0, 1), got {cfg.onecycle_pct_start}")
    need(cfg.weight_decay >= 0, f"--weight_decay must be >= 0, got {cfg.weight_decay}")
    need(cfg.l1_weight >= 0 and cfg.stft_weight >= 0 and cfg.l1_weight + cfg.stft_weight > 0,
         f"--l1_weight ({cfg.l1_weight}) and --stft_weight ({cfg.stft_weight}) must be >= 0 and not both 0")
    need(len(cfg.n_ffts) > 0 and all(n >= 8 for n in cfg.n_ffts),
         f"--n_ffts must list FFT sizes >= 8, got {cfg.n_ffts}")
    for name in ("mel_weight", "adv_weight", "feat_weight"):
        value = getattr(cfg, name)
        need(math.isfinite(value) and value >= 0, f"--{name} must be >= 0, got {value}")
    need(math.isfinite(cfg.disc_learning_rate) and cfg.disc_learning_rate > 0,
         f"--disc_learning_rate must be a positive number, got {cfg.disc_learning_rate}")
    need(cfg.disc_start_step >= 0, f"--disc_start_step must be >= 0 (0 = adversarial from the first step), "
                                   f"got {cfg.disc_start_step}")
    need(not cfg.adversarial or cfg.multi_period or cfg.multi_band,
         "--adversarial needs a discriminator: drop --no-multi_period or --no-multi_band")
    need(len(cfg.mpd_channels) >= 1 and all(c >= 1 for c in cfg.mpd_channels) and cfg.mrd_channels >= 1,
         f"--mpd_channels ({cfg.mpd_channels}) and --mrd_channels ({cfg.mrd_channels}) must be positive")
    need(cfg.grad_clip >= 0, f"--grad_clip must be >= 0 (0 = off), got {cfg.grad_clip}")
    need(cfg.max_bad_steps >= 1, f"--max_bad_steps must be >= 1, got {cfg.max_bad_steps}")
    need(cfg.checkpoint_every >= 0, f"--checkpoint_every must be >= 0 (0 = off), got {cfg.checkpoint_every}")
    need(cfg.checkpoint_minutes >= 0, f"--checkpoint_minutes must be >= 0 (0 = off), got {cfg.checkpoint_minutes}")
    need(cfg.keep_last >= 1, f"--keep_last must be >= 1, got {cfg.keep_last}")
    need(cfg.val_every is None or cfg.val_every >= 1, f"--val_every must be >= 1, got {cfg.val_every}")
    need(cfg.val_examples >= 0, f"--val_examples must be >= 0, got {cfg.val_examples}")
    need(cfg.log_every >= 1, f"--log_every must be >= 1, got {cfg.log_every}")
    need(cfg.limit is None or cfg.limit >= 1, f"--limit must be >= 1, got {cfg.limit}")
    need(cfg.max_steps is None or cfg.max_steps >= 1, f"--max_steps must be >= 1, got {cfg.max_steps}")
    need(cfg.max_minutes is None or cfg.max_minutes > 0, f"--max_minutes must be > 0, got {cfg.max_minutes}")
    need(cfg.num_workers >= 0, f"--num_workers must be >= 0, got {cfg.num_workers}")
    need(cfg.target_sample_rate > 0, f"--target_sample_rate must be positive, got {cfg.target_sample_rate}")
    need(not (cfg.fresh and cfg.resume), f"--fresh and --resume {cfg.resume} both given: drop one")
    need(cfg.head in HEAD_TYPES, f"--head must be one of {', '.join(HEAD_TYPES)}, got {cfg.head!r}")
    need(cfg.head_channels is None or (cfg.head == "lite" and cfg.head_channels >= 1),
         f"--head_channels {cfg.head_channels}: only for --head lite, and >= 1")
    try:
        check_backend(cfg.compile_backend)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    need(cfg.precision in (None, "bf16", "fp32"), f"--precision must be bf16 or fp32, got {cfg.precision!r}")
    device = cfg.device
    need(device is None or device == "cpu" or device.isdigit(),
         f"--device must be a GPU index (0, 1, ...) or 'cpu', got {device!r}")
    validate_schedule(cfg.segment_schedule, cfg.epochs)


def validate_schedule(schedule: list | None, epochs: int) -> None:
    if schedule is None:
        return
    if not isinstance(schedule, list):
        raise ConfigError("--segment_schedule must be a JSON list of "
                          '{"epochs": [a, b], "length": s, "batch_multiplier": m}')
    covered: set[int] = set()
    for i, entry in enumerate(schedule):
        where = f"--segment_schedule entry {i}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be an object with keys epochs, length, batch_multiplier")
        unknown = sorted(set(entry) - {"epochs", "length", "batch_multiplier"})
        if unknown or "epochs" not in entry or "length" not in entry:
            raise ConfigError(f"{where} needs keys epochs and length (batch_multiplier optional); "
                              f"unknown: {unknown}")
        span = entry["epochs"]
        if (not isinstance(span, list) or len(span) != 2 or not all(isinstance(e, int) for e in span)
                or not 1 <= span[0] <= span[1]):
            raise ConfigError(f"{where}: epochs must be [first, last], 1-based inclusive with "
                              f"first <= last, got {span}")
        length, mult = entry["length"], entry.get("batch_multiplier", 1)
        if not isinstance(length, (int, float)) or length <= 0:
            raise ConfigError(f"{where}: length must be positive seconds, got {length!r}")
        if not isinstance(mult, (int, float)) or mult <= 0:
            raise ConfigError(f"{where}: batch_multiplier must be positive, got {mult!r}")
        epochs_here = set(range(span[0], span[1] + 1))
        if covered & epochs_here:
            raise ConfigError(f"{where}: epochs {sorted(covered & epochs_here)} are covered twice")
        covered |= epochs_here


def stages_beyond(schedule: list | None, epochs: int) -> list[str]:
    """The curriculum stages (or their parts) after the last epoch: the schedule is cut at
    --epochs (a shorter run of a config), and the log says what was cut."""
    cut = []
    for entry in schedule or []:
        first, last = entry["epochs"]
        if last > epochs:
            first = max(first, epochs + 1)
            cut.append(f"epochs {first}-{last} ({entry['length']:g} s, batch x{entry.get('batch_multiplier', 1):g})")
    return cut


def epoch_plan(cfg: TrainConfig, epoch: int) -> tuple[float, int]:
    """(segment seconds, batch size per rank) of 1-based ``epoch`` under the curriculum."""
    for entry in cfg.segment_schedule or []:
        first, last = entry["epochs"]
        if first <= epoch <= last:
            return float(entry["length"]), max(1, round(cfg.batch_size * entry.get("batch_multiplier", 1)))
    return cfg.segment_length, cfg.batch_size


def changed_settings(saved: dict, now: dict, keys) -> list[str]:
    """'key old -> new' for each of ``keys`` whose value in a checkpoint's saved config differs from
    the run's now (keys the saved config lacks are skipped: older checkpoints), sorted by key."""
    return [f"{k} {saved[k]} -> {now[k]}" for k in sorted(keys) if k in saved and k in now and saved[k] != now[k]]
