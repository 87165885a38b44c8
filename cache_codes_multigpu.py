#!/usr/bin/env python
"""Cache the frozen SNAC encoder's codes of an audio corpus into parquet shards + manifest.json.

One worker process per device slot, each owning a disjoint share of the files; rerunning the same
command resumes (files already in complete shards are skipped). Under torchrun, RANK / WORLD_SIZE /
LOCAL_RANK pick each rank's share and GPU, so one cache can be made by several nodes.

  uv run python cache_codes_multigpu.py --input_dir data/train --output_dir cache/train
  uv run python cache_codes_multigpu.py --input_dir data/train --output_dir cache/train --devices cpu --workers_per_device 2
  torchrun --nnodes 2 --nproc_per_node 4 ... cache_codes_multigpu.py --input_dir /shared/train --output_dir /shared/cache

The run writes progress lines that read well under `nohup ... > log; tail -f log` and exits
non-zero if a worker died (completed shards are kept: rerun to finish). See snac/cache/.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys

# a stop asked while torch is imported (seconds) is kept, and the run honours it once it can (no worker
# starts); without this the default action killed the process (exit -15) before anything could be said
EARLY_SIGNALS: list[int] = []
if __name__ == "__main__":
    for _signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(_signum, lambda signum, frame: EARLY_SIGNALS.append(signum))

from snac.cache import CacheConfig, run_caching  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(CacheConfig):
        if f.type in (bool, "bool") and f.default:  # on by default: --no-NAME turns it off
            ap.add_argument(f"--no-{f.name}", dest=f.name, action="store_false",
                            help=f"turn off: {f.metadata['help']} (default: {f.name}=%(default)s)")
        elif f.type in (bool, "bool"):
            ap.add_argument(f"--{f.name}", action="store_true", help=f.metadata["help"])
        else:
            kind = {"int": int, "float": float}.get(str(f.type).split(" ")[0], str)
            ap.add_argument(f"--{f.name}", type=kind, default=f.default, help=f.metadata["help"])
    # test hook: worker 0 exits hard (like a kill) after writing this many shards
    ap.add_argument("--_crash_after_shards", type=int, default=None, help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    crash = args.pop("_crash_after_shards")
    cfg = CacheConfig(**args)
    try:
        return run_caching(cfg, crash_after_shards=crash, early_signals=EARLY_SIGNALS)
    except (ValueError, FileNotFoundError, RuntimeError, PermissionError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
