#!/usr/bin/env python
"""Benchmark the caching pipeline: encoder batch fill in list vs length-sorted order, and the
pipeline against the encoder alone (same process, same model, same batches).

  uv run python benchmarks/bench_cache.py --model tiny --threads 1      # ~2 minutes on one CPU thread
  uv run python benchmarks/bench_cache.py --model full --device cuda:0 --encode_files 3000
  uv run python benchmarks/bench_cache.py --pretrained_model DIR_OR_HUB_ID --device cuda:0

Generates --files utterances with log-normal lengths (median 4 s, --sigma) at mixed rates
(16/24/44.1/48 kHz, some stereo, wav and flac), then for list order and for sorted order
(cache_codes_multigpu.py's default, --no-sort_by_length turns it off):
  (1) batch fill: one caching worker (snac.cache.run_worker) over all the files with a stub
      encoder (codes of the right shape at no cost); prints the worker's own mean batch fill and
      the files/s and audio-hours/s of everything around the model (headers, read, mono,
      resample, parquet);
  (2) throughput: every k-th file (--encode_files of them, the same length mix) with the model:
      (a) the encoder alone on the worker's batches, preloaded on the device, and (b) the worker's
      whole pipeline; prints the ratio (b)/(a), goal >= 0.9 (I/O, resampling and writing hidden
      behind the encoder).
  (0) batching alone at corpus scale (--plan_files): the worker's sort and LengthBuckets on
      that many log-normal lengths (no audio, seconds): the fill one worker of a real corpus gets.
Sorted fill grows with the files per worker (a padded length needs many files to fill its
batches): at a few thousand files it is far below what a worker with 100 k files reaches.
Asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

from snac import SNAC  # noqa: E402
from snac.cache.config import default_io_threads  # noqa: E402
from snac.compiling import conv_precision  # noqa: E402
from snac.cache.encode import (PENDING_BATCHES, LengthBuckets, header_seconds, load_item,  # noqa: E402
                               sort_by_length, stack_padded)
from snac.cache.format import model_settings  # noqa: E402
from snac.cache.run import WorkerSpec, run_worker  # noqa: E402
from snac.presets import SNAC_24KHZ as CFG24, TINY_24KHZ as TINY  # noqa: E402

RATES = (16000, 24000, 44100, 48000)


def make_corpus(root: Path, num_files: int, sigma: float, seed: int = 0) -> tuple[list[str], float]:
    """Log-normal speech-like lengths (median 4 s, 0.3-30 s); each file a random slice of a tone
    plus noise at its rate (cheap to make, distinct content). Returns (relative paths, seconds)."""
    rng = np.random.default_rng(seed)
    source = {sr: (0.3 * np.sin(2 * np.pi * 220 * np.arange(40 * sr) / sr)
                   + 0.05 * rng.standard_normal(40 * sr)).astype(np.float32) for sr in RATES}
    files, seconds = [], 0.0
    for k in range(num_files):
        sr = RATES[k % 4]
        frames = int(np.clip(np.exp(rng.normal(np.log(4.0), sigma)), 0.3, 30.0) * sr)
        start = int(rng.integers(0, 40 * sr - frames))
        x = source[sr][start:start + frames]
        if k % 5 == 0:
            x = np.stack([x, x[::-1]], axis=1)  # (frames, 2)
        rel = f"spk{k % 7}/utt{k:05d}.{'flac' if k % 2 else 'wav'}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / rel, x, sr)
        files.append(rel)
        seconds += frames / sr
    return files, seconds


class StubEncoder:
    """Codes of the right shapes at no cost: the pipeline around the model, batching included."""

    def __init__(self, model):
        self.hop_length, self.vq_strides = model.hop_length, model.vq_strides

    def encode(self, x):  # (B, 1, T), T a pad multiple -> per codebook (B, T / hop / stride)
        return [torch.zeros(x.shape[0], x.shape[-1] // self.hop_length // s, dtype=torch.long)
                for s in self.vq_strides]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def encoder_alone(model, batches: list[torch.Tensor], device: str) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) to encode every preloaded batch (inputs on the device),
    in IEEE float32 as the worker encodes (its default, no --tf32)."""
    sync(device)
    t, c = time.perf_counter(), time.process_time()
    with torch.inference_mode(), conv_precision(tf32=False):
        for x in batches:
            model.encode(x)
    sync(device)
    return time.perf_counter() - t, time.process_time() - c


def worker_buckets(model, batch_seconds: float, sort: bool) -> LengthBuckets:
    """The LengthBuckets a caching worker batches with (its batch size and pending bound)."""
    samples = int(batch_seconds * model.sampling_rate)
    return LengthBuckets(model.pad_multiple, samples, PENDING_BATCHES * samples, sorted_input=sort)


def worker_batches(root: Path, files: list[str], model, batch_seconds: float, sort: bool) -> list:
    """The batches a caching worker forms from ``files`` (its helpers, its order), loaded up front."""
    if sort:
        files = sort_by_length(files, [header_seconds(root / f) for f in files])
    buckets = worker_buckets(model, batch_seconds, sort)
    items = (load_item(str(root), f, f, model.sampling_rate, 48000) for f in files)
    return [b for it in items for b in buckets.add(it)] + buckets.flush()


def planned_fill(num_files: int, sigma: float, model, batch_seconds: float, sort: bool, seed: int = 0) -> tuple[float, int]:
    """(mean fill, batches) of a worker's batching on ``num_files`` log-normal lengths (median 4 s,
    0.3-30 s, at the model's rate), without audio: the same sort and LengthBuckets as run_worker."""
    from types import SimpleNamespace

    rng = np.random.default_rng(seed)
    seconds = np.clip(np.exp(rng.normal(np.log(4.0), sigma, num_files)), 0.3, 30.0)
    lengths = [int(s * model.sampling_rate) for s in seconds]
    if sort:
        lengths = sorted(lengths)
    buckets = worker_buckets(model, batch_seconds, sort)
    items = (SimpleNamespace(audio=SimpleNamespace(shape=(n,))) for n in lengths)
    batches = [b for it in items for b in buckets.add(it)] + buckets.flush()
    return float(np.mean([buckets.fill(b) for b in batches])), len(batches)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["full", "tiny"], default="full",
                    help="random-weight model of the published 24 kHz size, or the tests' tiny one")
    ap.add_argument("--pretrained_model", default=None, help="use this hub id / dir instead of --model")
    ap.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--files", type=int, default=3000, help="utterances in the generated corpus (batch fill)")
    ap.add_argument("--plan_files", default="10000,100000",
                    help="(0): comma-separated corpus sizes per worker for the batching-only fill ('' skips it)")
    ap.add_argument("--encode_files", type=int, default=80, help="of them, encoded by the model (throughput)")
    ap.add_argument("--sigma", type=float, default=0.5, help="log-normal spread of the lengths (median 4 s)")
    ap.add_argument("--batch_seconds", type=float, default=60.0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    ap.add_argument("--io_threads", type=int, default=None, help="loader threads (default: as the script)")
    ap.add_argument("--embed_audio", action="store_true")
    ap.add_argument("--rounds", type=int, default=1,
                    help="alternate (encoder alone, pipeline) this many times; CPU load from other jobs varies")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.pretrained_model:
        model = SNAC.from_pretrained(args.pretrained_model)
        model_id = args.pretrained_model
    else:
        model = SNAC(**(CFG24 if args.model == "full" else TINY))
        model_id = f"random-{args.model}"
    model = model.eval().to(args.device)
    work = Path(tempfile.mkdtemp(prefix="bench_cache_"))
    audio = work / "audio"
    runs = 0

    def worker(files: list[str], sort: bool, encoder) -> tuple[dict, float, float]:
        """One caching worker over ``files``: (its stats, wall seconds, process CPU seconds)."""
        nonlocal runs
        out = work / f"cache{runs}"
        runs += 1
        out.mkdir()
        spec = WorkerSpec(worker_index=0, num_workers=1, device=args.device, items=[(f, f) for f in files],
                          input_root=str(audio), output_dir=str(out), pretrained_model=model_id,
                          settings=settings, shard_rows=1000, batch_seconds=args.batch_seconds, max_seconds=1e9,
                          torch_threads=args.threads, sort_by_length=sort,
                          io_threads=args.io_threads or default_io_threads(args.threads, args.device))
        t, c = time.perf_counter(), time.process_time()
        stats = run_worker(spec, model=encoder)
        sync(args.device)
        assert stats["rows"] == len(files), stats
        return stats, time.perf_counter() - t, time.process_time() - c

    def rates(stats: dict, wall: float) -> str:
        return (f"{stats['rows'] / wall:7.1f} files/s, {stats['audio_seconds'] / 3600 / wall:.4f} audio-h/s "
                f"({stats['audio_seconds'] / wall:.1f} audio-s/s)")

    def fill(stats: dict) -> str:
        mean = stats["batch_fill_sum"] / stats["batches"]
        return f"mean batch fill {100 * mean:5.1f}% over {stats['batches']} batches"

    orders = {"list order  ": False, "sorted order": True}
    try:
        t0 = time.perf_counter()
        files, total = make_corpus(audio, args.files, args.sigma)
        settings = model_settings(model_id, model.config, 48000, args.embed_audio, str(audio))
        print(f"device {args.device}, torch threads {args.threads}, CPU cores {os.cpu_count()} (shared with "
              f"other jobs); model {model_id} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params); "
              f"--batch_seconds {args.batch_seconds:g}; corpus {len(files)} files, {total / 3600:.2f} h, "
              f"log-normal lengths (median 4 s, sigma {args.sigma:g}) at 16/24/44.1/48 kHz, "
              f"made in {time.perf_counter() - t0:.0f} s")

        for n in [int(v) for v in args.plan_files.split(",") if v.strip()]:
            t1 = time.perf_counter()
            figures = {name.strip(): planned_fill(n, args.sigma, model, args.batch_seconds, sort)
                       for name, sort in orders.items()}
            print(f"(0) batching alone, {n} files per worker: "
                  + "; ".join(f"{name} mean fill {100 * f:5.1f}% over {b} batches" for name, (f, b) in figures.items())
                  + f" ({time.perf_counter() - t1:.1f} s)")
        print(f"(1) batch fill: one worker, all {len(files)} files, stub encoder (the pipeline without the model)")
        for name, sort in orders.items():
            stats, wall, _ = worker(files, sort, StubEncoder(model))
            print(f"  {name}: {fill(stats)} | {rates(stats, wall)}"
                  + (f" | headers read and sorted in {stats['sort_seconds']:.2f} s" if sort else ""))

        subset = files[:: max(1, len(files) // args.encode_files)][: args.encode_files]
        print(f"(2) throughput: {len(subset)} of the files (every {max(1, len(files) // args.encode_files)}th), "
              f"model {model_id}; encoder alone on the worker's batches vs the worker's whole pipeline")
        ratios, cpu_ratios = {name: [] for name in orders}, {name: [] for name in orders}
        for name, sort in orders.items():
            groups = worker_batches(audio, subset, model, args.batch_seconds, sort)
            seconds = sum(it.duration for g in groups for it in g)
            batches = [stack_padded(g, model.pad_multiple).to(args.device) for g in groups]
            del groups
            encoder_alone(model, batches, args.device)  # warm-up: each batch shape once (kernels set up per shape)
            for k in range(args.rounds):
                t_enc, c_enc = encoder_alone(model, batches, args.device)
                stats, t_pipe, c_pipe = worker(subset, sort, model)
                same = "same batches" if stats["batches"] == len(batches) else \
                    f"NOT the worker's {stats['batches']} batches"
                ratios[name].append(t_enc / t_pipe)
                cpu_ratios[name].append(c_enc / c_pipe)
                print(f"  {name} round {k}: encoder alone {seconds / t_enc:7.1f} audio-s/s ({t_enc:.1f} s, "
                      f"{len(batches)} batches, {same}) | whole pipeline {rates(stats, t_pipe)}, "
                      f"{stats['encode_seconds']:.1f} s inside encode | {fill(stats)} | "
                      f"ratio {t_enc / t_pipe:.3f} wall, {c_enc / c_pipe:.3f} CPU time")
            del batches
        for name in orders:
            print(f"ratio pipeline / encoder alone, {name}: median {float(np.median(ratios[name])):.3f} "
                  f"wall-clock, {float(np.median(cpu_ratios[name])):.3f} process CPU time over {args.rounds} "
                  "round(s) (goal >= 0.9; on a shared CPU the wall figure swings with other jobs' load, "
                  "the CPU-time one much less)")
        print(f"benchmark took {time.perf_counter() - t0:.0f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
