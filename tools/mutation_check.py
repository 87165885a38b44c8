#!/usr/bin/env python
"""Mutation check: put one small deliberate bug at a time into a copy of the repository and prove
that the tests meant to guard that property fail.

    uv run python tools/mutation_check.py              # every mutant, ~10-15 min on 2 cores
    uv run python tools/mutation_check.py --jobs 2     # two copies side by side
    uv run python tools/mutation_check.py --only sc-floor --only l1   # names containing these
    uv run python tools/mutation_check.py --list       # the mutants and their tests
    uv run python tools/mutation_check.py --lane fast  # only the fast lane's tests: what it misses, the slow lane catches

How: the tracked (and untracked, not ignored) files are copied into a temporary directory, once
per job. The copy's tests run with THIS interpreter (``sys.executable``), ``PYTHONPATH`` pointing at
the copy and no bytecode written, so the copy's code is what is imported (checked first, and
again by a control mutant that breaks ``import snac``). Every test selection first passes on the
unmutated copy (baseline). Then each mutant replaces one exact snippet in one file, runs its
tests with ``-x -q`` and a timeout, and restores the file.

Result per mutant: ``caught`` (its tests failed), ``MISSED`` (they passed), ``NOT APPLICABLE``
(the snippet is no longer in the file: the code moved, update the mutant), ``NO TESTS`` (the
selection collected nothing: a test was renamed), ``TIMEOUT``. Exit 1 unless every mutant is
caught. Snippets are short and distinctive so they survive refactors; when one stops matching,
fix the snippet rather than dropping the mutant.

Not covered here on purpose: the training loop (``finetune_decoder_48khz.py``) and the launchers,
whose tests start ``uv run`` subprocesses that would re-sync the shared virtual environment
against the copy.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    area: str
    path: str           # file, relative to the repository root
    old: str            # exact snippet; must occur exactly once in the file
    new: str
    tests: tuple[str, ...]  # pytest arguments: files, node ids, "-k", "expr"


def m(name: str, area: str, path: str, old: str, new: str, *tests: str) -> Mutant:
    return Mutant(name, area, path, old, new, tuple(tests))


DATA, LOSSES = "tests/test_train_data.py", "tests/test_train_losses.py"
CKPT, MODEL48 = "tests/test_train_checkpoint.py", "tests/test_model48.py"
CACHE_CODES, CACHE_READER = "tests/test_cache_codes.py", "tests/test_cache_reader.py"
INFER, INFER_ERRORS = "tests/test_inference.py", "tests/test_inference_errors.py"
PREFLIGHT = "tests/test_train_preflight.py"
WINDOWS, LOSS_PY, CKPT_PY = "snac/train/windows.py", "snac/train/losses.py", "snac/train/checkpoint.py"
M48_PY, INFER_PY = "snac/model48.py", "snac/infer.py"
STREAM_PY, STREAM = "snac/stream.py", "tests/test_stream.py"

MUTANTS: list[Mutant] = [
    # ---- alignment: codes of every scale and the audio of a window start at the same instant
    m("window-audio-start-plus-1-sample", "alignment", WINDOWS,
      "out_start, out_len = k * p_out, n * p_out", "out_start, out_len = k * p_out + 1, n * p_out",
      DATA, "-k", "same_instant or slices"),
    m("window-mask-one-sample-too-long", "alignment", WINDOWS,
      "mask[:valid] = 1.0", "mask[:valid + 1] = 1.0", DATA, "-k", "padded"),
    m("window-codes-padded-with-1", "alignment", WINDOWS,
      "np.zeros(length - len(c), dtype=np.int64)", "np.ones(length - len(c), dtype=np.int64)",
      DATA, "-k", "padded"),
    m("window-grid-ignores-attention", "alignment", WINDOWS,
      "return math.lcm(s0, self.attn_window_size or 1) // s0", "return 1",
      DATA, "-k", "geometry or same_instant"),
    m("reader-fine-codebook-not-scaled", "alignment", "snac/cache/reader.py",
      "return [row[n * b + s * r:n * b + e * r]", "return [row[n * b + s:n * b + s + (e - s) * r]",
      CACHE_READER, "-k", "aligned"),
    # ---- resume: the data position and the checkpoint files
    m("sampler-restore-forgets-position", "resume", WINDOWS,
      'self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])',
      'self.epoch, self.consumed = int(state["epoch"]), 0', DATA, "-k", "restore or resharding"),
    m("sampler-advance-ignores-world-size", "resume", WINDOWS,
      "self.consumed + self.batch_size * self.world_size", "self.consumed + self.batch_size",
      DATA, "-k", "resharding"),
    m("sampler-window-start-ignores-epoch", "resume", WINDOWS,
      "np.random.default_rng([seed, epoch, position, 1])", "np.random.default_rng([seed, position, 1])",
      DATA, "-k", "restore or epochs"),
    m("checkpoint-written-in-place", "resume", CKPT_PY,
      'tmp = path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}")', "tmp = path",
      CKPT, "-k", "kill_during_a_save"),
    m("resume-auto-takes-the-oldest", "resume", CKPT_PY,
      "readable.sort(key=lambda r: r[:2], reverse=True)", "readable.sort(key=lambda r: r[:2], reverse=False)",
      CKPT, "-k", "newest"),
    m("rotation-deletes-the-newest", "resume", CKPT_PY,
      "if (m := ITER_RE.match(p.name))), reverse=True)", "if (m := ITER_RE.match(p.name))), reverse=False)",
      CKPT, "-k", "rotation"),
    m("torch-rng-state-not-restored", "resume", CKPT_PY,
      'torch.set_rng_state(state["torch"].cpu())', 'state["torch"].cpu()', CKPT, "-k", "rng"),
    m("set-aside-also-takes-the-resumed-one", "resume", CKPT_PY,
      '["iteration"]) > iteration', '["iteration"]) >= iteration', CKPT, "-k", "aside"),
    m("load-checkpoint-unpickles-code", "resume", CKPT_PY,
      "weights_only=True, mmap=mmap", "weights_only=False, mmap=mmap", PREFLIGHT, "-k", "load_checkpoint"),
    # ---- losses: padding neither costs nor earns, the spectral-convergence floor only on silence
    m("l1-divided-by-window-length", "losses", LOSS_PY,
      "return num / mask.flatten(1).sum(1).clamp_min(1.0)", "return num / mask.shape[-1]", LOSSES),
    m("stft-log-term-over-padded-frames", "losses", LOSS_PY,
      "return sc, (log_diff * frame_mask).sum(1) / frame_mask.sum(1)", "return sc, log_diff.mean(1)", LOSSES),
    m("sc-floor-raised-100x", "losses", LOSS_PY, "SC_FLOOR_RMS = 1e-2", "SC_FLOOR_RMS = 1.0", LOSSES),
    m("stft-target-tail-not-masked", "losses", LOSS_PY,
      "target = (target * mask).flatten(1).float()", "target = target.flatten(1).float()", LOSSES),
    m("stft-weight-ignored", "losses", LOSS_PY,
      '"loss/total": l1_weight * l1 + stft_weight * stft', '"loss/total": l1_weight * l1 + stft', LOSSES),
    # ---- validation windows: fixed, centred, on the grid
    m("val-windows-start-at-0", "validation", WINDOWS,
      "k = max(0, int(num_coarse[row]) - n) // 2 // multiple * multiple", "k = 0", DATA, "-k", "validation"),
    m("val-windows-off-the-grid", "validation", WINDOWS,
      "k = max(0, int(num_coarse[row]) - n) // 2 // multiple * multiple",
      "k = max(0, int(num_coarse[row]) - n) // 2", DATA, "-k", "validation"),
    # ---- smart initialisation of the 48 kHz head
    m("smart-init-snake-alpha-not-copied", "smart init", M48_PY,
      "self.snake.alpha.copy_(base_snake.alpha)", "self.snake.alpha.fill_(1.0)", MODEL48, "-k", "smart_init"),
    m("smart-init-written-to-.weight", "smart init", M48_PY,
      "set_weight_norm_weight(self.conv, w.to(self.conv.weight.dtype))",
      "self.conv.weight.data.copy_(w.to(self.conv.weight.dtype))", MODEL48, "-k", "smart_init"),
    m("smart-init-zero-stuffing-shifted", "smart init", M48_PY,
      "torch.arange(c), self.upsample.padding[0]] = 1.0", "torch.arange(c), self.upsample.padding[0] + 1] = 1.0",
      MODEL48, "-k", "smart_init"),
    m("smart-init-residual-not-identity", "smart init", M48_PY,
      "conv.parametrizations.weight.original0.zero_()", "conv.parametrizations.weight.original0.mul_(0.5)",
      MODEL48, "-k", "smart_init"),
    m("smart-init-bias-not-copied", "smart init", M48_PY,
      "self.conv.bias.copy_(base_conv.bias)", "self.conv.bias.zero_()", MODEL48, "-k", "smart_init"),
    m("lite-branch-not-zero-at-init", "smart init", M48_PY,
      "zero_magnitude_([self.branch_out] +", "zero_magnitude_([] +", MODEL48, "-k", "lite"),
    m("compile-draws-its-own-noise", "compile", "snac/compiling.py",
      "torch._inductor.config.fallback_random = True", "torch._inductor.config.fallback_random = False",
      "tests/test_compile.py", "-k", "inductor"),
    m("snake-in-place-not-exact", "layers", "snac/layers.py",
      "return out.sin_().square_().mul_((alpha + 1e-9).reciprocal()).add_(x)",
      "return out.sin_().square_().mul_((alpha + 1e-7).reciprocal()).add_(x)", "tests/test_model.py", "-k", "snake"),
    m("snake-backward-alpha-term-wrong", "layers", "snac/layers.py",
      "term = sin2.mul_(x).sub_(sine.square_().mul_(inv)).mul_(grad)", "term = sin2.mul_(x).mul_(grad)",
      "tests/test_model.py", "-k", "snake"),
    m("snake-keeps-the-plain-autograd", "layers", "snac/layers.py",
      "return _Snake.apply(x, alpha)", "return x + (alpha + 1e-9).reciprocal() * torch.sin(alpha * x).pow(2)",
      "tests/test_model.py", "-k", "snake"),
    m("lite-branch-dead-at-init", "smart init", M48_PY,
      "self.branch_out.parametrizations.weight.original0.fill_(self.branch_init)", "pass", MODEL48, "-k", "lite"),
    m("branch-lr-scale-ignored-on-the-curve", "schedule", "snac/train/schedule.py",
      'group["lr"] = lr * group.get("lr_scale", 1.0)', 'group["lr"] = lr',
      "tests/test_train_schedule.py", "-k", "branch"),
    m("legacy-lite-gain-not-kept", "smart init", M48_PY,
      'init, gain = float(head.get("branch_init", BRANCH_INIT)), float(head.get("branch_gain", BRANCH_GAIN))',
      'init, gain = float(head.get("branch_init", BRANCH_INIT)), BRANCH_GAIN', MODEL48, "-k", "lite"),
    m("lite-interpolator-not-exact", "smart init", M48_PY,
      "interp[factor * taps - 1] = 1.0", "interp[factor * taps - 1] = 0.999", MODEL48, "-k", "lite"),
    m("from-snac-quantizer-not-copied", "smart init", M48_PY,
      "model.quantizer.load_state_dict(base.quantizer.state_dict())", "pass", MODEL48, "-k", "smart_init"),
    m("head-skips-the-final-snake", "smart init", M48_PY,
      "return self.tanh(self.conv(self.snake(x)))", "return self.tanh(self.conv(x))",
      MODEL48, "-k", "smart_init"),
    m("new-snake-not-given-to-the-optimizer", "smart init", "snac/train/phases.py",
      '"head": list(model.head.parameters())',
      '"head": [p for p in model.head.parameters() if p is not model.head.snake.alpha]',
      MODEL48, "-k", "parameter_groups"),
    # ---- caching
    m("cache-model-audio-from-channel-0", "caching", "snac/cache/encode.py",
      "audio = resample(torch.from_numpy(mono), sr, model_sample_rate)",
      "audio = resample(torch.from_numpy(load_audio(path)[0][0].copy()), sr, model_sample_rate)",
      CACHE_CODES, "-k", "single_file"),
    m("cache-oom-halves-swapped", "caching", "snac/cache/encode.py",
      "return self.encode(items[:half]) + self.encode(items[half:])",
      "return self.encode(items[half:]) + self.encode(items[:half])", CACHE_CODES, "-k", "out_of_memory"),
    m("cache-reader-accepts-another-model", "caching", "snac/cache/reader.py",
      'diffs = compare_model_configs(m["model_config"], expected_model_config)', "diffs = []",
      CACHE_READER, "-k", "another_model"),
    m("cache-format-version-unchecked", "caching", "snac/cache/format.py",
      'if manifest["format_version"] != FORMAT_VERSION:', "if False:", "tests/test_cache_integrity.py", "-k", "format_version"),
    m("cache-index-not-rebuilt-on-change", "caching", "snac/cache/index.py",
      "f.seek(max(0, size - _TAIL_BYTES))\n            h.update(f.read())", "pass",
      "tests/test_cache_integrity.py", "-k", "digest"),
    m("cache-resume-redoes-finished-files", "caching", "snac/cache/run.py",
      "mine = [it for it in partition(items, g, num_workers) if it[0] not in done]",
      "mine = partition(items, g, num_workers)", CACHE_CODES, "-k", "resume"),
    # ---- inference
    m("from-codes-codec-check-removed", "inference", "inference.py",
      'if "model_config" in meta and not same_codec(meta["model_config"], codec):', "if False:",
      INFER_ERRORS, "-k", "another_codec"),
    m("cache-encoder-keeps-torch-tf32", "caching", "snac/cache/encode.py",
      "with torch.inference_mode(), conv_precision(self.tf32):", "with torch.inference_mode():",
      CACHE_CODES, "-k", "tf32"),
    m("cache-tf32-flag-not-passed-to-workers", "caching", "snac/cache/run.py",
      "            tf32=cfg.tf32,\n", "", CACHE_CODES, "-k", "sorted_order"),
    m("inference-tf32-flag-ignored", "inference", "inference.py",
      "with conv_precision(args.tf32):", "with conv_precision(False):", INFER, "-k", "tf32"),
    m("inference-seed-not-set", "inference", "inference.py",
      "write_stream(out, iter_decode(model, codes, chunk, device=device, seed=args.seed,",
      "write_stream(out, iter_decode(model, codes, chunk, device=device,", INFER, "-k", "from_codes or channels"),
    m("inference-downmix-is-channel-0", "inference", "snac/audio.py",
      "resampler.process(to_mono(x) if mono else x)", "resampler.process(x[0].copy() if mono else x)",
      INFER, "-k", "channels"),
    m("decode-chunks-without-context", "inference", INFER_PY,
      "context = decoder_context_frames(model) if context_frames is None else context_frames",
      "context = 0 if context_frames is None else context_frames", INFER, "-k", "chunked"),
    m("encode-chunk-keeps-the-wrong-span", "inference", INFER_PY,
      "c[0, (keep_start - start) // n:(keep_end - start) // n]", "c[0, :(keep_end - keep_start) // n]",
      INFER, "-k", "chunked"),
    m("check-codes-range-off-by-one", "inference", INFER_PY,
      'int(c.max()) >= cfg["codebook_size"]', 'int(c.max()) > cfg["codebook_size"]', INFER_ERRORS, "-k", "fit"),
    # ---- streaming decode: each layer's state, the derived latency, the noise positions, the token layout
    m("stream-conv-forgets-left-padding", "streaming", STREAM_PY,
      "self.buf = x.new_zeros(x.shape[0], x.shape[1], self.padding)", "self.buf = x.new_zeros(x.shape[0], x.shape[1], 0)",
      STREAM, "-k", "equals_offline_decode"),
    m("stream-transposed-conv-drops-the-overlap", "streaming", STREAM_PY,
      "for r in range(1, keep + 1):", "for r in range(1, keep):", STREAM, "-k", "equals_offline_decode"),
    m("stream-residual-skip-not-held", "streaming", STREAM_PY,
      "self.pending_a, self.pending_b = ya[..., m:], yb[..., m:]",
      "self.pending_a, self.pending_b = ya[..., :0], yb[..., m:]", STREAM, "-k", "equals_offline_decode"),
    m("stream-latency-overstated", "streaming", STREAM_PY,
      "return max(0, n + self.padding - self.span)", "return max(0, n + self.padding - self.span - 1)",
      STREAM, "-k", "receptive_field"),
    m("stream-noise-position-not-advanced", "streaming", STREAM_PY,
      "self.position += t", "self.position += 0", STREAM, "-k", "seeded_noise"),
    m("stream-lookahead-leaks-its-state", "streaming", STREAM_PY,
      "for node, state in zip(nodes, saved):", "for node, state in zip(nodes[:0], saved):",
      STREAM, "-k", "short_lookahead"),
    m("position-noise-ignores-the-offset", "streaming", "snac/layers.py",
      "[:, None, start:start + t]", "[:, None, :t]", STREAM, "-k", "seeded_noise"),
    m("interleaved-tokens-codebook-major", "streaming", STREAM_PY,
      "sorted((t * s, i, t) for i, s", "sorted((i, t * s, t) for i, s", STREAM, "-k", "interleaved"),
]

# breaks every import of the package: proves the copy's code is what the tests import
CONTROL = m("control-broken-import", "control", "snac/__init__.py", "from importlib import import_module\n",
            'raise ImportError("mutation_check control")\n',
            MODEL48, "-k", "parameter_groups")


# ----------------------------------------------------------------------------- the copy
def tracked_files(root: Path) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=root, capture_output=True, check=True).stdout.decode()
    return [p for p in out.split("\0") if p and (root / p).is_file()]


def make_copy(root: Path, files: list[str], dest: Path) -> Path:
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)
    return dest


def env_for(copy: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SNAC48_FAULT")}
    env.update(PYTHONPATH=f"{copy}{os.pathsep}{copy / 'tests'}", PYTHONDONTWRITEBYTECODE="1",
               OMP_NUM_THREADS="1", SNAC48_SKIP_DEMO="1", PYTHONHASHSEED="0")
    return env


def check_imports_come_from(copy: Path) -> None:
    code = ("import snac, snac.train.windows, snac.cache.encode, snac.infer, inference; "
            "print('\\n'.join(m.__file__ for m in (snac, snac.train.windows, snac.cache.encode, snac.infer, inference)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=copy, env=env_for(copy), capture_output=True,
                         text=True, check=True).stdout.split()
    wrong = [p for p in out if not Path(p).resolve().is_relative_to(copy.resolve())]
    if wrong:
        raise SystemExit(f"error: the copy imports code from outside it ({wrong}); an installed package "
                         "shadows it. Run with the project's interpreter (uv run python ...)")


LANES = {"both": "", "fast": "not slow"}  # pytest -m expressions; "" overrides pyproject's addopts (fast only)
LANE = LANES["both"]


def run_pytest(copy: Path, args: tuple[str, ...], timeout: float, stop_first: bool = True) -> tuple[int | None, float, str]:
    """(exit code or None on timeout, seconds, output tail)."""
    # -m LANE ("" by default: both test lanes): a mutant counts as caught by any test of the lane
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", LANE, *(["-x"] if stop_first else []),
           *args]
    start = time.time()
    try:
        proc = subprocess.run(cmd, cwd=copy, env=env_for(copy), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return None, time.time() - start, out[-1500:]
    return proc.returncode, time.time() - start, (proc.stdout + proc.stderr)[-1500:]


def apply_and_run(copy: Path, mutant: Mutant, timeout: float) -> tuple[str, float, str]:
    path = copy / mutant.path
    if not path.is_file():
        return "NOT APPLICABLE", 0.0, f"{mutant.path} does not exist"
    original = path.read_text()
    count = original.count(mutant.old)
    if count != 1:
        return "NOT APPLICABLE", 0.0, f"snippet found {count} times in {mutant.path} (need exactly 1)"
    path.write_text(original.replace(mutant.old, mutant.new))
    try:
        rc, seconds, tail = run_pytest(copy, mutant.tests, timeout)
    finally:
        path.write_text(original)
    if rc is None:
        return "TIMEOUT", seconds, tail
    if rc in (1, 2):  # tests failed (2: interrupted by -x after an error, or a collection error)
        return "caught", seconds, tail
    if rc == 0:
        return "MISSED", seconds, tail
    if rc == 5:
        return "NO TESTS", seconds, tail
    return f"ERROR rc={rc}", seconds, tail


def baseline_selections(mutants: list[Mutant]) -> list[tuple[str, ...]]:
    """One pytest call per test file: the union of what the mutants select from it."""
    exprs: dict[str, list[str] | None] = {}  # file -> -k expressions, None = the whole file
    for mu in mutants:
        files = [a for a in mu.tests if a.startswith("tests/")]
        expr = mu.tests[mu.tests.index("-k") + 1] if "-k" in mu.tests else None
        for f in files:
            if expr is None or exprs.get(f, []) is None:
                exprs[f] = None
            else:
                exprs.setdefault(f, []).append(expr)
    return [(f,) if e is None else (f, "-k", " or ".join(f"({x})" for x in dict.fromkeys(e)))
            for f, e in sorted(exprs.items())]


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", action="append", default=[], help="run mutants whose name contains this (repeatable)")
    p.add_argument("--jobs", type=int, default=1, help="mutants run side by side, each in its own copy")
    p.add_argument("--timeout", type=float, default=300, help="seconds per mutant's test run")
    p.add_argument("--skip-baseline", action="store_true", help="do not first check that every selection passes unmutated")
    p.add_argument("--list", action="store_true", help="print the mutants and their tests, run nothing")
    p.add_argument("--verbose", action="store_true", help="print the test output of mutants that were not caught")
    p.add_argument("--lane", choices=tuple(LANES), default="both",
                   help="the tests a mutant runs: both lanes (default) or the fast lane only (what it misses or "
                        "has no test for, only the slow lane catches)")
    args = p.parse_args(argv)
    global LANE
    LANE = LANES[args.lane]

    mutants = [mu for mu in MUTANTS if not args.only or any(o in mu.name for o in args.only)]
    if not mutants:
        raise SystemExit(f"error: no mutant name contains {args.only}; see --list")
    if args.list:
        for mu in mutants:
            print(f"{mu.name:42s} {mu.area:11s} {mu.path:24s} {' '.join(mu.tests)}")
        return 0
    if len({mu.name for mu in MUTANTS}) != len(MUTANTS):
        raise SystemExit("error: two mutants share a name")

    start = time.time()
    files = tracked_files(ROOT)
    with tempfile.TemporaryDirectory(prefix="mutation_check-") as tmp:
        copies = [make_copy(ROOT, files, Path(tmp) / f"copy{j}") for j in range(max(1, args.jobs))]
        check_imports_come_from(copies[0])
        status, seconds, _ = apply_and_run(copies[0], CONTROL, args.timeout)
        if status != "caught":
            raise SystemExit(f"error: the control mutant (broken `import snac` in the copy) was {status}: "
                             "the tests do not import the copy's code")
        print(f"copy of {len(files)} files in {len(copies)} place(s) under {tmp}; imports checked; control caught")

        if not args.skip_baseline:
            for selection in baseline_selections(mutants):
                rc, secs, tail = run_pytest(copies[0], selection, args.timeout * 2, stop_first=False)
                if rc == 5 and LANE:  # every test of the selection is in the other lane
                    print(f"baseline: no {args.lane}-lane test in {' '.join(selection)}", flush=True)
                    continue
                if rc != 0:
                    print(tail)
                    raise SystemExit(f"error: the unmutated copy fails {' '.join(selection)} (rc {rc}); fix "
                                     "the tests (or the selection) before judging mutants")
                print(f"baseline passes: {' '.join(selection)} ({secs:.0f} s)", flush=True)

        free: queue.Queue[Path] = queue.Queue()
        for c in copies:
            free.put(c)

        def job(mu: Mutant) -> tuple[Mutant, str, float, str]:
            copy = free.get()
            try:
                return (mu, *apply_and_run(copy, mu, args.timeout))
            finally:
                free.put(copy)

        results = []
        with concurrent.futures.ThreadPoolExecutor(len(copies)) as pool:
            for mu, status, secs, tail in pool.map(job, mutants):
                results.append((mu, status, secs))
                print(f"  {status:15s} {mu.name} ({secs:.0f} s)", flush=True)
                if status != "caught" and (args.verbose or status.startswith(("NOT", "NO", "ERROR"))):
                    print("    " + tail.strip().replace("\n", "\n    ")[-1200:])

    bad = [r for r in results if r[1] != "caught"]
    print()
    print(f"| {'mutant':42s} | {'area':11s} | {'file':24s} | {'result':15s} | {'s':>4s} |")
    print(f"|{'-' * 44}|{'-' * 13}|{'-' * 26}|{'-' * 17}|{'-' * 6}|")
    for mu, status, secs in results:
        print(f"| {mu.name:42s} | {mu.area:11s} | {mu.path:24s} | {status:15s} | {secs:4.0f} |")
    print(f"\n{len(results) - len(bad)}/{len(results)} caught; total {time.time() - start:.0f} s "
          f"({len(copies)} job(s))")
    if bad:
        print("not caught: " + ", ".join(f"{mu.name} ({status})" for mu, status, _ in bad))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
