#!/usr/bin/env python
"""Are a 48 kHz head's stationary lines made from the decoder trunk's periodic (checkerboard) pattern?

  uv run python tools/line_source.py --base BASE_DIR --val_dir HELD_OUT [--checkpoint RUN/latest.pt]
      [--head sinc] [--period 64 --period 61] [--limit N] [--output tonal_source.json]

A transposed conv of stride s leaves a pattern in its output that repeats every s samples; the
decoder's stages stack them, so the trunk's features (what the head reads, at the base rate) carry
a component exactly periodic in P = the product of the later stages' strides (the input rate of a
stage: 375 Hz, 3 kHz, 12 kHz for the 24 kHz layout), whose harmonics are stationary lines. The
experiment: decode every file's codes with the head reading (a) the trunk's features as they are,
(b) the features minus their per-channel period-P component (the mean over the file of every P-th
sample, its channel mean kept), for each ``--period``. Speech is not periodic in a fixed P over a
whole file, so (b) leaves it nearly as it is; a line that falls with (b) is made from the pattern.
A period that is no stage's (61: prime) is the control. Printed per condition: the 24 kHz decode's
lines at the trunk frequencies, the 48 kHz output's strongest corpus lines in 12-22 kHz and its
excess at 12, 15, 18, 21 kHz (dB over the 1 kHz running median of the corpus-average spectrum), and
the band's energy against (a). Default periods: every stage's input period, and 61.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from snac import SNAC, SNAC48  # noqa: E402
from snac.audio import load_audio, resample  # noqa: E402
from snac.evaluation import find_eval_files  # noqa: E402
from snac.hub import load_model  # noqa: E402
from snac.infer import encode_audio  # noqa: E402
from snac.lines import N_FFT, mean_power, power_excess_db  # noqa: E402
from snac.model48 import HEAD_TYPES  # noqa: E402
from tonal_lines import strongest  # noqa: E402 (tools/, beside this file)

PROBES_48K = (12000, 15000, 18000, 21000)


def remove_periodic(h: torch.Tensor, period: int, scale: bool = False) -> torch.Tensor:
    """(B, C, T) features minus their component of exact period ``period`` (per channel: the mean of
    samples t, t + P, t + 2P, ... for each phase t, less the channel's mean, so the mean stays).
    ``scale``: also give every phase the channel's spread (std about the phase's mean), which removes
    a periodic modulation of the features' amplitude as well as of their level."""
    t = h.shape[-1]
    whole = t // period * period
    if whole == 0:
        return h
    reps = math.ceil(t / period)
    tile = lambda v: v.repeat(1, 1, reps)[..., :t]  # noqa: E731 (B, C, P) -> (B, C, T)
    folded = h[..., :whole].reshape(*h.shape[:-1], -1, period)  # (B, C, T // P, P)
    phases = folded.mean(-2)  # (B, C, P)
    if not scale:
        return h - tile(phases - phases.mean(-1, keepdim=True))
    spread = folded.std(-2, correction=0).clamp_min(1e-8)
    target = (folded - phases.unsqueeze(-2)).pow(2).mean((-2, -1)).sqrt().unsqueeze(-1)  # (B, C, 1)
    return (h - tile(phases)) * tile(target / spread) + phases.mean(-1, keepdim=True)


def stage_periods(base_config: dict) -> list[int]:
    """The input period of each decoder stage but the first, in base-rate samples: the later strides' products."""
    rates = base_config["decoder_rates"]
    return sorted({math.prod(rates[i:]) for i in range(1, len(rates))}, reverse=True)


def at(excess: np.ndarray, freqs: np.ndarray, hz: float) -> float:
    """Excess at ``hz``: the max over the nearest bin and two on each side."""
    k = int(round(hz / (freqs[1] - freqs[0])))
    return round(float(excess[max(k - 2, 0):k + 3].max()), 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the base SNAC (folder or hub id)")
    p.add_argument("--val_dir", required=True, help="held-out audio (searched recursively)")
    p.add_argument("--checkpoint", default=None, help="a SNAC48 checkpoint or export (default: the smart init)")
    p.add_argument("--head", choices=HEAD_TYPES, default="sinc", help="the smart init's head (without --checkpoint)")
    p.add_argument("--period", type=int, action="append", default=None,
                   help="a period in base-rate samples to remove (repeatable; default: the stages' and 61)")
    p.add_argument("--limit", type=int, default=None, help="N val files spread evenly over the sorted list")
    p.add_argument("--max_seconds", type=float, default=None, help="the first S seconds of each file")
    p.add_argument("--output", default=None, help="write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.period is not None and min(args.period) < 2:
        p.error("--period must be >= 2 samples")
    torch.set_num_threads(1)

    base = SNAC.from_pretrained(args.base).eval()
    model = load_model(args.checkpoint) if args.checkpoint else SNAC48.from_snac(base, head={"type": args.head})
    model = model.eval()
    if model.base_config["decoder_rates"] != base.config["decoder_rates"]:
        p.error(f"--checkpoint {args.checkpoint} is not a head on this base's decoder layout")
    n = len(model.decoder.model)
    base_tail = base.decoder.model[n:]  # the base's own last layers (Snake, conv, tanh): its 24 kHz decode
    rate, base_rate = model.sampling_rate, base.sampling_rate
    periods = args.period or [*stage_periods(base.config), 61]
    removals = [(q, scale) for q in periods for scale in (False, True)]
    conditions = ["as is", *(f"period {q} {'level+spread' if scale else 'level'} removed"
                              for q, scale in removals)]
    power48 = {c: 0 for c in conditions}
    power24 = {c: 0 for c in conditions}
    files = find_eval_files(args.val_dir, args.limit)
    used = 0
    with torch.no_grad():
        for path in files:
            audio, sr = load_audio(path, mono=True)
            if args.max_seconds:
                audio = audio[:int(args.max_seconds * sr)]
            x = resample(audio, sr, base_rate)
            if len(x) * rate // base_rate < N_FFT:
                continue
            codes = [c[None] for c in encode_audio(base, x)]
            torch.manual_seed(0)
            h = model.decoder.model(model.quantizer.from_codes(codes))
            if args.checkpoint:  # a fine-tune's trunk moved: the base's own for its 24 kHz decode
                torch.manual_seed(0)
                h24 = base.decoder.model[:n](base.quantizer.from_codes(codes))
            else:  # the smart init copies the base's quantizer and trunk: the same features
                h24 = h
            for cond, removal in zip(conditions, [None, *removals]):
                feats = h if removal is None else remove_periodic(h, *removal)
                feats24 = h24 if removal is None else remove_periodic(h24, *removal)
                torch.manual_seed(0)
                power48[cond] = power48[cond] + mean_power(model.head(feats)[0, 0, :len(x) * rate // base_rate].numpy())
                power24[cond] = power24[cond] + mean_power(base_tail(feats24)[0, 0, :len(x)].numpy())
            used += 1
    if not used:
        raise SystemExit(f"error: no file of {args.val_dir} is long enough ({N_FFT} samples at {rate} Hz)")
    f48 = np.linspace(0, rate / 2, N_FFT // 2 + 1)
    f24 = np.linspace(0, base_rate / 2, N_FFT // 2 + 1)
    trunk_hz = [k * base_rate / q for q in stage_periods(base.config)[1:2] for k in range(1, q // 2 + 1)]
    report = {"files": used, "val_dir": str(args.val_dir), "checkpoint": args.checkpoint, "conditions": {}}
    band = (f48 >= 12000) & (f48 < 22000)
    ref_band = float(power48["as is"][band].sum())
    print(f"{used} files of {args.val_dir}; head: {args.checkpoint or 'smart init, ' + args.head}")
    print("condition | 24 kHz decode at " + ", ".join(f"{f / 1000:g}" for f in trunk_hz)
          + " kHz | 48 kHz output at " + ", ".join(f"{f / 1000:g}" for f in PROBES_48K)
          + " kHz | strongest 12-22 kHz lines (Hz: dB) | band energy dB")
    for cond in conditions:
        e48 = power_excess_db(power48[cond] / used, rate).numpy()
        e24 = power_excess_db(power24[cond] / used, base_rate).numpy()
        row = {"trunk_24k": [at(e24, f24, f) for f in trunk_hz], "probes_48k": [at(e48, f48, f) for f in PROBES_48K],
               "lines_48k": [[round(float(f48[k])), round(float(e48[k]), 1)]
                             for k in strongest(e48, f48, 12000, 22000, 4)],
               "band_energy_db": round(10 * math.log10(float(power48[cond][band].sum()) / ref_band), 2)}
        report["conditions"][cond] = row
        print(f"{cond} | {row['trunk_24k']} | {row['probes_48k']} | "
              + ", ".join(f"{f}: {e}" for f, e in row["lines_48k"]) + f" | {row['band_energy_db']:+.2f}")
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
