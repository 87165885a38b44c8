#!/usr/bin/env python
"""Where do the stationary lines in a 48 kHz head's added band come from? (docs/quality.md)

  uv run python tools/tonal_lines.py --base BASE_DIR --val_dir HELD_OUT \
      --system finetuned=RUN/latest.pt [--system cleaned=RUN2/latest.pt ...] [--init full --init sinc]
    [--output_dir OUT]

Decodes every val file with the base (its 24 kHz "trunk" decode), SNAC48 at its smart init (each ``--init`` head) and each
``--system``; prints, per system, the per-file tonal prominence in 12-22 kHz (mean over files of
``snac.metrics.tonal_prominence``: largest and mean positive excess over the 1 kHz running median,
dB) and the strongest lines of the corpus-average spectrum; then the mirror test: the base decode's
strongest lines f below 12 kHz, and each 48 kHz system's excess at 24 kHz - f, against its excess at
random band frequencies. ``--output_dir``: spectrogram PNGs of the first three files and tonal.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from snac import SNAC, SNAC48  # noqa: E402
from snac.audio import load_audio, resample  # noqa: E402
from snac.evaluation import find_eval_files, spectrogram_png  # noqa: E402
from snac.hub import load_model  # noqa: E402
from snac.infer import decode_codes, encode_audio  # noqa: E402
from snac.lines import N_FFT, mean_power, power_excess_db  # noqa: E402
from snac.metrics import tonal_prominence  # noqa: E402
from snac.model48 import HEAD_TYPES  # noqa: E402

RATE = 48000


def strongest(excess: np.ndarray, freqs: np.ndarray, lo: float, hi: float, n: int, spacing: int = 3) -> list[int]:
    """Bins of the n strongest local lines in [lo, hi), at least ``spacing`` bins apart."""
    order = np.argsort(-np.where((freqs >= lo) & (freqs < hi), excess, -np.inf))
    picked: list[int] = []
    for k in order:
        if len(picked) == n or not np.isfinite(excess[k]) or excess[k] <= 0:
            break
        if all(abs(k - p) > spacing for p in picked):
            picked.append(int(k))
    return picked


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the base SNAC (folder or hub id)")
    p.add_argument("--val_dir", required=True, help="held-out audio (searched recursively)")
    p.add_argument("--system", action="append", default=[], metavar="NAME=CHECKPOINT",
                   help="a SNAC48 checkpoint or export to compare (repeatable)")
    p.add_argument("--init", action="append", choices=HEAD_TYPES, default=None,
                   help="a head whose smart init (untrained) to compare, as smart_init[_HEAD] (repeatable; default: full)")
    p.add_argument("--output_dir", default=None)
    p.add_argument("--limit", type=int, default=None, help="N val files spread evenly over the sorted list")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    base = SNAC.from_pretrained(args.base).eval()
    systems = {"smart_init" + ("" if head == "full" else f"_{head}"): SNAC48.from_snac(base, head={"type": head}).eval()
               for head in args.init or ["full"]}
    for item in args.system:
        name, sep, path = item.partition("=")
        if not sep:
            p.error(f"--system {item!r}: expected NAME=CHECKPOINT")
        systems[name] = load_model(path).eval()
    out = Path(args.output_dir) if args.output_dir else None
    names = ["reference", "base_24k", *systems]
    per_file = {n: [] for n in names}
    power = {n: 0 for n in names}
    files = find_eval_files(args.val_dir, args.limit)
    used = 0
    for i, path in enumerate(files):
        audio, rate = load_audio(path, mono=True)
        ref = resample(audio, rate, RATE)
        if len(ref) < N_FFT:
            continue
        x24 = resample(audio, rate, base.sampling_rate)
        codes = encode_audio(base, x24)
        sig = {"reference": ref,
               "base_24k": resample(decode_codes(base, codes, seed=0)[:len(x24)], base.sampling_rate, RATE)[:len(ref)]}
        for name, model in systems.items():
            sig[name] = decode_codes(model, codes, seed=0)[:len(ref)]
        for name, x in sig.items():
            x = np.pad(x, (0, len(ref) - len(x)))
            per_file[name].append(tonal_prominence(x, RATE, 12000, 22000))
            power[name] = power[name] + mean_power(x)
        if out is not None and i < 3:
            spectrogram_png(out / f"{path.stem}.png", path.stem, sig, RATE, 12000)
        used += 1
    freqs = np.linspace(0, RATE / 2, N_FFT // 2 + 1)
    excess = {n: power_excess_db(power[n] / max(used, 1), RATE).numpy() for n in names}
    report = {"files": used, "systems": {}}
    print(f"{used} files of {args.val_dir}")
    print("system | per-file max excess dB | per-file mean excess dB | strongest lines of the corpus average (Hz: dB)")
    for n in names:
        lines = strongest(excess[n], freqs, 12000, 22000, 4)
        entry = {"tonal_max_db": float(np.mean([v[0] for v in per_file[n]])),
                 "tonal_mean_db": float(np.mean([v[1] for v in per_file[n]])),
                 "lines": [[round(float(freqs[k])), round(float(excess[n][k]), 1)] for k in lines]}
        report["systems"][n] = entry
        print(f"{n} | {entry['tonal_max_db']:.1f} | {entry['tonal_mean_db']:.2f} | "
              + ", ".join(f"{f}: {e}" for f, e in entry["lines"]))
    # mirror test: a line f of the 24 kHz decode shows at 24 kHz - f once a x2 upsampler images it
    trunk = strongest(excess["base_24k"], freqs, 300, 0.9 * base.sampling_rate / 2, 12)
    rng = np.random.default_rng(0)
    band = np.where((freqs >= 12000) & (freqs <= 22000))[0]
    random_bins = rng.choice(band, 2000)
    print("\nbase decode line f (Hz) | its excess dB | " + " | ".join(f"{n} at 24k-f" for n in systems))
    mirror = {n: [] for n in systems}
    for k in trunk:
        m = len(freqs) - 1 - k  # the bin of RATE/2 - f
        row = []
        for n in systems:
            v = float(excess[n][m - 2:m + 3].max())
            mirror[n].append(v)
            row.append(f"{v:.1f}")
        print(f"{freqs[k]:.0f} | {excess['base_24k'][k]:.1f} | " + " | ".join(row))
    for n in systems:
        rand = [excess[n][k - 2:k + 3].max() for k in random_bins]
        report["systems"][n]["mirror_mean_db"] = float(np.mean(mirror[n]))
        report["systems"][n]["random_mean_db"] = float(np.mean(rand))
        print(f"{n}: mean excess at the mirrors {np.mean(mirror[n]):.1f} dB, at random band frequencies "
              f"{np.mean(rand):.1f} dB (95th percentile {np.percentile(rand, 95):.1f})")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "tonal.json").write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
