"""Train a whole SNAC codec (encoder + residual VQ + decoder) on a folder of audio: DAC's recipe.

One iteration (``codec_step``):

1. windows (B, 1, T) of the folder's audio at the model's rate, read from disk one at a time in a
   seeded order (``codec_data.LazyAudioWindows``; T a multiple of the model's pad multiple, so the
   encoder pads nothing); a file's last window is padded and masked out of every loss;
2. encoder -> ``ResidualVectorQuantize.forward_train`` (codes, commitment and codebook losses,
   straight-through) -> decoder: pred (B, 1, T);
3. with the adversarial recipe, one discriminator step (``Adversary.discriminator_step``, shared
   with the decoder trainer), then the generator's adversarial and feature-matching terms
   (``Adversary.generator_terms``);
4. loss = mel 15 * multi-scale mel + adv 1 + feat 2 + commitment 0.25 + codebook 1 (DAC's
   weights, flags); backward, clip, AdamW (betas 0.8/0.99) for both networks, lr = lr0 * gamma^step.

Codebook health per level (perplexity and the fraction of codes a batch uses) is logged; with
``--reseed_dead_codes N`` a code no batch used for N steps is re-seeded from a random projected
encoder output of the current batch (without it a small quantizer collapses to a few codes).

The run directory is the decoder trainer's: config.json, training.log, metrics.jsonl, TensorBoard,
status.json (train_status.sh), checkpoint_iter{N}.pt / latest.pt written atomically, ``--resume
auto``; SIGTERM/SIGINT save and exit 0. A checkpoint holds every RNG and data-sampler state, so a
resumed run on CPU is bit-identical to an uninterrupted one. The end of a run exports a plain SNAC
(``SNAC.save_pretrained``: loads in ``SNAC.from_pretrained`` and in upstream snac).

An epoch is every window of the training audio once (over every rank's batches). At each epoch end ``checkpoint_epoch{E}.pt``; with ``--val_dir`` the mel distance of the
first ``--val_seconds`` of every val file (noise seeded, the training RNG untouched) is measured
first, and ``best_model.pt`` keeps the lowest. ``--audio_dir``/``--val_dir`` may also be code
caches (``cache_codes_multigpu.py``, best with ``--embed_audio``): their target audio is used.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from ..audio import AudioError, load_audio, resample
from ..cache.encode import find_audio_files
from ..cache.format import MANIFEST_NAME
from ..fileio import write_json_atomic
from ..hub import resolve_pretrained
from ..model import SNAC
from ..presets import PRESETS
from .adversarial import Adversary, clip_and_norm
from .checkpoint import (link_atomic, load_checkpoint, maybe_fault, rng_state, rotate_checkpoints, save_checkpoint,
                         set_rng_state)
from .codec_data import LazyAudioWindows
from .config import ConfigError, _opt, build_parser, changed_settings, resolve_dataclass_config
from .distributed import DistInfo, StopFlag, agree_any, all_reduce_sum, gather_objects
from .gan_losses import mel_loss
from .log import RunLog, Throughput, count, format_duration
from .rundir import (PreflightError, best_val_on_disk, check_output_dir, check_resume_file, choose_resume,
                     lock_run_dir, prepare_run_dir)

VALIDATION_KEYS = ("val_dir", "val_seconds")  # a best val measured otherwise is not comparable
CHECKPOINT_KIND = "codec"  # refuses decoder-trainer checkpoints (and the reverse: they lack 'plan')
GEN_BETAS = (0.8, 0.99)  # DAC's AdamW betas (the discriminators' are adversarial.DISC_BETAS, the same)
LOSS_TERMS = (("loss/mel", "mel_weight"), ("loss/adv", "adv_weight"), ("loss/feat", "feat_weight"),
              ("loss/commitment", "commitment_weight"), ("loss/codebook", "codebook_weight"))


# ============================================================================ options
@dataclass
class CodecConfig:
    # ---- inputs ----
    config: str | None = _opt(None, "JSON file whose keys are these flags; explicit flags win over it")
    audio_dir: str | None = _opt(None, "folder of training audio (wav/flac/ogg/mp3, any rate and channels; "
                                       "resampled to the model's rate), or a code cache made with --embed_audio "
                                       "(its target audio) (required)")
    val_dir: str | None = _opt(None, "held-out audio (folder or code cache): mel distance at every epoch end and "
                                     "at the end of the run; best_model.pt keeps the best (default: none)")
    val_seconds: float = _opt(4.0, "validation scores the first S seconds of every val file")
    output_dir: str | None = _opt(None, "run directory: logs, checkpoints, the exported model (required)")
    model_config: str | None = _opt(None, f"preset ({', '.join(PRESETS)}) or a SNAC config.json (default: "
                                          "snac_24khz; not with --pretrained_model)")
    pretrained_model: str | None = _opt(None, "continue from a SNAC directory or hub id instead of random weights")
    export: str | None = _opt(None, "where the final plain SNAC is written (default: OUTPUT_DIR/model)")
    # ---- hardware ----
    device: str | None = _opt(None, "GPU index or 'cpu' (default: 0 when CUDA exists, else cpu)")
    threads: int | None = _opt(None, "torch CPU threads (default: 1 on CPU, where more threads on shared "
                                     "cores ran 3-5x slower; torch's own choice on GPU)")
    precision: str | None = _opt(None, "bf16 (autocast) or fp32 (default: bf16 on CUDA, fp32 on CPU)")
    seed: int = _opt(1234, "seed of the weights, windows and model noise: same seed -> same run")
    # ---- schedule ----
    max_steps: int = _opt(100000, "train until this iteration (a resumed run continues to it)")
    max_minutes: float | None = _opt(None, "stop after this many minutes of training in this process (saves, "
                                           "exports, exits 0; the lr decay is per step, so nothing is cut)")
    batch_size: int = _opt(8, "windows per step per rank")
    segment_length: float = _opt(0.5, "window in seconds (rounded to whole pad multiples of the model, >= 1)")
    learning_rate: float = _opt(1e-4, "initial AdamW lr of the codec (DAC: 1e-4)")
    disc_learning_rate: float = _opt(1e-4, "initial AdamW lr of the discriminators (DAC: 1e-4)")
    lr_gamma: float = _opt(0.999996, "exponential decay per step of both lrs: lr = lr0 * gamma^step (DAC)")
    weight_decay: float = _opt(0.01, "AdamW weight decay of both networks (torch's default, which DAC keeps)")
    grad_clip: float = _opt(1000.0, "clip the codec's grad norm (0 = off; DAC: 1000)")
    disc_grad_clip: float = _opt(10.0, "clip the discriminators' grad norm (0 = off; DAC: 10)")
    max_bad_steps: int = _opt(10, "stop after this many non-finite steps in a row (each is skipped)")
    # ---- losses ----
    mel_weight: float = _opt(15.0, "weight of the multi-scale mel distance")
    adversarial: bool = _opt(True, "train against discriminators (off: mel + VQ losses only, faster)")
    adv_weight: float = _opt(1.0, "weight of the generator's LSGAN term")
    feat_weight: float = _opt(2.0, "weight of feature matching")
    commitment_weight: float = _opt(0.25, "weight of the VQ commitment loss (encoder -> its code)")
    codebook_weight: float = _opt(1.0, "weight of the VQ codebook loss (code -> the encoder)")
    disc_start_step: int = _opt(0, "discriminator steps before the codec gets adversarial terms")
    multi_period: bool = _opt(True, "multi-period discriminator (periods 2, 3, 5, 7, 11)")
    multi_band: bool = _opt(True, "multi-band complex-STFT discriminator (FFT 2048, 1024, 512)")
    mpd_channels: list = _opt([32, 128, 512, 1024, 1024], "channels of the period discriminator's 5 convs")
    mrd_channels: int = _opt(32, "channels of the band discriminator's convs")
    reseed_dead_codes: int = _opt(0, "re-seed codes no batch used in the last N steps from random encoder "
                                     "outputs of the batch (0 = off)")
    # ---- record ----
    log_every: int = _opt(10, "log line, metrics.jsonl row and TensorBoard scalars every N iterations")
    checkpoint_every: int = _opt(5000, "checkpoint_iter{N}.pt + latest.pt every N iterations (0 = off)")
    checkpoint_minutes: float = _opt(30.0, "latest.pt every T minutes of wall time (0 = off)")
    keep_last: int = _opt(3, "iteration checkpoints kept (older ones are deleted)")
    epoch_checkpoints: bool = _opt(True, "checkpoint_epoch{E}.pt at every epoch end (all kept)")
    resume: str | None = _opt(None, "'auto' (newest checkpoint in --output_dir, or start fresh) or a .pt path")
    fresh: bool = _opt(False, "start over in an --output_dir that holds only leftovers of a run (unreadable or "
                              "abandoned-* checkpoints, best_model.pt, the export): they are renamed abandoned-*; "
                              "refused where resumable checkpoints are")
    allow_val_in_train: bool = _opt(False, "accept a --val_dir equal to or inside --audio_dir (validation on "
                                           "training audio measures nothing held out)")

    def to_dict(self) -> dict:
        return asdict(self)


def check_codec_config(cfg: CodecConfig) -> None:
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(msg)

    need(cfg.audio_dir is not None, "--audio_dir is required: a folder of training audio")
    need(cfg.output_dir is not None, "--output_dir is required: the run directory")
    need(not (cfg.model_config and cfg.pretrained_model),
         "--model_config and --pretrained_model both given: the pretrained model brings its own config; drop one")
    need(cfg.max_steps >= 0, f"--max_steps must be >= 0, got {cfg.max_steps}")
    need(cfg.max_minutes is None or cfg.max_minutes > 0, f"--max_minutes must be > 0, got {cfg.max_minutes}")
    need(cfg.batch_size >= 1, f"--batch_size must be >= 1, got {cfg.batch_size}")
    need(cfg.segment_length > 0, f"--segment_length must be > 0 seconds, got {cfg.segment_length}")
    need(cfg.val_seconds > 0, f"--val_seconds must be > 0, got {cfg.val_seconds}")
    need(0 < cfg.lr_gamma <= 1, f"--lr_gamma must be in (0, 1], got {cfg.lr_gamma}")
    need(cfg.learning_rate > 0 and cfg.disc_learning_rate > 0, "learning rates must be > 0")
    need(cfg.threads is None or cfg.threads >= 1, f"--threads must be >= 1, got {cfg.threads}")
    need(cfg.precision in (None, "bf16", "fp32"), f"--precision must be bf16 or fp32, got {cfg.precision}")
    need(cfg.reseed_dead_codes >= 0, f"--reseed_dead_codes must be >= 0 steps, got {cfg.reseed_dead_codes}")
    need(cfg.log_every >= 1 and cfg.keep_last >= 1 and cfg.max_bad_steps >= 1,
         "--log_every, --keep_last and --max_bad_steps must be >= 1")
    need(not (cfg.fresh and cfg.resume), f"--fresh and --resume {cfg.resume} both given: drop one")
    if cfg.val_dir and not cfg.allow_val_in_train:
        val, train = Path(cfg.val_dir).resolve(), Path(cfg.audio_dir).resolve()
        need(not (val == train or train in val.parents or val in train.parents),
             f"--val_dir {cfg.val_dir} overlaps --audio_dir {cfg.audio_dir}: validation would score training audio; "
             "pass a held-out folder, or --allow_val_in_train to validate on it anyway")
    need(len(cfg.mpd_channels) == 5, f"--mpd_channels needs 5 channel counts, got {cfg.mpd_channels}")


def resolve_codec_config(argv: list[str] | None = None) -> CodecConfig:
    """defaults < --config JSON < explicit flags (the decoder trainer's rules), then validation."""
    parser = build_parser(CodecConfig, "Train a SNAC codec (encoder + VQ + decoder) on a folder of audio.")
    return resolve_dataclass_config(argv, CodecConfig, parser, check_codec_config)


# ============================================================================ model and data
def model_config_from(name_or_path: str | None) -> dict:
    """A preset name or a config.json path -> SNAC constructor arguments."""
    name = name_or_path or "snac_24khz"
    if name in PRESETS:
        return dict(PRESETS[name])
    if not Path(name).is_file():
        raise ConfigError(f"--model_config {name}: neither a preset ({', '.join(PRESETS)}) nor a JSON file")
    try:
        with open(name) as f:
            config = json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--model_config {name} is not valid JSON (line {e.lineno}: {e.msg})") from e
    if not isinstance(config, dict):
        raise ConfigError(f"--model_config {name} must hold a JSON object of SNAC constructor arguments")
    return config


def build_codec(cfg: CodecConfig) -> SNAC:
    """Random weights from the seed, or the pretrained model's (its config wins)."""
    config = expected_model_config(cfg)  # a bad config or model directory: one line, before any weights
    if cfg.pretrained_model:
        try:
            return SNAC.from_pretrained(cfg.pretrained_model)
        except (OSError, ValueError) as e:
            raise unloadable(cfg, e) from e
    torch.manual_seed(cfg.seed)
    return SNAC(**config)


def unloadable(cfg: CodecConfig, e: Exception) -> ConfigError:
    return ConfigError(f"--pretrained_model {cfg.pretrained_model}: cannot load a SNAC ({e}); pass a directory "
                       "with config.json + weights or a hub id")


def expected_model_config(cfg: CodecConfig) -> dict:
    """The config of the codec this run builds (SNAC's normalised form), without its weights."""
    if cfg.pretrained_model:
        try:
            config, _ = resolve_pretrained(cfg.pretrained_model)
        except (OSError, ValueError, RuntimeError) as e:
            raise unloadable(cfg, e) from e
    else:
        config = model_config_from(cfg.model_config)
    try:
        with torch.device("meta"):  # shapes only: no memory, no random init
            return SNAC(**config).config
    except TypeError as e:
        raise ConfigError(f"--model_config {cfg.model_config or cfg.pretrained_model}: not a SNAC config ({e})") from e


def window_samples(model: SNAC, seconds: float) -> int:
    """Whole pad multiples (hop * lcm(vq_strides[0], attention window)), at least one."""
    return max(1, round(seconds * model.sampling_rate / model.pad_multiple)) * model.pad_multiple


def load_clips(root: str, sample_rate: int, warn: Callable[[str], None], flag: str = "--audio_dir",
               max_seconds: float | None = None) -> list[torch.Tensor]:
    """Every file of a folder (or every row of a code cache: its target audio), mono float32 at
    ``sample_rate``, optionally only the first ``max_seconds``; unreadable files are skipped (warned)."""
    clips, skipped = [], []
    if (Path(root) / MANIFEST_NAME).is_file():
        from ..cache.reader import CodeCache

        try:
            cache = CodeCache(root)
        except (OSError, ValueError) as e:
            raise ConfigError(f"{flag} {root}: unreadable code cache ({e})") from e
        frames = None if max_seconds is None else math.ceil(max_seconds * cache.target_sample_rate)
        try:
            for i in range(len(cache)):
                try:
                    x = cache.audio(i, 0, frames)
                except (OSError, AudioError) as e:
                    raise ConfigError(f"{flag} {root}: cannot read the audio of row {i} ({e})") from e
                clips.append(resample(x, cache.target_sample_rate, sample_rate))
        finally:
            cache.close()
    else:
        for rel in find_audio_files(root):
            try:
                x, sr = load_audio(Path(root) / rel, mono=True)
            except AudioError as e:
                skipped.append(str(e))
                continue
            clips.append(resample(x if max_seconds is None else x[:math.ceil(max_seconds * sr)], sr, sample_rate))
    if skipped:
        warn(f"{flag}: skipped {len(skipped)} unreadable file(s); first: {skipped[0]}")
    clips = [torch.from_numpy(x).float() for x in clips if len(x)]
    if not clips:
        raise ConfigError(f"{flag} {root} holds no readable audio (wav/flac/ogg/mp3, or a code cache); "
                          "pass a folder of audio")
    return clips


class CodecForward(nn.Module):
    """The training forward as one module (what DDP wraps): (B, 1, T) with T a pad multiple ->
    (pred (B, 1, T), codes, commitment (B,), codebook (B,), latent z (B, D, T / hop) detached)."""

    def __init__(self, model: SNAC):
        super().__init__()
        self.model = model

    def forward(self, audio: torch.Tensor):
        z = self.model.encoder(audio)
        z_q, codes, commitment, codebook = self.model.quantizer.forward_train(z)
        return self.model.decoder(z_q), codes, commitment, codebook, z.detach()


# ============================================================================ codebook health
class CodebookHealth:
    """Per level: the last iteration each code was used (checkpointed), batch perplexity and usage,
    and the re-seeding of dead codes."""

    def __init__(self, model: SNAC, seed: int):
        self.quantizers = model.quantizer.quantizers
        size = self.quantizers[0].codebook.num_embeddings
        self.last_used = [torch.zeros(size, dtype=torch.long) for _ in self.quantizers]
        self.generator = torch.Generator().manual_seed(seed + 1)  # which batch vectors seed dead codes

    def observe(self, codes: list[torch.Tensor], iteration: int) -> dict[str, torch.Tensor]:
        """Count the batch's codes (over all ranks); -> {'vq/perplexity_i', 'vq/used_i'}."""
        out = {}
        for i, c in enumerate(codes):
            hist = all_reduce_sum(torch.bincount(c.flatten(), minlength=len(self.last_used[i])).float()).cpu()
            self.last_used[i][hist > 0] = iteration
            p = hist / hist.sum()
            entropy = -(p[p > 0] * p[p > 0].log()).sum()
            out[f"vq/perplexity_{i}"] = entropy.exp()
            out[f"vq/used_{i}"] = (hist > 0).float().mean()
        return out

    def dead(self, iteration: int, window: int) -> list[torch.Tensor]:
        """Per level, the indices of codes unused in the last ``window`` iterations."""
        return [torch.nonzero(iteration - last >= window).flatten() for last in self.last_used]

    @torch.no_grad()
    def reseed(self, z: torch.Tensor, iteration: int, window: int, optimizer: torch.optim.Optimizer) -> int:
        """Set every dead code to a random projected encoder output of this batch's residual at its
        level (z: (B, D, T) latent), mark it used, and zero its AdamW moments. Rank 0's choice is
        broadcast. Returns the number of codes re-seeded."""
        dead = self.dead(iteration, window)
        if not any(len(d) for d in dead):
            return 0
        residual = z
        for q, idx in zip(self.quantizers, dead):
            pooled = nn.functional.avg_pool1d(residual, q.stride, q.stride) if q.stride > 1 else residual
            if len(idx):
                z_e = q.in_proj(pooled).transpose(1, 2).reshape(-1, q.codebook.embedding_dim)  # (B*T_i, d)
                rows = torch.randint(0, len(z_e), (len(idx),), generator=self.generator).to(z_e.device)
                weight = q.codebook.weight
                weight[idx.to(weight.device)] = z_e[rows].to(weight.dtype)
                if dist.is_initialized():
                    dist.broadcast(weight.data, src=0)
                for moment in optimizer.state.get(weight, {}).values():
                    if torch.is_tensor(moment) and moment.shape == weight.shape:
                        moment[idx.to(moment.device)] = 0
            residual = residual - q(residual)[0]
        for last, idx in zip(self.last_used, dead):
            last[idx] = iteration
        return sum(len(d) for d in dead)

    def state_dict(self) -> dict:
        return {"last_used": self.last_used, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.last_used = [t.clone() for t in state["last_used"]]
        self.generator.set_state(state["generator"])


def epoch_checkpoint_name(out: Path, epoch: int, iteration: int, log: RunLog) -> str:
    """checkpoint_epoch{E}.pt, unless that file already holds another iteration (the epoch length changed
    across a resume: other audio, or another window count): then checkpoint_epoch{E}_iter{I}.pt, so an
    epoch checkpoint, which is kept for good, is never replaced by a different model."""
    name = f"checkpoint_epoch{epoch}.pt"
    if not (out / name).is_file():
        return name
    try:
        held = int(load_checkpoint(out / name, mmap=True)["iteration"])
    except (ValueError, KeyError):
        held = None  # unreadable: keep it as it is, for whoever looks
    if held == iteration:  # the same iteration again (a crash before latest.pt was written): the same model
        return name
    other = f"checkpoint_epoch{epoch}_iter{iteration}.pt"
    why = ("is unreadable" if held is None
           else f"holds iteration {held}, not {iteration} (the epoch length changed across a resume)")
    log.line(f"{name} {why}: kept, this epoch end saved as {other}")
    return other


# ============================================================================ one step
def set_lrs(cfg: CodecConfig, optimizer: torch.optim.Optimizer, adversary: Adversary | None, iteration: int) -> float:
    """lr = lr0 * gamma^iteration for both networks (a function of the step: resume needs nothing else)."""
    decay = cfg.lr_gamma ** iteration
    for group in optimizer.param_groups:
        group["lr"] = cfg.learning_rate * decay
    if adversary is not None:
        for group in adversary.optimizer.param_groups:
            group["lr"] = cfg.disc_learning_rate * decay
    return cfg.learning_rate * decay


def codec_step(step_model: nn.Module, audio: torch.Tensor, mask: torch.Tensor, cfg: CodecConfig,
               sample_rate: int, params: list[nn.Parameter], adversary: Adversary | None,
               autocast: Callable) -> tuple[dict[str, torch.Tensor], torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """Forward, discriminator step (applied), codec gradients (not applied).
    Returns (named 0-dim scalars, finite (0-dim bool), codes, latent z (detached))."""
    with autocast():
        pred, codes, commitment, codebook, z = step_model(audio)
    metrics: dict[str, torch.Tensor] = {}
    finite = torch.ones((), dtype=torch.bool, device=audio.device)
    if adversary is not None:
        metrics, finite = adversary.discriminator_step(audio, pred, mask, cfg.disc_grad_clip, autocast)
    losses = {"loss/mel": mel_loss(pred.float(), audio, mask, sample_rate).mean(),
              "loss/commitment": commitment.float().mean(), "loss/codebook": codebook.float().mean()}
    if adversary is not None and not adversary.generator_waits:
        losses.update(adversary.generator_terms(audio, pred, mask, autocast))
    total = sum(getattr(cfg, weight) * losses[name] for name, weight in LOSS_TERMS if name in losses)
    total.backward()
    grad_norm = clip_and_norm(params, cfg.grad_clip)
    metrics.update({k: v.detach() for k, v in losses.items()})
    metrics["loss/total"], metrics["grad_norm"] = total.detach(), grad_norm.detach()
    return metrics, finite & torch.isfinite(total) & torch.isfinite(grad_norm), codes, z


# ============================================================================ the run
EXIT_BAD_INPUT, EXIT_FAILED, EXIT_BAD_STEPS = 2, 1, 3


@dataclass
class CodecRun:
    """Everything a checkpoint restores, and where the run writes."""

    cfg: CodecConfig
    model: SNAC
    optimizer: torch.optim.Optimizer
    adversary: Adversary | None
    data: LazyAudioWindows
    health: CodebookHealth
    dist_info: DistInfo
    out: Path
    iteration: int = 0
    bad_in_row: int = 0
    bad_total: int = 0
    best_val: float = math.inf

    def state_dict(self) -> dict:
        """One checkpoint dict; every rank calls it (RNG and data states are gathered)."""
        state = {"kind": CHECKPOINT_KIND, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "iteration": self.iteration, "bad_total": self.bad_total, "best_val": self.best_val,
                 "config": self.cfg.to_dict(),
                 "model_config": self.model.config, "health": self.health.state_dict(),
                 "rng": gather_objects(rng_state()), "data": gather_objects(self.data.state_dict()),
                 "world_size": self.dist_info.world_size,
                 "epoch_iterations": self.data.epoch_steps(self.cfg.batch_size)}
        if self.adversary is not None:
            state["discriminator"] = self.adversary.state_dict()
        return state

    def load_state_dict(self, ckpt: dict, warn: Callable[[str], None]) -> None:
        """Restore a checkpoint that codec_preflight accepted (this trainer's, this codec's config)."""
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.adversary is not None:
            self.adversary.restore(ckpt, warn)
        self.health.load_state_dict(ckpt["health"])
        self.iteration, self.bad_total = int(ckpt["iteration"]), int(ckpt.get("bad_total", 0))
        self.best_val = float(ckpt.get("best_val", math.inf))
        changed = changed_settings(ckpt.get("config", {}), self.cfg.to_dict(), VALIDATION_KEYS)
        if changed and self.best_val < math.inf:
            warn(f"best val mel {self.best_val:.4f} forgotten: the validation changed ({'; '.join(changed)})")
            self.best_val = math.inf
        on_disk, note = best_val_on_disk(self.out, "best_val", self.cfg.to_dict(), VALIDATION_KEYS)
        if note:
            warn(note)
        if on_disk < self.best_val:
            warn(f"best val mel {on_disk:.4f} of best_model.pt kept (the checkpoint resumed had {self.best_val:.4f}): "
                 "only a better model replaces best_model.pt")
            self.best_val = on_disk
        rank, world = self.dist_info.rank, self.dist_info.world_size
        if len(ckpt["rng"]) == world:  # same world size: every stream continues where it was
            set_rng_state(ckpt["rng"][rank])
            self.data.load_state_dict(ckpt["data"][rank])
        else:
            warn(f"world size {len(ckpt['rng'])} -> {world}: new random streams from --seed and the iteration; "
                 "the window stream continues")
            torch.manual_seed(self.cfg.seed + rank + self.iteration)
            self.data.load_state_dict(ckpt["data"][0])  # one global stream position: the same on every rank

    def save(self, names: list[str], log: RunLog) -> None:
        ckpt = self.state_dict()
        if not self.dist_info.is_main:
            return
        first = save_checkpoint(ckpt, self.out / names[0])
        for name in names[1:]:
            link_atomic(first, self.out / name)
        if any(n.startswith("checkpoint_iter") for n in names):
            rotate_checkpoints(self.out, self.cfg.keep_last)
        log.line(f"saved {', '.join(names)} (iteration {self.iteration})")
        log.update_status(latest_checkpoint=str(self.out / "latest.pt"))


@torch.no_grad()
def validate(model: SNAC, clips: list[torch.Tensor], seed: int, device: torch.device, dist_info: DistInfo) -> float:
    """Mean mel distance of the codec on every val clip (each rank its share, summed over ranks). The
    model noise is seeded per clip inside a forked RNG: the training streams continue untouched."""
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for i in range(dist_info.rank, len(clips), dist_info.world_size):
            torch.manual_seed(seed + i)
            x = clips[i].to(device).view(1, 1, -1)
            pred, _ = model(x)
            total[0] += mel_loss(pred.float(), x, torch.ones_like(x), model.sampling_rate).sum().double()
            total[1] += 1
    model.train(was_training)
    total = all_reduce_sum(total)
    return float(total[0] / total[1])


# settings that only say where, how often or how far: a resume may change them without a word
UNLOGGED_CHANGES = {"config", "resume", "output_dir", "export", "device", "threads", "max_steps", "max_minutes",
                    "log_every", "checkpoint_every", "checkpoint_minutes", "keep_last"}


def train_codec(cfg: CodecConfig, dist_info: DistInfo, device: torch.device, log: RunLog, stop: StopFlag,
                resume_path: Path | None, clock: Callable[[], float] = time.monotonic) -> str:
    """Train to --max_steps (or a signal) from ``resume_path`` (or fresh); returns 'finished',
    'stopped' or 'bad_steps'."""
    # ---- model, optimizers, data
    out = Path(cfg.output_dir)
    model = build_codec(cfg).to(device).train()
    rate = model.sampling_rate
    adversary = Adversary(cfg, dist_info, device, sample_rate=rate) if cfg.adversarial else None
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=GEN_BETAS, weight_decay=cfg.weight_decay)
    window = window_samples(model, cfg.segment_length)
    data = LazyAudioWindows(cfg.audio_dir, rate, window, cfg.seed, dist_info.rank, dist_info.world_size,
                            warn=log.line)
    val_clips = load_clips(cfg.val_dir, rate, log.line, "--val_dir", cfg.val_seconds) if cfg.val_dir else None
    epoch_its = data.epoch_steps(cfg.batch_size)
    run = CodecRun(cfg, model, optimizer, adversary, data, CodebookHealth(model, cfg.seed), dist_info, out)
    step_model: nn.Module = CodecForward(model)
    if dist_info.enabled:
        step_model = nn.parallel.DistributedDataParallel(
            step_model, device_ids=[device.index] if device.type == "cuda" else None)
    precision = cfg.precision or ("bf16" if device.type == "cuda" else "fp32")

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()

    # ---- state: fresh or resumed
    if resume_path is not None:
        ckpt = load_checkpoint(resume_path)
        run.load_state_dict(ckpt, log.line)
        now = cfg.to_dict()  # a recipe change still resumes (e.g. --adversarial after a mel-only start)
        changed = changed_settings(ckpt.get("config", {}), now, set(now) - UNLOGGED_CHANGES)
        before = ckpt.get("epoch_iterations")
        if before is not None and int(before) != epoch_its:
            log.line(f"an epoch is {epoch_its} iterations now, {int(before)} in the run resumed (other audio or "
                     "window count): epochs are counted from iteration 0 with the new length")
        del ckpt
        log.line(f"resumed from {resume_path} at iteration {run.iteration}"
                 + (f"; changed settings: {', '.join(changed)}" if changed else ""))
        log.metrics({"type": "resume", "iteration": run.iteration, "checkpoint": str(resume_path), "time": time.time()})
    else:
        if cfg.resume == "auto":
            log.line(f"no checkpoint in {out}: starting fresh")
        torch.manual_seed(cfg.seed + dist_info.rank)  # the model noise differs between ranks
    log.line(f"codec {count(params)} parameters at {rate} Hz (hop {model.hop_length}, strides {model.vq_strides}, "
             f"{len(model.vq_strides)} x {model.config['codebook_size']} codes); {data.num_files} files, "
             f"{data.seconds:.1f} s of audio ({data.num_windows} windows); windows {window} samples ({window / rate:.3f} s) x {cfg.batch_size} "
             f"x {dist_info.world_size}; {cfg.max_steps} iterations, {epoch_its} an epoch; "
             f"threads {torch.get_num_threads()}")
    if val_clips is not None:
        log.line(f"validation: {len(val_clips)} files of {cfg.val_dir}, first {cfg.val_seconds:g} s of each "
                 f"({sum(len(c) for c in val_clips) / rate:.1f} s), at every epoch end and at the end")
    if adversary is not None:
        log.line(f"adversarial: {adversary.describe()}")
    started = last_save = clock()
    last_saved_it = run.iteration if resume_path is not None else -1
    meter = Throughput(clock, run.iteration)
    last_val_it = -1

    def validate_now() -> bool:
        """Validate, log, remember the best; True when this one is the best so far."""
        nonlocal last_val_it
        val = validate(model, val_clips, cfg.seed, device, dist_info)
        improved, last_val_it = val < run.best_val, run.iteration
        run.best_val = min(run.best_val, val)
        log.line(f"val mel {val:.4f} at iteration {run.iteration} (epoch {run.iteration / epoch_its:.2f}; best "
                 f"{run.best_val:.4f}{', new best' if improved else ''})")
        log.metrics({"type": "val", "iteration": run.iteration, "val/mel": val, "best_val": run.best_val,
                     "time": time.time()})
        log.update_status(val_loss=val, best_val_loss=run.best_val, val_mel=val)
        return improved

    # ---- steps
    result = "finished"
    while run.iteration < cfg.max_steps:
        lr = set_lrs(cfg, optimizer, adversary, run.iteration)
        audio, mask = (t.to(device) for t in data.sample(cfg.batch_size))
        metrics, finite, codes, z = codec_step(step_model, audio, mask, cfg, rate, params, adversary, autocast)
        now = clock()  # the clocks are read on rank 0 only; the flags are agreed
        timer_due = dist_info.is_main and cfg.checkpoint_minutes > 0 and now - last_save >= cfg.checkpoint_minutes * 60
        out_of_time = dist_info.is_main and cfg.max_minutes is not None and now - started >= cfg.max_minutes * 60
        flags = torch.tensor([float(not finite), float(stop.signum is not None), float(timer_due), float(out_of_time)])
        bad, stop_now, timer_due, out_of_time = agree_any(flags.to(device))
        if bad:
            run.bad_in_row, run.bad_total = run.bad_in_row + 1, run.bad_total + 1
        else:
            optimizer.step()
            run.bad_in_row = 0
        optimizer.zero_grad(set_to_none=True)
        run.iteration += 1
        maybe_fault("step", run.iteration)
        metrics.update(run.health.observe(codes, run.iteration))
        if cfg.reseed_dead_codes and not bad:
            metrics["vq/reseeded"] = torch.tensor(
                float(run.health.reseed(z, run.iteration, cfg.reseed_dead_codes, optimizer)))
        meter.add(cfg.batch_size * dist_info.world_size, window / rate)
        if bad:
            log.line(f"non-finite loss or gradient at iteration {run.iteration}: step skipped "
                     f"({run.bad_in_row} in a row, {run.bad_total} in total)")
            if run.bad_in_row >= cfg.max_bad_steps:
                log.update_status(state="failed", error=f"{run.bad_in_row} non-finite steps in a row")
                return "bad_steps"
        # ---- maybe log, maybe checkpoint
        if run.iteration % cfg.log_every == 0 and dist_info.is_main:
            log_codec_step(run, log, meter, metrics, lr)
        names = []
        if cfg.checkpoint_every > 0 and run.iteration % cfg.checkpoint_every == 0:
            names.append(f"checkpoint_iter{run.iteration}.pt")
        if run.iteration % epoch_its == 0:  # epoch end: validate first, so the checkpoints hold its best
            if cfg.epoch_checkpoints:
                names.append(epoch_checkpoint_name(out, run.iteration // epoch_its, run.iteration, log))
            if val_clips is not None and validate_now():
                names.append("best_model.pt")
        if names or timer_due:
            run.save(names + ["latest.pt"], log)
            last_save, last_saved_it = clock(), run.iteration
        if stop_now:
            result = "stopped"
            log.line("stop signal received: saving and exiting")
            break
        if out_of_time:
            log.line(f"time limit reached (--max_minutes {cfg.max_minutes:g}) at iteration {run.iteration}")
            break

    # ---- exit: latest.pt first (a stop's grace period may end soon), then one validation if this
    # iteration had none, so best_model.pt exists after every run with val data; the plain SNAC export
    if last_saved_it != run.iteration:
        run.save(["latest.pt"], log)
    if val_clips is not None:
        best = last_val_it != run.iteration and validate_now()
        missing = dist_info.is_main and not best and not (out / "best_model.pt").exists()
        if agree_any(torch.tensor([float(missing)], device=device))[0]:  # run.save is collective
            log.line("best_model.pt is missing: this iteration's codec written as best_model.pt")
            best = True
        if best:
            run.save(["best_model.pt", "latest.pt"], log)  # latest.pt holds the new best too
    if dist_info.is_main:
        export = Path(cfg.export or out / "model")
        model.save_pretrained(export)
        log.line(f"{result} at iteration {run.iteration}; exported SNAC to {export} (SNAC.from_pretrained)")
        log.update_status(state=result, iteration=run.iteration, export=str(export))
    return result


def log_codec_step(run: CodecRun, log: RunLog, meter: Throughput, metrics: dict, lr: float) -> None:
    """The log line, metrics.jsonl row, TensorBoard scalars and status.json of this step."""
    m = {k: v.item() for k, v in metrics.items()}
    it, total = run.iteration, run.cfg.max_steps
    pace = meter.read(it, total, run.cfg.max_minutes)
    levels = len(run.health.last_used)
    terms = " ".join(f"{name.split('/')[1]} {m[name]:.4f}" for name, _ in LOSS_TERMS if name in m)
    health = " ".join(f"{m[f'vq/perplexity_{i}']:.1f}/{m[f'vq/used_{i}']:.3f}" for i in range(levels))
    disc = f" | disc {m['disc/loss']:.4f} grad {m['disc/grad_norm']:.3g}" if "disc/loss" in m else ""
    log.line(f"it {it}/{total} | loss {m['loss/total']:.4f} {terms} | grad {m['grad_norm']:.3g}{disc} | "
             f"vq ppl/used {health}{' reseeded ' + str(int(m['vq/reseeded'])) if m.get('vq/reseeded') else ''} | "
             f"lr {lr:.3g} | {pace['samples_per_s']:.1f} samples/s | {pace['step_s'] * 1000:.0f} ms/step | "
             f"eta {format_duration(pace['eta_s'])}")
    log.metrics({"type": "train", "iteration": it, "phase": "codec", **m, "lr": lr,
                 "samples_per_s": pace["samples_per_s"], "audio_s_per_s": pace["audio_s_per_s"],
                 "step_s": pace["step_s"], "eta_s": pace["eta_s"], "bad_steps": run.bad_total, "time": time.time()})
    log.update_status(state="running", iteration=it, phase="codec", train_loss=m["loss/total"],
                      grad_norm=m["grad_norm"], samples_per_s=pace["samples_per_s"], eta_s=pace["eta_s"],
                      loss_mel=m.get("loss/mel"), loss_adv=m.get("loss/adv"), loss_feat=m.get("loss/feat"),
                      disc_loss=m.get("disc/loss"), disc_real=m.get("disc/real"), disc_fake=m.get("disc/fake"),
                      disc_grad_norm=m.get("disc/grad_norm"))


def codec_preflight(cfg: CodecConfig) -> tuple[Path | None, int | None, list[str], list[Path]]:
    """Every check of the run directory and --resume, reading only (rundir's rules, as the decoder
    trainer's). -> (checkpoint to resume or None, its iteration when --resume named it, log notes,
    leftovers a --fresh start sets aside). Raises PreflightError / ConfigError with one line."""
    check_output_dir(cfg.output_dir)
    out = Path(cfg.output_dir)
    path, notes, left = choose_resume(out, cfg.resume, cfg.fresh, Path(cfg.export) if cfg.export else out / "model")
    if path is None:
        return None, None, notes, left
    state = check_resume_file(str(path))
    if state.get("kind") != CHECKPOINT_KIND:
        raise PreflightError(f"--resume {path} is not a checkpoint of train_codec.py; resume it with its own trainer")
    expected = expected_model_config(cfg)
    differ = [f"{k} {state['model_config'].get(k)} vs {v}" for k, v in expected.items()
              if state["model_config"].get(k) != v]
    if differ:
        raise PreflightError(f"--resume {path} holds a codec of another config ({'; '.join(differ)} of this run); "
                             "resume with the same --model_config / --pretrained_model or a new --output_dir")
    return path, (int(state["iteration"]) if cfg.resume != "auto" else None), notes, left


def run_codec_training(cfg: CodecConfig, clock: Callable[[], float] = time.monotonic) -> int:
    """The whole run with its run directory; returns the exit status (0, 1 failed, 2 bad input, 3 bad steps)."""
    import sys
    import traceback

    from .distributed import barrier, cleanup, setup_dist

    try:
        dist_info, device = setup_dist(cfg.device or ("0" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    if device.type == "cpu" or cfg.threads:
        torch.set_num_threads(cfg.threads or 1)
    out = Path(cfg.output_dir)
    try:
        resume_path, explicit_it, notes, left = codec_preflight(cfg)  # reads only
        lock = lock_run_dir(out, dist_info, device)  # a second trainer on this directory stops here
    except (PreflightError, ConfigError) as e:
        if dist_info.is_main:
            print(f"error: {e}", file=sys.stderr, flush=True)
        cleanup()
        return EXIT_BAD_INPUT
    # ---- only now is anything in the run directory renamed or written
    if dist_info.is_main:
        notes += prepare_run_dir(out, explicit_it, left)
        write_json_atomic(out / "config.json", cfg.to_dict())
    barrier()
    resume_it = int(load_checkpoint(resume_path, mmap=True)["iteration"]) if resume_path else None
    # TensorBoard drops the events of an interrupted run past its checkpoint (they are redone)
    log = RunLog(out if dist_info.is_main else None, purge_step=None if resume_it is None else resume_it + 1)
    for note in notes:
        log.line(note)
    log.update_status(state="running", pid=os.getpid(), device=str(device), start_time=time.time(), epoch=None,
                      epochs=None, total_iterations=cfg.max_steps, phase="codec", error=None)
    stop = StopFlag()
    stop.install()
    try:
        result = train_codec(cfg, dist_info, device, log, stop, resume_path, clock)
        return {"finished": 0, "stopped": 0, "bad_steps": EXIT_BAD_STEPS}[result]
    except ConfigError as e:
        log.line(f"error: {e}")
        log.update_status(state="failed", error=str(e))
        print(f"error: {e}", file=sys.stderr, flush=True)
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
        if lock is not None:
            lock.close()
