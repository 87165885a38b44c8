#!/usr/bin/env python
"""Peak RSS of the codec trainer's data source against the number of training files.

    uv run python benchmarks/bench_codec_data.py                   # 100 and 10,000 files of 4 s
    uv run python benchmarks/bench_codec_data.py --files 100 100000 --seconds 4 --draws 200

For each file count, a child process builds a folder of that many 4 s files (hard links to one
16 kHz wav, so the disk holds one file while the source still opens, scans and reads each name),
constructs ``LazyAudioWindows`` at the model's rate as train_codec.py does, draws ``--draws``
batches and prints its peak RSS (``ru_maxrss``) and the time of the scan and of a batch. The
in-memory sampler this replaced held every file as float32: that figure is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FILE_RATE = 16000  # != the model's rate: every window goes through the resampler, as in real data


def measure(files: int, seconds: float, draws: int, batch: int, window: int, model_rate: int) -> dict:
    """Runs in the child: build the folder, construct the source, draw; -> figures."""
    import torch

    from snac.train.codec_data import LazyAudioWindows

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        first = root / "a" / "f0.wav"
        first.parent.mkdir()
        t = np.arange(int(seconds * FILE_RATE)) / FILE_RATE
        sf.write(first, 0.3 * np.sin(2 * np.pi * 220 * t), FILE_RATE, subtype="PCM_16")
        for i in range(1, files):  # 1,000 files a folder, as a corpus would be laid out
            path = root / chr(ord("a") + i // 1000) / f"f{i}.wav"
            path.parent.mkdir(exist_ok=True)
            os.link(first, path)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        data = LazyAudioWindows(str(root), model_rate, window, seed=0, warn=lambda _: None)
        scan_s = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(draws):
            data.sample(batch)
        batch_s = (time.perf_counter() - start) / draws
    return {"files": files, "windows": data.num_windows, "scan_s": round(scan_s, 2), "batch_ms": round(batch_s * 1e3, 2),
            "rss_before_source_mb": round(rss_before / 1024, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "in_memory_mb": round(files * seconds * model_rate * 4 / 2**20, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--files", type=int, nargs="+", default=[100, 10000], help="file counts to compare")
    p.add_argument("--seconds", type=float, default=4.0, help="length of every file")
    p.add_argument("--draws", type=int, default=100, help="batches drawn after construction")
    p.add_argument("--batch_size", type=int, default=8, help="windows per batch")
    p.add_argument("--window", type=int, default=12288, help="window in samples at the model's rate (0.5 s)")
    p.add_argument("--model_rate", type=int, default=24000, help="the codec's sampling rate")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if any(n < 1 for n in args.files) or args.seconds <= 0 or args.draws < 1 or args.batch_size < 1:
        p.error("--files, --draws and --batch_size must be >= 1 and --seconds > 0")
    if args.child is not None:
        print(json.dumps(measure(args.child, args.seconds, args.draws, args.batch_size, args.window, args.model_rate)))
        return 0
    rows = []
    for n in args.files:  # a fresh process each: ru_maxrss only ever grows
        cmd = [sys.executable, __file__, "--child", str(n), "--seconds", str(args.seconds), "--draws",
               str(args.draws), "--batch_size", str(args.batch_size), "--window", str(args.window),
               "--model_rate", str(args.model_rate)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"error: the {n}-file run failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
            return 1
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    print(f"peak RSS {rows[0]['peak_rss_mb']} MB with {rows[0]['files']} files, {rows[-1]['peak_rss_mb']} MB with "
          f"{rows[-1]['files']}: difference {rows[-1]['peak_rss_mb'] - rows[0]['peak_rss_mb']:.1f} MB "
          f"(all audio in memory would be {rows[-1]['in_memory_mb']} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
