#!/usr/bin/env python
"""Benchmark CodeCache on a synthetic cache (default 3 M rows): open time, resident memory,
private growth per forked worker, random rows per second.

  uv run python benchmarks/bench_cache_reader.py --rows 3000000 --dir /tmp/bench_cache [--keep]

Rows are 1-10 s utterances of the published 24 kHz model (12-117 coarse tokens, strides 4/2/1,
codebook 4096 -> int16); each access copies a 4 s window (47 coarse tokens) of all codebooks,
as the trainer does. Prints figures; asserts nothing (targets: open <= 1 s, <= 100 MB resident,
<= 50 MB private growth per forked worker, >= 50 k random rows/s per worker warm).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from snac.presets import SNAC_24KHZ as CFG24  # noqa: E402
WINDOW = 47  # coarse tokens: ~4 s at 24 kHz (47 * 2048 samples)


def mem_mb() -> dict:
    """This process's memory, MB: resident (anonymous = heap, file = mapped pages of the page
    cache, reclaimable) and private (not shared with any other process)."""
    out = {}
    for name in ("/proc/self/smaps_rollup", "/proc/self/status"):
        with open(name) as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("Rss", "Private_Clean", "Private_Dirty", "RssAnon", "RssFile"):
                    out[k] = int(v.split()[0]) / 1024
    return {"rss": out["Rss"], "anon": out["RssAnon"], "file": out["RssFile"],
            "private": out["Private_Clean"] + out["Private_Dirty"]}


def random_reads(cache, n: int, seed: int) -> float:
    """Rows/s of random windows (the trainer's access pattern), touching every codebook."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(cache), n)
    starts = rng.random(n)
    t = time.perf_counter()
    total = 0
    for i, u in zip(rows.tolist(), starts.tolist()):
        nc = int(cache.num_coarse[i])
        s = int(u * max(nc - WINDOW, 0))
        codes = cache.codes(i, s, WINDOW)
        total += len(codes[-1])
    return n / (time.perf_counter() - t)


def child_open(directory: str, reads: int, workers: int) -> None:
    """Runs in a fresh interpreter: measures open, memory, and forked workers."""
    import numpy as np

    from snac.cache import CodeCache

    m0 = mem_mb()
    t = time.perf_counter()
    cache = CodeCache(directory, CFG24)
    open_s = time.perf_counter() - t
    m1 = mem_mb()
    # the trainer reads the per-row arrays whole (e.g. to pick windows): touch them
    weights = cache.num_coarse.astype(np.float64).sum() + cache.num_samples.sum()
    m2 = mem_mb()
    rate = random_reads(cache, reads, 0)
    m3 = mem_mb()

    def worker(q, seed):
        before = mem_mb()
        r = random_reads(cache, reads, seed)
        after = mem_mb()
        q.put({"rows_per_s": r, "private_growth_mb": after["private"] - before["private"],
               "private_mb": after["private"]})

    ctx = mp.get_context("fork")  # what a DataLoader with num_workers > 0 does on Linux
    q = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(q, k + 1)) for k in range(workers)]
    for p in procs:
        p.start()
    results = [q.get() for _ in procs]
    for p in procs:
        p.join()
    print(json.dumps({"rows": len(cache), "open_s": open_s, "m0": m0, "m1": m1, "m2": m2, "m3": m3,
                      "rows_per_s_main": rate, "workers": results, "checksum": float(weights)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=3_000_000)
    ap.add_argument("--dir", default="/tmp/bench_code_cache")
    ap.add_argument("--reads", type=int, default=200_000, help="random rows read per process")
    ap.add_argument("--workers", type=int, default=2, help="forked reader processes")
    ap.add_argument("--keep", action="store_true", help="keep the synthetic cache afterwards")
    ap.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        child_open(args.dir, args.reads, args.workers)
        return

    from snac.cache import CodeCache, build_index, list_shards, write_synthetic_cache

    d = Path(args.dir)
    if d.exists():
        shutil.rmtree(d)
    print(f"CPU: {os.cpu_count()} cores, shared with other jobs (figures are lower bounds)")
    t = time.perf_counter()
    write_synthetic_cache(d, args.rows, CFG24, rows_per_shard=10_000, min_coarse=12, max_coarse=117)
    write_s = time.perf_counter() - t
    size = sum(p.stat().st_size for p in list_shards(d)) / 1e9
    print(f"wrote {args.rows:,} rows in {len(list_shards(d))} parquet shards ({size:.2f} GB) in {write_s:.1f} s")
    t = time.perf_counter()
    index = build_index(d)
    build_s = time.perf_counter() - t
    isize = sum(p.stat().st_size for p in index.iterdir()) / 1e9
    print(f"built the flat index ({isize:.2f} GB) in {build_s:.1f} s (once, when caching finishes)")
    t = time.perf_counter()
    CodeCache(d)
    print(f"open in this process (index exists): {time.perf_counter() - t:.3f} s")

    res = subprocess.run([sys.executable, __file__, "--_child", "--dir", str(d), "--reads", str(args.reads),
                          "--workers", str(args.workers)], capture_output=True, text=True, check=True)
    r = json.loads(res.stdout.strip().splitlines()[-1])
    m0 = r["m0"]
    grow = lambda m: (f"resident +{m['rss'] - m0['rss']:.1f} MB (anonymous +{m['anon'] - m0['anon']:.1f}, "
                      f"file-backed page cache +{m['file'] - m0['file']:.1f})")
    print(f"fresh process: open {r['open_s'] * 1000:.1f} ms; {grow(r['m1'])} after open; {grow(r['m2'])} after "
          f"reading every row's num_coarse/num_samples; {grow(r['m3'])} after {args.reads:,} random reads "
          f"(whole process {r['m3']['rss']:.0f} MB incl. Python/numpy/pyarrow/torch imports)")
    print(f"random 4 s windows, warm, one process: {r['rows_per_s_main']:,.0f} rows/s")
    for k, w in enumerate(r["workers"]):
        print(f"forked worker {k}: {w['rows_per_s']:,.0f} rows/s, private memory growth "
              f"{w['private_growth_mb']:.1f} MB (private total {w['private_mb']:.1f} MB)")
    if not args.keep:
        shutil.rmtree(d)


if __name__ == "__main__":
    main()
