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
from .schedule import OneCycleSchedule
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


def fast_parameters(model: nn.Module, cfg: TrainConfig) -> list[nn.Parameter]:
    """The lite head's branch output conv when it gets its own lr (--branch_lr_scale != 1), else [].

    The branch starts nearly silent (branch_init), so its output layer must grow by orders of
    magnitude; Adam's step is about lr whatever the gradient, so at the head's lr it stayed far too
    small in a fine-tuning budget (README, heads)."""
    out = getattr(getattr(model, "head", None), "branch_out", None)
    return [] if out is None or cfg.branch_lr_scale == 1 else list(out.parameters())


def set_group_lrs(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> None:
    """Each group's ``lr_scale``, lr and weight decay from the flags: the head's groups at
    --warmup_learning_rate, the decoder at --learning_rate, times the scale (--branch_lr_scale for
    branch_out, else 1). The one-cycle schedule later scales its curve by the same ``lr_scale``."""
    for group in optimizer.param_groups:
        group["weight_decay"] = cfg.weight_decay
        group["lr_scale"] = cfg.branch_lr_scale if group["name"] == "branch_out" else 1.0
        group["lr"] = group["lr_scale"] * (cfg.learning_rate if group["name"] == "decoder" else cfg.warmup_learning_rate)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """One AdamW with groups head, [branch_out], decoder: the head's moments survive the phase switch.

    Every group follows the same lr (the warmup's constant, then the one-cycle curve) times its
    ``lr_scale`` (:func:`set_group_lrs`). Params without a gradient (the decoder during warmup) are
    skipped by AdamW."""
    groups = parameter_groups(model)
    fast = fast_parameters(model, cfg)
    fast_ids = {id(p) for p in fast}
    specs = [{"params": [p for p in groups["head"] if id(p) not in fast_ids], "name": "head"},
             *([{"params": fast, "name": "branch_out"}] if fast else []),
             {"params": groups["decoder"], "name": "decoder"}]
    optimizer = torch.optim.AdamW(specs)
    set_group_lrs(optimizer, cfg)
    return optimizer


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int) -> OneCycleSchedule:
    """The one-cycle curve (peak --learning_rate) over every post-warmup step of the curriculum."""
    return OneCycleSchedule(optimizer, cfg.learning_rate, cfg.onecycle_pct_start, total_steps, cfg.weight_decay)


def restore_optimizer(optimizer: torch.optim.Optimizer, resume: dict, cfg: TrainConfig, plan,
                      sampler: WindowSampler) -> OneCycleSchedule | None:
    """Load the optimizer (moments) and the LR curve of a checkpoint; returns the schedule or None.

    The lr and weight decay come from the current flags, not from the saved param groups (a
    resume with a new --learning_rate / --weight_decay / --warmup_learning_rate uses them). The
    rest of the curve is refitted onto the unfreeze steps now left in the whole plan (batch size,
    curriculum, --limit, epochs or world size may have changed), so it continues where it was and
    ends exactly at the last step; with an unchanged plan it is the uninterrupted run's curve."""
    saved = [g.get("name") for g in resume["optimizer"]["param_groups"]]
    names = [g["name"] for g in optimizer.param_groups]
    if saved != names:
        hint = ("it was trained with one lr for the whole head: resume with --branch_lr_scale 1"
                if "branch_out" in names else "it was trained with its own lr for the lite branch's output: "
                f"resume with --branch_lr_scale {resume.get('config', {}).get('branch_lr_scale', '> 1')}")
        raise ValueError(f"the checkpoint's optimizer has param groups {saved}, this run's {names}: {hint}")
    optimizer.load_state_dict(resume["optimizer"])
    set_group_lrs(optimizer, cfg)  # the saved groups carry the old flags' values
    if resume["phase"] != "unfreeze":
        return None
    remaining = 0
    if sampler.epoch < cfg.epochs:
        e = plan.epochs[sampler.epoch]
        sampler.configure(e["tokens"], e["batch"], plan.geometry.token_multiple)
        remaining = ((sampler.batches_left() if e["phase"] == "unfreeze" else 0)
                     + sum(x["steps"] for x in plan.epochs[sampler.epoch + 1:] if x["phase"] == "unfreeze"))
    scheduler = make_scheduler(optimizer, cfg, 1)
    scheduler.load_state_dict(resume["scheduler"])
    scheduler.refit(remaining)
    return scheduler
