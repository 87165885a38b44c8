#!/usr/bin/env python
"""Decode audio (or saved codes) with a fine-tuned SNAC decoder: any audio -> codes -> 48 kHz wav.

    uv run python inference.py --checkpoint runs/snac48/best_model.pt --input in.wav --output out.wav
    uv run python inference.py --checkpoint exported/ --input audio_dir/ --output decoded_dir/ --compare
    uv run python inference.py --checkpoint runs/snac48/best_model.pt --input in.wav --output out.wav --save_codes
    uv run python inference.py --checkpoint runs/snac48/best_model.pt --from_codes --input out.codes.npz --output again.wav
    uv run python inference.py --checkpoint exported/ --from_codes --input out.codes.npz --output live.wav --stream

The codes always come from the base model's frozen encoder (a SNAC48 has no encoder of its own):
audio of any rate and channel count is downmixed to mono, resampled to the base rate (24 kHz),
encoded, decoded by the checkpoint at its rate (48 kHz for a SNAC48; a 24 kHz-mode checkpoint
decodes at 24 kHz) and trimmed to the input's duration. A file is read, downmixed and resampled
in blocks and encoded and decoded in overlapping chunks (``--chunk_seconds``), so host and device
memory stay flat in the file's length. An export made by scripts/export_pretrained.py holds its
base's encoder and needs nothing else (no network); a training checkpoint names its base.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from snac import SNAC
from snac.audio import AUDIO_EXTENSIONS, audio_info, iter_resampled_blocks
from snac.compiling import BACKEND_HELP, BACKENDS, TF32_HELP, CompileCounter, compile_method_, conv_precision
from snac.cache.format import weights_fingerprint
from snac.infer import (CODES_SUFFIX, codec_config, config_difference, encode_blocks, expected_codes_fingerprint,
                        iter_decode, load_codec_pair, load_codes, resolve_device, same_codec, save_codes)
from snac.layers import fold_weight_norm
from snac.presets import DEFAULT_BASE
from snac.stream import stream_to_wav

SUBTYPES = ("PCM_16", "PCM_24", "PCM_32", "FLOAT")  # wav sample formats worth writing
READ_BLOCK_SECONDS = 10.0  # input read/resample block when --chunk_seconds is 0 (whole file anyway)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="training checkpoint (.pt), exported model directory, or hub id")
    p.add_argument("--input", required=True, help="audio file or folder (with --from_codes: codes file or folder)")
    p.add_argument("--output", required=True,
                   help="output wav (for a file input) or folder (for a folder input; layout kept)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or a GPU index (default: cuda:0 if "
                   "there is a GPU, else cpu)")
    p.add_argument("--base_model", default=None,
                   help="base SNAC (hub id or dir) whose encoder makes the codes (default: the encoder "
                        "an export holds, else the checkpoint's recorded --pretrained_model when it can be "
                        f"found, else {DEFAULT_BASE})")
    p.add_argument("--save_codes", action="store_true",
                   help=f"also write the codes next to each output as <name>{CODES_SUFFIX}")
    p.add_argument("--from_codes", action="store_true",
                   help=f"the input is {CODES_SUFFIX} file(s) written by --save_codes: decode them")
    p.add_argument("--allow_other_weights", action="store_true",
                   help="with --from_codes: decode codes whose recorded encoder+quantizer weights fingerprint "
                        "differs from this model's base (codes of another model of the same config: they "
                        "decode to something else)")
    p.add_argument("--compare", action="store_true",
                   help="also write the stock base-model decode of the same codes as <name>.stock_<rate>.wav")
    p.add_argument("--chunk_seconds", type=float, default=30.0,
                   help="audio per read/encode/decode chunk, bounds host and GPU memory (default: 30); "
                        "0 = whole file in one piece")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                   help="decoder arithmetic (autocast; files are written from float32 either way). The encoder "
                        "stays fp32: bf16 changed 52-65%% of the shipped base's codes (bench_model.py --code_flips; default: fp32)")
    p.add_argument("--tf32", action="store_true",
                   help="the encoder and an fp32 decoder: " + TF32_HELP)
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the decoder and the encoder (the first file and the last chunk of a new "
                        "length pay the compile; every graph compiled is printed and counted)")
    p.add_argument("--compile_backend", default="inductor", choices=BACKENDS,
                   help=BACKEND_HELP + " (default: inductor)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the decoder's noise, set before each chunk of each file (default: 0)")
    p.add_argument("--subtype", default="PCM_16", choices=SUBTYPES,
                   help="sample format of the written wav files (default: PCM_16)")
    p.add_argument("--stream", action="store_true",
                   help="decode one coarse frame at a time (snac.stream, exact) and append each piece to the wav as "
                        "it is made; prints first-audio latency and speed. Noise position-seeded with --seed")
    p.add_argument("--stream_lookahead_ms", type=float, default=None,
                   help="with --stream: lag the codes by this much instead of the exact latency (approximate)")
    args = p.parse_args(argv)
    if args.stream and (args.precision != "fp32" or args.compile):
        p.error("--stream decodes in fp32 without torch.compile: drop --precision/--compile")
    if args.stream_lookahead_ms is not None and (not args.stream or args.stream_lookahead_ms < 0):
        p.error("--stream_lookahead_ms needs --stream and a value >= 0")
    if args.chunk_seconds < 0:
        p.error("--chunk_seconds must be >= 0 (0 = no chunking)")
    return args


def find_inputs(root: Path, from_codes: bool) -> list[Path]:
    if from_codes:
        return sorted(p for p in root.rglob(f"*{CODES_SUFFIX}") if p.is_file())
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)


def output_stem(path: Path) -> str:
    name = path.name
    return name[:-len(CODES_SUFFIX)] if name.endswith(CODES_SUFFIX) else path.stem


def write_stream(path: Path, chunks, rate: int, length: int, subtype: str) -> None:
    """Write the first ``length`` samples of a chunk stream (zero-padded if it runs short)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")  # not an audio suffix: a later run over the folder skips it
    written = 0
    try:
        with sf.SoundFile(str(tmp), "w", samplerate=rate, channels=1, subtype=subtype, format="WAV") as f:
            for chunk in chunks:
                take = chunk[:max(0, length - written)]
                f.write(np.clip(take, -1.0, 1.0))
                written += len(take)
            if written < length:
                f.write(np.zeros(length - written, dtype=np.float32))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed decode leaves nothing behind


def main(argv: list[str] | None = None) -> int:
    # a context, not torch.set_grad_enabled(False): callers in the same process keep autograd
    with torch.no_grad():
        return _main(argv)


def plan_jobs(src: Path, output: str, from_codes: bool) -> list[tuple[Path, Path]]:
    """(input, output wav) pairs; every mistake in --input/--output is refused here, before any model
    is loaded. ``output`` as typed: a trailing slash names a folder."""
    dst = Path(output)
    if not src.exists():
        raise SystemExit(f"error: --input {src} does not exist")
    if src.is_dir():
        if dst.exists() and not dst.is_dir():
            raise SystemExit(f"error: --input is a folder, so --output must be a folder; {dst} is a file")
        if not dst.exists() and dst.suffix.lower() in (".wav", *AUDIO_EXTENSIONS):
            raise SystemExit(f"error: --input is a folder, so --output must be a folder; {dst} is a file "
                             "name: pass a folder (the input layout is kept under it)")
        files = find_inputs(src, from_codes)
        if not files:
            kind = f"{CODES_SUFFIX} files" if from_codes else f"audio files ({', '.join(AUDIO_EXTENSIONS)})"
            raise SystemExit(f"error: --input {src} holds no {kind}")
        return [(f, dst / f.relative_to(src).parent / f"{output_stem(f)}.wav") for f in files]
    if from_codes and not src.name.endswith(CODES_SUFFIX):
        raise SystemExit(f"error: --from_codes expects a {CODES_SUFFIX} file, got {src}")
    if output.endswith(("/", os.sep)) and not dst.exists():  # 'decoded_dir/': a folder, made for the user
        dst.mkdir(parents=True)
    out = dst / f"{output_stem(src)}.wav" if dst.is_dir() else dst
    if out.suffix.lower() != ".wav":
        raise SystemExit(f"error: --output {dst} must end in .wav (or be a folder: an existing one, or a name "
                         "ending in /)")
    return [(src, out)]


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the hub's weight digest line
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from e
    chunk = args.chunk_seconds or None
    src, dst = Path(args.input), Path(args.output)
    jobs = plan_jobs(src, args.output, args.from_codes)

    # ---- models ----
    try:
        model, base, base_spec = load_codec_pair(args.checkpoint, args.base_model, not args.from_codes,
                                                 args.compare, DEFAULT_BASE)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        raise SystemExit(f"error: {e}") from e
    codec = codec_config(model)
    fingerprint = None  # of the encoder + quantizer whose codes this model decodes
    if args.from_codes:
        fingerprint = expected_codes_fingerprint(args.checkpoint, model, base)
        if fingerprint is None:
            print(f"note: {args.checkpoint} does not tell which base weights it decodes: the codes files' weights "
                  "are not checked (their codec config is)", file=sys.stderr)
    # recorded in --save_codes files (before weight norm is folded: the cache's fingerprint), so a decode
    # with other weights of the same config is refused
    own_encoder = model if isinstance(model, SNAC) else base
    encoder_fingerprint = weights_fingerprint(own_encoder) if own_encoder is not None and args.save_codes else None
    if isinstance(model, SNAC):
        print(f"{args.checkpoint} holds a plain SNAC: encoding and decoding at its own {model.sampling_rate} Hz")
    if base is not None:
        print(f"base model: {base_spec}")
    model = fold_weight_norm(model.eval()).to(device)  # plain weights: faster inference
    if base is not None:
        base = fold_weight_norm(base.eval()).to(device)
    encoder = model if isinstance(model, SNAC) else base  # None only with --from_codes
    compilers = []
    if args.compile:
        for module, method, name in ((model, "decode", "decoder"), (encoder, "encode", "encoder"),
                                     (base if args.compare else None, "decode", "stock decoder")):
            if module is not None:
                compilers.append(CompileCounter(name, args.compile_backend, report=lambda line: tqdm.write(line)))
                compile_method_(module, method, compilers[-1])
    out_rate = model.sampling_rate
    codec_rate = codec["sampling_rate"]

    failures, seconds = [], 0.0
    start = time.time()
    with conv_precision(args.tf32):  # IEEE float32 convolutions on a GPU unless --tf32
        for path, out in tqdm(jobs, desc="decoding", unit="file", disable=len(jobs) == 1):
            try:
                if args.from_codes:
                    codes, meta = load_codes(path)
                    if "model_config" in meta and not same_codec(meta["model_config"], codec):
                        raise ValueError(f"codes were made by another codec "
                                         f"({config_difference(meta['model_config'], codec)})")
                    made_by = meta.get("weights_fingerprint")
                    if made_by and fingerprint and made_by != fingerprint and not args.allow_other_weights:
                        raise ValueError(f"codes were made by other weights of the same codec config (encoder+"
                                         f"quantizer fingerprint {made_by[:12]} vs {fingerprint[:12]} for this "
                                         "model): decode them with the model that made them, or pass "
                                         "--allow_other_weights")
                    src_rate, src_len = meta["source_sample_rate"], meta["source_num_samples"]
                else:
                    info = audio_info(path)
                    src_rate, src_len, made_by = info.sample_rate, info.frames, encoder_fingerprint
                    # read, downmix and resample block by block: host memory flat in the file's length
                    blocks = iter_resampled_blocks(path, codec_rate, chunk or READ_BLOCK_SECONDS, mono=True)
                    codes = encode_blocks(encoder, blocks, chunk, device=device)
                length = math.ceil(src_len * out_rate / src_rate)  # output trimmed to the input's duration
                if args.stream:
                    tqdm.write(f"{out}: " + stream_to_wav(model, codes, out, length, args.subtype,
                                                          args.stream_lookahead_ms, args.seed)["summary"])
                else:
                    write_stream(out, iter_decode(model, codes, chunk, device=device, seed=args.seed,
                                                  precision=args.precision), out_rate, length, args.subtype)
                if args.save_codes:
                    save_codes(out.with_name(output_stem(out) + CODES_SUFFIX), codes,
                               {"model_config": codec, "weights_fingerprint": made_by,
                                "source_sample_rate": src_rate,
                                "source_num_samples": src_len, "source": str(path)})
                if args.compare:  # same per-chunk seeds: the shared trunk draws the same noise
                    stock_len = math.ceil(src_len * base.sampling_rate / src_rate)
                    stock_out = out.with_name(f"{output_stem(out)}.stock_{base.sampling_rate // 1000}khz.wav")
                    write_stream(stock_out, iter_decode(base, codes, chunk, device=device, seed=args.seed,
                                                        precision=args.precision), base.sampling_rate, stock_len,
                                 args.subtype)
                seconds += src_len / src_rate
            except Exception as e:  # one bad file must not stop a folder run; say which and why
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                msg = msg.removeprefix(f"{path}: ")  # AudioError names the file already
                failures.append(f"{path}: {msg}")
                tqdm.write(f"failed: {path}: {msg}", file=sys.stderr)
    elapsed = time.time() - start
    done = len(jobs) - len(failures)
    print(f"decoded {done}/{len(jobs)} file(s), {seconds:.3g} s of audio in {elapsed:.3g} s "
          f"({seconds / max(elapsed, 1e-9):.3g}x real time) at {out_rate} Hz -> {dst}")
    for counter in compilers:
        print(counter.summary())
    if failures:
        print(f"{len(failures)} file(s) failed:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
