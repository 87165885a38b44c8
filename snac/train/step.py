"""One training step and one validation pass, and what feeds them: loaders, device copies, DDP wrap.

``train_step`` returns its losses as 0-dim tensors with no host sync, so the GPU keeps running ahead.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..cache.config import rank_cpus
from ..compiling import CompileCounter, compile_fn
from .config import TrainConfig
from .distributed import DistInfo, all_reduce_sum, ignore_stop_signals_in_worker
from .gan_losses import mel_loss
from .losses import reconstruction_loss
from .windows import WindowDataset, WindowSampler, batched, collate_windows, validation_items


class DecodeOnly(nn.Module):
    """forward(codes) = model.decode(codes): what DDP / torch.compile wrap (SNAC.forward encodes)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, codes: list[torch.Tensor]) -> torch.Tensor:
        return self.model.decode(codes)


def wrap_for_steps(model: nn.Module, cfg: TrainConfig, dist_info: DistInfo, device: torch.device,
                   compiler: CompileCounter | None = None) -> nn.Module:
    """DecodeOnly -> DDP (multi-process) -> torch.compile (with ``compiler``, a CompileCounter:
    --compile). Rebuilt at the phase switch, because DDP fixes its set of trained parameters when
    it is built (so the switch compiles again: the counter's graphs include it)."""
    step_model: nn.Module = DecodeOnly(model)
    if dist_info.enabled:
        step_model = nn.parallel.DistributedDataParallel(
            step_model, device_ids=[device.index] if device.type == "cuda" else None)
    if compiler is not None:
        step_model = compile_fn(step_model, compiler)
    return step_model


def loader_workers(requested: int) -> int:
    """DataLoader workers per rank: ``requested``, at most the CPUs this rank may use (torch warns
    above that and the workers only compete: 4 workers on a 2-CPU machine), at least 1 when any."""
    return min(requested, rank_cpus()) if requested else 0


def make_loaders(cfg: TrainConfig, plan, sampler: WindowSampler, dist_info: DistInfo,
                 device: torch.device, log: Callable[[str], None] = lambda line: None):
    """(train loader driven by ``sampler``, val loader over this rank's fixed val windows or None).
    ``--num_workers`` above this rank's CPUs is capped (``loader_workers``) and ``log`` says so."""
    workers = loader_workers(cfg.num_workers)
    if workers < cfg.num_workers:
        log(f"--num_workers {cfg.num_workers} capped at {workers}: the CPUs this process may use "
            f"({rank_cpus()} per rank)")
    common = dict(collate_fn=collate_windows, pin_memory=device.type == "cuda",
                  worker_init_fn=ignore_stop_signals_in_worker if workers else None,
                  generator=torch.Generator())  # never touches the global RNG (exact resume)
    loader = torch.utils.data.DataLoader(WindowDataset(plan.train_cache, plan.geometry), batch_sampler=sampler,
                                         num_workers=workers, persistent_workers=workers > 0,
                                         **common)
    if plan.val_cache is None:
        return loader, None
    val_tokens = plan.val_geometry.tokens_for_seconds(cfg.val_segment_length)
    items = validation_items(plan.val_coarse, val_tokens, plan.val_geometry.token_multiple,
                             dist_info.rank, dist_info.world_size)
    val_loader = torch.utils.data.DataLoader(WindowDataset(plan.val_cache, plan.val_geometry),
                                             batch_sampler=batched(items, cfg.batch_size),
                                             num_workers=min(workers, 2), **common)
    return loader, val_loader


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
    if cfg.mel_weight > 0:  # DAC's mel loss without the discriminators (--mel_weight)
        losses["loss/mel"] = mel_loss(pred.float(), batch["audio"], batch["mask"], cfg.target_sample_rate).mean()
        losses["loss/total"] = losses["loss/total"] + cfg.mel_weight * losses["loss/mel"]
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
    seeded (and the training RNG restored after), so every validation sees the same noise.
    'loss/total' is the reconstruction loss (L1 + STFT, which picks the best model); 'loss/mel' is
    DAC's mel distance, logged whatever the recipe."""
    sums = torch.zeros(5, dtype=torch.float64, device=device)  # total, l1, stft, mel, items
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
            sums[3] += mel_loss(pred.float(), b["audio"], b["mask"], cfg.target_sample_rate).double().sum()
            sums[4] += len(per_item["loss/total"])
            for i in range(min(examples - len(kept), len(pred))):
                valid = int(b["mask"][i].sum())
                kept.append({"row": int(batch["rows"][i]), "target": b["audio"][i, 0, :valid].float().cpu(),
                             "pred": pred[i, 0, :valid].float().cpu()})
    model.train(was_training)
    all_reduce_sum(sums)
    n = max(sums[4].item(), 1.0)
    return {"loss/total": sums[0].item() / n, "loss/l1": sums[1].item() / n, "loss/stft": sums[2].item() / n,
            "loss/mel": sums[3].item() / n, "items": int(sums[4].item())}, kept


