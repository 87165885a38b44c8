#!/usr/bin/env python
"""Seam error and cost of chunked decoding (snac.infer) against whole-file decoding.

    uv run python benchmarks/bench_chunked.py                      # full-size 24 kHz config, random weights
    uv run python benchmarks/bench_chunked.py --pretrained_model hubertsiuzdak/snac_24khz --seconds 120

Prints, for the base decoder and its SNAC48: the max |difference| and the SNR of the chunked
decode against the whole-file decode with the NoiseBlocks off (the seam error proper), the same
with the noise on (chunked vs whole, same seed) next to two whole decodes with different seeds
(the noise floor: what the noise alone changes), the time of each, and the peak CUDA memory.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from snac import SNAC, SNAC48  # noqa: E402
from snac.infer import decode_codes, decoder_context_frames, encode_audio, noise_disabled  # noqa: E402
from snac.presets import SNAC_24KHZ as FULL_24KHZ  # noqa: E402


def snr_db(ref: np.ndarray, x: np.ndarray) -> float:
    err = np.sum((ref - x) ** 2)
    return float("inf") if err == 0 else 10 * np.log10(np.sum(ref ** 2) / err)


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else float("nan")
    return out, time.perf_counter() - t, peak


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrained_model", default=None, help="hub id or dir (default: random full-size 24 kHz)")
    p.add_argument("--seconds", type=float, default=30.0, help="length of the test signal")
    p.add_argument("--chunk_seconds", type=float, default=5.0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = (SNAC.from_pretrained(args.pretrained_model) if args.pretrained_model
            else SNAC(**FULL_24KHZ)).eval().to(args.device)
    source = "weights " + args.pretrained_model if args.pretrained_model else "random weights"
    rate = base.sampling_rate
    # speech-like test signal: a gliding harmonic tone with noise bursts
    t = torch.arange(int(args.seconds * rate)) / rate
    f0 = 120 + 40 * torch.sin(2 * torch.pi * 0.3 * t)
    phase = 2 * torch.pi * torch.cumsum(f0, 0) / rate
    audio = sum(torch.sin(k * phase) / k for k in range(1, 20)) * 0.1 + 0.02 * torch.randn(len(t))
    codes = encode_audio(base, audio, chunk_seconds=args.chunk_seconds, device=args.device)
    print(f"{args.seconds:.0f} s signal, {source}, chunks of {args.chunk_seconds} s, device {args.device}")
    print(f"{'model':8} {'context':>9} {'noise off: max|d|':>18} {'SNR dB':>7} "
          f"{'noise on: SNR chunk/whole':>26} {'whole/whole':>12} {'t whole':>8} {'t chunk':>8} "
          f"{'MiB whole':>9} {'MiB chunk':>9}")
    for name, model in (("SNAC", base), ("SNAC48", SNAC48.from_snac(base).eval())):
        ctx = decoder_context_frames(model)
        with noise_disabled(model):
            whole, t_whole, m_whole = timed(lambda m=model: decode_codes(m, codes, None, device=args.device))
            chunked, t_chunk, m_chunk = timed(
                lambda m=model: decode_codes(m, codes, args.chunk_seconds, device=args.device))
        torch.manual_seed(1)
        noisy_whole = decode_codes(model, codes, None, device=args.device)
        torch.manual_seed(1)
        noisy_chunk = decode_codes(model, codes, args.chunk_seconds, device=args.device)
        torch.manual_seed(2)
        noisy_whole2 = decode_codes(model, codes, None, device=args.device)
        print(f"{name:8} {ctx:>6} fr {np.abs(whole - chunked).max():>18.2e} {snr_db(whole, chunked):>7.1f} "
              f"{snr_db(noisy_whole, noisy_chunk):>26.1f} {snr_db(noisy_whole, noisy_whole2):>12.1f} "
              f"{t_whole:>7.2f}s {t_chunk:>7.2f}s {m_whole:>9.0f} {m_chunk:>9.0f}")


if __name__ == "__main__":
    main()
