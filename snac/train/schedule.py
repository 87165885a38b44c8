"""The one-cycle learning-rate curve of the unfreeze phase as a pure function of the step.

The curve is OneCycleLR's (cosine rise from ``max_lr / 25`` to ``max_lr`` over the first
``pct_start`` of the steps, cosine fall to ``max_lr / 25e4``), written as a function of the
progress ``x`` in [0, 1] instead of a stateful scheduler, so that:

* any plan length >= 1 works (torch's OneCycleLR divides by zero when ``pct_start * total``
  rounds to 1);
* a resume takes the lr, weight decay and peak from the current flags (the optimizer's saved
  param groups bring back the old ones);
* a resume whose plan changed (another batch size, curriculum, --limit) refits the rest of the
  curve onto the steps now left: it continues at the progress it had reached (no jump) and ends
  at x = 1 exactly on the last step.

The schedule is a segment of the curve: unfreeze step ``start_step`` sits at progress
``start_progress`` and step ``end_step`` at 1. A fresh run is the segment (0, 0.0, total - 1); an
unchanged resume keeps its segment (so the lr is bit-identical to an uninterrupted run).
"""

from __future__ import annotations

import math

import torch

DIV_FACTOR = 25.0          # OneCycleLR's defaults: initial lr = max_lr / 25
FINAL_DIV_FACTOR = 1e4     # final lr = initial lr / 1e4


def one_cycle(x: float, max_lr: float, pct_start: float) -> float:
    """lr at progress ``x`` in [0, 1] of the curve (x clipped to [0, 1])."""
    x = min(max(x, 0.0), 1.0)
    initial = max_lr / DIV_FACTOR
    final = initial / FINAL_DIV_FACTOR
    if x <= pct_start:
        start, end, t = initial, max_lr, x / pct_start
    else:
        start, end, t = max_lr, final, (x - pct_start) / (1.0 - pct_start)
    return end + (start - end) / 2.0 * (1.0 + math.cos(math.pi * t))


class OneCycleSchedule:
    """Sets every param group's lr (times its ``lr_scale``, default 1) and weight decay from
    (unfreeze steps done, segment, flags).

    ``step()`` after each optimizer step, like a torch scheduler; ``state_dict`` is what a
    checkpoint stores (plain ints and floats)."""

    def __init__(self, optimizer: torch.optim.Optimizer, max_lr: float, pct_start: float, total_steps: int,
                 weight_decay: float | None = None):
        self.optimizer, self.max_lr, self.pct_start = optimizer, max_lr, pct_start
        self.weight_decay = weight_decay
        self.steps_done = 0
        self.start_step, self.start_progress, self.end_step = 0, 0.0, max(1, total_steps) - 1
        self.apply()

    def progress(self, step: int) -> float:
        """Progress of unfreeze step ``step`` (0-based) on the curve."""
        span = self.end_step - self.start_step
        if span <= 0:
            return 1.0 if step > self.start_step else self.start_progress
        return self.start_progress + (1.0 - self.start_progress) * (step - self.start_step) / span

    def lr_at(self, step: int) -> float:
        return one_cycle(self.progress(step), self.max_lr, self.pct_start)

    def apply(self) -> None:
        lr = self.lr_at(self.steps_done)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
            if self.weight_decay is not None:
                group["weight_decay"] = self.weight_decay

    def step(self) -> None:
        self.steps_done += 1
        self.apply()

    def refit(self, steps_left: int) -> None:
        """Fit the rest of the curve onto ``steps_left`` steps (this one included): the next step
        keeps its progress, the last one reaches 1. No-op when the plan did not change."""
        end = self.steps_done + max(1, steps_left) - 1
        if end != self.end_step:
            self.start_progress = self.progress(self.steps_done)
            self.start_step, self.end_step = self.steps_done, end
        self.apply()

    @property
    def total_steps(self) -> int:
        return self.end_step + 1

    def state_dict(self) -> dict:
        return {"kind": "one_cycle", "last_epoch": self.steps_done, "total_steps": self.total_steps,
                "start_step": self.start_step, "start_progress": self.start_progress,
                "end_step": self.end_step}

    def load_state_dict(self, state: dict) -> None:
        """From this class's state_dict, or from a torch OneCycleLR's (older checkpoints)."""
        self.steps_done = int(state["last_epoch"])
        self.start_step = int(state.get("start_step", 0))
        self.start_progress = float(state.get("start_progress", 0.0))
        self.end_step = int(state.get("end_step", int(state["total_steps"]) - 1))
        self.apply()
