#!/usr/bin/env python
"""Benchmark the caching pipeline against the encoder alone, same process and model.

  uv run python scripts/bench_cache.py --model full --seconds 120     # published 24 kHz size, random weights
  uv run python scripts/bench_cache.py --model tiny --seconds 600     # the tests' tiny model
  uv run python scripts/bench_cache.py --pretrained_model DIR_OR_HUB_ID --device cuda:0

Generates a corpus of 1-10 s files at mixed rates (16/24/44.1/48 kHz, some stereo), then measures
audio-seconds per second of
  (a) the encoder alone: model.encode on batches already read, resampled, stacked and on the device;
  (b) one caching worker (snac.cache.run_worker): read + mono + resample + encode + parquet shards,
      with the same model object, the same device and the same batching.
Prints the ratio (b)/(a); the goal is >= 0.9 (I/O, resampling and writing hidden behind the encoder).
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
from snac.cache import list_shards  # noqa: E402
from snac.cache.encode import PENDING_BATCHES, LengthBuckets, load_item  # noqa: E402
from snac.cache.format import model_settings  # noqa: E402
from snac.cache.config import default_io_threads  # noqa: E402
from snac.cache.run import WorkerSpec, run_worker  # noqa: E402
from snac.presets import SNAC_24KHZ as CFG24, TINY_24KHZ as TINY  # noqa: E402


def make_corpus(root: Path, total_seconds: float, seed: int = 0) -> tuple[list[str], float]:
    rng = np.random.default_rng(seed)
    files, seconds = [], 0.0
    while seconds < total_seconds:
        k = len(files)
        sr = [16000, 24000, 44100, 48000][k % 4]
        dur = float(rng.uniform(1, 10))
        ch = 2 if k % 5 == 0 else 1
        t = np.arange(int(dur * sr)) / sr
        x = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 400) * t)[:, None] + 0.05 * rng.standard_normal((len(t), ch))
        rel = f"spk{k % 7}/utt{k:05d}.{'flac' if k % 2 else 'wav'}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / rel, x.astype(np.float32), sr)
        files.append(rel)
        seconds += len(t) / sr
    return files, seconds


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def encoder_alone(model, batches: list[torch.Tensor], device: str) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) to encode every preloaded batch (inputs on the device)."""
    sync(device)
    t, c = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for x in batches:
            model.encode(x)
    sync(device)
    return time.perf_counter() - t, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["full", "tiny"], default="full",
                    help="random-weight model of the published 24 kHz size, or the tests' tiny one")
    ap.add_argument("--pretrained_model", default=None, help="use this hub id / dir instead of --model")
    ap.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seconds", type=float, default=120.0, help="audio in the generated corpus")
    ap.add_argument("--batch_seconds", type=float, default=60.0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    ap.add_argument("--io_threads", type=int, default=None, help="loader threads (default: as the script)")
    ap.add_argument("--embed_audio", action="store_true")
    ap.add_argument("--rounds", type=int, default=2,
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
    try:
        files, total = make_corpus(work / "audio", args.seconds)
        settings = model_settings(model_id, model.config, 48000, args.embed_audio, str(work / "audio"))
        print(f"device {args.device}, torch threads {args.threads}, CPU cores {os.cpu_count()} (shared with "
              f"other jobs); model {model_id} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params); "
              f"corpus {len(files)} files, {total:.0f} s of audio at 16/24/44.1/48 kHz")

        # (a) encoder alone on preloaded batches, batched exactly as the worker batches
        items = [load_item(str(work / "audio"), f, f, model.sampling_rate, 48000) for f in files]
        sps = int(args.batch_seconds * model.sampling_rate)
        buckets = LengthBuckets(model.pad_multiple, sps, PENDING_BATCHES * sps)
        groups = [b for it in items for b in buckets.add(it)] + buckets.flush()
        batches = []
        for g in groups:
            length = max(it.audio.shape[-1] for it in g)
            length = -(-length // model.pad_multiple) * model.pad_multiple
            batches.append(torch.stack([torch.nn.functional.pad(it.audio, (0, length - it.audio.shape[-1]))
                                        for it in g]).unsqueeze(1).to(args.device))
        encoder_alone(model, batches[:1], args.device)  # warm-up
        ratios, cpu_ratios = [], []
        for k in range(args.rounds):
            t_enc, c_enc = encoder_alone(model, batches, args.device)
            # (b) one caching worker: read, resample, encode, write shards, with the same model
            out = work / f"cache{k}"
            out.mkdir()
            spec = WorkerSpec(worker_index=0, num_workers=1, device=args.device, items=[(f, f) for f in files],
                              input_root=str(work / "audio"), output_dir=str(out),
                              pretrained_model=model_id, settings=settings, shard_rows=1000,
                              batch_seconds=args.batch_seconds, max_seconds=1e9, torch_threads=args.threads,
                              io_threads=args.io_threads or default_io_threads(args.threads, args.device))
            t, c = time.perf_counter(), time.process_time()
            stats = run_worker(spec, model=model)
            sync(args.device)
            t_pipe, c_pipe = time.perf_counter() - t, time.process_time() - c
            assert stats["rows"] == len(files), stats
            ratios.append(t_enc / t_pipe)
            cpu_ratios.append(c_enc / c_pipe)
            print(f"round {k}: encoder alone (preloaded batches) {total / t_enc:8.1f} audio-s/s ({t_enc:.2f} s, "
                  f"{len(batches)} batches) | caching worker (whole pipeline) {total / t_pipe:8.1f} audio-s/s "
                  f"({t_pipe:.2f} s, {len(list_shards(out))} shards, {stats['encode_seconds']:.2f} s inside "
                  f"encode) | ratio {t_enc / t_pipe:.3f} wall, {c_enc / c_pipe:.3f} CPU time")
        print(f"ratio pipeline / encoder alone: median {float(np.median(ratios)):.3f} wall-clock, "
              f"{float(np.median(cpu_ratios)):.3f} process CPU time, over {len(ratios)} rounds (goal >= 0.9; "
              "on a shared CPU the wall figure swings with other jobs' load, the CPU-time one much less)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
