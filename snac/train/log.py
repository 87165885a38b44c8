"""The run directory's record: training.log, stdout, metrics.jsonl, TensorBoard, status.json (rank 0).

One line per log step; the same dict of named scalars feeds the line, metrics.jsonl and TensorBoard.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..fileio import write_json_atomic


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


def count(params: list[nn.Parameter]) -> str:
    n = sum(p.numel() for p in params)
    return f"{n / 1e6:.2f}M" if n >= 1e5 else str(n)


def fmt(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isinf(x)) else f"{x:.4f}"


class Throughput:
    """Samples, audio seconds and steps since the last log line, and the run's pace for the ETA.

    Not training state: a resumed run measures its own pace from where it starts."""

    def __init__(self, clock: Callable[[], float], iteration: int):
        self.clock = clock
        self.start, self.start_iteration = clock(), iteration
        self._reset(clock())

    def _reset(self, now: float) -> None:
        self.window_start, self.samples, self.audio_seconds, self.steps = now, 0, 0.0, 0

    def restart_pace(self, iteration: int) -> None:
        """Measure the ETA's pace from here (a phase switch: the head-only warmup runs several times
        faster than the whole decoder with discriminators, so its pace would promise too early an end)."""
        self.start, self.start_iteration = self.clock(), iteration

    def add(self, items: int, seconds_per_item: float) -> None:
        """One step of ``items`` windows (over all ranks) of ``seconds_per_item`` each."""
        self.samples += items
        self.audio_seconds += items * seconds_per_item
        self.steps += 1

    def read(self, iteration: int, total: int, max_minutes: float | None = None) -> dict:
        """{'samples_per_s', 'audio_s_per_s', 'step_s', 'eta_s'} over the window; starts a new one.
        ``max_minutes`` (the run's time limit, counted from this meter's start): the ETA is the time
        left to it when the limit comes before ``total`` iterations."""
        now = self.clock()
        elapsed = max(now - self.window_start, 1e-9)
        per_iter = (now - self.start) / max(iteration - self.start_iteration, 1)
        eta = max(total - iteration, 0) * per_iter
        if max_minutes is not None:
            eta = min(eta, max(max_minutes * 60 - (now - self.start), 0.0))
        out = {"samples_per_s": self.samples / elapsed, "audio_s_per_s": self.audio_seconds / elapsed,
               "step_s": elapsed / self.steps, "eta_s": eta}
        self._reset(now)
        return out
