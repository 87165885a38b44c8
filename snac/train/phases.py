"""What trains when: the parameter groups (head, decoder, frozen), the phase switch, AdamW and OneCycleLR.

Phase 'warmup' trains the head alone; 'unfreeze' the head and the decoder. The VQ (and a SNAC's
encoder) never train. The model classes know nothing of this split.
"""

from __future__ import annotations

import torch
from torch import nn

from ..model import SNAC
from ..model48 import SNAC48
from .config import TrainConfig
from .windows import WindowSampler


def parameter_groups(model: SNAC | SNAC48) -> dict[str, list[nn.Parameter]]:
    """{'head': output layers, 'decoder': the rest of the decoder, 'frozen': the rest of the model}.

    SNAC48: the new upsampling head / the pretrained trunk / the VQ. SNAC (stock decoder mode): the
    final Snake and conv / the decoder before them / encoder + VQ."""
    if isinstance(model, SNAC48):
        return {"head": list(model.head.parameters()), "decoder": list(model.decoder.parameters()),
                "frozen": list(model.quantizer.parameters())}
    if not isinstance(model, SNAC):
        raise TypeError(f"expected a SNAC or SNAC48, got {type(model).__name__}")
    head = [p for m in (model.decoder.model[-3], model.decoder.model[-2]) for p in m.parameters()]
    head_ids = {id(p) for p in head}
    decoder = [p for p in model.decoder.parameters() if id(p) not in head_ids]
    frozen = list(model.encoder.parameters()) + list(model.quantizer.parameters())
    return {"head": head, "decoder": decoder, "frozen": frozen}


def phase_record(model: nn.Module, phase: str) -> dict:
    """The checkpoint's 'frozen' record of ``phase``: which groups train, and how many parameters."""
    groups = parameter_groups(model)
    trained = ["head"] if phase == "warmup" else ["head", "decoder"]
    frozen = [g for g in groups if g not in trained]
    return {"phase": phase, "trained_groups": trained, "frozen_groups": frozen,
            "trainable_params": sum(p.numel() for g in trained for p in groups[g]),
            "frozen_params": sum(p.numel() for g in frozen for p in groups[g])}


def set_phase(model: nn.Module, phase: str) -> dict:
    """Freeze/unfreeze by the parameter groups; returns :func:`phase_record`.

    VQ (and a SNAC's encoder) always frozen; 'warmup' trains the head; 'unfreeze' head + decoder.
    """
    record = phase_record(model, phase)
    groups = parameter_groups(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for name in record["trained_groups"]:
        for p in groups[name]:
            p.requires_grad_(True)
    return record


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """One AdamW with two groups (head, decoder): the head's moments survive the phase switch.
    Params without a gradient (the decoder during warmup) are skipped by AdamW."""
    groups = parameter_groups(model)
    return torch.optim.AdamW([{"params": groups["head"], "lr": cfg.warmup_learning_rate, "name": "head"},
                              {"params": groups["decoder"], "lr": cfg.learning_rate, "name": "decoder"}],
                             weight_decay=cfg.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    """OneCycleLR over every post-warmup step of the whole remaining curriculum."""
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.learning_rate,
                                               total_steps=max(1, total_steps),
                                               pct_start=cfg.onecycle_pct_start, cycle_momentum=False)


def restore_optimizer(optimizer: torch.optim.Optimizer, resume: dict, cfg: TrainConfig, plan,
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


