"""The adversarial recipe in the trainer: discriminators, their optimizer, and the two-network step.

One iteration with ``--adversarial`` (DAC's order):

1. generator forward: codes -> pred (B, 1, T);
2. discriminator step: real and generated (detached) audio in one batch (2B, 1, T) through the
   (DDP-wrapped) discriminators, LSGAN loss, backward, clip, grad norm; all ranks agree that it is
   finite (one small all-reduce) and the discriminators' optimizer steps, before the generator's
   losses are computed;
3. generator losses: reconstruction (L1 + STFT), mel, and the adversarial and feature-matching
   terms of the *updated* discriminators (real audio without gradients for the feature targets,
   generated audio with gradients to the generator only); backward; clip; grad norm. The loop
   agrees on the generator's step and applies it as in the seed recipe.

A non-finite discriminator step is dropped and makes the whole iteration count as a bad step.

The first ``--disc_start_step`` adversarial iterations train the discriminators alone: the
generator runs without gradients and takes no step, so fresh discriminators catch up with a
pretrained decoder before their gradients reach it. :class:`Adversary` holds everything of this
side (module, DDP wrapper, AdamW, the count of discriminator steps) and is saved under the
checkpoint key ``'discriminator'``; ``'model'`` stays the generator alone, so inference, export
and the best-model choice never see the discriminators.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .config import TrainConfig
from .discriminators import Discriminator
from .distributed import DistInfo, agree_any
from .gan_losses import discriminator_loss, feature_matching_loss, generator_adversarial_loss, mel_loss
from .losses import reconstruction_loss

DISC_BETAS = (0.8, 0.99)  # DAC's AdamW betas for the discriminators
CHECKPOINT_KEY = "discriminator"


def build_discriminator(cfg: TrainConfig, sample_rate: int | None = None) -> Discriminator:
    """The discriminators sized for the target rate (bands are fractions of its Nyquist);
    ``sample_rate`` overrides ``cfg.target_sample_rate`` (the codec trainer: the model's rate)."""
    return Discriminator(sample_rate or cfg.target_sample_rate, multi_period=cfg.multi_period, multi_band=cfg.multi_band,
                         mpd_channels=tuple(cfg.mpd_channels), mrd_channels=cfg.mrd_channels)


def clip_and_norm(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Total grad norm of ``params`` (clipped to ``max_norm`` when > 0), 0-dim, no host sync."""
    if max_norm > 0:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    grads = [p.grad for p in params if p.grad is not None]
    return torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())


class Adversary:
    """Discriminators + their AdamW + the number of discriminator steps taken (checkpointed)."""

    def __init__(self, cfg: TrainConfig, dist_info: DistInfo, device: torch.device,
                 sample_rate: int | None = None):
        """``cfg`` needs the discriminator fields of :class:`TrainConfig` (the codec trainer's
        config has the same names); ``sample_rate`` as in :func:`build_discriminator`."""
        self.cfg = cfg
        self.module = build_discriminator(cfg, sample_rate).to(device).train()
        self.optimizer = torch.optim.AdamW(self.module.parameters(), lr=cfg.disc_learning_rate,
                                           betas=DISC_BETAS, weight_decay=cfg.weight_decay)
        self.params = list(self.module.parameters())
        self.disc_steps = 0  # discriminator updates applied (drives --disc_start_step)
        self.step_module: nn.Module = self.module
        if dist_info.enabled:  # one wrap for the whole run: every discriminator parameter always trains
            self.step_module = nn.parallel.DistributedDataParallel(
                self.module, device_ids=[device.index] if device.type == "cuda" else None)

    # ------------------------------------------------------------------ when
    def active(self, phase: str) -> bool:
        """Whether this phase trains adversarially (warmup only with --adversarial_warmup)."""
        return phase == "unfreeze" or self.cfg.adversarial_warmup

    @property
    def generator_waits(self) -> bool:
        return self.disc_steps < self.cfg.disc_start_step

    def describe(self) -> str:
        n = sum(p.numel() for p in self.params)
        bands = ", ".join(f"{lo / 1000:.1f}-{hi / 1000:.1f}" for lo, hi in self.module.band_edges_hz())
        return (f"discriminators {', '.join(self.module.names)} at {self.module.sample_rate} Hz "
                f"({n / 1e6:.2f}M parameters{'; bands ' + bands + ' kHz' if bands else ''}); "
                f"weights mel {self.cfg.mel_weight:g}, feat {self.cfg.feat_weight:g}, adv {self.cfg.adv_weight:g}; "
                f"disc lr {self.cfg.disc_learning_rate:g}; generator waits for {self.cfg.disc_start_step} "
                f"discriminator steps ({self.disc_steps} done)")

    # ------------------------------------------------------------------ the step
    def train_step(self, step_model: nn.Module, batch: dict, cfg: TrainConfig, params: list[nn.Parameter],
                   autocast: Callable) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Discriminator step (applied here, once all ranks agree it is finite), then the
        generator's gradients (unless it waits); the caller steps the generator. Returns the same
        kind of dict as ``step.train_step`` plus ``disc/*`` and the adversarial terms."""
        audio, mask = batch["audio"], batch["mask"]
        waits = self.generator_waits
        with torch.set_grad_enabled(not waits), autocast():
            pred = step_model(batch["codes"])  # (B, 1, T)
        metrics, finite = self.discriminator_step(audio, pred, mask, cfg.grad_clip, autocast)

        # ---- generator: judged by the updated discriminators (their weights frozen for this pass)
        if waits:
            losses = reconstruction_loss(pred.detach(), audio, mask, cfg.n_ffts, cfg.l1_weight, cfg.stft_weight)
            metrics.update({k: v.detach() for k, v in losses.items()})
            metrics["grad_norm"] = torch.zeros((), device=audio.device)
            return metrics, finite
        losses = reconstruction_loss(pred, audio, mask, cfg.n_ffts, cfg.l1_weight, cfg.stft_weight)
        losses["loss/mel"] = mel_loss(pred.float(), audio, mask, cfg.target_sample_rate).mean()
        losses.update(self.generator_terms(audio, pred, mask, autocast))
        losses["loss/total"] = (losses["loss/total"] + cfg.mel_weight * losses["loss/mel"]
                                + cfg.adv_weight * losses["loss/adv"] + cfg.feat_weight * losses["loss/feat"])
        losses["loss/total"].backward()
        grad_norm = clip_and_norm(params, cfg.grad_clip)
        metrics.update({k: v.detach() for k, v in losses.items()})
        metrics["grad_norm"] = grad_norm.detach()
        return metrics, finite & torch.isfinite(losses["loss/total"]) & torch.isfinite(grad_norm)

    def discriminator_step(self, audio: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor,
                           grad_clip: float, autocast: Callable) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One discriminator update on real ``audio`` and generated ``pred`` (detached here), all
        (B, 1, T); applied once every rank agrees it is finite. Returns ({'disc/loss', 'disc/real',
        'disc/fake', 'disc/grad_norm'}, finite (0-dim bool)). Shared with the codec trainer."""
        # real and generated in one forward (one DDP reduction per step)
        with autocast():
            both = self.step_module(torch.cat([audio, pred.detach().to(audio.dtype)]), torch.cat([mask, mask]))
        n = len(audio)
        real = [(logits[:n], []) for logits, _ in both]
        fake = [(logits[n:], []) for logits, _ in both]
        disc = {k: v.mean() for k, v in discriminator_loss(real, fake, mask).items()}
        disc["disc/loss"].backward()
        disc_norm = clip_and_norm(self.params, grad_clip)
        metrics = {k: v.detach() for k, v in disc.items()}
        metrics["disc/grad_norm"] = disc_norm.detach()
        finite = torch.isfinite(disc["disc/loss"]) & torch.isfinite(disc_norm)
        (disc_bad,) = agree_any((~finite).float().reshape(1))
        if not disc_bad:
            self.optimizer.step()
            self.disc_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        return metrics, finite

    def generator_terms(self, audio: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor,
                        autocast: Callable) -> dict[str, torch.Tensor]:
        """{'loss/adv', 'loss/feat'} (batch means, 0-dim) of ``pred`` (B, 1, T, with gradients) as
        the discriminators judge it; no gradient reaches the discriminators (and no DDP hook fires)."""
        for p in self.params:
            p.requires_grad_(False)
        try:
            with torch.no_grad(), autocast():
                real_maps = [(None, feats) for _, feats in self.module(audio, mask)]  # feature targets
            with autocast():
                fake = self.module(pred.to(audio.dtype), mask)
        finally:
            for p in self.params:
                p.requires_grad_(True)
        return {"loss/adv": generator_adversarial_loss(fake, mask).mean(),
                "loss/feat": feature_matching_loss(real_maps, fake, mask).mean()}

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict:
        return {"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                "disc_steps": self.disc_steps, "names": self.module.names,
                "sample_rate": self.module.sample_rate}

    def load_state_dict(self, state: dict) -> None:
        if state.get("names") != self.module.names or state.get("sample_rate") != self.module.sample_rate:
            raise ValueError(f"the checkpoint's discriminators ({state.get('names')} at {state.get('sample_rate')} "
                             f"Hz) differ from this run's ({self.module.names} at {self.module.sample_rate} Hz); "
                             "resume with the same discriminator flags and --target_sample_rate")
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.disc_steps = int(state["disc_steps"])

    def restore(self, ckpt: dict, warn: Callable[[str], None]) -> None:
        """From a checkpoint dict: its discriminator state, or fresh discriminators (logged) when it
        has none (a non-adversarial run continued with --adversarial)."""
        if CHECKPOINT_KEY in ckpt:
            self.load_state_dict(ckpt[CHECKPOINT_KEY])
        else:
            warn("the checkpoint has no discriminator state (a non-adversarial run): starting fresh "
                 "discriminators")
