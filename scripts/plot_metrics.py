#!/usr/bin/env python
"""Plot the loss curves of a run from its metrics.jsonl (train and val, per loss term, and the lr).

    uv run python scripts/plot_metrics.py runs/snac48            # -> runs/snac48/loss_curves.png
    ./train_status.sh runs/snac48 --plot                         # the same, next to the status screen
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (no log step written yet?)")
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line torn by a crash
    return rows


def plot_metrics(metrics: Path, png: Path, title: str = "") -> Path:
    """Write a PNG with train/val ``loss/*`` curves against the iteration, and the lr below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # a resumed run re-logs the iterations after its checkpoint: keep the newest row of each
    latest = {(r.get("type"), r.get("iteration")): r for r in read_rows(Path(metrics))}
    rows = sorted(latest.values(), key=lambda r: r.get("iteration") or 0)
    train = [r for r in rows if r.get("type") == "train"]
    val = [r for r in rows if r.get("type") == "val"]
    if not train and not val:
        raise ValueError(f"{metrics} holds no train or val rows yet")
    keys = sorted({k for r in rows for k in r if k.startswith("loss/")})
    fig, axes = plt.subplots(len(keys) + 1, 1, figsize=(9, 2.4 * (len(keys) + 1)), sharex=True)
    for ax, key in zip(axes, keys):
        for kind, data, style in (("train", train, "-"), ("val", val, "o-")):
            pts = [(r["iteration"], r[key]) for r in data if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), style, label=kind, lw=1, ms=3)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    lr = [(r["iteration"], r["lr"]) for r in train if r.get("lr") is not None]
    if lr:
        axes[-1].plot(*zip(*lr), lw=1)
    axes[-1].set_ylabel("lr")
    axes[-1].set_xlabel("iteration")
    # mark the phase switch (warmup -> unfreeze) where the logged phase changes
    for prev, cur in zip(train, train[1:]):
        if prev.get("phase") != cur.get("phase"):
            for ax in axes:
                ax.axvline(cur["iteration"], color="gray", ls="--", lw=0.8)
    fig.suptitle(title or str(metrics))
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="run directory (the trainer's --output_dir) holding metrics.jsonl")
    p.add_argument("--output", default=None, help="PNG path (default: RUN_DIR/loss_curves.png)")
    args = p.parse_args(argv)
    run = Path(args.run_dir)
    try:
        png = plot_metrics(run / "metrics.jsonl", Path(args.output) if args.output else run / "loss_curves.png",
                           title=run.name)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
