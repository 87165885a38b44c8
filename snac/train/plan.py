"""Pre-flight of a training run: every input checked and the curriculum laid out before model work.

Raises :class:`PreflightError` with one line naming the fix; ``build_model`` makes the model to train.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from .. import SNAC, SNAC48, load_model
from ..model48 import head_spec
from ..cache.format import validate_target_sample_rate, weights_fingerprint
from ..hub import resolve_pretrained
from .checkpoint import load_checkpoint
from .config import TrainConfig, epoch_plan
from .distributed import DistInfo
from .rundir import PreflightError, check_output_dir, check_resume_file, choose_resume
from .windows import WindowGeometry, WindowSampler


def read_base_config(spec: str) -> tuple[dict, dict | None]:
    """(base SNAC config, full model config if ``spec`` is already a 48 kHz model) without
    building a model: from a checkpoint's ``model_config``, a directory's or the hub's config.json."""
    path = Path(spec)
    if path.is_file():
        try:
            config = load_checkpoint(path, mmap=True)["model_config"]
        except (ValueError, KeyError) as e:
            raise PreflightError(f"--pretrained_model {spec}: {e}") from e
    else:
        try:
            config, _ = resolve_pretrained(spec)
        except RuntimeError as e:  # the hub is unreachable: name the flag that takes a local copy
            raise PreflightError(f"--pretrained_model {spec}: {e} (--pretrained_model takes a local model "
                                 "directory or a .pt checkpoint)") from e
        except (OSError, ValueError) as e:
            raise PreflightError(f"--pretrained_model {spec}: {e}") from e
    base = dict(config["base"]) if "base" in config else dict(config)
    if base.get("latent_dim") is None:  # hub configs leave it implicit
        base["latent_dim"] = base["encoder_dim"] * 2 ** len(base["encoder_rates"])
    return base, (config if "base" in config else None)


def looks_local(spec: str) -> bool:
    """A --pretrained_model that names a local path (a hub id is exactly 'owner/name')."""
    return (Path(spec).exists() or spec.endswith(".pt") or spec.startswith((".", "/", "~"))
            or spec.count("/") != 1)


def check_local_paths(cfg: TrainConfig) -> None:
    """Every local path flag before any network access: a typo is reported at once, not after
    the hub download of the default --pretrained_model has timed out."""
    for flag, value in (("--train_codes", cfg.train_codes), ("--val_codes", cfg.val_codes)):
        if value is not None and not Path(value).is_dir():
            what = "is a file, not a directory" if Path(value).exists() else "does not exist"
            raise PreflightError(f"{flag} {value} {what}; pass a code cache directory made by "
                                 "cache_codes_multigpu.py")
    if looks_local(cfg.pretrained_model) and not Path(cfg.pretrained_model).exists():
        raise PreflightError(f"--pretrained_model {cfg.pretrained_model} does not exist; pass a model directory, "
                             "a .pt checkpoint or a hub id owner/name")
    check_output_dir(cfg.output_dir)


def open_cache(directory: str | None, flag: str, base_config: dict, limit: int | None):
    from snac.cache import CodeCache  # the cache reader (cache_codes_multigpu.py writes the caches)

    if directory is None:
        return None, None
    try:
        cache = CodeCache(directory, expected_model_config=base_config)
    except (ValueError, OSError) as e:
        raise PreflightError(f"{flag} {directory}: {e}") from e
    rows = len(cache) if limit is None else min(limit, len(cache))
    return cache, np.asarray(cache.num_coarse[:rows], dtype=np.int64)


@dataclass
class RunPlan:
    """Everything decided before model work: inputs checked, curriculum laid out."""

    base_config: dict
    pretrained_config: dict | None  # set when --pretrained_model is already a 48 kHz model
    resume_path: Path | None
    resume_state: dict | None
    train_cache: Any
    train_coarse: np.ndarray  # (rows,) coarse tokens per training row (after --limit)
    val_cache: Any
    val_coarse: np.ndarray | None
    geometry: WindowGeometry
    val_geometry: WindowGeometry | None
    epochs: list[dict] = field(default_factory=list)  # per epoch: seconds, tokens, batch, steps, phase
    base_model: Any = None  # the --pretrained_model SNAC, loaded once by pre-flight (fresh runs only)
    base_fingerprint: str | None = None  # weights_fingerprint of the base (recorded in checkpoints)
    resume_notes: list[str] = field(default_factory=list)  # unreadable checkpoints --resume auto skipped
    leftovers: list[Path] = field(default_factory=list)  # what --fresh sets aside (rundir.leftovers)


def phase_of(cfg: TrainConfig, epoch: int) -> str:
    """1-based epoch -> 'warmup' (head only) or 'unfreeze' (head + decoder)."""
    return "warmup" if epoch <= cfg.warmup_epochs else "unfreeze"


def preflight(cfg: TrainConfig, dist_info: DistInfo) -> RunPlan:
    """Check every input and lay out the curriculum; raises PreflightError (one line)."""
    check_local_paths(cfg)
    out = Path(cfg.output_dir)
    # ---- what to resume from (read only: nothing in the run directory changes before the lock)
    resume_path, resume_notes, leftover = choose_resume(out, cfg.resume, cfg.fresh, out / "model")
    resume_state = check_resume_file(str(resume_path)) if resume_path is not None else None
    if resume_state is not None:
        check_decoder_checkpoint(cfg, resume_path, resume_state)
    # ---- the model the codes come from
    try:
        base_config, pretrained_config = read_base_config(cfg.pretrained_model)
    except PreflightError:
        if resume_state is None:
            raise
        base_config, pretrained_config = None, None  # e.g. offline: the checkpoint carries the model
    if resume_state is not None:
        ckpt_base = dict(resume_state["base_model_config"])
        if base_config is not None and ckpt_base != base_config:
            raise PreflightError(f"checkpoint {resume_path} was trained from another base model than "
                                 f"--pretrained_model {cfg.pretrained_model}; use that model or a new "
                                 "--output_dir")
        ckpt_rate = resume_state["model_config"].get("target_sample_rate", ckpt_base["sampling_rate"])
        if ckpt_rate != cfg.target_sample_rate:
            raise PreflightError(f"checkpoint {resume_path} decodes at {ckpt_rate} Hz but "
                                 f"--target_sample_rate is {cfg.target_sample_rate}; match them or use "
                                 "a new --output_dir")
        base_config = ckpt_base
    try:  # the cache applies the same rule, with the same message, at cache time
        validate_target_sample_rate(cfg.target_sample_rate, base_config["sampling_rate"])
    except ValueError as e:
        raise PreflightError(str(e)) from e
    if pretrained_config is not None and pretrained_config["target_sample_rate"] != cfg.target_sample_rate:
        raise PreflightError(f"--pretrained_model decodes at {pretrained_config['target_sample_rate']} Hz, "
                             f"not --target_sample_rate {cfg.target_sample_rate}")
    # ---- caches and window geometry
    train_cache, train_coarse = open_cache(cfg.train_codes, "--train_codes", base_config, cfg.limit)
    val_cache, val_coarse = open_cache(cfg.val_codes, "--val_codes", base_config, cfg.limit)
    try:
        geometry = WindowGeometry.from_configs(base_config, train_cache.target_sample_rate,
                                               cfg.target_sample_rate)
        val_geometry = None if val_cache is None else WindowGeometry.from_configs(
            base_config, val_cache.target_sample_rate, cfg.target_sample_rate)
    except ValueError as e:
        raise PreflightError(str(e)) from e
    # ---- curriculum: window length, batch, steps and phase of every epoch
    if len(train_coarse) < dist_info.world_size:
        raise PreflightError(f"--train_codes has {len(train_coarse)} rows, fewer than the "
                             f"{dist_info.world_size} ranks; use more data or fewer processes")
    longest = int(train_coarse.max())
    sampler = WindowSampler(train_coarse, cfg.seed, dist_info.rank, dist_info.world_size)
    epochs = []
    for epoch in range(1, cfg.epochs + 1):
        seconds, batch = epoch_plan(cfg, epoch)
        tokens = geometry.tokens_for_seconds(seconds)
        if tokens > longest:
            raise PreflightError(f"segment of {seconds:g} s (epoch {epoch}) is longer than every training "
                                 f"utterance (longest {geometry.seconds(longest):.2f} s); lower "
                                 "--segment_length / --segment_schedule")
        epochs.append({"epoch": epoch, "seconds": geometry.seconds(tokens), "tokens": tokens,
                       "batch": batch, "steps": sampler.batches_in_epoch(batch), "phase": phase_of(cfg, epoch)})
    # ---- the caches' codes must come from the weights the decoder is trained on (loads the
    # base once, so after every cheaper check)
    base_model, fingerprint = None, None
    if resume_state is not None:
        fingerprint = resume_state.get("base_weights_fingerprint")  # absent in older checkpoints
    elif pretrained_config is None:  # a plain SNAC: load it once here (build_model reuses it)
        base_model = load_model(cfg.pretrained_model)
        fingerprint = weights_fingerprint(base_model)
    check_cache_weights([(f, c) for f, c in (("--train_codes", train_cache), ("--val_codes", val_cache))
                         if c is not None], fingerprint, cfg.pretrained_model)
    return RunPlan(base_config, pretrained_config, resume_path, resume_state, train_cache, train_coarse,
                   val_cache, val_coarse, geometry, val_geometry, epochs, base_model, fingerprint,
                   resume_notes, leftover)


def check_decoder_checkpoint(cfg: TrainConfig, path: Path, state: dict) -> None:
    """A checkpoint this trainer can continue as asked: one of its own, with the head --head names
    (the model is rebuilt from the checkpoint, so another --head would be recorded but not trained)."""
    if "base_model_config" not in state or state.get("kind") is not None:
        raise PreflightError(f"--resume {path} is not a checkpoint of finetune_decoder_48khz.py (a "
                             f"{state.get('kind', 'foreign')} checkpoint); resume it with its own trainer")
    model_config = state["model_config"]
    if "base" not in model_config:
        return  # the stock decoder at its own rate: no head
    head = model_config.get("head") or {}
    kind, width = head.get("type", "full"), head.get("branch_channels")
    if kind != cfg.head or (kind == "lite" and cfg.head_channels not in (None, width)):
        has = f"--head {kind}" + (f" --head_channels {width}" if kind == "lite" else "")
        raise PreflightError(f"checkpoint {path} trains {has}, not --head {cfg.head}"
                             + (f" --head_channels {cfg.head_channels}" if cfg.head_channels else "")
                             + f": the head cannot change at resume; pass {has} or use a new --output_dir")


def check_cache_weights(caches: list[tuple[str, Any]], fingerprint: str | None, model: str) -> None:
    """Refuse a cache whose recorded weights fingerprint differs from the base model's (same
    config, other weights: codes the decoder was never meant to read). Caches or checkpoints from
    before fingerprints were recorded are not checked."""
    for flag, cache in caches:
        recorded = cache.manifest.get("weights_fingerprint")
        if fingerprint and recorded and recorded != fingerprint:
            raise PreflightError(f"{flag} {cache.cache_dir} was made with other weights than "
                                 f"--pretrained_model {model} (fingerprint {recorded[:16]}... in the cache vs "
                                 f"{fingerprint[:16]}...); train with the model that made the cache or re-make "
                                 "it with cache_codes_multigpu.py --pretrained_model <this model> --overwrite")


def build_model(cfg: TrainConfig, plan: RunPlan) -> nn.Module:
    """SNAC48 (new head on the base) for a higher target rate, or the SNAC itself at its own rate.
    (Pre-flight already refused a 48 kHz --pretrained_model whose rate is not --target_sample_rate.)"""
    if plan.resume_state is not None:
        model_config = plan.resume_state["model_config"]
        return SNAC48.from_config_dict(model_config) if "base" in model_config else SNAC(**model_config)
    loaded = plan.base_model if plan.base_model is not None else load_model(cfg.pretrained_model)
    plan.base_model = None  # handed over: the run keeps no second copy (the encoder) alive
    if isinstance(loaded, SNAC48) or cfg.target_sample_rate == plan.base_config["sampling_rate"]:
        return loaded  # continue fine-tuning a 48 kHz model, or the stock decoder at its own rate
    return SNAC48.from_snac(loaded, cfg.target_sample_rate, head_spec(cfg.head, cfg.head_channels))


def total_iterations(cfg: TrainConfig, plan: RunPlan) -> int:
    total = sum(e["steps"] for e in plan.epochs)
    return min(total, cfg.max_steps) if cfg.max_steps else total

