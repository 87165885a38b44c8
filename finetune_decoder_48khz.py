#!/usr/bin/env python
"""Fine-tune a SNAC decoder to decode the published codes at 48 kHz (or the stock 24 kHz decoder).

    uv run python finetune_decoder_48khz.py --config configs/finetune_48khz.json \
        --train_codes cache/train --val_codes cache/val --output_dir runs/snac48
    torchrun --nproc_per_node=4 finetune_decoder_48khz.py ...same flags...   # DDP, one GPU per rank
    ... --resume auto      # continue from the newest valid checkpoint in --output_dir (or start fresh)
    ... --fresh            # start over where only an earlier run's leftovers are (renamed abandoned-*)

Every flag is a key of the optional --config JSON (explicit flags win); `--help` lists them.
The run directory gets config.json, training.log, metrics.jsonl, status.json, TensorBoard events
and checkpoints (checkpoint_iter{N}.pt, checkpoint_epoch{E}.pt, latest.pt, best_model.pt).
SIGTERM / SIGINT finish the current step, save latest.pt and exit 0 (signals arriving within 1 s are
one request); a later, separate signal exits at once. Every end validates once if that iteration was
not, so best_model.pt exists. One trainer per run directory (OUTPUT_DIR/.lock); every check runs
before anything in it is renamed or written (snac/train/rundir.py, shared with train_codec.py).
This file is the entry point (flags, pre-flight, run directory, exit status); the loop and its
parts live in snac/train/ (plan.py, loop.py, state.py, step.py, phases.py, log.py; adversarial.py
for --adversarial, the discriminators' side of the adversarial recipe).
"""


from __future__ import annotations

import os
import sys
import time
import traceback
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch

from snac.fileio import write_json_atomic
from snac.train.config import ConfigError, TrainConfig, resolve_config
from snac.train.distributed import DistInfo, StopFlag, barrier, cleanup, setup_dist
from snac.train.log import RunLog
from snac.train.loop import train_loop
from snac.train.plan import PreflightError, preflight, total_iterations
from snac.train.rundir import lock_run_dir, prepare_run_dir

EXIT_BAD_INPUT, EXIT_FAILED, EXIT_BAD_STEPS = 2, 1, 3


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
        plan = preflight(cfg, dist_info)  # reads only: a refusal leaves the run directory as it was
        lock = lock_run_dir(out, dist_info, device)  # a second trainer on this directory stops here
    except PreflightError as e:
        if main:
            print(f"error: {e}", file=sys.stderr, flush=True)
        cleanup()
        return EXIT_BAD_INPUT
    # ---- only now is anything in the run directory renamed or written
    notes = list(plan.resume_notes)
    if main:
        explicit = cfg.resume not in (None, "auto")  # --resume auto keeps a newer best_model.pt in place
        notes += prepare_run_dir(out, int(plan.resume_state["iteration"]) if explicit else None, plan.leftovers)
    barrier()
    precision = cfg.precision or ("bf16" if device.type == "cuda" else "fp32")

    def autocast():
        if precision == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return nullcontext()

    resume = plan.resume_state
    log = RunLog(out if main else None, purge_step=int(resume["iteration"]) + 1 if resume else None)
    for note in notes:
        log.line(note)
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
        result = train_loop(cfg, plan, dist_info, device, autocast, log, stop, clock)
        return {"finished": 0, "stopped": 0, "bad_steps": EXIT_BAD_STEPS}[result]
    except Exception as e:
        traceback.print_exc()
        report_failure(log, f"{type(e).__name__}: {e}")
        return EXIT_FAILED
    finally:
        stop.restore()
        log.close()
        cleanup()
        if lock is not None:
            lock.close()


def report_failure(log: RunLog, error: str) -> None:
    """Best effort: the error line and status 'failed'. Never raises (a full disk or a closed log
    must not hide the original error behind a second traceback)."""
    for write in (lambda: log.line(f"error: {error}"), lambda: log.update_status(state="failed", error=error)):
        try:
            write()
        except Exception as e:  # noqa: BLE001 - reporting is best effort
            print(f"error: could not record the failure ({type(e).__name__}: {e})", file=sys.stderr, flush=True)


def describe_device(device: torch.device, dist_info: DistInfo) -> str:
    name = "cpu" if device.type == "cpu" else f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{name} x{dist_info.world_size}" if dist_info.enabled else name


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = resolve_config(argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return train(cfg)


if __name__ == "__main__":
    sys.exit(main())
