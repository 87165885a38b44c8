"""The training loop, top to bottom: epoch -> phase -> step -> maybe log -> maybe validate -> maybe save.

Plain functions with explicit arguments. The training state is one :class:`TrainState` (what a
checkpoint restores); the loop's own bookkeeping (when it last saved or validated, the log window)
is :class:`Bookkeeping` and :class:`Throughput`, which a resumed run starts afresh.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..compiling import CompileCounter
from .adversarial import Adversary
from .checkpoint import link_atomic, load_checkpoint, maybe_fault, rotate_checkpoints, save_checkpoint
from .config import TrainConfig, changed_settings, stages_beyond
from .distributed import DistInfo, StopFlag, agree_any
from .log import RunLog, Throughput, count, fmt, format_duration
from .phases import make_optimizer, make_scheduler, parameter_groups, set_phase
from .plan import RunPlan, build_model, total_iterations
from .rundir import best_val_on_disk
from .state import TrainState, seed_fresh_run
from .step import make_loaders, run_validation, to_device, train_step, wrap_for_steps
from .windows import WindowSampler

# options that define the validation loss: a resume that changed them restarts the best val loss
VALIDATION_KEYS = ("val_codes", "val_segment_length", "n_ffts", "l1_weight", "stft_weight")
# options that change the training trajectory: a resume that changed them says so in the log
TRAJECTORY_KEYS = {"seed", "batch_size", "epochs", "warmup_epochs", "learning_rate", "warmup_learning_rate",
                   "segment_length", "segment_schedule", "l1_weight", "stft_weight", "n_ffts", "limit",
                   "onecycle_pct_start", "weight_decay", "grad_clip", "train_codes", "precision",
                   "mel_weight", "adversarial", "adversarial_warmup", "disc_start_step", "adv_weight",
                   "feat_weight", "disc_learning_rate", "multi_period", "multi_band", "mpd_channels",
                   "mrd_channels", "branch_lr_scale"}
# scalars of the adversarial recipe (or of --mel_weight) shown in the log line when a step has them
EXTRA_TERMS = (("loss/mel", "mel"), ("loss/adv", "adv"), ("loss/feat", "feat"))
DISC_TERMS = (("disc/loss", "loss"), ("disc/real", "real"), ("disc/fake", "fake"))


@dataclass(frozen=True)
class Run:
    """The fixed parts of a run: options, plan, process, device, where it logs, the val loader."""

    cfg: TrainConfig
    plan: RunPlan
    dist_info: DistInfo
    device: torch.device
    autocast: Callable
    log: RunLog
    clock: Callable[[], float]
    val_loader: Any
    unfreeze_steps: int  # the LR curve's length in a fresh run: every step of the unfreeze epochs
    compiler: CompileCounter | None = None  # --compile: counts (and logs) every graph compiled

    @property
    def out(self) -> Path:
        return Path(self.cfg.output_dir)


@dataclass
class Bookkeeping:
    """When the loop last saved and validated (the timer save and 'validate once per iteration')."""

    last_save_time: float
    last_saved_iteration: int
    last_val_iteration: int = -1
    start_time: float = 0.0  # when this process began training (--max_minutes counts from here)


def train_loop(cfg: TrainConfig, plan: RunPlan, dist_info: DistInfo, device: torch.device,
               autocast: Callable, log: RunLog, stop: StopFlag, clock: Callable[[], float]) -> str:
    """Train to the end of the plan (or --max_steps, or a signal); returns 'finished', 'stopped'
    or 'bad_steps'."""
    # ---- model, optimizer, data
    torch.manual_seed(cfg.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
    model = build_model(cfg, plan).to(device).train()
    adversary = Adversary(cfg, dist_info, device) if cfg.adversarial else None  # drawn from the same seed
    sampler = WindowSampler(plan.train_coarse, cfg.seed, dist_info.rank, dist_info.world_size)
    loader, val_loader = make_loaders(cfg, plan, sampler, dist_info, device, log.line)
    state = TrainState(model, make_optimizer(model, cfg),
                       torch.amp.GradScaler(device.type, enabled=False),  # bf16/fp32 need no loss scaling
                       sampler, adversary=adversary)
    run = Run(cfg, plan, dist_info, device, autocast, log, clock, val_loader,
              unfreeze_steps=sum(e["steps"] for e in plan.epochs if e["phase"] == "unfreeze"),
              compiler=CompileCounter("train step", cfg.compile_backend, log.line) if cfg.compile else None)

    # ---- state: fresh or resumed
    if plan.resume_state is not None:
        ckpt = load_checkpoint(plan.resume_path, map_location="cpu")  # full read (pre-flight mmapped)
        state.load_state_dict(ckpt, cfg, plan, dist_info, warn=log.line)
        log_resume(run, state, ckpt)
        reset_best_if_validation_changed(run, state, ckpt)
        keep_best_of_best_model(run, state)
        del ckpt
    else:
        if cfg.resume == "auto":
            log.line(f"no checkpoint in {run.out}: starting fresh")
        seed_fresh_run(cfg, dist_info.rank)
    log_model(run, state)
    book = Bookkeeping(clock(), state.iteration if plan.resume_path is not None else -1, start_time=clock())
    meter = Throughput(clock, state.iteration)

    # ---- epochs
    result, step_model, params, epoch_info, out_of_time = "finished", None, [], {}, False
    while (state.sampler.epoch < cfg.epochs and result == "finished" and not out_of_time
           and not reached_max_steps(cfg, state)):
        epoch_info = plan.epochs[state.sampler.epoch]
        state.sampler.configure(epoch_info["tokens"], epoch_info["batch"], plan.geometry.token_multiple)
        if epoch_info["phase"] != state.phase or step_model is None:
            step_model, params = enter_phase(run, state, epoch_info["phase"])
            meter.restart_pace(state.iteration)
        epoch_done = state.sampler.consumed >= len(plan.train_coarse)
        if not epoch_done:
            log.line(f"epoch {epoch_info['epoch']}/{cfg.epochs} ({state.phase}): window {epoch_info['seconds']:.3f} s "
                     f"({epoch_info['tokens']} coarse tokens), batch {epoch_info['batch']} x "
                     f"{dist_info.world_size}, {state.sampler.batches_left()} of {epoch_info['steps']} steps left")
        for batch in (loader if not epoch_done else []):
            # ---- one step; all ranks agree on skipping it and on stopping/saving after it
            if adversary is not None and adversary.active(state.phase):
                metrics, finite = adversary.train_step(step_model, to_device(batch, device), cfg, params, autocast)
            else:
                metrics, finite = train_step(step_model, to_device(batch, device), cfg, params, autocast)
            bad, stop_now, timer_due, out_of_time = agree_on_step(run, book, stop, finite)
            lr = state.optimizer.param_groups[0]["lr"]  # the lr this step uses
            apply_update(state, bad)
            state.iteration += 1
            maybe_fault("step", state.iteration)
            epoch_done = state.sampler.advance()
            meter.add(len(batch["rows"]) * dist_info.world_size, epoch_info["seconds"])
            if bad and too_many_bad_steps(run, state):
                return "bad_steps"
            # ---- maybe log, maybe validate, maybe checkpoint
            if state.iteration % cfg.log_every == 0:
                log_step(run, state, meter, metrics, lr, epoch_info)
            iter_ckpt = cfg.checkpoint_every > 0 and state.iteration % cfg.checkpoint_every == 0
            # never validate after a stop signal: save first, while there is time (item: a full
            # validation could outlast the grace period of a SIGTERM)
            if not stop_now and ((cfg.val_every is None and iter_ckpt)
                                 or (cfg.val_every and state.iteration % cfg.val_every == 0)):
                validate(run, state, book, epoch_info)
            if iter_ckpt:
                save(run, state, book, epoch_info, [f"checkpoint_iter{state.iteration}.pt", "latest.pt"])
            elif timer_due:
                save(run, state, book, epoch_info, ["latest.pt"])
            if stop_now:
                result = "stopped"
                break
            if out_of_time:
                log.line(f"time limit reached (--max_minutes {cfg.max_minutes:g}) at iteration {state.iteration}")
                break
            if reached_max_steps(cfg, state):
                break
        # ---- end of epoch
        if epoch_done:
            if cfg.val_every is None and result != "stopped":
                validate(run, state, book, epoch_info)
            state.sampler.start_epoch(state.sampler.epoch + 1)
            save(run, state, book, epoch_info, [f"checkpoint_epoch{epoch_info['epoch']}.pt", "latest.pt"])
            log.line(f"epoch {epoch_info['epoch']}/{cfg.epochs} done at iteration {state.iteration}")

    # ---- exit
    if result == "stopped":
        log.line(f"signal {signal.Signals(stop.signum).name} received: saving and exiting")
    if book.last_saved_iteration != state.iteration:
        save(run, state, book, epoch_info, ["latest.pt"])  # first: a stop's grace period may end soon
    if epoch_info:
        validate_at_exit(run, state, book, epoch_info)
    final = "stopped" if result == "stopped" else "finished"
    # the epoch of the last step trained: the log line and status.json name the same one
    epoch = epoch_info.get("epoch", min(state.sampler.epoch + 1, cfg.epochs))
    if run.compiler is not None:
        log.line(f"{run.compiler.summary()} in this process")
    log.line(f"{final} at iteration {state.iteration} (epoch {epoch}/{cfg.epochs}); best val {fmt(state.best_val)}")
    log.update_status(state=final, iteration=state.iteration, epoch=epoch, phase=state.phase,
                      best_val_loss=None if math.isinf(state.best_val) else state.best_val)
    return result


# ============================================================================ the loop's steps
def reached_max_steps(cfg: TrainConfig, state: TrainState) -> bool:
    return cfg.max_steps is not None and state.iteration >= cfg.max_steps


def enter_phase(run: Run, state: TrainState, phase: str) -> tuple[torch.nn.Module, list]:
    """Switch to ``phase`` at an epoch boundary (or re-enter a resumed one): freeze/unfreeze, a
    fresh OneCycleLR when the decoder starts training, and a new DDP wrap (DDP fixes its set of
    trained parameters when it is built). Returns (step model, trained parameters)."""
    if phase != state.phase:
        if state.phase is not None:
            run.log.line(f"phase switch at iteration {state.iteration}: {state.phase} -> {phase}")
        state.phase = phase
        state.optimizer.zero_grad(set_to_none=True)
        if phase == "unfreeze":
            state.scheduler = make_scheduler(state.optimizer, run.cfg, run.unfreeze_steps)
    set_phase(state.model, phase)
    step_model = wrap_for_steps(state.model, run.cfg, run.dist_info, run.device, run.compiler)
    return step_model, [p for p in state.model.parameters() if p.requires_grad]


def agree_on_step(run: Run, book: Bookkeeping, stop: StopFlag, finite: torch.Tensor) -> list[bool]:
    """[skip this step (non-finite anywhere), stop after it (a signal anywhere), timer save due,
    --max_minutes used up]: the step's one host sync. The clocks are read on rank 0 only (clocks
    differ between hosts)."""
    cfg = run.cfg
    now = run.clock()
    timer_due = (run.dist_info.is_main and cfg.checkpoint_minutes > 0
                 and now - book.last_save_time >= cfg.checkpoint_minutes * 60)
    out_of_time = (run.dist_info.is_main and cfg.max_minutes is not None
                   and now - book.start_time >= cfg.max_minutes * 60)
    host_flags = torch.tensor([float(stop.signum is not None), float(timer_due), float(out_of_time)])
    flags = torch.cat([(~finite).float().reshape(1), host_flags.to(run.device, non_blocking=True)])
    return agree_any(flags)


def apply_update(state: TrainState, bad: bool) -> None:
    """The optimizer (and LR) step of a finite step; a non-finite one is dropped and counted."""
    if bad:
        state.optimizer.zero_grad(set_to_none=True)
        state.bad_in_row, state.bad_total = state.bad_in_row + 1, state.bad_total + 1
        return
    state.optimizer.step()
    if state.scheduler is not None:
        state.scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.bad_in_row = 0


def too_many_bad_steps(run: Run, state: TrainState) -> bool:
    """Log the skipped step; True (and status 'failed') after --max_bad_steps in a row."""
    run.log.line(f"non-finite loss or gradient at iteration {state.iteration}: step skipped "
                 f"({state.bad_in_row} in a row, {state.bad_total} in total)")
    if state.bad_in_row < run.cfg.max_bad_steps:
        return False
    msg = (f"{state.bad_in_row} non-finite steps in a row (--max_bad_steps {run.cfg.max_bad_steps}): "
           f"stopping without saving; the last good checkpoint is kept. Lower the learning "
           f"rate or set --grad_clip")
    run.log.line(f"error: {msg}")
    run.log.update_status(state="failed", error=msg, iteration=state.iteration)
    return True


def log_step(run: Run, state: TrainState, meter: Throughput, metrics: dict, lr: float, epoch_info: dict) -> None:
    """The log line, metrics.jsonl row, TensorBoard scalars and status.json of this step."""
    cfg, it, epoch = run.cfg, state.iteration, epoch_info["epoch"]
    metrics = {k: v.item() for k, v in metrics.items()}
    total = total_iterations(cfg, run.plan)
    pace = meter.read(it, total, cfg.max_minutes)
    row = {"type": "train", "iteration": it, "epoch": epoch, "phase": state.phase, **metrics, "lr": lr,
           "samples_per_s": pace["samples_per_s"], "audio_s_per_s": pace["audio_s_per_s"],
           "step_s": pace["step_s"], "eta_s": pace["eta_s"], "bad_steps": state.bad_total, "time": time.time()}
    extra = "".join(f" {short} {metrics[k]:.4f}" for k, short in EXTRA_TERMS if k in metrics)
    disc = ("| disc" + "".join(f" {short} {metrics[k]:.4f}" for k, short in DISC_TERMS)
            + f" grad {metrics['disc/grad_norm']:.3g} " if "disc/loss" in metrics else "")
    run.log.line(f"it {it}/{total} ep {epoch}/{cfg.epochs} {state.phase} | loss {metrics['loss/total']:.4f} "
                 f"l1 {metrics['loss/l1']:.4f} stft {metrics['loss/stft']:.4f}{extra} | grad {metrics['grad_norm']:.3g} "
                 f"{disc}| lr {lr:.3g} | {row['samples_per_s']:.1f} samples/s {row['audio_s_per_s']:.1f} audio-s/s "
                 f"| {row['step_s'] * 1000:.0f} ms/step | eta {format_duration(row['eta_s'])}")
    run.log.metrics(row)
    run.log.update_status(state="running", epoch=epoch, iteration=it, phase=state.phase,
                          train_loss=metrics["loss/total"], samples_per_s=row["samples_per_s"], eta_s=row["eta_s"],
                          grad_norm=metrics["grad_norm"],
                          **{k.replace("/", "_"): metrics.get(k) for k, _ in EXTRA_TERMS + DISC_TERMS},
                          disc_grad_norm=metrics.get("disc/grad_norm"))


def validate(run: Run, state: TrainState, book: Bookkeeping, epoch_info: dict) -> None:
    """Validate at this iteration (once), log it, and save best_model.pt when it improved."""
    cfg, it = run.cfg, state.iteration
    if run.val_loader is None or book.last_val_iteration == it:
        return
    book.last_val_iteration = it
    t0 = run.clock()
    val, kept = run_validation(state.model, run.val_loader, run.device, cfg, run.autocast,
                               cfg.val_examples if run.dist_info.is_main else 0)
    state.last_val = val["loss/total"]
    improved = math.isfinite(state.last_val) and state.last_val < state.best_val
    if improved:
        state.best_val = state.last_val
    best = None if math.isinf(state.best_val) else state.best_val
    run.log.line(f"val it {it} ep {epoch_info['epoch']}/{cfg.epochs} | loss {state.last_val:.4f} "
                 f"l1 {val['loss/l1']:.4f} stft {val['loss/stft']:.4f} mel {val['loss/mel']:.4f} | {val['items']} items "
                 f"{run.clock() - t0:.1f}s | best {fmt(state.best_val)}{' (new best)' if improved else ''}")
    run.log.metrics({"type": "val", "iteration": it, "epoch": epoch_info["epoch"], "phase": state.phase,
                     **{k: v for k, v in val.items() if k.startswith("loss/")},
                     "lr": state.optimizer.param_groups[0]["lr"], "samples_per_s": None, "audio_s_per_s": None,
                     "eta_s": None, "best_val_loss": best, "items": val["items"], "val_s": run.clock() - t0,
                     "time": time.time()})
    run.log.examples(kept, cfg.target_sample_rate, it)
    run.log.update_status(val_loss=state.last_val, best_val_loss=best, val_mel=val["loss/mel"])
    if improved:  # latest.pt too: a stop right after this save must still leave it current
        save(run, state, book, epoch_info, ["best_model.pt", "latest.pt"])


def validate_at_exit(run: Run, state: TrainState, book: Bookkeeping, epoch_info: dict) -> None:
    """Every end (finished, --max_steps, --max_minutes, a signal; after latest.pt is saved) validates
    once if this iteration has not been, so best_model.pt exists after any run with val data (the
    next steps use it). When it still does not (every val loss non-finite, or deleted), this
    iteration's model is written as best_model.pt, and the log says so."""
    if run.val_loader is None:
        return
    validate(run, state, book, epoch_info)
    missing = run.dist_info.is_main and not (run.out / "best_model.pt").exists()
    if agree_any(torch.tensor([float(missing)], device=run.device))[0]:  # save() is collective
        run.log.line(f"best_model.pt is missing: this iteration's model written as best_model.pt "
                     f"(val loss {fmt(state.last_val)})")
        save(run, state, book, epoch_info, ["best_model.pt", "latest.pt"])


def save(run: Run, state: TrainState, book: Bookkeeping, epoch_info: dict, names: list[str]) -> None:
    """Write the first name, hard-link (atomically) the others; latest.pt is always among them.
    Every rank calls it (the RNG states are gathered); rank 0 writes."""
    ckpt = state.state_dict(run.cfg, run.plan, epoch_info, run.dist_info.world_size)
    if run.dist_info.is_main:
        first = save_checkpoint(ckpt, run.out / names[0])
        for name in names[1:]:
            link_atomic(first, run.out / name)
        if any(n.startswith("checkpoint_iter") for n in names):
            rotate_checkpoints(run.out, run.cfg.keep_last)
        run.log.line(f"saved {', '.join(names)} (iteration {state.iteration})")
        run.log.update_status(latest_checkpoint=str(run.out / "latest.pt"))
    book.last_save_time, book.last_saved_iteration = run.clock(), state.iteration


# ============================================================================ log lines of the start
def log_resume(run: Run, state: TrainState, ckpt: dict) -> None:
    cfg, world = run.cfg, run.dist_info.world_size
    run.log.metrics({"type": "resume", "iteration": state.iteration, "epoch": state.sampler.epoch + 1,
                     "phase": state.phase, "checkpoint": str(run.plan.resume_path),
                     "time": time.time()})  # rows after it supersede
    changed = changed_settings(ckpt["config"], cfg.to_dict(), TRAJECTORY_KEYS.union(VALIDATION_KEYS))
    run.log.line(f"resumed from {run.plan.resume_path} at iteration {state.iteration} (epoch "
                 f"{state.sampler.epoch + 1}, {state.sampler.consumed} items in; phase {state.phase}; best val "
                 f"{fmt(state.best_val)})"
                 + (f"; world size {ckpt.get('world_size', 1)} -> {world}" if ckpt.get("world_size", 1) != world
                    else "")
                 + (f"; changed settings: {', '.join(changed)}" if changed else ""))


def reset_best_if_validation_changed(run: Run, state: TrainState, ckpt: dict) -> None:
    """A best val loss measured by another validation (other val set, window, FFT sizes or loss
    weights) cannot be compared with the new one: forget it, and say which value and why."""
    changed = changed_settings(ckpt["config"], run.cfg.to_dict(), VALIDATION_KEYS)
    if changed and not math.isinf(state.best_val):
        run.log.line(f"best val loss {fmt(state.best_val)} reset: validation changed ({'; '.join(changed)})")
        state.best_val = math.inf


def keep_best_of_best_model(run: Run, state: TrainState) -> None:
    """best_model.pt may be better than the resumed checkpoint knows (--resume auto skipped a newer,
    unreadable checkpoint, or an older one was resumed): keep its best val loss, so only a better
    model replaces it."""
    on_disk, note = best_val_on_disk(run.out, "best_val_loss", run.cfg.to_dict(), VALIDATION_KEYS)
    if note:
        run.log.line(note)
    if on_disk < state.best_val:
        run.log.line(f"best val loss {fmt(on_disk)} of best_model.pt kept (the checkpoint resumed had "
                     f"{fmt(state.best_val)}): only a better model replaces best_model.pt")
        state.best_val = on_disk


def log_model(run: Run, state: TrainState) -> None:
    cfg, plan = run.cfg, run.plan
    groups = parameter_groups(state.model)
    run.log.line(f"model {type(state.model).__name__} at {cfg.target_sample_rate} Hz: head {count(groups['head'])}, "
                 f"decoder {count(groups['decoder'])}, frozen {count(groups['frozen'])} parameters; "
                 f"{len(plan.train_coarse)} train rows, {0 if plan.val_coarse is None else len(plan.val_coarse)} "
                 f"val rows; {total_iterations(cfg, plan)} iterations over {cfg.epochs} epochs; "
                 f"world size {run.dist_info.world_size}")
    fast = [g for g in state.optimizer.param_groups if g["name"] == "branch_out"]
    if fast:
        run.log.line(f"lite head: its branch's output conv ({count(fast[0]['params'])} parameters) trains at "
                     f"{fast[0]['lr_scale']:g}x the head's lr (--branch_lr_scale)")
    if plan.val_coarse is not None:
        val_tokens = plan.val_geometry.tokens_for_seconds(cfg.val_segment_length)
        short = int((plan.val_coarse < val_tokens).sum())
        if short:
            run.log.line(f"{short} of {len(plan.val_coarse)} val utterances are shorter than --val_segment_length "
                         f"{cfg.val_segment_length:g} s: validated whole (padded and masked)")
    cut = stages_beyond(cfg.segment_schedule, cfg.epochs)
    if cut:
        run.log.line(f"segment_schedule cut at --epochs {cfg.epochs}: not run {'; '.join(cut)}")
    if state.adversary is not None:
        run.log.line(f"adversarial recipe ({'warmup and unfreeze' if cfg.adversarial_warmup else 'unfreeze'} "
                     f"phase): {state.adversary.describe()}")
