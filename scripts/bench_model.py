"""Speed of our SNAC against upstream SNAC 1.2.1 on the same weights, and SNAC48 vs stock decode
(the full head, and the lite head at --lite_channels branch widths).

    uv run python scripts/bench_model.py [--seconds 10] [--repeats 5] [--device cpu|cuda] [--lite_channels 16,32]

Prints a table of median times and ratios measured in this one process (timings interleaved so
that machine noise hits both sides alike). The reference wheel is fetched like the parity tests do.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from snac.presets import SNAC_24KHZ  # noqa: E402
from snac import SNAC, SNAC48  # noqa: E402
from snac.layers import fold_weight_norm  # noqa: E402


def timed(fn, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="audio length per call")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    ap.add_argument("--lite_channels", default="16,32", help="branch widths of the lite heads to time")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from _common import import_reference  # scripts/ is on sys.path (this script's folder)

    ref_mod = import_reference()
    dev = args.device
    torch.manual_seed(0)
    ref = ref_mod.SNAC(**SNAC_24KHZ).eval().to(dev)
    ours = SNAC(**SNAC_24KHZ).eval().to(dev)
    ours.load_state_dict(ref.state_dict())
    folded = fold_weight_norm(SNAC(**SNAC_24KHZ).eval().to(dev).requires_grad_(False), ours.state_dict())
    m48 = SNAC48.from_snac(ours).eval()
    m48_folded = fold_weight_norm(SNAC48(SNAC_24KHZ).eval().to(dev).requires_grad_(False), m48.state_dict())
    lites = {int(c): SNAC48.from_snac(ours, head={"type": "lite", "branch_channels": int(c)}).eval()
             for c in args.lite_channels.split(",") if c}

    audio = 0.1 * torch.randn(args.batch, 1, int(args.seconds * 24000), device=dev)
    with torch.inference_mode():
        codes = ours.encode(audio)
        cases = {
            "reference encode+decode": lambda: ref.decode(ref.encode(audio)),
            "ours encode+decode": lambda: ours.decode(ours.encode(audio)),
            "ours folded encode+decode": lambda: folded.decode(folded.encode(audio)),
            "stock 24k decode": lambda: ours.decode(codes),
            "SNAC48 decode": lambda: m48.decode(codes),
            "SNAC48 folded decode": lambda: m48_folded.decode(codes),
            **{f"SNAC48 lite-{c} decode": (lambda m=m: m.decode(codes)) for c, m in lites.items()},
        }
        for fn in cases.values():  # warm-up
            fn()
        times = {name: [] for name in cases}
        for _ in range(args.repeats):
            for name, fn in cases.items():
                times[name].append(timed(fn, dev))
    med = {k: statistics.median(v) for k, v in times.items()}
    name = torch.cuda.get_device_name() if dev == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}; audio {args.batch} x {args.seconds:g} s at 24 kHz; median of {args.repeats}")
    print(f"{'case':30s} {'time (ms)':>10s} {'x realtime':>11s}")
    for k, v in med.items():
        print(f"{k:30s} {1000 * v:10.1f} {args.batch * args.seconds / v:11.1f}")
    print(f"ours / reference (encode+decode):        {med['ours encode+decode'] / med['reference encode+decode']:.3f}")
    print(f"ours folded / reference (encode+decode): "
          f"{med['ours folded encode+decode'] / med['reference encode+decode']:.3f}")
    print(f"SNAC48 / stock 24k decode:               {med['SNAC48 decode'] / med['stock 24k decode']:.3f}")
    print(f"SNAC48 folded / stock 24k decode:        {med['SNAC48 folded decode'] / med['stock 24k decode']:.3f}")
    for c in lites:
        print(f"{'SNAC48 lite-' + str(c) + ' / stock 24k decode:':41s}"
              f"{med[f'SNAC48 lite-{c} decode'] / med['stock 24k decode']:.3f}")


if __name__ == "__main__":
    main()
