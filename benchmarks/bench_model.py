"""Speed of our SNAC against upstream SNAC 1.2.1 on the same weights, and SNAC48 vs stock decode
(the full head, the sinc head, and the lite head at --lite_channels branch widths).

    uv run python benchmarks/bench_model.py [--seconds 10] [--repeats 5] [--device cpu|cuda] [--lite_channels 16,32]
    uv run python benchmarks/bench_model.py --modes   # + eager/compiled x fp32/bf16 decodes, ratios to stock eager fp32
    uv run python benchmarks/bench_model.py --train_snake   # + a training decode's Snake: recomputing vs plain autograd
    uv run python benchmarks/bench_model.py --code_flips [--flips_audio SPEECH_DIR] [--flips_model DIR|HUB_ID]
        # only this: the codes a reduced-precision (TF32 on a GPU, bf16, fp16) or batched encode
        # changes against IEEE float32 alone

Prints a table of median times and ratios measured in this one process (timings interleaved so
that machine noise hits both sides alike). The reference wheel is fetched like the parity tests do.
"""

from __future__ import annotations

import argparse
import contextlib
import os
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


# one decode in a fresh process: peak resident memory above what the built model already holds
PEAK_SCRIPT = """
import json, resource, sys, torch
sys.path.insert(0, sys.argv[1])
from snac import SNAC, SNAC48
from snac.presets import SNAC_24KHZ
torch.set_num_threads(1)
torch.manual_seed(0)
base = SNAC(**SNAC_24KHZ).eval()
head = json.loads(sys.argv[2])
model = base if head is None else SNAC48.from_snac(base, head=head).eval()
frames = -(-int(float(sys.argv[3]) * 24000) // (base.hop_length * 4)) * 4  # random codes: no encoder peak
codes = [torch.randint(0, 4096, (1, frames // s)) for s in base.vq_strides]
import os
with torch.inference_mode():
    built_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    now = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    model.decode(codes)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
# a high-water mark: valid only when the decode rose above the build's own peak
print(peak - now if peak > built_peak else float("nan"))
"""


def cpu_peak_mib(head: dict | None, seconds: float) -> float:
    import json
    import subprocess

    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(Path(__file__).resolve().parents[1]),
                          json.dumps(head), str(seconds)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def cuda_peak_mib(model, codes) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    with torch.inference_mode():
        model.decode(codes)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - start) / 2 ** 20


def mode_table(models: dict, codes, dev: str, repeats: int) -> None:
    """Decode time of each model eager / torch.compile'd x fp32 / bf16 (autocast), as ratios to the
    stock eager fp32 decode, all timed interleaved in this process after a warm-up (which holds
    the compiles; the graphs each compiled model needed are printed)."""
    from snac.compiling import CompileCounter, compile_fn

    counters, cases = {}, {}
    for name, model in models.items():
        counters[name] = CompileCounter(name)
        fns = {"eager": model.decode, "compiled": compile_fn(model.decode, counters[name])}
        for mode, fn in fns.items():
            for prec, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
                def run(fn=fn, dtype=dtype):
                    with torch.autocast(dev, dtype=dtype or torch.float32, enabled=dtype is not None):
                        fn(codes)
                cases[(name, mode, prec)] = run
    with torch.inference_mode():
        t0 = time.perf_counter()
        for fn in cases.values():
            fn()
        warm = time.perf_counter() - t0
        times = {k: [] for k in cases}
        for _ in range(repeats):
            for k, fn in cases.items():
                times[k].append(timed(fn, dev))
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med[(next(iter(models)), "eager", "fp32")]
    print(f"decode time / stock eager fp32 ({1000 * base:.1f} ms), median of {repeats}; warm-up with the "
          f"compiles {warm:.0f} s")
    print(f"{'model':18s} {'eager fp32':>11s} {'eager bf16':>11s} {'compiled fp32':>14s} {'compiled bf16':>14s}  graphs")
    for name in models:
        row = [med[(name, m, p)] / base for m in ("eager", "compiled") for p in ("fp32", "bf16")]
        print(f"{name:18s} {row[0]:11.2f} {row[1]:11.2f} {row[2]:14.2f} {row[3]:14.2f}  {counters[name].graphs}")


def train_snake_table(models: dict, codes, dev: str, repeats: int) -> None:
    """Forward + backward of a decode (every decoder parameter trained) with the Snake in use (its
    backward recomputes from x and alpha) against the plain expression's autograd, in this process:
    step time, the activation bytes autograd keeps for the backward (saved-tensor hooks; each
    storage counted once) and, on CUDA, the allocator's peak."""
    import snac.layers as layers

    def plain(x, alpha):
        return x + (alpha + 1e-9).reciprocal() * torch.sin(alpha * x).pow(2)

    variants = {"recompute": layers.snake, "plain autograd": plain}

    def step(model, variant: str) -> tuple[float, float, float]:
        layers.snake = variants[variant]
        kept: dict[int, int] = {}

        def pack(t):
            kept.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
            return t

        try:
            model.zero_grad(set_to_none=True)
            if dev == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss = model.decode(codes).square().mean()
            loss.backward()
            if dev == "cuda":
                torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() / 2**20 if dev == "cuda" else float("nan")
            return time.perf_counter() - t0, sum(kept.values()) / 2**20, peak
        finally:
            layers.snake = variants["recompute"]

    for model in models.values():
        model.train().requires_grad_(False)
        for p in model.decoder.parameters():
            p.requires_grad_(True)
        for p in getattr(model, "head", torch.nn.Module()).parameters():
            p.requires_grad_(True)
    results = {(name, v): [] for name in models for v in variants}
    for name, model in models.items():  # warm-up
        for v in variants:
            step(model, v)
    for _ in range(repeats):
        for name, model in models.items():
            for v in variants:
                torch.manual_seed(0)
                results[(name, v)].append(step(model, v))
    print(f"training decode (forward + backward, decoder trained), median of {repeats}: recomputing Snake / "
          "plain autograd")
    print(f"{'model':18s} {'time':>6s} {'saved MiB (recompute / plain)':>31s}  {'CUDA peak MiB':>14s}")
    for name in models:
        r, p = ([statistics.median(x[i] for x in results[(name, v)]) for i in range(3)] for v in variants)
        print(f"{name:18s} {r[0] / p[0]:6.2f} {r[1]:12.1f} / {p[1]:8.1f} = {r[1] / p[1]:.2f}  "
              + (f"{r[2]:.0f} / {p[2]:.0f} = {r[2] / p[2]:.2f}" if dev == "cuda" else "-"))
    for model in models.values():
        model.eval().requires_grad_(True)  # as they were built


def synthetic_speech(n: int, seconds: float, rate: int) -> list[torch.Tensor]:
    """Seeded stand-ins for speech (a gliding harmonic series under a syllable envelope, plus
    noise): the shapes and level of speech, not its statistics. Real files (--flips_audio) say more."""
    g = torch.Generator().manual_seed(0)
    t = torch.arange(int(seconds * rate)) / rate
    out = []
    for _ in range(n):
        f0 = 90 + 160 * torch.rand(1, generator=g) + 30 * torch.sin(2 * torch.pi * 0.7 * t)
        phase = 2 * torch.pi * torch.cumsum(f0, 0) / rate
        voiced = sum(torch.sin(k * phase) / k for k in range(1, 30))
        envelope = torch.sin(torch.pi * 4 * t).abs()
        out.append(0.1 * envelope * voiced + 0.01 * torch.randn(len(t), generator=g))
    return out


def tf32_round(x: torch.Tensor) -> torch.Tensor:
    """float32 rounded to nearest (ties to even) at TF32's 10 mantissa bits; NaN and Inf not handled."""
    bits = x.contiguous().view(torch.int32)
    return ((bits + 0xFFF + ((bits >> 13) & 1)) & ~0x1FFF).view(torch.float32)


@contextlib.contextmanager
def emulated_tf32():
    """Every F.conv1d inside gets its input and weight rounded to TF32 (to nearest even) and
    accumulates in float32: an estimate of a GPU's TF32 convolutions on any device. Not their
    exact arithmetic: cuDNN may keep some convolutions (e.g. depthwise) off the tensor cores, and
    the hardware's rounding of ties may differ."""
    import torch.nn.functional as F

    real = F.conv1d

    def conv1d(x, weight, *a, **k):
        return real(tf32_round(x), tf32_round(weight), *a, **k)

    F.conv1d = conv1d
    try:
        yield
    finally:
        F.conv1d = real


def code_flips(args) -> None:
    """Codes that change against an IEEE float32 encode of each file alone: under TF32 (cuDNN's,
    CUDA only; and emulated by rounding, any device), bf16 and fp16 autocast, and for files
    encoded together in one batch at float32. Prints
    the share of changed codes per codebook (coarse first) and each mode's encode time over the
    float32 one."""
    from snac.audio import AUDIO_EXTENSIONS, load_audio, resample
    from snac.compiling import conv_precision
    from snac.evaluation import find_eval_files

    dev = args.device  # "cpu" or "cuda" (main made cuda:N the current device)
    if args.flips_model == "random":  # the published layout at random weights (seed 0)
        torch.manual_seed(0)
        model = SNAC(**SNAC_24KHZ)
    else:
        model = SNAC.from_pretrained(args.flips_model)
    model = model.eval().requires_grad_(False).to(dev)
    rate, mult = model.sampling_rate, model.pad_multiple
    if args.flips_audio:
        paths = find_eval_files(args.flips_audio, args.flips_files)
        if not paths:
            raise SystemExit(f"error: no audio files under {args.flips_audio} (--flips_audio wants a folder of "
                             f"{', '.join(sorted(AUDIO_EXTENSIONS))})")
        signals = []
        for path in paths:
            x, sr = load_audio(path, mono=True)
            signals.append(torch.as_tensor(resample(x, sr, rate), dtype=torch.float32).reshape(-1))
        source = f"{len(signals)} files of {args.flips_audio}"
    else:
        signals = synthetic_speech(args.flips_files, 2.0, rate)
        source = f"{len(signals)} synthetic 2 s signals (pass --flips_audio DIR for real speech)"

    def encode(x: torch.Tensor, dtype=None, tf32: bool = False, emulate: bool = False) -> list[torch.Tensor]:
        with torch.inference_mode(), conv_precision(tf32), emulated_tf32() if emulate else contextlib.nullcontext(), \
                torch.autocast(dev, dtype=dtype or torch.float32, enabled=dtype is not None):
            return [c.cpu() for c in model.encode(x.to(dev))]

    modes = {"fp32": {}, **({"tf32": {"tf32": True}} if dev == "cuda" else {}), "tf32 emulated": {"emulate": True},
             "bf16": {"dtype": torch.bfloat16}, "fp16": {"dtype": torch.float16}}
    codes, seconds = {}, {}
    for name, kw in modes.items():
        encode(signals[0].reshape(1, 1, -1), **kw)  # warm-up
        seconds[name] = sum(timed(lambda x=x: codes.setdefault(name, []).append(encode(x.reshape(1, 1, -1), **kw)),
                                  dev) for x in signals)
    # a batch: the files of at least the median padded length, cut to it (equal lengths, no padding)
    length = sorted(len(x) for x in signals)[len(signals) // 2] // mult * mult
    together = [x[:length] for x in signals if len(x) >= length][:args.flips_batch]
    batched = encode(torch.stack(together).unsqueeze(1))
    alone = [encode(x.reshape(1, 1, -1)) for x in together]

    def changed(a: list[list[torch.Tensor]], b: list[list[torch.Tensor]]) -> list[float]:
        return [100 * sum(int((x[i] != y[i]).sum()) for x, y in zip(a, b)) / sum(x[i].numel() for x in a)
                for i in range(len(a[0]))]

    name = torch.cuda.get_device_name() if dev == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"code flips: {args.flips_model} on {name}; {source}; each file encoded alone")
    print(f"{'mode':32s} {'% codes changed, coarse first':>30s}  {'encode time / fp32':>18s}")
    for mode in modes:
        if mode != "fp32":
            shares = " ".join(f"{v:6.3f}" for v in changed(codes["fp32"], codes[mode]))
            ratio = "-" if "emulated" in mode else f"{seconds[mode] / seconds['fp32']:.2f}"  # the rounding's cost
            print(f"{mode + ' vs IEEE fp32':32s} {shares:>30s}  {ratio:>18s}")
    per_item = [[c[b:b + 1] for c in batched] for b in range(len(together))]
    shares = " ".join(f"{v:6.3f}" for v in changed(alone, per_item))
    print(f"{f'batch of {len(together)} x {length / rate:.2f} s vs alone':32s} {shares:>30s}  (both IEEE fp32)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="audio length per call")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    ap.add_argument("--lite_channels", default="16,32", help="branch widths of the lite heads to time")
    ap.add_argument("--memory_seconds", type=float, default=60.0,
                    help="audio length of the peak-memory decodes (0: skip them)")
    ap.add_argument("--modes", action="store_true",
                    help="also time eager/compiled x fp32/bf16 decodes of stock, SNAC48 and the first lite head "
                         "(compiling takes minutes on a CPU)")
    ap.add_argument("--train_snake", action="store_true",
                    help="also time a training decode with the recomputing Snake against plain autograd")
    ap.add_argument("--code_flips", action="store_true",
                    help="only measure the codes a TF32 / bf16 / fp16 or batched encode changes against IEEE fp32")
    ap.add_argument("--flips_model", default=str(Path(__file__).resolve().parents[1] / "models" / "klettres_24khz"),
                    help="--code_flips: the SNAC (local dir or hub id; 'random': the snac_24khz layout at random "
                         "weights, seed 0) whose encoder is measured (default: the shipped base)")
    ap.add_argument("--flips_audio", default=None, help="--code_flips: a folder of speech (default: synthetic)")
    ap.add_argument("--flips_files", type=int, default=40, help="--code_flips: files used (sorted by path)")
    ap.add_argument("--flips_batch", type=int, default=16, help="--code_flips: files encoded in one batch")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda:"):  # the timing code says "cuda": make cuda:N the current device
        torch.cuda.set_device(args.device)
        args.device = "cuda"
    if args.code_flips:
        code_flips(args)
        return
    from scripts._common import import_reference  # the repository root is on sys.path

    ref_mod = None
    if os.environ.get("SNAC_SKIP_REFERENCE") == "1":
        print("SNAC_SKIP_REFERENCE=1: upstream SNAC's rows are left out")
    else:
        try:
            ref_mod = import_reference()
        except (RuntimeError, OSError) as e:  # offline (a GPU machine without PyPI, no uv): time ours alone
            print(f"upstream SNAC unavailable, its rows are left out: {str(e)[:200]}")
    dev = args.device
    torch.manual_seed(0)
    ours = SNAC(**SNAC_24KHZ).eval().to(dev)
    ref = None
    if ref_mod is not None:
        ref = ref_mod.SNAC(**SNAC_24KHZ).eval().to(dev)
        ours.load_state_dict(ref.state_dict())
    folded = fold_weight_norm(SNAC(**SNAC_24KHZ).eval().to(dev).requires_grad_(False), ours.state_dict())
    m48 = SNAC48.from_snac(ours).eval()
    m48_sinc = SNAC48.from_snac(ours, head={"type": "sinc"}).eval()
    m48_folded = fold_weight_norm(SNAC48(SNAC_24KHZ).eval().to(dev).requires_grad_(False), m48.state_dict())
    lites = {int(c): SNAC48.from_snac(ours, head={"type": "lite", "branch_channels": int(c)}).eval()
             for c in args.lite_channels.split(",") if c}

    audio = 0.1 * torch.randn(args.batch, 1, int(args.seconds * 24000), device=dev)
    with torch.inference_mode():
        codes = ours.encode(audio)
        cases = {
            **({"reference encode+decode": lambda: ref.decode(ref.encode(audio))} if ref is not None else {}),
            "ours encode+decode": lambda: ours.decode(ours.encode(audio)),
            "ours folded encode+decode": lambda: folded.decode(folded.encode(audio)),
            "stock 24k decode": lambda: ours.decode(codes),
            "SNAC48 decode": lambda: m48.decode(codes),
            "SNAC48 folded decode": lambda: m48_folded.decode(codes),
            "SNAC48 sinc decode": lambda: m48_sinc.decode(codes),
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
    if ref is not None:
        print(f"ours / reference (encode+decode):        {med['ours encode+decode'] / med['reference encode+decode']:.3f}")
        print(f"ours folded / reference (encode+decode): "
              f"{med['ours folded encode+decode'] / med['reference encode+decode']:.3f}")
    print(f"SNAC48 / stock 24k decode:               {med['SNAC48 decode'] / med['stock 24k decode']:.3f}")
    print(f"SNAC48 folded / stock 24k decode:        {med['SNAC48 folded decode'] / med['stock 24k decode']:.3f}")
    print(f"SNAC48 sinc / stock 24k decode:          {med['SNAC48 sinc decode'] / med['stock 24k decode']:.3f}")
    if args.memory_seconds > 0:  # peak memory of one decode above the loaded model, as a ratio to stock
        heads = {"stock 24k": None, "SNAC48 full": {"type": "full"}, "SNAC48 sinc": {"type": "sinc"},
                 **{f"SNAC48 lite-{c}": {"type": "lite", "branch_channels": c} for c in lites}}
        if dev == "cuda":
            with torch.inference_mode():
                long_codes = ours.encode(0.1 * torch.randn(1, 1, int(args.memory_seconds * 24000), device=dev))
            models = {"stock 24k": ours, "SNAC48 full": m48, "SNAC48 sinc": m48_sinc, **{f"SNAC48 lite-{c}": m for c, m in lites.items()}}
            peaks = {k: cuda_peak_mib(models[k], long_codes) for k in heads}
        else:
            peaks = {k: cpu_peak_mib(h, args.memory_seconds) for k, h in heads.items()}
        print(f"peak memory of one {args.memory_seconds:g} s decode above the loaded model "
              f"({'CUDA allocator' if dev == 'cuda' else 'peak resident set minus resident set before, fresh process each; nan: below the build peak, use longer --memory_seconds'}):")
        for k, v in peaks.items():
            print(f"  {k:20s} {v:8.1f} MiB  {v / peaks['stock 24k']:.2f}x stock")
    for c in lites:
        print(f"{'SNAC48 lite-' + str(c) + ' / stock 24k decode:':41s}"
              f"{med[f'SNAC48 lite-{c} decode'] / med['stock 24k decode']:.3f}")
    first_lite = {f"SNAC48 lite-{c}": m for c, m in list(lites.items())[:1]}
    if args.train_snake:
        train_snake_table({"stock 24k": ours, "SNAC48 full": m48, **first_lite}, codes, dev, args.repeats)
    if args.modes:
        mode_table({"stock 24k": folded, "SNAC48 full": m48_folded,
                    **{k: fold_weight_norm(m) for k, m in first_lite.items()}}, codes, dev, args.repeats)


if __name__ == "__main__":
    main()
