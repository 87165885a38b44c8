#!/usr/bin/env python
"""The whole job end to end, offline, on CPU, in a few minutes: the README's first command.

    uv run python scripts/demo.py                                   # the shipped base codec, ~3-5 min
    uv run python scripts/demo.py --audio_dir SPEECH                # your own (or the fetched) speech
    uv run python scripts/demo.py --pretrained_model hubertsiuzdak/snac_24khz   # the published model
    uv run python scripts/demo.py --random_base                     # a tiny random base: fastest smoke run

Steps, each one the real script run as a subprocess (so this is what a user runs by hand):
  1. generate a small speech-like dataset: voiced (harmonic, formant-shaped, gliding pitch) and
     unvoiced (band-limited noise reaching above 12 kHz) segments, at mixed sample rates and
     channel counts, a few seconds each (or take --audio_dir)
  2. scripts/prepare_dataset_folder.py      split into train/ and val/
  3. cache_codes_multigpu.py                codes of the frozen base encoder, for train and val
  4. finetune_decoder_48khz.py              part 1: warmup (head only) then unfreeze, with iteration,
                                            timer and epoch checkpoints; stops early (--max_steps)
  5. finetune_decoder_48khz.py --resume auto  part 2: continues mid-run from latest.pt to the end
  6. inference.py                           val audio -> codes -> 48 kHz wavs (+ stock 24 kHz decodes)
  7. scripts/export_pretrained.py           hub-layout export of the best model
  8. scripts/evaluate.py                    metrics table and spectrograms, 48 kHz model vs stock (+ band replication)
and prints where every output is. The base is the small codec shipped in models/speech_24khz
(trained here on real speech, its codes carry information: see its README.md); --pretrained_model
takes another (the published weights: download once, or a local directory in the hub layout);
--random_base a tiny random SNAC whose codes carry nothing (fastest: the tests' smoke run). The
demo's fine-tune is a few dozen steps: for a measured comparison of the recipes run
scripts/quality_check.py.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# a tiny 24 kHz SNAC with the published model's layout (hop 512, strides 4/2/1), ~30 k parameters
from snac import presets  # noqa: E402
from snac.presets import TINY_24KHZ as TINY_BASE  # noqa: E402

SHIPPED_BASE = ROOT / presets.SHIPPED_BASE  # trained with scripts/train_codec.py; see its README.md

MARKER = ".snac48_demo"
# (sample rate, channels) of the generated files: the cache and inference must take any of them
FORMATS = [(48000, 1), (48000, 2), (44100, 1), (32000, 2), (24000, 1), (16000, 1)]
# formant frequencies (Hz) of a few vowels
VOWELS = [(730, 1090, 2440, 3400), (270, 2290, 3010, 3900), (300, 870, 2240, 3300),
          (530, 1840, 2480, 3500), (640, 1190, 2390, 3450)]


# ================================================================================ synthetic speech
def _envelope(f: np.ndarray, formants: tuple[int, ...]) -> np.ndarray:
    """Spectral envelope: formant peaks (bandwidth ~ 80-200 Hz) on a -12 dB/octave glottal tilt."""
    env = np.zeros_like(f)
    for i, fc in enumerate(formants):
        bw = 80 + 40 * i
        env += (0.9 ** i) / (1 + ((f - fc) / bw) ** 2)
    return env * np.minimum(1.0, (200.0 / np.maximum(f, 1.0)) ** 0.5) + 1e-3


def voiced(n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    """A vowel: harmonics of a gliding f0 (with jitter) weighted by a formant envelope."""
    t = np.arange(n) / rate
    f0 = rng.uniform(95, 230) * (1 + rng.uniform(-0.15, 0.15) * t / max(t[-1], 1e-3))
    f0 = f0 * (1 + 0.01 * np.sin(2 * np.pi * rng.uniform(4, 7) * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    formants = VOWELS[rng.integers(len(VOWELS))]
    out = np.zeros(n)
    mean_f0 = float(f0.mean())
    for k in range(1, int(min(rate / 2, 16000) / mean_f0)):
        out += _envelope(np.array([k * mean_f0]), formants)[0] * np.sin(k * phase)
    # a little breath noise above 6 kHz, so voiced sounds also reach the high band
    return out / np.abs(out).max() + 0.02 * bandpass_noise(n, rate, 6000, 20000, rng)


def bandpass_noise(n: int, rate: int, low: float, high: float, rng: np.random.Generator) -> np.ndarray:
    """White noise band-limited to [low, high] Hz (clipped to the Nyquist) in the frequency domain."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / rate)
    high = min(high, rate / 2)
    shape = np.clip((f - low) / 500 + 1, 0, 1) * np.clip((high - f) / 500 + 1, 0, 1)
    x = np.fft.irfft(spec * shape, n)
    return x / (np.abs(x).max() + 1e-9)


def utterance(seconds: float, rate: int, rng: np.random.Generator) -> np.ndarray:
    """Alternating vowels, fricatives ('s' 4-16 kHz, 'f' 1.5-9 kHz) and pauses, with soft edges."""
    pieces = []
    total = int(seconds * rate)
    while sum(len(p) for p in pieces) < total:
        kind = rng.choice(["vowel", "vowel", "fric", "pause"])
        if kind == "pause" and (not pieces or not pieces[-1].any()):
            kind = "vowel"  # no leading silence and no two pauses in a row
        n = int(rate * {"vowel": rng.uniform(0.08, 0.25), "fric": rng.uniform(0.05, 0.15),
                        "pause": rng.uniform(0.03, 0.12)}[kind])
        if kind == "vowel":
            x = 0.5 * voiced(n, rate, rng)
        elif kind == "fric":
            low, high = (4000, 16000) if rng.random() < 0.6 else (1500, 9000)
            x = 0.15 * bandpass_noise(n, rate, low, high, rng)
        else:
            x = np.zeros(n)
        ramp = min(n // 4, int(0.01 * rate))
        if ramp > 0:
            fade = np.sin(np.linspace(0, np.pi / 2, ramp)) ** 2
            x[:ramp] *= fade
            x[-ramp:] *= fade[::-1]
        pieces.append(x)
    x = np.concatenate(pieces)[:total]
    return (0.8 * x / (np.abs(x).max() + 1e-9)).astype(np.float32)


def make_dataset(folder: Path, files: int, seed: int) -> dict:
    """Write ``files`` utterances over speaker folders at the rates and channel counts of FORMATS."""
    rng = np.random.default_rng(seed)
    counts: dict[str, int] = {}
    seconds = 0.0
    for i in range(files):
        rate, channels = FORMATS[i % len(FORMATS)]
        dur = float(rng.uniform(1.5, 3.5))
        x = utterance(dur, rate, rng)
        if channels == 2:  # a slightly different second channel (it is downmixed later)
            x = np.stack([x, 0.9 * np.roll(x, int(0.0005 * rate))], axis=1)
        ext = ".flac" if i % 3 == 0 else ".wav"
        path = folder / f"speaker{i % 4}" / f"utt{i:03d}{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), x, rate)
        counts[f"{rate} Hz x{channels}"] = counts.get(f"{rate} Hz x{channels}", 0) + 1
        seconds += dur
    return {"files": files, "seconds": seconds, "formats": counts}


# ================================================================================ running the steps
class Steps:
    def __init__(self, log_dir: Path, env: dict):
        self.log_dir, self.env, self.times = log_dir, env, []

    def run(self, name: str, args: list[str], check: bool = True) -> subprocess.CompletedProcess:
        """Run one real script with this interpreter; its output goes to logs/<name>.log."""
        cmd = [sys.executable, *map(str, args)]
        shown = shlex.join(["python", *map(str, args)])  # pastable: a path with a space stays one word
        print(f"\n[{len(self.times) + 1}] {name}\n    $ {shown}", flush=True)
        t = time.time()
        proc = subprocess.run(cmd, cwd=ROOT, env=self.env, capture_output=True, text=True)
        elapsed = time.time() - t
        self.times.append((name, elapsed))
        log = self.log_dir / f"{len(self.times):02d}_{re.sub(r'[^a-z0-9]+', '_', name.lower()).strip('_')}.log"
        log.write_text(f"$ {shlex.join(cmd)}\n\n{proc.stdout}\n--- stderr ---\n{proc.stderr}")
        print(f"    {elapsed:.1f} s, log {log}", flush=True)
        if check and proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
            raise SystemExit(f"error: step '{name}' failed (exit {proc.returncode}); see {log}\n{tail}")
        return proc


def grep(path: Path, pattern: str) -> list[str]:
    return [line for line in path.read_text().splitlines() if re.search(pattern, line)] if path.is_file() else []


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", default="demo_output", help="everything goes here (replaced on a rerun)")
    p.add_argument("--pretrained_model", default=None,
                   help="base model (hub id or dir), e.g. hubertsiuzdak/snac_24khz; default: the shipped "
                        f"{SHIPPED_BASE.relative_to(ROOT)}")
    p.add_argument("--random_base", action="store_true",
                   help="a tiny random base instead (its codes carry nothing: the fastest smoke run)")
    p.add_argument("--audio_dir", default=None,
                   help="a folder of speech (any rate/channels) to split and use instead of the generated set")
    p.add_argument("--files", type=int, default=24, help="utterances to generate")
    p.add_argument("--epochs", type=int, default=4, help="training epochs (the first is warmup)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per step process (default: 1 for the tiny model, where more threads "
                        "only spin against each other; all cores for the published one)")
    args = p.parse_args(argv)
    if args.epochs < 2:
        p.error("--epochs must be >= 2 (one warmup epoch, then the unfreeze phase)")
    if args.random_base and args.pretrained_model:
        p.error("--random_base and --pretrained_model both given: drop one")
    if args.audio_dir is not None and not Path(args.audio_dir).is_dir():
        p.error(f"--audio_dir {args.audio_dir} is not a folder")
    if not (args.random_base or args.pretrained_model or (SHIPPED_BASE / "config.json").is_file()):
        p.error(f"the shipped base {SHIPPED_BASE} is missing (a partial checkout?); pass --pretrained_model "
                "or --random_base")
    kind = "random" if args.random_base else ("published" if args.pretrained_model else "shipped")

    out = Path(args.output_dir).resolve()
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise SystemExit(f"error: {out} exists and is not a demo folder; pass another --output_dir")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("made by scripts/demo.py; a rerun replaces this folder\n")
    logs = out / "logs"
    logs.mkdir()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    threads = args.threads or (None if kind == "published" else 1)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    if kind != "published":
        env.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs the network
    steps = Steps(logs, env)
    start = time.time()

    # ---- 0. base model
    if kind == "published":
        base = args.pretrained_model
        print(f"base model: {base} (published weights; the codes are the real ones)")
        seg, batch, val_seg, n_ffts, minutes, lrs = 0.5, 4, 1.0, "512,1024,2048", 0.05, (5e-5, 1e-5)
    elif kind == "shipped":
        base = SHIPPED_BASE
        print(f"base model: {base} (a small codec trained here on real speech; its codes carry information, "
              "see its README.md)")
        seg, batch, val_seg, n_ffts, minutes, lrs = 0.5, 4, 1.0, "512,1024,2048", 0.02, (1e-4, 1e-4)
    else:
        import torch

        from snac import SNAC

        torch.manual_seed(args.seed)
        base = out / "tiny_base_model"
        SNAC(**TINY_BASE).save_pretrained(base)
        print(f"base model: a tiny RANDOM SNAC ({base}); drop --random_base for the shipped trained one. "
              "Its numbers only show that the pipeline runs.")
        seg, batch, val_seg, n_ffts, minutes, lrs = 0.5, 4, 1.0, "256,512,1024", 0.005, (1e-3, 1e-3)

    # ---- 1. data
    if args.audio_dir is not None:
        raw = Path(args.audio_dir).resolve()
        print(f"\n[0] speech from {raw}")
    else:
        raw = out / "data" / "raw"
        info = make_dataset(raw, args.files, args.seed)
        print(f"\n[0] generated {info['files']} speech-like files, {info['seconds']:.0f} s, in {raw}: "
              + ", ".join(f"{v} at {k}" for k, v in info["formats"].items()))
    split = out / "data" / "split"
    steps.run("split the dataset", ["scripts/prepare_dataset_folder.py", "--input_dir", raw, "--output_dir", split,
                                    "--train_ratio", "0.8", "--seed", args.seed])
    # ---- 2. code caches
    cache = out / "cache"
    for part in ("train", "val"):
        steps.run(f"cache the {part} codes", ["cache_codes_multigpu.py", "--input_dir", split / part,
                                              "--output_dir", cache / part, "--pretrained_model", base,
                                              "--devices", "cpu", "--shard_rows", "8", "--log_every", "5"])
    # ---- 3. training, interrupted on purpose, then resumed
    run = out / "runs" / "demo48"
    config = {"pretrained_model": str(base), "train_codes": str(cache / "train"), "val_codes": str(cache / "val"),
              "output_dir": str(run), "device": "cpu", "batch_size": batch, "epochs": args.epochs,
              "warmup_epochs": 1, "warmup_learning_rate": lrs[0], "learning_rate": lrs[1],
              "segment_length": seg, "val_segment_length": val_seg,
              "segment_schedule": [{"epochs": [1, 1], "length": seg / 2, "batch_multiplier": 2}],
              "n_ffts": [int(n) for n in n_ffts.split(",")], "checkpoint_every": 5,
              "checkpoint_minutes": minutes, "keep_last": 2, "log_every": 1, "num_workers": 0,
              "val_examples": 1, "seed": args.seed}
    config_path = out / "demo_config.json"
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    train_rows = json.loads((cache / "train" / "manifest.json").read_text())["rows"]
    steps_per_epoch = [-(-train_rows // (batch * 2))] + [-(-train_rows // batch)] * (args.epochs - 1)
    stop_at = steps_per_epoch[0] + steps_per_epoch[1] // 2 + 1  # mid-way through the first unfreeze epoch
    steps.run("train, part 1 (stops early at --max_steps, like an interrupted run)",
              ["finetune_decoder_48khz.py", "--config", config_path, "--max_steps", stop_at])
    status1 = json.loads((run / "status.json").read_text())
    steps.run("train, part 2 (--resume auto continues mid-epoch from latest.pt)",
              ["finetune_decoder_48khz.py", "--config", config_path, "--resume", "auto"])
    status = json.loads((run / "status.json").read_text())
    steps.run("status screen and loss curves", ["scripts/launcher.py", "status", run, "--plot"])
    status_screen = (logs / f"{len(steps.times):02d}_status_screen_and_loss_curves.log").read_text()
    # ---- 4. inference, export, evaluation
    best = run / "best_model.pt"
    decoded = out / "decoded"
    steps.run("inference on the val files", ["inference.py", "--checkpoint", best, "--base_model", base,
                                             "--input", split / "val", "--output", decoded, "--device", "cpu",
                                             "--compare", "--save_codes"])
    export = out / "export"
    steps.run("export the best model", ["scripts/export_pretrained.py", "--checkpoint", best, "--output_dir", export])
    report = out / "eval"
    steps.run("evaluate 48 kHz model vs stock 24 kHz", ["scripts/evaluate.py", "--checkpoint", best,
                                                        "--base_model", base, "--input_dir", split / "val",
                                                        "--output_dir", report, "--device", "cpu",
                                                        "--spectrograms", "3"])

    # ---- summary
    log = run / "training.log"
    saves = grep(log, r"saved ")
    timer = [s for s in saves if re.search(r"saved latest\.pt \(iteration", s)]
    print("\n" + "=" * 100)
    print(f"demo finished in {time.time() - start:.0f} s "
          f"({ {'published': 'published base ' + str(base), 'shipped': 'shipped base ' + str(base), 'random': 'tiny RANDOM base model'}[kind] })")
    for name, t in steps.times:
        print(f"  {t:6.1f} s  {name}")
    print(f"\ntraining: part 1 stopped at iteration {status1.get('iteration')} (phase {status1.get('phase')}), "
          f"part 2 resumed and finished at iteration {status.get('iteration')}/{status.get('total_iterations')}; "
          f"best val loss {'-' if status.get('best_val_loss') is None else format(status['best_val_loss'], '.4f')}")
    lines = log.read_text().splitlines() if log.is_file() else []
    events = [("phase switch", (grep(log, "phase switch") or [None])[0], "(none logged)"),
              ("iteration ckpt", (grep(log, r"saved checkpoint_iter") or [None])[0], "(none)"),
              ("timer ckpt", timer[0] if timer else None, "(none: the run saved more often than the timer)"),
              ("resume", (grep(log, "resumed from") or [None])[0], "(none)")]
    # in the order they happened (the log's order); events that did not happen last
    events.sort(key=lambda e: lines.index(e[1]) if e[1] in lines else len(lines))
    for label, line, missing in events:
        print(f"  {label + ':':<19} {line or missing}")
    print(f"\nstatus screen ({shlex.join(['./train_status.sh', str(run)])}):")
    print("\n".join("  " + line for line in status_screen.split("\n\n", 1)[1].split("--- stderr")[0].strip().splitlines()))
    print("\n" + (report / "report.md").read_text().split("## Spectrograms")[0].strip())
    if kind == "random":
        print("\n  ^ caveat: a tiny RANDOM base model's codes carry no information, so these numbers only show "
              "that the pipeline runs (48 kHz scoring worse than stock is expected here); drop --random_base "
              "for meaningful ones.")
    elif kind == "shipped":
        print(f"\n  ^ a small base (see {SHIPPED_BASE / 'README.md'}) and a fine-tune of "
              f"{status.get('iteration')} steps on {'your' if args.audio_dir else 'generated'} audio: real "
              "numbers at toy scale. scripts/quality_check.py measures the recipes on real speech.")
    print("\noutputs:")
    for label, path in [("speech" if args.audio_dir else "generated audio", raw), ("train/val split", split), ("code caches", cache),
                        ("training config", config_path), ("run directory", run),
                        ("  training log", log), ("  metrics", run / "metrics.jsonl"),
                        ("  loss curves", run / "loss_curves.png"), ("  best model", best),
                        ("  TensorBoard", shlex.join(["uv", "run", "tensorboard", "--logdir", str(run)])),
                        ("decoded 48 kHz wavs (+ .stock_24khz.wav, .codes.npz)", decoded),
                        ("exported model (SNAC48.from_pretrained)", export),
                        ("evaluation report", report / "report.md"), ("  metrics JSON", report / "metrics.json"),
                        ("  spectrograms", report / "spectrograms"), ("step logs", logs)]:
        print(f"  {label:<55} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
