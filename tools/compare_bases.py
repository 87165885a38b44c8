#!/usr/bin/env python
"""Base codecs side by side on the same held-out files (docs/codec.md: base v1 vs v2).

    uv run python tools/compare_bases.py --base v1=models/klettres_24khz --base v2=runs/base_v2/best_model.pt \
        --val_dir SPEECH/val_heldout [--limit 200] [--max_seconds 6] [--output results.json]

Per base (a folder, hub id or train_codec.py checkpoint): parameters, mel distance at its own rate
with its own codes and with the same codes shuffled in time (``snac.evaluation.codes_information``:
how much lower the real order is, the share the codes carry), and each level's codebook use over
all the files (share of its codes used). One markdown table on stdout; ``--output``: the same as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from snac.evaluation import codes_information, find_eval_files  # noqa: E402
from snac.hub import load_model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", action="append", required=True, metavar="NAME=MODEL", help="a base codec (repeatable)")
    p.add_argument("--val_dir", required=True, help="held-out audio (searched recursively)")
    p.add_argument("--limit", type=int, default=None, help="N files spread evenly over the sorted list")
    p.add_argument("--max_seconds", type=float, default=None, help="the first S seconds of each file")
    p.add_argument("--silence_db", type=float, default=40.0, help="mel frames this far below the file's loudest "
                                                                  "are left out (default 40, as quality_check.py)")
    p.add_argument("--output", default=None, help="also write the figures here as JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    bases = []
    for item in args.base:
        name, sep, path = item.partition("=")
        if not sep or not name:
            p.error(f"--base {item!r}: expected NAME=MODEL")
        bases.append((name, path))
    files = find_eval_files(args.val_dir, args.limit)
    if not files:
        raise SystemExit(f"error: no audio file under {args.val_dir}; pass a folder of held-out audio")
    rows = []
    for name, path in bases:
        model = load_model(path).eval()
        if hasattr(model, "head"):
            raise SystemExit(f"error: --base {name}={path} is a 48 kHz model; pass the base codec it was made from")
        info = codes_information(model, files, silence_db=args.silence_db, max_seconds=args.max_seconds)
        rows.append({"base": name, "model": path, "parameters": sum(q.numel() for q in model.parameters()), **info,
                     "gain_percent": 100 * (1 - info["own"] / info["shuffled"])})
    print(f"{len(files)} files of {args.val_dir}" + (f", first {args.max_seconds:g} s each" if args.max_seconds else ""))
    print("\n| base | parameters | mel distance, own codes | same codes shuffled | own lower by | codebook use per level |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['base']} | {r['parameters'] / 1e6:.2f} M | {r['own']:.3f} | {r['shuffled']:.3f} | "
              f"{r['gain_percent']:.0f}% | {', '.join(f'{u:.0%}' for u in r['code_use'])} |")
    if args.output:
        Path(args.output).write_text(json.dumps({"val_dir": args.val_dir, "files": len(files), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
