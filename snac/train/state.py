"""TrainState: exactly what a checkpoint restores, and the one place that writes and reads it.

Weights, optimizer moments, LR schedule, scaler, data position, iteration, phase, best and last val
loss, bad-step counters and the RNG streams; nothing else carries training state between steps.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .checkpoint import rng_state, set_rng_state
from .config import TrainConfig
from .distributed import DistInfo, gather_objects
from .phases import phase_record, restore_optimizer, set_phase
from .windows import WindowSampler


@dataclass
class TrainState:
    model: nn.Module                  # the raw module (never the DDP / compile wrapper)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    sampler: WindowSampler            # the data position: epoch (0-based) and items consumed
    scheduler: Any = None             # OneCycleLR, from the unfreeze phase on
    iteration: int = 0                # optimizer steps taken (skipped non-finite steps count)
    phase: str | None = None          # 'warmup' | 'unfreeze'; None before the first epoch starts
    best_val: float = math.inf
    last_val: float | None = None
    bad_in_row: int = 0               # non-finite steps in a row (reset by a good step)
    bad_total: int = 0
    adversary: Any = None             # adversarial.Adversary with --adversarial (saved under 'discriminator')

    def state_dict(self, cfg: TrainConfig, plan, epoch_info: dict, world_size: int) -> dict:
        """The checkpoint dict. Collective: every rank calls it together (the RNG states are gathered).

        ``epoch_info`` is the plan's entry of the epoch being trained (its window and batch are
        recorded for the reader; a resume reads the data position from ``data_state``)."""
        rngs = gather_objects(rng_state())
        return {
            "model": self.model.state_dict(), "model_config": self.model.config,
            "base_model_config": plan.base_config, "base_weights_fingerprint": plan.base_fingerprint,
            "config": cfg.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "scaler": self.scaler.state_dict(), "epoch": epoch_info["epoch"], "iteration": self.iteration,
            "phase": self.phase, "frozen": phase_record(self.model, self.phase) if self.phase else {},
            "segment_length": epoch_info["seconds"], "window_tokens": epoch_info["tokens"],
            "batch_size": epoch_info["batch"], "world_size": world_size, "rng": rngs[0], "rng_per_rank": rngs,
            "data_state": self.sampler.state_dict(),
            "best_val_loss": None if math.isinf(self.best_val) else self.best_val,
            "val_loss": self.last_val, "bad_steps": self.bad_in_row, "bad_steps_total": self.bad_total,
            "time": time.time(),
            **({"discriminator": self.adversary.state_dict()} if self.adversary is not None else {}),
        }

    def load_state_dict(self, ckpt: dict, cfg: TrainConfig, plan, dist_info: DistInfo,
                        warn: Callable[[str], None]) -> None:
        """Restore from a checkpoint dict (older checkpoints without the bad-step or per-rank RNG
        keys load too). With another world size the data position is re-sharded and the RNG
        reseeded by position; a changed row count restarts the saved epoch (``warn`` says so)."""
        self.model.load_state_dict(ckpt["model"])
        self.phase = ckpt["phase"]
        set_phase(self.model, self.phase)
        self.iteration = int(ckpt["iteration"])
        self.best_val = ckpt["best_val_loss"] if ckpt["best_val_loss"] is not None else math.inf
        self.last_val = ckpt.get("val_loss")
        self.bad_in_row, self.bad_total = int(ckpt.get("bad_steps", 0)), int(ckpt.get("bad_steps_total", 0))
        try:
            self.sampler.load_state_dict(ckpt["data_state"])
        except ValueError as e:
            warn(f"warning: {e}; restarting epoch {ckpt['data_state']['epoch'] + 1} from its first batch")
            self.sampler.start_epoch(int(ckpt["data_state"]["epoch"]))
        self.scheduler = restore_optimizer(self.optimizer, ckpt, cfg, plan, self.sampler)
        self.scaler.load_state_dict(ckpt["scaler"])
        if self.adversary is not None:
            self.adversary.restore(ckpt, warn)
        elif "discriminator" in ckpt:
            warn("the checkpoint's discriminator state is left unused (--adversarial is off)")
        per_rank = ckpt.get("rng_per_rank") or [ckpt["rng"]]
        if len(per_rank) == dist_info.world_size:
            set_rng_state(per_rank[dist_info.rank])
        else:  # another world size: ranks cannot take over each other's streams; reseed by position
            torch.manual_seed(cfg.seed + 7919 * self.iteration + dist_info.rank)
            np.random.seed((cfg.seed + self.iteration + dist_info.rank) % 2**32)


def seed_fresh_run(cfg: TrainConfig, rank: int) -> None:
    """RNG streams of a fresh run: the model noise differs between ranks."""
    torch.manual_seed(cfg.seed + rank)
    np.random.seed((cfg.seed + rank) % 2**32)
