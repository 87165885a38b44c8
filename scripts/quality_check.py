#!/usr/bin/env python
"""Does a fine-tuned 48 kHz decoder sound better than the stock one? The experiment in one command.

    uv run python scripts/quality_check.py --train_dir SPEECH --val_dir SPEECH_VAL \\
        --output_dir runs/quality --device cpu                       # the shipped base, ~20-30 min on 2 cores
    ... --speech_dir SPEECH                                          # a prepare_speech.py output: two groups
    ... --seeds 0,1,2                                                # each recipe once per seed: mean and spread
    ... --base_model hubertsiuzdak/snac_24khz --device 0 --finetune_minutes 60    # the published model
    ... --base_minutes 20                                            # train a new base on --train_dir first

Stages, each the real script run as a subprocess (its output in OUTPUT_DIR/logs/<stage>.log):

1. base      the shipped base codec (models/speech_24khz, trained here on real speech), or
             --base_model, or (--base_minutes > 0) scripts/train_codec.py on --train_dir for that long
             from random weights of --base_config; saved to OUTPUT_DIR/base_model either way.
2. cache     cache_codes_multigpu.py: the base's codes of --train_dir and --val_dir at 48 kHz.
3. finetune  finetune_decoder_48khz.py from SNAC48's smart initialisation with each recipe: first the
             adversarial one (--adversarial: mel + discriminators) for --finetune_minutes, then the
             seed recipe (L1 + multi-scale STFT) for exactly as many iterations; same seed, data, plan
             and LR curve (--finetune_steps N: both run N iterations, no time limit). With --seeds, each
             recipe runs once per seed (runs/<recipe>/seed<S>), all for the first run's iterations.
4. evaluate  every system decodes the base's codes of every val file (snac/evaluation.py, the loop
             scripts/evaluate.py uses): 'baseline' (the base's 24 kHz decode resampled to 48 kHz: no
             top octave), 'smart_init' (SNAC48 at step 0), 'band_replication' (the base's decode widened
             by classical spectral band replication, snac/bwe.py: the DSP alternative), 'seed_recipe',
             'adversarial_recipe' (each run's final weights); the decoders' noise seed is the first
             seed, so only the recipes depend on the seed. Reference frames more than --silence_db below
             the file's loudest are left out. Also the base's own mel distance on its codes, on the same
             codes shuffled in time (the control that shows the codes carry information) and at random init.

Groups: with --val_dir, one (its files). With --speech_dir SPEECH (scripts/prepare_speech.py's output)
the training uses SPEECH/train, the fine-tunes validate on SPEECH/val_seen, and the evaluation reports
two groups, each its own table: 'heldout_languages' (SPEECH/val_heldout: languages never trained on)
and 'heldout_files' (SPEECH/val_seen: unseen files of trained languages). results.json lists the
files per language of each group (and splits.json's summary). val_heldout is not cached (nothing
trains or validates on it): its unreadable, silent or too short files are skipped by the evaluation.

Metrics per system (means over the group's files; with several seeds the mean over seeds and the
min..max over seeds, std in results.json): mel distance, mel distance of the 0-12 kHz band (a head
must not make it worse than smart_init), LSD and band energy of --band, MR-STFT, SI-SDR, tonal-line
prominence of the output in the band (max and mean dB, the reference's beside it) and, on the files
with no top band (low-passed recordings), 'invented': the output's band energy relative to its total
energy (the reference has none there, so a high value is a head inventing a top band).

Writes OUTPUT_DIR/results.json, results.md (the tables, also printed, and for the first 5 val files
of each group links to every system's wav and a spectrogram grid), spectrograms/ (those files, every
system), audio/<system>/<relative path>.wav (every system's 48 kHz decode; with --speech_dir both
under <group>/) and base_model/ (SNAC.from_pretrained). A rerun of the same command skips the stages already done
(stages.json, written first: every attempt's time, the settings); other settings on an OUTPUT_DIR with
finished stages are refused, naming the setting (pass a new one; --overwrite deletes them); a second
check on a folder in use is refused with the PID of the one running.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# base v2, as snac.presets.SHIPPED_BASE (not imported here: that imports torch); see its README.md
SHIPPED_BASE = ROOT / "models" / "speech_24khz"
SYSTEMS = ("baseline", "smart_init", "band_replication", "seed_recipe", "adversarial_recipe")
RECIPE_CONFIGS = {"seed_recipe": ROOT / "configs" / "quality_cpu.json",
                  "adversarial_recipe": ROOT / "configs" / "quality_cpu_gan.json"}
# results.json row key -> (evaluate_systems metric, results.md header, format)
METRICS = {"mel_distance": ("mel_distance", "mel dist. ↓", ".3f"),
           "mel_distance_low": ("mel_distance_low", "mel dist. 0-12 kHz ↓", ".3f"),
           "lsd_high": ("lsd_high_band", "LSD {band} dB ↓", ".2f"),
           "high_band_energy_db": ("high_band_energy_db", "{band} energy dB (0 = right)", "+.1f"),
           "stft_distance": ("stft_distance", "MR-STFT ↓", ".3f"),
           "si_sdr": ("si_sdr", "SI-SDR dB ↑", ".2f"),
           "tonal_max_db": ("tonal_max_db", "lines max dB", ".1f"),
           "ref_tonal_max_db": ("ref_tonal_max_db", "ref. lines max dB", ".1f"),
           "tonal_mean_db": ("tonal_mean_db", "lines mean dB", ".2f"),
           "ref_tonal_mean_db": ("ref_tonal_mean_db", "ref. lines mean dB", ".2f"),
           "invented_band_db": ("invented_band_db", "invented {band} dB (low-passed files) ↓", "+.1f")}
GROUPS = {"heldout_languages": "val_heldout", "heldout_files": "val_seen"}  # --speech_dir: group -> folder
LISTEN_FILES = 5  # val files per group linked in results.md (wavs and a spectrogram grid)
MARKER = "stages.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train_dir", default=None, help="training speech (any rate/channels), searched recursively")
    p.add_argument("--val_dir", default=None, help="held-out speech (ideally other speakers/languages), for "
                                                   "validation and the evaluation (one group)")
    p.add_argument("--speech_dir", default=None,
                   help="instead of --train_dir/--val_dir: a scripts/prepare_speech.py output; trains on its train/, "
                        "validates on val_seen/, evaluates val_heldout/ and val_seen/ as two groups")
    p.add_argument("--output_dir", default="runs/quality", help="everything goes here (default: runs/quality)")
    p.add_argument("--device", default=None, help="GPU index or 'cpu' (default: 0 when CUDA exists, else cpu)")
    p.add_argument("--base_model", default=None,
                   help=f"base SNAC (dir or hub id) instead of the shipped one ({SHIPPED_BASE.relative_to(ROOT)})")
    p.add_argument("--base_minutes", type=float, default=0.0,
                   help="> 0: train a new base on --train_dir for this many minutes instead (default: 0)")
    p.add_argument("--base_config", default=None,
                   help="model config (preset or JSON) of a base trained here (default: the shipped base's)")
    p.add_argument("--finetune_minutes", type=float, default=8.0,
                   help="time of the adversarial fine-tune; the seed recipe then runs as many iterations "
                        "(default: 8)")
    p.add_argument("--finetune_steps", type=int, default=None,
                   help="both recipes run exactly this many iterations instead (no time limit)")
    p.add_argument("--epochs", type=int, default=3, help="epochs of each fine-tune's plan, the first head-only "
                                                         "(default: 3; the time limit may end it sooner)")
    p.add_argument("--head", choices=("full", "sinc", "lite"), default="full",
                   help="the 48 kHz head of smart_init and both fine-tunes (finetune_decoder_48khz.py --head)")
    p.add_argument("--head_channels", type=int, default=None, help="branch channels of --head lite")
    p.add_argument("--codes_from", default=None,
                   help="reuse the code caches of an earlier quality check (its OUTPUT_DIR; same base and "
                        "data): skips the cache stage")
    p.add_argument("--finetune_flags", default="",
                   help="extra finetune_decoder_48khz.py flags for both recipes, e.g. '--batch_size 16'")
    p.add_argument("--silence_db", type=float, default=40.0,
                   help="evaluation leaves out reference frames this many dB below the file's loudest (default: 40)")
    p.add_argument("--band", default="12000,22000",
                   help="band of the LSD and band energy, Hz; clipped at each source's Nyquist (default: 12000,22000)")
    p.add_argument("--min_band_db", type=float, default=-50.0,
                   help="a val file whose recording holds less than this share of its energy in the band (dB) is "
                        "left out of the band metrics: many recordings are low-passed far below their Nyquist "
                        "(default: -50)")
    p.add_argument("--val_limit", type=int, default=None,
                   help="evaluate N val files of each group, spread evenly over its sorted list")
    p.add_argument("--max_seconds", type=float, default=None, help="evaluate the first S seconds of each file")
    p.add_argument("--seed", type=int, default=0, help="seed of the trainings and the decoders' noise (default: 0)")
    p.add_argument("--seeds", default=None,
                   help="comma-separated seeds, e.g. 0,1,2: each recipe is fine-tuned once per seed and the tables "
                        "show the mean and min..max over seeds (replaces --seed; the noise seed is the first)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per stage on CPU (default: 1; more threads on 2 shared cores ran 3-5x slower)")
    p.add_argument("--overwrite", action="store_true", help="delete OUTPUT_DIR's earlier results first")
    args = p.parse_args(argv)
    try:
        low, high = (float(v) for v in args.band.split(","))
    except ValueError:
        p.error(f"--band must be two numbers 'low,high' in Hz, got {args.band!r}")
    if not 0 <= low < high:
        p.error(f"--band {args.band}: need 0 <= low < high")
    if args.base_minutes < 0 or args.finetune_minutes <= 0 or args.epochs < 2 or args.threads < 1:
        p.error("--base_minutes must be >= 0, --finetune_minutes > 0, --epochs >= 2, --threads >= 1")
    if args.finetune_steps is not None and args.finetune_steps < 1:
        p.error(f"--finetune_steps must be >= 1, got {args.finetune_steps}")
    if args.head_channels is not None and (args.head != "lite" or args.head_channels < 1):
        p.error(f"--head_channels {args.head_channels}: only with --head lite, and >= 1")
    if args.codes_from is not None and not all((Path(args.codes_from) / "cache" / part / "manifest.json").is_file()
                                               for part in ("train", "val")):
        p.error(f"--codes_from {args.codes_from} holds no finished cache/train and cache/val; pass the OUTPUT_DIR "
                "of a finished quality check")
    if args.base_model and args.base_minutes > 0:
        p.error("--base_model and --base_minutes both given: use a base, or train one; drop one")
    resolve_data(p, args)
    try:
        args.seed_list = [int(v) for v in args.seeds.split(",")] if args.seeds is not None else [args.seed]
    except ValueError:
        p.error(f"--seeds must be comma-separated integers like 0,1,2, got {args.seeds!r}")
    if len(set(args.seed_list)) != len(args.seed_list):
        p.error(f"--seeds {args.seeds}: a seed is repeated; list each once")
    for flag in ("train_dir", "val_dir"):
        if not Path(getattr(args, flag)).is_dir():
            p.error(f"--{flag} {getattr(args, flag)} is not a folder of audio")
    base = args.base_model or (None if args.base_minutes > 0 else SHIPPED_BASE)
    if base == SHIPPED_BASE and not (SHIPPED_BASE / "config.json").is_file():
        p.error(f"the shipped base {SHIPPED_BASE} is missing (a partial checkout?); pass --base_model or --base_minutes")
    args.band_hz = (low, high)
    return args


def resolve_data(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--speech_dir or --train_dir + --val_dir -> args.train_dir, args.val_dir and args.groups
    ({group: folder evaluated}; one group named '' for --val_dir)."""
    if args.speech_dir is None:
        if args.train_dir is None or args.val_dir is None:
            p.error("pass --speech_dir SPEECH (a prepare_speech.py output), or both --train_dir and --val_dir")
        args.groups = {"": args.val_dir}
        return
    if args.train_dir is not None or args.val_dir is not None:
        p.error("--speech_dir sets the train and val folders: drop --train_dir/--val_dir, or drop --speech_dir")
    speech = Path(args.speech_dir)
    missing = [f for f in ("splits.json", "train", *GROUPS.values()) if not (speech / f).exists()]
    if missing:
        p.error(f"--speech_dir {speech} lacks {', '.join(missing)}: build it with scripts/prepare_speech.py")
    args.train_dir, args.val_dir = str(speech / "train"), str(speech / "val_seen")
    args.groups = {group: str(speech / folder) for group, folder in GROUPS.items()}


def run_name(recipe: str, seed: int, seeds: list[int]) -> str:
    """A fine-tune's stage name: the recipe, with the seed when there are several."""
    return recipe if len(seeds) == 1 else f"{recipe}_seed{seed}"


# ================================================================================ stages
PATH_SETTINGS = ("train_dir", "val_dir", "speech_dir", "output_dir", "codes_from", "base_model", "base_config")


def normalised(settings: dict) -> dict:
    """Settings with every path spelled one way (absolute, no trailing slash), so `runs/q/` and
    `/abs/runs/q` are the same setting; a hub id or preset name is left as it is."""
    out = dict(settings)
    for key in PATH_SETTINGS:
        value = out.get(key)
        if value is not None and (key.endswith("_dir") or key == "codes_from" or Path(value).exists()):
            out[key] = str(Path(value).resolve())
    return out


class Stages:
    """Run the stages as subprocesses, time every attempt, and remember the finished ones (stages.json,
    written before the first stage runs so a stopped or failed folder is recognised by a rerun)."""

    def __init__(self, out: Path, args: argparse.Namespace):
        self.out, self.logs = out, out / "logs"
        derived = ("overwrite", "band_hz", "seed_list", "groups")  # not settings of their own
        self.settings = normalised({k: v for k, v in vars(args).items() if k not in derived})
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(args.threads)}
        self.record = {"settings": self.settings, "stages": {}, "attempts": {}}
        path = out / MARKER
        if path.is_file():
            earlier = json.loads(path.read_text())
            differ = [k for k in sorted(set(self.settings) | set(earlier.get("settings", {})))
                      if normalised(earlier.get("settings", {})).get(k) != self.settings.get(k)]
            if differ and earlier.get("stages"):
                raise SystemExit(
                    f"error: {out} holds a quality check with other settings ("
                    + "; ".join(f"--{k} {earlier['settings'].get(k)} there, {self.settings.get(k)} now" for k in differ)
                    + f"); its finished stages ({', '.join(earlier['stages'])}) are kept: rerun with the same "
                    "settings, or pass a new --output_dir")
            if differ:  # nothing finished yet: nothing is lost by taking the new settings
                print(f"{out}: no stage finished yet; settings changed ({', '.join(differ)}): starting over",
                      flush=True)
            else:
                self.record = {**earlier, "settings": self.settings}
                self.record.setdefault("attempts", {})
        self.logs.mkdir(parents=True, exist_ok=True)
        self.save()
        self.child: subprocess.Popen | None = None
        self.stage: str | None = None
        self.signals: list[int] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._forward)

    def _forward(self, signum: int, _frame) -> None:
        """`kill PID` of this script reaches the running stage too (no orphan left writing); between
        stages and during the in-process evaluation it stops at once."""
        self.signals.append(signum)
        if self.child is None:
            where = f" during stage '{self.stage}'" if self.stage else ""
            raise SystemExit(f"stopped by {signal.Signals(signum).name}{where}; rerun the same command to continue")
        self.child.send_signal(signum)

    def done(self, stage: str) -> dict | None:
        return self.record["stages"].get(stage)

    def save(self) -> None:
        tmp = self.out / (MARKER + ".tmp")
        tmp.write_text(json.dumps(self.record, indent=2) + "\n")
        os.replace(tmp, self.out / MARKER)

    def attempt(self, stage: str, step: str, seconds: float, end: str) -> None:
        """Record one attempt of ``stage`` (a step: the stage itself or one of its scripts), whatever its end."""
        self.record["attempts"].setdefault(stage, []).append({"step": step, "seconds": round(seconds, 3), "end": end})
        self.save()

    @contextlib.contextmanager
    def timed(self, stage: str):
        """An in-process stage: its attempt is recorded however it ends (a signal, an error, done)."""
        if self.done(stage):  # run again (the evaluation is, on every rerun): its time starts over
            self.record["attempts"][stage] = []
        self.stage, t, end = stage, time.time(), "failed"
        try:
            yield
            end = "finished"
        except SystemExit as e:
            end = str(e).split(";")[0] if self.signals else "failed"
            raise
        finally:
            self.stage = None
            self.attempt(stage, stage, time.time() - t, end)

    def finish(self, stage: str, **info) -> None:
        """The stage is done: its time is the sum of every attempt (stopped and failed ones too)."""
        attempts = self.record["attempts"].get(stage, [])
        self.record["stages"][stage] = {"seconds": sum(a["seconds"] for a in attempts), "attempts": attempts, **info}
        self.save()

    def run(self, stage: str, args: list, step: str | None = None) -> float:
        """One real script (``step``, default ``stage``) with this interpreter; returns its wall time.
        Fails with the log's tail; a signal is forwarded and the stop reported as the script ended."""
        step = step or stage
        cmd = [sys.executable, *map(str, args)]
        self.stage, log = step, self.logs / f"{step}.log"
        print(f"[{step}] $ {shlex.join(['python', *map(str, args)])}\n    log: {log}", flush=True)
        t = time.time()
        with open(log, "a") as f:
            f.write(f"$ {shlex.join(cmd)}\n")
            f.flush()
            self.child = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=f, stderr=subprocess.STDOUT)
            code = self.child.wait()
            self.child = self.stage = None
        elapsed = time.time() - t
        if self.signals:
            name = signal.Signals(self.signals[0]).name
            if code < 0:
                how = f"it was killed by {signal.Signals(-code).name} before it could save (exit {code})"
            else:
                how = f"it stopped and saved what it had (exit {code})"
            self.attempt(stage, step, elapsed, f"stopped by {name}")
            raise SystemExit(f"stopped by {name} during stage '{step}': {how}; rerun the same command to continue")
        if code != 0:
            self.attempt(stage, step, elapsed, f"failed (exit {code})")
            tail = "\n".join(log.read_text().strip().splitlines()[-12:])
            raise SystemExit(f"error: stage '{step}' failed (exit {code}) after {elapsed:.0f} s; see {log}\n{tail}")
        self.attempt(stage, step, elapsed, "finished")
        print(f"    {elapsed:.0f} s", flush=True)
        return elapsed


def stage_base(st: Stages, args: argparse.Namespace) -> Path:
    """The base codec in OUTPUT_DIR/base_model."""
    from snac import SNAC

    target = st.out / "base_model"
    if st.done("base"):
        return target
    if args.base_minutes > 0:
        config = args.base_config or str(SHIPPED_BASE / "config.json")
        st.run("base", ["scripts/train_codec.py", "--audio_dir", args.train_dir, "--output_dir", st.out / "base_run",
                        "--model_config", config, "--export", target, "--max_minutes", args.base_minutes,
                        "--no-adversarial", "--reseed_dead_codes", 50, "--learning_rate", 5e-4,
                        "--seed", args.seed, "--resume", "auto", *device_flag(args, "--device")])
        source = f"trained here: scripts/train_codec.py on {args.train_dir} for {args.base_minutes:g} min"
    else:
        spec = args.base_model or SHIPPED_BASE
        with st.timed("base"):
            try:
                base = SNAC.from_pretrained(spec)
            except (OSError, ValueError, KeyError, RuntimeError) as e:
                raise SystemExit(f"error: --base_model {spec}: cannot load a SNAC ({e})") from e
            base.save_pretrained(target)
        source = str(spec)
    st.finish("base", source=source)
    return target


def device_flag(args: argparse.Namespace, name: str) -> list:
    return [name, args.device] if args.device is not None else []


def stage_cache(st: Stages, args: argparse.Namespace, base: Path) -> dict[str, Path]:
    """Codes of train and val at 48 kHz (or an earlier check's: the trainers refuse codes of other
    weights through the cache's weights fingerprint)."""
    if args.codes_from is not None:
        return {part: Path(args.codes_from).resolve() / "cache" / part for part in ("train", "val")}
    caches = {part: st.out / "cache" / part for part in ("train", "val")}
    if not st.done("cache"):
        devices = ["--devices", "cpu" if args.device == "cpu" else args.device] if args.device is not None else []
        for part, folder in (("train", args.train_dir), ("val", args.val_dir)):
            st.run("cache", ["cache_codes_multigpu.py", "--input_dir", folder, "--output_dir", caches[part],
                             "--pretrained_model", base, "--target_sample_rate", 48000, *devices], step=f"cache_{part}")
        st.finish("cache")
    return caches


def finetune_command(args: argparse.Namespace, recipe: str, base: Path, caches: dict, run_dir: Path,
                     seed: int) -> list:
    return ["finetune_decoder_48khz.py", "--config", RECIPE_CONFIGS[recipe], "--pretrained_model", base,
            "--train_codes", caches["train"], "--val_codes", caches["val"], "--output_dir", run_dir,
            "--epochs", args.epochs, "--seed", seed, "--resume", "auto", *device_flag(args, "--device"),
            "--head", args.head, *(["--head_channels", args.head_channels] if args.head_channels else []),
            *args.finetune_flags.split()]


def stage_finetune(st: Stages, args: argparse.Namespace, base: Path, caches: dict) -> dict[str, Path]:
    """Adversarial first (time-limited), then the seed recipe for the same number of iterations; once
    per seed (run dirs runs/<recipe>/seed<S> with several). -> {run name: final checkpoint}."""
    seeds = args.seed_list
    plan = [(run_name(recipe, seed, seeds), recipe, seed) for seed in seeds
            for recipe in ("adversarial_recipe", "seed_recipe")]
    runs = {name: st.out / "runs" / recipe / ("" if len(seeds) == 1 else f"seed{seed}") for name, recipe, seed in plan}
    steps = args.finetune_steps
    for name, recipe, seed in plan:
        if st.done(name):
            steps = st.done(name)["iterations"]
            continue
        cmd = finetune_command(args, recipe, base, caches, runs[name], seed)
        if steps is None:  # the first recipe sets the number of iterations by its time budget
            cmd += ["--max_minutes", args.finetune_minutes]
        else:
            cmd += ["--max_steps", steps]
        st.run(name, cmd)
        status_file = runs[name] / "status.json"
        status = json.loads(status_file.read_text()) if status_file.is_file() else {}
        if status.get("state") != "finished":  # e.g. the trainer's own PID got a SIGTERM: it saved and exited 0
            state = status.get("state", "leaving no status")
            st.record["attempts"][name][-1]["end"] = f"trainer {state}"
            st.save()
            raise SystemExit(f"error: stage '{name}' ended with its trainer {state}"
                             f" at iteration {status.get('iteration', '?')}, not finished (see {status_file}); "
                             "rerun the same command to resume it")
        if steps is not None and status["iteration"] != steps:
            raise SystemExit(f"error: {name} stopped at iteration {status['iteration']}, not {steps}: the plan "
                             f"(--epochs {args.epochs}) is shorter; pass more --epochs")
        steps = status["iteration"]
        st.finish(name, iterations=steps, checkpoint=str(runs[name] / "latest.pt"))
    return {name: runs[name] / "latest.pt" for name in runs}


def stage_evaluate(st: Stages, args: argparse.Namespace, base_dir: Path, checkpoints: dict, val_cache: Path) -> dict:
    with st.timed("evaluate"):
        ev = evaluate(st, args, base_dir, checkpoints, val_cache)
    st.finish("evaluate")
    return ev


def evaluate(st: Stages, args: argparse.Namespace, base_dir: Path, checkpoints: dict, val_cache: Path) -> dict:
    """Every system on every group's val files (--val_dir's: the files its cache rejected are listed,
    not read). -> {group: evaluate_group(...)}."""
    import torch

    from snac import SNAC, SNAC48
    from snac.bwe import BandReplication
    from snac.hub import load_model
    from snac.model48 import head_spec
    from snac.infer import resolve_device

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    base = SNAC.from_pretrained(base_dir).to(device).eval()
    smart = SNAC48.from_snac(base, head=head_spec(args.head, args.head_channels)).to(device).eval()
    systems = {"baseline": base, "smart_init": smart, "band_replication": BandReplication(base, smart.sampling_rate)}
    for name, path in checkpoints.items():  # recipe order as SYSTEMS, seeds in the order given
        systems[name] = load_model(path).to(device).eval()
    order = [n for s in SYSTEMS for n in systems if n == s or n.startswith(f"{s}_seed")]
    systems = {name: systems[name] for name in order}
    with torch.no_grad():
        return {group: evaluate_group(st, args, base, systems, group, Path(folder),
                                      val_cache if folder == args.val_dir else None)
                for group, folder in args.groups.items()}


def evaluate_group(st: Stages, args: argparse.Namespace, base, systems: dict, group: str, root: Path,
                   cache: Path | None) -> dict:
    """One group's files: every system scored (outputs under OUTPUT_DIR/<group>/), the base codec's
    controls, the files used per language."""
    import torch
    from tqdm import tqdm

    from snac import SNAC
    from snac.cache.format import read_manifest
    from snac.evaluation import codes_information, evaluate_systems, find_eval_files, skipped_note

    files = find_eval_files(root, args.val_limit)
    where = f"--val_dir {root}" if not group else f"{group} ({root})"
    if not files:
        raise SystemExit(f"error: {where} holds no audio")
    rejected = {} if cache is None else {r["path"]: f"rejected by the cache: {r['reason']}"
                                         for r in read_manifest(cache)["rejected"]}
    files = [f for f in files if str(f.relative_to(root)) not in rejected]
    if not files:
        raise SystemExit(f"error: the cache rejected every file of {where}: {skipped_note(rejected)}")
    out = st.out / group
    noise_seed, device = args.seed_list[0], next(base.parameters()).device
    result = evaluate_systems(files, root, base, systems, rate=48000, band_hz=args.band_hz,
                              silence_db=args.silence_db, min_band_db=args.min_band_db,
                              max_seconds=args.max_seconds, seed=noise_seed, device=device,
                              spectrograms=LISTEN_FILES, out_dir=out, audio_dir=out / "audio", progress=tqdm)
    info = codes_information(base, files, silence_db=args.silence_db, max_seconds=args.max_seconds,
                             seed=noise_seed, device=device)
    torch.manual_seed(noise_seed)  # train_codec.py's initialisation of the same config
    init = codes_information(SNAC(**base.config).to(device).eval(), files, silence_db=args.silence_db,
                             max_seconds=args.max_seconds, seed=noise_seed, device=device)
    scored = len(files) - len(result["skipped"])
    result["skipped"] = {**rejected, **result["skipped"]}
    return {"result": result, "base_own": info["own"], "base_shuffled": info["shuffled"], "base_init": init["own"],
            "base_code_use": info["code_use"],
            "files": scored, "dir": str(root), "prefix": f"{group}/" if group else ""}


# ================================================================================ report
def seed_stats(values: list) -> dict:
    """Mean and spread over seeds of one metric (None values left out): {'mean', 'min', 'max', 'std'
    (sample standard deviation, ddof=1; None with one value), 'n'}; every entry None when none exists."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"mean": None, "min": None, "max": None, "std": None, "n": 0}
    m = sum(vals) / len(vals)
    std = (sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5 if len(vals) > 1 else None
    return {"mean": m, "min": min(vals), "max": max(vals), "std": std, "n": len(vals)}


def system_rows(st: Stages, args: argparse.Namespace, result: dict) -> list[dict]:
    """One row per system of SYSTEMS: each metric's mean over seeds (one value for the systems without
    a seed), its spread in row['spread'], the per-seed means in row['per_seed']."""
    rows = []
    for system in SYSTEMS:
        names = [system] if system in result["mean"] else [run_name(system, s, args.seed_list) for s in args.seed_list]
        seeded = system in RECIPE_CONFIGS
        row = {"system": system, "files": result["counts"][names[0]],
               "iterations": {"baseline": None, "smart_init": 0, "band_replication": None}.get(
                   system, (st.done(names[0]) or {}).get("iterations")),
               "seeds": args.seed_list if seeded else None, "spread": {}, "per_seed": {} if seeded else None}
        for key, (metric, _, _) in METRICS.items():
            stats = seed_stats([result["mean"][n].get(metric) for n in names])
            row[key] = stats.pop("mean")
            if seeded:
                row["spread"][key] = stats
        if seeded:
            row["per_seed"] = {str(s): {key: result["mean"][n].get(metric) for key, (metric, _, _) in METRICS.items()}
                               for s, n in zip(args.seed_list, names)}
        rows.append(row)
    return rows


def languages_used(result: dict) -> dict[str, int]:
    """Scored files per language: the first two folders of each file's path (SPEECH's <set>/<lang>)."""
    counts: dict[str, int] = {}
    for row in result["rows"]:
        if row["system"] == "baseline":
            key = "/".join(Path(row["file"]).parts[:-1][:2]) or "."
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def listening(ev: dict, systems: list[str]) -> list[dict]:
    """The first LISTEN_FILES scored files of a group: each system's wav and the spectrogram grid,
    paths relative to OUTPUT_DIR (so results.md links work where the folder is copied)."""
    result, prefix = ev["result"], ev["prefix"]
    files = list(dict.fromkeys(r["file"] for r in result["rows"]))[:LISTEN_FILES]
    return [{"file": f, "spectrogram": prefix + png if png else None,
             "audio": {s: f"{prefix}audio/{s}/{Path(f).with_suffix('.wav')}" for s in systems}}
            for f, png in zip(files, result["spectrograms"] + [None] * len(files))]


def group_results(st: Stages, args: argparse.Namespace, ev: dict) -> dict:
    result = ev["result"]
    return {"dir": ev["dir"], "systems": system_rows(st, args, result), "files": ev["files"],
            "languages": languages_used(result), "seconds": result["seconds"],
            "band_files": ev["files"] - result["no_band"], "band_empty_files": result["band_empty"],
            "low_passed_files": result["no_band"],
            "base_mel_distance_init": ev["base_init"], "base_mel_distance_trained": ev["base_own"],
            "base_mel_distance_shuffled": ev["base_shuffled"], "base_code_use": ev["base_code_use"],
            "failures": {k: {m: len(v) for m, v in per.items()} for k, per in result["failures"].items()},
            "skipped": result["skipped"], "spectrograms": [ev["prefix"] + p for p in result["spectrograms"]],
            "listening": listening(ev, list(result["mean"]))}


def build_results(st: Stages, args: argparse.Namespace, evs: dict) -> dict:
    """results.json: a table per group; the first group's also at the top level (systems, base_*,
    skipped, ...: the layout of a one-group check)."""
    groups = {group or "val": group_results(st, args, ev) for group, ev in evs.items()}
    first = next(iter(groups.values()))
    stages = {name: {"seconds": rec["seconds"], "attempts": rec.get("attempts", [])}
              for name, rec in st.record["stages"].items()}
    splits = None
    if args.speech_dir is not None:
        report = json.loads((Path(args.speech_dir) / "splits.json").read_text())
        splits = {k: report.get(k) for k in ("heldout", "val_fraction", "seed", "folders")}
    return {**{k: first[k] for k in ("systems", "base_mel_distance_init", "base_mel_distance_trained",
                                     "base_mel_distance_shuffled", "failures", "skipped", "spectrograms")},
            "groups": groups, "splits": splits, "stages": stages, "base_model": st.done("base")["source"],
            "settings": {**st.settings, "band_hz": list(args.band_hz), "seeds": args.seed_list,
                         "noise_seed": args.seed_list[0], "val_files": first["files"],
                         "val_seconds": first["seconds"], "comparison_rate": 48000,
                         "band_files": first["band_files"], "band_empty_files": first["band_empty_files"]}}


def cell(row: dict, key: str, fmt: str) -> str:
    """'0.692', or with several seeds '0.692 (0.680..0.701)': the mean and the min..max over seeds."""
    value = row.get(key)
    if value is None:
        return "n/a"
    spread = (row.get("spread") or {}).get(key)
    if spread and spread["n"] > 1:
        return f"{value:{fmt}} ({spread['min']:{fmt}}..{spread['max']:{fmt}})"
    return format(value, fmt)


def group_markdown(name: str, g: dict, band: str, several_seeds: bool) -> list[str]:
    from snac.evaluation import skipped_note

    header = ["system", "iterations"] + [label.format(band=band) for _, label, _ in METRICS.values()]
    langs = ", ".join(f"{k} {v}" for k, v in g["languages"].items())
    lines = [f"## {name}", "", f"{g['files']} files ({g['seconds']:.0f} s) from `{g['dir']}`: {langs}. The band "
             f"metrics score {g['band_files']} of them; {g['low_passed_files']} have no top band (low-passed "
             "recordings: the 'invented' column is the share of each system's energy it puts in the band there)."
             + (" Recipes: mean over seeds (min..max)." if several_seeds else ""), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in g["systems"]:
        it = "-" if row["iterations"] is None else str(row["iterations"])
        lines.append("| " + " | ".join([row["system"], it] + [cell(row, k, f) for k, (_, _, f) in METRICS.items()])
                     + " |")
    own, shuf, init = (g[k] for k in ("base_mel_distance_trained", "base_mel_distance_shuffled",
                                      "base_mel_distance_init"))
    gain = (1 - own / shuf) * 100 if own is not None and shuf else float("nan")
    lines += ["", f"Base codec at its own rate, mel distance: {own:.3f} with its codes, {shuf:.3f} with the same "
                  f"codes shuffled in time ({gain:.0f}% lower with the real order: the codes carry information"
                  f"{'' if gain >= 30 else ' only weakly'}), {init:.3f} at random initialisation."
              + " Codebook use over these files (share of each level's codes used): "
              + ", ".join(f"{u:.0%}" for u in g["base_code_use"]) + "."]
    if g["skipped"]:
        lines += ["", f"Not evaluated: {skipped_note(g['skipped'])}."]
    failures = {k: v for k, v in g["failures"].items() if v}
    if failures:
        lines += ["", f"Metric failures (files left out of those means): {failures}"]
    if g["listening"]:
        systems = list(g["listening"][0]["audio"])
        lines += ["", "Listening (48 kHz wavs; spectrogram grid: the original, then every system):", "",
                  "| file | spectrogram | " + " | ".join(systems) + " |", "|" + "---|" * (len(systems) + 2)]
        for item in g["listening"]:
            png = f"[png]({item['spectrogram']})" if item["spectrogram"] else "-"
            lines.append(f"| {item['file']} | {png} | " + " | ".join(f"[wav]({item['audio'][s]})" for s in systems)
                         + " |")
    return lines


def markdown(results: dict) -> str:
    s = results["settings"]
    band = f"{s['band_hz'][0] / 1000:g}-{s['band_hz'][1] / 1000:g} kHz"
    lines = ["# Quality check", "",
             f"Base codec: {results['base_model']}; 48 kHz head: {s['head']}"
             f"{'' if s.get('head_channels') is None else ' (' + str(s['head_channels']) + ' branch channels)'}; "
             f"seeds {', '.join(map(str, s['seeds']))} (decoder noise seed {s['noise_seed']}). Compared at 48 kHz; "
             f"reference frames more than {s['silence_db']:g} dB below each file's loudest left out. The band "
             f"metrics score the files whose recording holds at least {s['min_band_db']:g} dB of its energy in the "
             "band, clipped at each source's Nyquist."]
    for name, g in results["groups"].items():
        lines += [""] + group_markdown(name, g, band, len(s["seeds"]) > 1)
    lines += ["", "Stage wall times: " + ", ".join(
        f"{k} {v['seconds'] / 60:.1f} min" + (f" ({len(v['attempts'])} runs)" if len(v["attempts"]) > 1 else "")
        for k, v in results["stages"].items()) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from snac.cache.format import LOCK_NAME  # the cache's run-folder lock file, reused here

    out = Path(args.output_dir).resolve()
    if out.exists() and any(p.name != LOCK_NAME for p in out.iterdir()) and not (out / MARKER).is_file():
        raise SystemExit(f"error: {out} exists and is not a quality-check folder (no {MARKER}); "
                         + ("not deleting it; " if args.overwrite else "") + "pass another --output_dir")
    out.mkdir(parents=True, exist_ok=True)
    with lock_folder(out):  # held until the check ends, however it ends
        if args.overwrite:
            for p in out.iterdir():
                if p.name != LOCK_NAME:  # the lock file stays: deleting it would let a second run in
                    shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        run_check(Stages(out, args), args)  # Stages writes stages.json (the settings) before any stage runs
    return 0


def run_check(st: Stages, args: argparse.Namespace) -> None:
    out, start = st.out, time.time()
    base = stage_base(st, args)
    caches = stage_cache(st, args, base)
    checkpoints = stage_finetune(st, args, base, caches)
    ev = stage_evaluate(st, args, base, checkpoints, caches["val"])
    results = build_results(st, args, ev)
    (out / "results.json").write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
    md = markdown(results)
    (out / "results.md").write_text(md)
    print("\n" + md)
    print(f"done in {(time.time() - start) / 60:.1f} min; {out / 'results.json'}, {out / 'results.md'}, "
          f"{out / 'audio'}, {out / 'spectrograms'}, {out / 'base_model'}")


def lock_folder(out: Path):
    """The cache's run-folder lock on OUTPUT_DIR: a second quality check on the same folder is refused
    with the PID of the one running (two would write the same stages, caches and runs)."""
    from snac.cache.format import LOCK_NAME
    from snac.cache.run import _acquire_lock

    try:
        return _acquire_lock(out, LOCK_NAME)
    except RuntimeError:
        pid = (out / LOCK_NAME).read_text().strip() or "?"
        raise SystemExit(f"error: another quality check (pid {pid}) is running in {out}; wait for it to end or "
                         f"stop it (kill {pid}), then rerun") from None


if __name__ == "__main__":
    sys.exit(main())
