#!/usr/bin/env python
"""Streaming decode (snac.stream) against the offline decode and the 28-token sliding window.

    uv run python benchmarks/bench_stream.py                         # CPU, 1 thread, 10 s, snac_24khz layout
    uv run python benchmarks/bench_stream.py --device cuda --threads 4

A TTS-like producer emits the interleaved tokens (7 a frame for strides 4/2/1) at ``--token_rate``
tokens a second; each coarse frame is decoded as soon as its last token is out and the decoder is
free (simulated clock: token times are computed, decode times measured, nothing sleeps). Models:
the snac_24khz preset with random weights, perturbed, its SNAC48 (full head) and SNAC48 (lite
head); random codes (the same for all); NoiseBlocks off, so the offline decode is the reference.

Per row: algorithmic latency (how far the output lags the codes received), first-audio latency
(from the first token to the first sample out), compute per second of audio, speed (x real time),
compute relative to one offline decode of the whole signal, SNR and max |d| against that decode.
Rows: exact streaming, shorter lookaheads (approximate), and the sliding window people use today:
decode the last 4 coarse frames every time a frame arrives and keep the second frame
(2048:4096 at 24 kHz, scaled by the output rate); its SNR covers the samples it makes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from helpers_perturb import perturb_parameters_  # noqa: E402
from snac import SNAC, SNAC48  # noqa: E402
from snac.infer import noise_disabled  # noqa: E402
from snac.layers import fold_weight_norm  # noqa: E402
from snac.presets import SNAC_24KHZ  # noqa: E402
from snac.stream import StreamingDecoder, frames_from_interleaved, interleave  # noqa: E402

WINDOW_FRAMES, KEEP_FRAME = 4, 1  # the sliding window: 4 coarse frames decoded, the second one kept


def snr_db(ref: np.ndarray, x: np.ndarray) -> float:
    err = np.sum((ref.astype(np.float64) - x) ** 2)
    return float("inf") if err == 0 else float(10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / err))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def produce(tokens: torch.Tensor, per_frame: int, token_rate: float):
    """(frame index, its tokens, the time its last token is out) in order."""
    for j in range(tokens.shape[1] // per_frame):
        yield j, tokens[:, j * per_frame:(j + 1) * per_frame], (j + 1) * per_frame / token_rate


def run(model, tokens, per_frame, token_rate, device, decode_frame, finish):
    """Simulated producer/consumer: returns (output, first-audio s, compute s)."""
    clock, compute, first, pieces = 0.0, 0.0, None, []
    for j, frame_tokens, arrival in produce(tokens, per_frame, token_rate):
        start = max(arrival, clock)
        t = time.perf_counter()
        piece = decode_frame(j, frame_tokens)
        sync(device)
        dt = time.perf_counter() - t
        compute, clock = compute + dt, start + dt
        if piece.shape[-1] and first is None:
            first = clock
        pieces.append(piece)
    t = time.perf_counter()
    pieces.append(finish())
    sync(device)
    compute += time.perf_counter() - t
    return torch.cat(pieces, -1)[0, 0].float().cpu().numpy(), first, compute


def stream_row(model, tokens, per_frame, token_rate, device, lookahead_ms):
    dec = StreamingDecoder(model, lookahead_ms)
    out, first, compute = run(model, tokens, per_frame, token_rate, device,
                              lambda j, tok: dec.push(frames_from_interleaved(tok, model.vq_strides)), dec.flush)
    return out, first, compute, dec.latency_ms, slice(None)


def window_row(model, tokens, per_frame, token_rate, device, samples_per_frame):
    """Decode the last WINDOW_FRAMES frames at every frame, keep frame KEEP_FRAME of them."""
    history: list[torch.Tensor] = []

    def decode_frame(j, tok):
        history.append(tok)
        del history[:-WINDOW_FRAMES]
        if len(history) < WINDOW_FRAMES:
            return torch.zeros(1, 1, 0)
        audio = model.decode(frames_from_interleaved(torch.cat(history, 1), model.vq_strides))
        return audio[..., KEEP_FRAME * samples_per_frame:(KEEP_FRAME + 1) * samples_per_frame]

    out, first, compute = run(model, tokens, per_frame, token_rate, device, decode_frame, lambda: torch.zeros(1, 1, 0))
    frames = tokens.shape[1] // per_frame
    covered = slice(KEEP_FRAME * samples_per_frame, (frames - WINDOW_FRAMES + KEEP_FRAME + 1) * samples_per_frame)
    lag_frames = WINDOW_FRAMES - KEEP_FRAME - 1  # frames received after the last one kept
    return out, first, compute, 1000 * lag_frames * samples_per_frame / model.sampling_rate, covered


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0, help="audio length (default: 10)")
    p.add_argument("--token_rate", type=float, default=100.0,
                   help="producer tokens a second (default: 100; real time for snac_24khz is 82)")
    p.add_argument("--lookaheads_ms", default="100,50,20",
                   help="approximate lookaheads to run besides the exact one (default: 100,50,20)")
    p.add_argument("--models", default="snac,full,lite", help="any of snac, full, lite (default: all)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each row; the fastest is reported (default: 2)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    base = perturb_parameters_(SNAC(**SNAC_24KHZ), 0).eval()
    built = {"snac": base, "full": perturb_parameters_(SNAC48.from_snac(base, head={"type": "full"}), 1),
             "lite": perturb_parameters_(SNAC48.from_snac(base, head={"type": "lite"}), 2)}
    strides = base.vq_strides
    frames = int(args.seconds * base.sampling_rate / (base.hop_length * strides[0]))
    gen = torch.Generator().manual_seed(1)
    codes = [torch.randint(0, base.config["codebook_size"], (1, frames * strides[0] // s), generator=gen)
             for s in strides]
    tokens = interleave(codes, strides)
    per_frame = tokens.shape[1] // frames
    lookaheads = [None] + [float(x) for x in args.lookaheads_ms.split(",") if x]
    print(f"{frames} coarse frames ({frames * base.hop_length * strides[0] / base.sampling_rate:.2f} s), "
          f"{per_frame} tokens a frame at {args.token_rate:g} tokens/s, device {device}, {args.threads} thread(s), "
          f"best of {args.repeats}; noise off")
    print("\n| model | decoder | algorithmic latency (ms) | first audio (ms) | compute (s per s of audio) | "
          "x real time | x offline | SNR vs offline (dB) | max abs d |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        model = fold_weight_norm(built[name].eval()).to(device)  # plain weights, as inference.py decodes
        codes_dev = [c.to(device) for c in codes]
        samples_per_frame = StreamingDecoder(model).samples_per_frame
        audio_s = frames * samples_per_frame / model.sampling_rate
        label = {"snac": "SNAC 24 kHz", "full": "SNAC48 full", "lite": "SNAC48 lite"}[name]
        with torch.inference_mode(), noise_disabled(model):
            best_offline = float("inf")
            for _ in range(args.repeats):
                sync(device)
                t = time.perf_counter()
                ref = model.decode(codes_dev)
                sync(device)
                best_offline = min(best_offline, time.perf_counter() - t)
            ref = ref[0, 0].float().cpu().numpy()
            print(f"| {label} | offline, whole signal | - | - | {best_offline / audio_s:.3f} | "
                  f"{audio_s / best_offline:.2f} | 1.00 | - | - |", flush=True)
            rows = [(f"stream, exact" if la is None else f"stream, lookahead {la:g} ms",
                     lambda la=la: stream_row(model, tokens.to(device), per_frame, args.token_rate, device, la))
                    for la in lookaheads]
            rows.append(("sliding window 28 tokens", lambda: window_row(model, tokens.to(device), per_frame,
                                                                         args.token_rate, device, samples_per_frame)))
            for row_name, fn in rows:
                best = min((fn() for _ in range(args.repeats)), key=lambda r: r[2])
                out, first, compute, latency_ms, covered = best
                if covered == slice(None) and len(out) != len(ref):
                    raise SystemExit(f"{label} {row_name}: {len(out)} samples, the offline decode has {len(ref)}")
                ref_part = ref[covered]
                print(f"| {label} | {row_name} | {latency_ms:.1f} | {1000 * first:.0f} | {compute / audio_s:.3f} | "
                      f"{audio_s / compute:.2f} | {compute / best_offline:.2f} | {snr_db(ref_part, out):.1f} | "
                      f"{np.abs(ref_part - out).max():.1e} |", flush=True)


if __name__ == "__main__":
    main()
