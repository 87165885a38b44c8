#!/usr/bin/env python
"""Benchmark of the trainer's step: data loading, trainer overhead, throughput, precision, memory.

    uv run python benchmarks/bench_train.py                       # tiny model on CPU, synthetic cache
    uv run python benchmarks/bench_train.py --arch snac_24khz --device 0 --batch_size 32 --segment_length 4
    uv run python benchmarks/bench_train.py --cache CACHE_DIR --pretrained_model DIR_OR_HUB_ID --compile

Prints (a) DataLoader time per batch vs train-step time (goal: loader <= 0.1x step), (b) the full
trainer step (finetune_decoder_48khz.py's loop, measured from its own metrics) vs a bare
forward/backward/optimizer step on the same batch (goal: <= 5% overhead), (c) samples/s and audio
seconds per second, (d) on CUDA only: bf16 autocast vs fp32 step time and peak memory per batch
size; with --compile, torch.compile vs eager; (e) with --adversarial: the adversarial step
(discriminators + mel + adversarial and feature losses, both optimizers) against the plain step on
the same batch, time and peak memory as ratios (peak memory: CUDA allocator peak; on CPU the
process's RSS high-water mark, which only grows). Without --cache a synthetic cache (random codes,
generated audio as FLAC files) is written to a temporary directory.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from snac import SNAC, SNAC48, load_model  # noqa: E402
from snac.cache.encode import LoadedItem  # noqa: E402
from snac.cache.format import model_settings, shard_schema, write_manifest  # noqa: E402
from snac.cache.writer import ShardWriter  # noqa: E402
from snac.presets import SNAC_24KHZ, TINY_24KHZ  # noqa: E402
from snac.train.adversarial import Adversary  # noqa: E402
from snac.train.losses import reconstruction_loss  # noqa: E402
from snac.train.config import TrainConfig, resolve_config  # noqa: E402
from snac.train.distributed import DistInfo  # noqa: E402
from snac.train.phases import set_phase  # noqa: E402
from snac.train.plan import preflight  # noqa: E402
from snac.train.step import DecodeOnly, make_loaders  # noqa: E402
from snac.train.windows import WindowSampler  # noqa: E402

ARCHS = {"snac_24khz": SNAC_24KHZ, "tiny": TINY_24KHZ}


def load_trainer():
    spec = importlib.util.spec_from_file_location("finetune_decoder_48khz", REPO / "finetune_decoder_48khz.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def synthetic_cache(directory: Path, config: dict, rows: int, seconds: float, target_rate: int) -> Path:
    """Rows of random codes and a matching-length generated signal (FLAC files, read partially)."""
    directory.mkdir(parents=True)
    audio_root = directory.parent / "audio"
    audio_root.mkdir()
    model_rate, strides = config["sampling_rate"], config["vq_strides"]
    per_token = strides[0] * math.prod(config["encoder_rates"])  # model-rate samples per coarse token
    writer = ShardWriter(directory, 0, shard_schema(len(strides), config["codebook_size"], False), 100_000)
    rng = np.random.default_rng(0)
    for i in range(rows):
        n = max(1, round(seconds * rng.uniform(0.6, 1.4) * model_rate / per_token))
        codes = [rng.integers(0, config["codebook_size"], n * strides[0] // s) for s in strides]
        frames = n * per_token * target_rate // model_rate
        t = np.arange(frames) / target_rate
        x = (0.3 * np.sin(2 * np.pi * rng.uniform(100, 300) * t) + 0.01 * rng.standard_normal(frames)).astype(np.float32)
        sf.write(audio_root / f"r{i:05d}.flac", x, target_rate)
        writer.add(LoadedItem(path=f"r{i:05d}.flac", row_id=f"r{i:05d}", audio=None, duration=frames / target_rate,
                              num_samples=frames, sample_rate=target_rate, channels=1, flac=None), codes)
    writer.flush()
    write_manifest(directory, model_settings("bench", config, target_rate, False, str(audio_root)))
    return directory


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(step, device: torch.device, steps: int) -> float:
    """Median wall time of ``step()`` over ``steps`` runs, after two warm-up runs (allocator,
    autotuning, compilation)."""
    times = []
    for i in range(steps + 2):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bare_steps(model, batch, cfg: TrainConfig, device, precision: str, steps: int, compile_model: bool) -> float:
    """Seconds per bare step: forward, loss, backward, AdamW step on one resident batch."""
    set_phase(model, "unfreeze")
    step_model = torch.compile(DecodeOnly(model)) if compile_model else DecodeOnly(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-6)
    codes = [c.to(device) for c in batch["codes"]]
    audio, mask = batch["audio"].to(device), batch["mask"].to(device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            pred = step_model(codes)
        loss = reconstruction_loss(pred, audio, mask, cfg.n_ffts, cfg.l1_weight, cfg.stft_weight)["loss/total"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return median_seconds(step, device, steps)


def adversarial_steps(model, batch, cfg: TrainConfig, device, precision: str, steps: int) -> float:
    """Seconds per bare adversarial step (discriminator + generator, both AdamW steps) on one batch."""
    set_phase(model, "unfreeze")
    adversary = Adversary(cfg, DistInfo(), device)
    adversary.disc_steps = cfg.disc_start_step  # the full step: the generator trains too
    step_model = DecodeOnly(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-6)
    b = {"codes": [c.to(device) for c in batch["codes"]], "audio": batch["audio"].to(device),
         "mask": batch["mask"].to(device)}

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def step() -> None:
        adversary.train_step(step_model, b, cfg, params, autocast)  # steps the discriminators itself
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return median_seconds(step, device, steps)


def peak_memory(device: torch.device) -> float:
    """GiB: the CUDA allocator's peak since the last reset, or on CPU the process's RSS high-water mark."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def bench_adversarial(model, batch, cfg: TrainConfig, device, precisions: list[str], steps: int) -> None:
    """(e) adversarial vs plain step on the same batch, per precision: time and peak memory ratios."""
    print("\n| precision | plain ms/step | adversarial ms/step | time ratio | plain peak GiB | adversarial peak GiB "
          "| memory ratio |\n|---|---|---|---|---|---|---|")
    for prec in precisions:
        row = []
        for fn in (lambda: bare_steps(model, batch, cfg, device, prec, steps, False),
                   lambda: adversarial_steps(model, batch, cfg, device, prec, steps)):
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            row.append((fn(), peak_memory(device)))
        (plain_s, plain_m), (adv_s, adv_m) = row
        print(f"| {prec} | {plain_s * 1e3:.1f} | {adv_s * 1e3:.1f} | {adv_s / plain_s:.2f}x | {plain_m:.2f} | "
              f"{adv_m:.2f} | {adv_m / plain_m:.2f}x |")
    print(f"(discriminators: {Adversary(cfg, DistInfo(), torch.device('cpu')).describe()})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", choices=list(ARCHS), default=None,
                   help="random-init architecture when no --pretrained_model (default: snac_24khz on CUDA, tiny on CPU)")
    p.add_argument("--pretrained_model", default=None)
    p.add_argument("--cache", default=None, help="a code cache (default: a synthetic one)")
    p.add_argument("--rows", type=int, default=96)
    p.add_argument("--device", default="0" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--segment_length", type=float, default=1.0)
    p.add_argument("--n_ffts", default="1024,2048,4096,8192")
    p.add_argument("--num_workers", type=int, default=TrainConfig.num_workers)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--memory_batch_sizes", default="8,16,32", help="CUDA only: batch sizes for peak memory")
    p.add_argument("--compile", action="store_true", help="also time torch.compile against eager")
    p.add_argument("--adversarial", action="store_true",
                   help="(e) time the adversarial step against the plain one (fp32, and bf16 on CUDA)")
    p.add_argument("--mpd_channels", default=None, help="--adversarial: period discriminator channels "
                                                         "(default: the trainer's, HiFi-GAN's)")
    p.add_argument("--mrd_channels", type=int, default=None, help="--adversarial: band stack channels")
    args = p.parse_args()
    trainer = load_trainer()
    device = torch.device("cpu" if args.device == "cpu" else f"cuda:{args.device}")
    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))

    # ---- model and data
    if args.pretrained_model:
        model_spec = args.pretrained_model
        base = load_model(model_spec)
        base_config = base.config["base"] if "base" in base.config else base.config
    else:
        base_config = ARCHS[args.arch or ("snac_24khz" if device.type == "cuda" else "tiny")]
        SNAC(**base_config).save_pretrained(tmp / "model")
        model_spec = str(tmp / "model")
    cache = args.cache or str(synthetic_cache(tmp / "cache", base_config, args.rows, 3 * args.segment_length, 48000))
    flags = ["--pretrained_model", model_spec, "--train_codes", cache, "--device", args.device,
             "--batch_size", str(args.batch_size), "--segment_length", str(args.segment_length),
             "--n_ffts", args.n_ffts, "--num_workers", str(args.num_workers), "--warmup_epochs", "0",
             "--epochs", "1000", "--checkpoint_every", "0", "--checkpoint_minutes", "0"]
    cfg = resolve_config(flags + ["--output_dir", str(tmp / "probe")])
    dist_info = DistInfo()
    plan = preflight(cfg, dist_info)
    precision = cfg.precision or ("bf16" if device.type == "cuda" else "fp32")
    sampler = WindowSampler(plan.train_coarse, cfg.seed)
    e = plan.epochs[0]
    sampler.configure(e["tokens"], e["batch"], plan.geometry.token_multiple)
    loader, _ = make_loaders(cfg, plan, sampler, dist_info, device)
    seconds = e["seconds"]
    print(f"device {device}{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; model {model_spec}; "
          f"batch {args.batch_size} x {seconds:.3f} s windows; {precision}; num_workers {args.num_workers}")

    # ---- (a) loader alone
    it = iter(loader)
    first = next(it)  # worker start-up excluded
    t0 = time.perf_counter()
    n = 0
    for _ in range(args.steps):
        try:
            next(it)
        except StopIteration:
            break
        n += 1
    loader_s = (time.perf_counter() - t0) / max(n, 1)
    del it

    # ---- (b) bare step on one resident batch
    torch.manual_seed(0)
    base = load_model(model_spec)
    model = (base if isinstance(base, SNAC48) else SNAC48.from_snac(base)).to(device).train()
    bare_s = bare_steps(model, first, cfg, device, precision, args.steps, compile_model=False)

    # ---- (b, c) the full trainer loop, timed by its own metrics (log window = the last `steps` steps)
    out = tmp / "run"
    run_cfg = resolve_config(flags + ["--output_dir", str(out), "--max_steps", str(2 * args.steps),
                                      "--log_every", str(args.steps)] + (["--compile"] if args.compile else []))
    assert trainer.train(run_cfg) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if r["type"] == "train"][-1]
    trainer_s = last["step_s"]

    print("\n| measure | value |\n|---|---|")
    print(f"| (a) loader time per batch (alone, {args.num_workers} workers) | {loader_s * 1e3:.1f} ms |")
    print(f"| (a) bare train step | {bare_s * 1e3:.1f} ms |")
    print(f"| (a) loader / step | {loader_s / bare_s:.3f} (goal <= 0.1) |")
    print(f"| (b) full trainer step (loop incl. data wait, agreement, logging) | {trainer_s * 1e3:.1f} ms |")
    print(f"| (b) trainer overhead vs bare step | {100 * (trainer_s / bare_s - 1):+.1f} % (goal <= 5 %) |")
    print(f"| (c) samples/s (trainer) | {last['samples_per_s']:.1f} |")
    print(f"| (c) audio seconds per second (trainer) | {last['audio_s_per_s']:.1f} |")

    # ---- (d) CUDA: precision and memory; compile
    if args.adversarial:
        disc = (["--mpd_channels", args.mpd_channels] if args.mpd_channels else []) + \
               (["--mrd_channels", str(args.mrd_channels)] if args.mrd_channels else [])
        adv_cfg = resolve_config(flags + ["--output_dir", str(tmp / "probe"), "--adversarial"] + disc)
        bench_adversarial(model, first, adv_cfg, device, ["fp32", "bf16"] if device.type == "cuda" else ["fp32"],
                          args.steps)
    if args.compile:
        compiled_s = bare_steps(model, first, cfg, device, precision, args.steps, compile_model=True)
        print(f"| torch.compile bare step | {compiled_s * 1e3:.1f} ms ({bare_s / compiled_s:.2f}x eager) |")
    if device.type != "cuda":
        print("\n(d) skipped: bf16 vs fp32 and peak memory are measured on CUDA only")
        return
    print("\n| batch | fp32 ms/step | bf16 ms/step | bf16 speed-up | fp32 peak GiB | bf16 peak GiB |\n|---|---|---|---|---|---|")
    for bs in [int(b) for b in args.memory_batch_sizes.split(",")]:
        batch = {k: (v[:1].repeat(bs, *[1] * (v.dim() - 1)) if torch.is_tensor(v) else
                     [c[:1].repeat(bs, 1) for c in v]) for k, v in first.items()}
        row = []
        for prec in ("fp32", "bf16"):
            torch.cuda.reset_peak_memory_stats(device)
            try:
                row.append((bare_steps(model, batch, cfg, device, prec, max(3, args.steps // 2), False),
                            torch.cuda.max_memory_allocated(device) / 2**30))
            except torch.OutOfMemoryError:
                row.append((math.nan, math.nan))
                torch.cuda.empty_cache()
        (f32, m32), (b16, m16) = row
        print(f"| {bs} | {f32 * 1e3:.1f} | {b16 * 1e3:.1f} | {f32 / b16:.2f}x | {m32:.2f} | {m16:.2f} |")


if __name__ == "__main__":
    main()
