#!/usr/bin/env python
"""Fine-tune a SNAC decoder to decode the published codes at 48 kHz (or the stock 24 kHz decoder).

    uv run python finetune_decoder_48khz.py --config configs/finetune_48khz.json \
        --train_codes cache/train --val_codes cache/val --output_dir runs/snac48
    torchrun --nproc_per_node=4 finetune_decoder_48khz.py ...same flags...   # DDP, one GPU per rank
    ... --resume auto      # continue from the newest valid checkpoint in --output_dir (or start fresh)

Every flag is a key of the optional --config JSON (explicit flags win); `--help` lists them.
The run directory gets config.json, training.log, metrics.jsonl, status.json, TensorBoard events
and checkpoints (checkpoint_iter{N}.pt, checkpoint_epoch{E}.pt, latest.pt, best_model.pt).
SIGTERM / SIGINT finish the current step, save latest.pt and exit 0; a second signal exits at once.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from snac import SNAC, SNAC48, load_model
from snac.train.checkpoint import (clean_stale_temps, find_latest_checkpoint, load_checkpoint, maybe_fault,
                             link_atomic, rng_state, rotate_checkpoints, save_checkpoint, set_aside_newer,
                             set_rng_state)
from snac.train.windows import (WindowDataset, WindowGeometry, WindowSampler, batched, collate_windows,
                       validation_items)
from snac.train.distributed import (DistInfo, agree_any, all_reduce_sum, barrier, cleanup, gather_objects,
                              setup_dist)
from snac.fileio import write_json_atomic
from snac.hub import resolve_pretrained
from snac.train.losses import reconstruction_loss
from snac.train.config import ConfigError, TrainConfig, epoch_plan, resolve_config

EXIT_BAD_INPUT, EXIT_FAILED, EXIT_BAD_STEPS = 2, 1, 3


class PreflightError(ValueError):
    """Bad input found before any model work; the message is one line naming the fix."""


# ============================================================================ pre-flight
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
        except (OSError, ValueError, RuntimeError) as e:
            raise PreflightError(f"--pretrained_model {spec}: {e}") from e
    base = dict(config["base"]) if "base" in config else dict(config)
    if base.get("latent_dim") is None:  # hub configs leave it implicit
        base["latent_dim"] = base["encoder_dim"] * 2 ** len(base["encoder_rates"])
    return base, (config if "base" in config else None)


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


def phase_of(cfg: TrainConfig, epoch: int) -> str:
    """1-based epoch -> 'warmup' (head only) or 'unfreeze' (head + decoder)."""
    return "warmup" if epoch <= cfg.warmup_epochs else "unfreeze"


def preflight(cfg: TrainConfig, dist_info: DistInfo) -> RunPlan:
    """Check every input and lay out the curriculum; raises PreflightError (one line)."""
    out = Path(cfg.output_dir)
    # ---- what to resume from
    resume_path, resume_state = None, None
    if cfg.resume == "auto":
        resume_path = find_latest_checkpoint(out)
    elif cfg.resume:
        resume_path = Path(cfg.resume)
    if resume_path is not None:
        try:
            resume_state = load_checkpoint(resume_path, mmap=True)
        except ValueError as e:
            raise PreflightError(f"--resume: {e}") from e
    elif cfg.resume is None and find_latest_checkpoint(out) is not None:
        raise PreflightError(f"{out} already holds checkpoints; pass --resume auto to continue that run "
                             "or choose a new --output_dir")
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
    base_rate = base_config["sampling_rate"]
    if cfg.target_sample_rate != base_rate and (cfg.target_sample_rate % base_rate
                                                or cfg.target_sample_rate < 2 * base_rate):
        raise PreflightError(f"--target_sample_rate {cfg.target_sample_rate} must equal the base rate "
                             f"{base_rate} or be a multiple of it (>= 2x)")
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
    if val_cache is not None:
        val_tokens = val_geometry.tokens_for_seconds(cfg.val_segment_length)
        if val_tokens > int(val_coarse.max()):
            raise PreflightError(f"--val_segment_length {cfg.val_segment_length:g} s is longer than every "
                                 f"val utterance (longest {val_geometry.seconds(int(val_coarse.max())):.2f} s); "
                                 "lower it")
    return RunPlan(base_config, pretrained_config, resume_path, resume_state, train_cache, train_coarse,
                   val_cache, val_coarse, geometry, val_geometry, epochs)


# ============================================================================ model and phases
class DecodeOnly(nn.Module):
    """forward(codes) = model.decode(codes): what DDP / torch.compile wrap (SNAC.forward encodes)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, codes: list[torch.Tensor]) -> torch.Tensor:
        return self.model.decode(codes)


def build_model(cfg: TrainConfig, plan: RunPlan) -> nn.Module:
    """SNAC48 (new head on the base) for a higher target rate, or the SNAC itself at its own rate."""
    if plan.resume_state is not None:
        model_config = plan.resume_state["model_config"]
        model = SNAC48.from_config_dict(model_config) if "base" in model_config else SNAC(**model_config)
        return model  # weights come from the checkpoint
    loaded = load_model(cfg.pretrained_model)
    if cfg.target_sample_rate == plan.base_config["sampling_rate"]:
        if not isinstance(loaded, SNAC):
            raise PreflightError("--target_sample_rate equals the base rate (stock decoder mode) but "
                                 "--pretrained_model is a 48 kHz model; pass a base SNAC model")
        return loaded
    if isinstance(loaded, SNAC48):
        return loaded  # continue fine-tuning a 48 kHz model
    return SNAC48.from_snac(loaded, cfg.target_sample_rate)


def set_phase(model: nn.Module, phase: str) -> dict:
    """Freeze/unfreeze by the model's parameter groups; returns the 'frozen' record of a checkpoint.

    VQ (and a SNAC's encoder) always frozen; 'warmup' trains the head; 'unfreeze' head + decoder.
    """
    groups = model.parameter_groups()
    trained = ["head"] if phase == "warmup" else ["head", "decoder"]
    for p in model.parameters():
        p.requires_grad_(False)
    for name in trained:
        for p in groups[name]:
            p.requires_grad_(True)
    frozen = [g for g in groups if g not in trained]
    return {"phase": phase, "trained_groups": trained, "frozen_groups": frozen,
            "trainable_params": sum(p.numel() for g in trained for p in groups[g]),
            "frozen_params": sum(p.numel() for g in frozen for p in groups[g])}


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """One AdamW with two groups (head, decoder): the head's moments survive the phase switch.
    Params without a gradient (the decoder during warmup) are skipped by AdamW."""
    groups = model.parameter_groups()
    return torch.optim.AdamW([{"params": groups["head"], "lr": cfg.warmup_learning_rate, "name": "head"},
                              {"params": groups["decoder"], "lr": cfg.learning_rate, "name": "decoder"}],
                             weight_decay=cfg.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    """OneCycleLR over every post-warmup step of the whole remaining curriculum."""
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.learning_rate,
                                               total_steps=max(1, total_steps),
                                               pct_start=cfg.onecycle_pct_start, cycle_momentum=False)


def restore_optimizer(optimizer: torch.optim.Optimizer, resume: dict, cfg: TrainConfig, plan: "RunPlan",
                      sampler: WindowSampler, unfreeze_steps: int, same_world: bool):
    """Load optimizer (+ OneCycleLR in the unfreeze phase) state; returns the scheduler or None.

    With another world size the steps per epoch change; the rest of the LR curve is then fitted
    onto the steps now remaining, so it still ends exactly at the last step. In the same world
    the planned total is kept (bit-exact resume) unless the plan changed under the run (batch size,
    curriculum, --limit, epochs): the total then grows to the steps done + the steps now left, so
    OneCycleLR never steps past its end (it raises there)."""
    scheduler = None
    if resume["phase"] == "unfreeze":
        remaining = 0
        if sampler.epoch < cfg.epochs:
            e = plan.epochs[sampler.epoch]
            sampler.configure(e["tokens"], e["batch"], plan.geometry.token_multiple)
            remaining = ((sampler.batches_left() if e["phase"] == "unfreeze" else 0)
                         + sum(x["steps"] for x in plan.epochs[sampler.epoch + 1:] if x["phase"] == "unfreeze"))
        needed = int(resume["scheduler"]["last_epoch"]) + remaining
        total = max(unfreeze_steps, needed) if same_world else needed
        scheduler = make_scheduler(optimizer, cfg, total)
        fitted = scheduler.state_dict()
    # after building the scheduler (which rewrites the lr): the saved lr comes back
    optimizer.load_state_dict(resume["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict({**resume["scheduler"], "total_steps": fitted["total_steps"],
                                   "_schedule_phases": fitted["_schedule_phases"]})
    return scheduler


def wrap_for_steps(model: nn.Module, cfg: TrainConfig, dist_info: DistInfo, device: torch.device) -> nn.Module:
    """DecodeOnly -> DDP (multi-process) -> torch.compile (optional). Rebuilt at the phase switch,
    because DDP fixes its set of trained parameters when it is built."""
    step_model: nn.Module = DecodeOnly(model)
    if dist_info.enabled:
        step_model = nn.parallel.DistributedDataParallel(
            step_model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        step_model = torch.compile(step_model)
    return step_model


def make_loaders(cfg: TrainConfig, plan: RunPlan, sampler: WindowSampler, dist_info: DistInfo,
                 device: torch.device):
    """(train loader driven by ``sampler``, val loader over this rank's fixed val windows or None)."""
    common = dict(collate_fn=collate_windows, pin_memory=device.type == "cuda",
                  worker_init_fn=_ignore_sigint_in_worker if cfg.num_workers else None,
                  generator=torch.Generator())  # never touches the global RNG (exact resume)
    loader = torch.utils.data.DataLoader(WindowDataset(plan.train_cache, plan.geometry), batch_sampler=sampler,
                                         num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0,
                                         **common)
    if plan.val_cache is None:
        return loader, None
    val_tokens = plan.val_geometry.tokens_for_seconds(cfg.val_segment_length)
    items = validation_items(plan.val_coarse, val_tokens, plan.val_geometry.token_multiple,
                             dist_info.rank, dist_info.world_size)
    val_loader = torch.utils.data.DataLoader(WindowDataset(plan.val_cache, plan.val_geometry),
                                             batch_sampler=batched(items, cfg.batch_size),
                                             num_workers=min(cfg.num_workers, 2), **common)
    return loader, val_loader


# ============================================================================ steps
def to_device(batch: dict, device: torch.device) -> dict:
    nb = device.type == "cuda"
    return {"codes": [c.to(device, non_blocking=nb) for c in batch["codes"]],
            "audio": batch["audio"].to(device, non_blocking=nb), "mask": batch["mask"].to(device, non_blocking=nb)}


def train_step(step_model: nn.Module, batch: dict, cfg: TrainConfig, params: list[nn.Parameter],
               autocast: Callable) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Forward, loss, backward, grad norm (+ clipping). The optimizer step is the caller's, once
    every rank agreed the step is finite. Returns ({'loss/...', 'grad_norm'} as 0-dim tensors,
    finite flag tensor): no host sync here, so the GPU keeps running ahead."""
    with autocast():
        pred = step_model(batch["codes"])  # (B, 1, T_out)
    losses = reconstruction_loss(pred, batch["audio"], batch["mask"], cfg.n_ffts,
                                 cfg.l1_weight, cfg.stft_weight)  # fp32
    losses["loss/total"].backward()
    if cfg.grad_clip > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    else:
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    finite = torch.isfinite(losses["loss/total"]) & torch.isfinite(grad_norm)
    metrics = {k: v.detach() for k, v in losses.items()}
    metrics["grad_norm"] = grad_norm.detach()
    return metrics, finite


@torch.no_grad()
def run_validation(model: nn.Module, loader, device: torch.device, cfg: TrainConfig, autocast: Callable,
                   examples: int) -> tuple[dict, list[dict]]:
    """Full val set (this rank's share), losses averaged per item and all-reduced. The noise is
    seeded (and the training RNG restored after), so every validation sees the same noise."""
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # total, l1, stft, items
    kept: list[dict] = []
    devices = [device.index] if device.type == "cuda" else []
    was_training = model.training
    model.eval()  # no mode-dependent layer today (noise is drawn in both modes); keeps it honest
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(cfg.seed)
        for batch in loader:
            b = to_device(batch, device)
            with autocast():
                pred = model.decode(b["codes"])
            per_item = reconstruction_loss(pred, b["audio"], b["mask"], cfg.n_ffts, cfg.l1_weight,
                                           cfg.stft_weight, reduce=False)
            sums[0] += per_item["loss/total"].double().sum()
            sums[1] += per_item["loss/l1"].double().sum()
            sums[2] += per_item["loss/stft"].double().sum()
            sums[3] += len(per_item["loss/total"])
            for i in range(min(examples - len(kept), len(pred))):
                valid = int(b["mask"][i].sum())
                kept.append({"row": int(batch["rows"][i]), "target": b["audio"][i, 0, :valid].float().cpu(),
                             "pred": pred[i, 0, :valid].float().cpu()})
    model.train(was_training)
    all_reduce_sum(sums)
    n = max(sums[3].item(), 1.0)
    return {"loss/total": sums[0].item() / n, "loss/l1": sums[1].item() / n,
            "loss/stft": sums[2].item() / n, "items": int(sums[3].item())}, kept


# ============================================================================ run directory I/O
def json_safe(row: dict) -> dict:
    """NaN/inf -> None, so every line stays strict JSON (jq, JSON.parse)."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


class RunLog:
    """training.log (append), stdout, metrics.jsonl, TensorBoard and status.json; rank 0 only."""

    def __init__(self, out: Path | None, purge_step: int | None):
        self.out = out
        self.status: dict = {}
        self.writer = None
        self.targets_logged = False
        if out is None:
            return
        self.log_file = open(out / "training.log", "a", buffering=1)
        self.metrics_file = open(out / "metrics.jsonl", "a", buffering=1)
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(out), purge_step=purge_step)

    def line(self, text: str) -> None:
        if self.out is None:
            return
        text = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}"
        print(text, flush=True)
        self.log_file.write(text + "\n")
        self.log_file.flush()

    def metrics(self, row: dict) -> None:
        if self.out is None:
            return
        self.metrics_file.write(json.dumps(json_safe(row)) + "\n")
        self.metrics_file.flush()
        prefix = row["type"]
        for k, v in row.items() if prefix in ("train", "val") else ():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("iteration", "time"):
                self.writer.add_scalar(f"{prefix}/{k}", v, row["iteration"])

    def update_status(self, **values: Any) -> None:
        if self.out is None:
            return
        self.status.update(json_safe(values), update_time=time.time())
        write_json_atomic(self.out / "status.json", self.status)

    def examples(self, kept: list[dict], rate: int, iteration: int) -> None:
        """Audio of a few val items and their spectrograms (targets once per process)."""
        if self.out is None or not kept:
            return
        with_targets, self.targets_logged = not self.targets_logged, True
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        for i, ex in enumerate(kept):
            self.writer.add_audio(f"val/pred_{i}", ex["pred"].clamp(-1, 1)[None], iteration, rate)
            if with_targets:
                self.writer.add_audio(f"val/target_{i}", ex["target"].clamp(-1, 1)[None], iteration, rate)
            fig, axes = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
            for ax, (name, x) in zip(axes, (("target", ex["target"]), ("prediction", ex["pred"]))):
                n_fft = 1024 if len(x) >= 1024 else 2 ** int(math.log2(max(len(x), 16)))
                spec = torch.stft(x, n_fft, n_fft // 4, window=torch.hann_window(n_fft),
                                  return_complex=True, pad_mode="constant").abs()
                ax.imshow((20 * torch.log10(spec + 1e-5)).numpy(), origin="lower", aspect="auto",
                          extent=(0, len(x) / rate, 0, rate / 2000), vmin=-100, vmax=20)
                ax.set_ylabel(f"{name}\nkHz")
            axes[-1].set_xlabel("s")
            self.writer.add_figure(f"val/spectrogram_{i}", fig, iteration)
            plt.close(fig)
        self.writer.flush()

    def close(self) -> None:
        if self.out is None:
            return
        self.writer.close()
        self.log_file.close()
        self.metrics_file.close()


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


# ============================================================================ signals
class StopFlag:
    """First SIGTERM/SIGINT: finish the step, save, exit 0. Second: exit at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}

    def install(self) -> None:
        for s in (signal.SIGTERM, signal.SIGINT):
            self.previous[s] = signal.signal(s, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            os._exit(128 + signum)
        self.signum = signum

    def restore(self) -> None:
        for s, h in self.previous.items():
            signal.signal(s, h)


def _ignore_sigint_in_worker(_: int) -> None:
    # Ctrl-C reaches the whole process group; workers must not die before the main process saves
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# ============================================================================ the training run
def train(cfg: TrainConfig, clock: Callable[[], float] = time.monotonic) -> int:
    """The whole run; returns the exit status. ``clock`` is injectable so tests can move time."""
    # ---------------------------------------------------------------- setup
    try:
        dist_info, device = setup_dist(cfg.resolved_device())
    except RuntimeError as e:  # no CUDA / no such GPU
        print(f"error: {e}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    main = dist_info.is_main
    out = Path(cfg.output_dir)
    try:
        plan = preflight(cfg, dist_info)
    except PreflightError as e:
        if main:
            print(f"error: {e}", file=sys.stderr, flush=True)
        cleanup()
        return EXIT_BAD_INPUT
    if main:
        out.mkdir(parents=True, exist_ok=True)
        for p in clean_stale_temps(out):
            print(f"removed stale temporary file {p.name} (left by a crash during a save)", flush=True)
        if plan.resume_state is not None:
            for old, new in set_aside_newer(out, int(plan.resume_state["iteration"])):
                print(f"resuming an older checkpoint: renamed {old.name} (a later iteration) to {new.name}",
                      flush=True)
    barrier()
    precision = cfg.precision or ("bf16" if device.type == "cuda" else "fp32")

    def autocast():
        if precision == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return nullcontext()

    resume = plan.resume_state
    log = RunLog(out if main else None, purge_step=int(resume["iteration"]) + 1 if resume else None)
    stop = StopFlag()
    stop.install()
    try:
        if main:
            write_json_atomic(out / "config.json", cfg.to_dict())
            log.update_status(state="running", pid=os.getpid(), device=describe_device(device, dist_info),
                              start_time=time.time(), epoch=None, epochs=cfg.epochs, iteration=None,
                              total_iterations=total_iterations(cfg, plan), phase=None, train_loss=None,
                              val_loss=None, best_val_loss=None, samples_per_s=None, eta_s=None,
                              latest_checkpoint=None, error=None)
        result = _train_loop(cfg, plan, dist_info, device, autocast, log, stop, clock)
        return {"finished": 0, "stopped": 0, "bad_steps": EXIT_BAD_STEPS}[result]
    except PreflightError as e:
        log.line(f"error: {e}")
        log.update_status(state="failed", error=str(e))
        return EXIT_BAD_INPUT
    except Exception as e:
        traceback.print_exc()
        log.line(f"error: {type(e).__name__}: {e}")
        log.update_status(state="failed", error=f"{type(e).__name__}: {e}")
        return EXIT_FAILED
    finally:
        stop.restore()
        log.close()
        cleanup()


def describe_device(device: torch.device, dist_info: DistInfo) -> str:
    name = "cpu" if device.type == "cpu" else f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{name} x{dist_info.world_size}" if dist_info.enabled else name


def total_iterations(cfg: TrainConfig, plan: RunPlan) -> int:
    total = sum(e["steps"] for e in plan.epochs)
    return min(total, cfg.max_steps) if cfg.max_steps else total


def _train_loop(cfg: TrainConfig, plan: RunPlan, dist_info: DistInfo, device: torch.device,
                autocast: Callable, log: RunLog, stop: StopFlag, clock: Callable[[], float]) -> str:
    main = dist_info.is_main
    out = Path(cfg.output_dir)
    resume = plan.resume_state

    # ---------------------------------------------------------------- model, optimizer, data
    torch.manual_seed(cfg.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
    model = build_model(cfg, plan).to(device).train()
    optimizer = make_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=False)  # bf16/fp32 need no loss scaling
    unfreeze_steps = sum(e["steps"] for e in plan.epochs if e["phase"] == "unfreeze")
    sampler = WindowSampler(plan.train_coarse, cfg.seed, dist_info.rank, dist_info.world_size)
    loader, val_loader = make_loaders(cfg, plan, sampler, dist_info, device)

    # ---------------------------------------------------------------- state (fresh or resumed)
    iteration, phase, scheduler = 0, None, None
    best_val, last_val, bad_in_row, bad_total = math.inf, None, 0, 0
    if resume is not None:
        resume = load_checkpoint(plan.resume_path, map_location="cpu")  # full read (pre-flight mmapped)
        model.load_state_dict(resume["model"])
        phase = resume["phase"]
        set_phase(model, phase)
        iteration = int(resume["iteration"])
        best_val = resume["best_val_loss"] if resume["best_val_loss"] is not None else math.inf
        last_val = resume.get("val_loss")
        bad_in_row, bad_total = int(resume.get("bad_steps", 0)), int(resume.get("bad_steps_total", 0))
        try:
            sampler.load_state_dict(resume["data_state"])
        except ValueError as e:
            log.line(f"warning: {e}; restarting epoch {resume['data_state']['epoch'] + 1} from its first batch")
            sampler.start_epoch(int(resume["data_state"]["epoch"]))
        scheduler = restore_optimizer(optimizer, resume, cfg, plan, sampler, unfreeze_steps,
                                      same_world=resume.get("world_size", 1) == dist_info.world_size)
        scaler.load_state_dict(resume["scaler"])
        per_rank = resume.get("rng_per_rank") or [resume["rng"]]
        if len(per_rank) == dist_info.world_size:
            set_rng_state(per_rank[dist_info.rank])
        else:  # another world size: ranks cannot take over each other's streams; reseed by position
            torch.manual_seed(cfg.seed + 7919 * iteration + dist_info.rank)
            np.random.seed((cfg.seed + iteration + dist_info.rank) % 2**32)
        log.metrics({"type": "resume", "iteration": iteration, "epoch": sampler.epoch + 1, "phase": phase,
                     "checkpoint": str(plan.resume_path), "time": time.time()})  # rows after it supersede
        changed = {k for k, v in resume["config"].items()
                   if k in TRAJECTORY_KEYS and cfg.to_dict().get(k) != v}
        log.line(f"resumed from {plan.resume_path} at iteration {iteration} (epoch {sampler.epoch + 1}, "
                 f"{sampler.consumed} items in; phase {phase}; best val {fmt(best_val)})"
                 + (f"; world size {resume.get('world_size', 1)} -> {dist_info.world_size}"
                    if resume.get("world_size", 1) != dist_info.world_size else "")
                 + (f"; changed settings: {', '.join(sorted(changed))}" if changed else ""))
        del resume
    else:
        if cfg.resume == "auto":
            log.line(f"no checkpoint in {out}: starting fresh")
        torch.manual_seed(cfg.seed + dist_info.rank)  # model noise differs between ranks
        np.random.seed((cfg.seed + dist_info.rank) % 2**32)
    total = total_iterations(cfg, plan)
    groups = model.parameter_groups()
    log.line(f"model {type(model).__name__} at {cfg.target_sample_rate} Hz: head {count(groups['head'])}, "
             f"decoder {count(groups['decoder'])}, frozen {count(groups['frozen'])} parameters; "
             f"{len(plan.train_coarse)} train rows, {0 if plan.val_coarse is None else len(plan.val_coarse)} "
             f"val rows; {total} iterations over {cfg.epochs} epochs; world size {dist_info.world_size}")

    # ---------------------------------------------------------------- checkpoint helpers
    last_save_time = clock()
    last_saved_iteration = iteration if plan.resume_path is not None else -1
    frozen_info: dict = {}
    epoch_info: dict = {}

    def checkpoint_state() -> dict:
        rngs = gather_objects(rng_state())  # collective: every rank reaches every save together
        return {
            "model": model.state_dict(), "model_config": model.config, "base_model_config": plan.base_config,
            "config": cfg.to_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else {},
            "scaler": scaler.state_dict(), "epoch": epoch_info["epoch"], "iteration": iteration,
            "phase": phase, "frozen": frozen_info, "segment_length": epoch_info["seconds"],
            "window_tokens": epoch_info["tokens"], "batch_size": epoch_info["batch"],
            "world_size": dist_info.world_size, "rng": rngs[0], "rng_per_rank": rngs,
            "data_state": sampler.state_dict(), "best_val_loss": None if math.isinf(best_val) else best_val,
            "val_loss": last_val, "bad_steps": bad_in_row, "bad_steps_total": bad_total, "time": time.time(),
        }

    def save(names: list[str], state: dict | None = None) -> dict:
        """Write the first name, hard-link (atomically) the others, latest.pt always among them."""
        nonlocal last_save_time, last_saved_iteration
        state = state if state is not None else checkpoint_state()
        if main:
            first = save_checkpoint(state, out / names[0])
            for name in names[1:]:
                link_atomic(first, out / name)
            if any(n.startswith("checkpoint_iter") for n in names):
                rotate_checkpoints(out, cfg.keep_last)
            log.line(f"saved {', '.join(names)} (iteration {iteration})")
            log.update_status(latest_checkpoint=str(out / "latest.pt"))
        last_save_time, last_saved_iteration = clock(), iteration
        return state

    last_val_iteration = -1

    def validate_and_maybe_best(current_iteration: int) -> None:
        nonlocal best_val, last_val, last_val_iteration
        if val_loader is None or last_val_iteration == current_iteration:
            return
        last_val_iteration = current_iteration
        t0 = clock()
        val, kept = run_validation(model, val_loader, device, cfg, autocast, cfg.val_examples if main else 0)
        last_val = val["loss/total"]
        improved = math.isfinite(last_val) and last_val < best_val
        if improved:
            best_val = last_val
        log.line(f"val it {current_iteration} ep {epoch_info['epoch']}/{cfg.epochs} | loss {last_val:.4f} "
                 f"l1 {val['loss/l1']:.4f} stft {val['loss/stft']:.4f} | {val['items']} items "
                 f"{clock() - t0:.1f}s | best {fmt(best_val)}{' (new best)' if improved else ''}")
        log.metrics({"type": "val", "iteration": current_iteration, "epoch": epoch_info["epoch"],
                     "phase": phase, **{k: v for k, v in val.items() if k.startswith("loss/")},
                     "lr": optimizer.param_groups[0]["lr"], "samples_per_s": None, "audio_s_per_s": None,
                     "eta_s": None, "best_val_loss": None if math.isinf(best_val) else best_val,
                     "items": val["items"], "val_s": clock() - t0, "time": time.time()})
        log.examples(kept, cfg.target_sample_rate, current_iteration)
        log.update_status(val_loss=last_val, best_val_loss=None if math.isinf(best_val) else best_val)
        if improved:  # latest.pt too: a stop right after this save must still leave it current
            save(["best_model.pt", "latest.pt"])

    # ---------------------------------------------------------------- the loop
    loop_start, loop_start_iteration = clock(), iteration
    window_start_time, window_samples, window_audio_s, window_steps = clock(), 0, 0.0, 0
    result = "finished"
    step_model = None
    def reached_max_steps() -> bool:
        return cfg.max_steps is not None and iteration >= cfg.max_steps

    while sampler.epoch < cfg.epochs and result == "finished" and not reached_max_steps():
        epoch_info = plan.epochs[sampler.epoch]
        epoch = epoch_info["epoch"]
        sampler.configure(epoch_info["tokens"], epoch_info["batch"], plan.geometry.token_multiple)
        # ---- phase switch (at an epoch boundary, or re-entering a resumed phase)
        if epoch_info["phase"] != phase or step_model is None:
            if epoch_info["phase"] != phase:
                if phase is not None:
                    log.line(f"phase switch at iteration {iteration}: {phase} -> {epoch_info['phase']}")
                phase = epoch_info["phase"]
                optimizer.zero_grad(set_to_none=True)
                if phase == "unfreeze":
                    scheduler = make_scheduler(optimizer, cfg, unfreeze_steps)
            frozen_info = set_phase(model, phase)
            step_model = wrap_for_steps(model, cfg, dist_info, device)
            params = [p for p in model.parameters() if p.requires_grad]
        epoch_done = sampler.consumed >= len(plan.train_coarse)
        if not epoch_done:
            log.line(f"epoch {epoch}/{cfg.epochs} ({phase}): window {epoch_info['seconds']:.3f} s "
                     f"({epoch_info['tokens']} coarse tokens), batch {epoch_info['batch']} x "
                     f"{dist_info.world_size}, {sampler.batches_left()} of {epoch_info['steps']} steps left")
        for batch in (loader if not epoch_done else []):
            # ---- one step (all ranks agree on skipping it and on stopping/saving after it)
            metrics, finite = train_step(step_model, to_device(batch, device), cfg, params, autocast)
            # the timer is read on rank 0 only (clocks differ); the signal on any rank stops all
            timer_due = main and cfg.checkpoint_minutes > 0 and clock() - last_save_time >= cfg.checkpoint_minutes * 60
            host_flags = torch.tensor([float(stop.signum is not None), float(timer_due)])
            flags = torch.cat([(~finite).float().reshape(1), host_flags.to(device, non_blocking=True)])
            bad, stop_now, timer_due = agree_any(flags)  # the step's one host sync
            lr = optimizer.param_groups[0]["lr"]  # the lr this step uses
            if bad:
                optimizer.zero_grad(set_to_none=True)
                bad_in_row, bad_total = bad_in_row + 1, bad_total + 1
            else:
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                bad_in_row = 0
            iteration += 1
            maybe_fault("step", iteration)
            epoch_done = sampler.advance()
            items = len(batch["rows"]) * dist_info.world_size
            window_samples += items
            window_audio_s += items * epoch_info["seconds"]
            window_steps += 1
            if bad:
                log.line(f"non-finite loss or gradient at iteration {iteration}: step skipped "
                         f"({bad_in_row} in a row, {bad_total} in total)")
                if bad_in_row >= cfg.max_bad_steps:
                    msg = (f"{bad_in_row} non-finite steps in a row (--max_bad_steps {cfg.max_bad_steps}): "
                           f"stopping without saving; the last good checkpoint is kept. Lower the learning "
                           f"rate or set --grad_clip")
                    log.line(f"error: {msg}")
                    log.update_status(state="failed", error=msg, iteration=iteration)
                    return "bad_steps"
            # ---- log line, metrics.jsonl, TensorBoard, status.json
            if iteration % cfg.log_every == 0:
                metrics = {k: v.item() for k, v in metrics.items()}
                now = clock()
                elapsed = max(now - window_start_time, 1e-9)
                per_iter = (now - loop_start) / max(iteration - loop_start_iteration, 1)
                eta = max(total - iteration, 0) * per_iter
                row = {"type": "train", "iteration": iteration, "epoch": epoch, "phase": phase, **metrics,
                       "lr": lr, "samples_per_s": window_samples / elapsed,
                       "audio_s_per_s": window_audio_s / elapsed, "step_s": elapsed / window_steps,
                       "eta_s": eta, "bad_steps": bad_total, "time": time.time()}
                log.line(f"it {iteration}/{total} ep {epoch}/{cfg.epochs} {phase} | loss {metrics['loss/total']:.4f} "
                         f"l1 {metrics['loss/l1']:.4f} stft {metrics['loss/stft']:.4f} | grad {metrics['grad_norm']:.3g} "
                         f"| lr {lr:.3g} | {row['samples_per_s']:.1f} samples/s {row['audio_s_per_s']:.1f} audio-s/s "
                         f"| {row['step_s'] * 1000:.0f} ms/step | eta {format_duration(eta)}")
                log.metrics(row)
                log.update_status(state="running", epoch=epoch, iteration=iteration, phase=phase,
                                  train_loss=metrics["loss/total"], samples_per_s=row["samples_per_s"], eta_s=eta)
                window_start_time, window_samples, window_audio_s, window_steps = now, 0, 0.0, 0
            # ---- validation and checkpoints of this step
            iter_ckpt = cfg.checkpoint_every > 0 and iteration % cfg.checkpoint_every == 0
            if (cfg.val_every is None and iter_ckpt) or (cfg.val_every and iteration % cfg.val_every == 0):
                validate_and_maybe_best(iteration)
            if iter_ckpt:
                save([f"checkpoint_iter{iteration}.pt", "latest.pt"])
            elif timer_due:
                save(["latest.pt"])
            if stop_now:
                result = "stopped"
                break
            if reached_max_steps():
                break
        # ---- end of epoch
        if epoch_done:
            if cfg.val_every is None:
                validate_and_maybe_best(iteration)
            sampler.start_epoch(sampler.epoch + 1)
            save([f"checkpoint_epoch{epoch}.pt", "latest.pt"])
            log.line(f"epoch {epoch}/{cfg.epochs} done at iteration {iteration}")

    # ---------------------------------------------------------------- exit
    if result == "stopped":
        log.line(f"signal {signal.Signals(stop.signum).name} received: saving and exiting")
    if last_saved_iteration != iteration:
        save(["latest.pt"])
    state = "stopped" if result == "stopped" else "finished"
    log.line(f"{state} at iteration {iteration} (epoch {min(sampler.epoch + 1, cfg.epochs)}/{cfg.epochs}); "
             f"best val {fmt(best_val)}")
    log.update_status(state=state, iteration=iteration, epoch=epoch_info.get("epoch"), phase=phase,
                      best_val_loss=None if math.isinf(best_val) else best_val)
    return result


TRAJECTORY_KEYS = {"seed", "batch_size", "epochs", "warmup_epochs", "learning_rate", "warmup_learning_rate",
                   "segment_length", "segment_schedule", "l1_weight", "stft_weight", "n_ffts", "limit",
                   "onecycle_pct_start", "weight_decay", "grad_clip", "train_codes", "precision"}


def count(params: list[nn.Parameter]) -> str:
    n = sum(p.numel() for p in params)
    return f"{n / 1e6:.2f}M" if n >= 1e5 else str(n)


def fmt(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isinf(x)) else f"{x:.4f}"


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = resolve_config(argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return train(cfg)


if __name__ == "__main__":
    sys.exit(main())
