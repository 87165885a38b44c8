#!/usr/bin/env python
"""The Python half of train_decoder_48khz.sh and train_status.sh (run those, not this).

    preflight --device D [--fresh] [--logs_root logs] -- TRAINER FLAGS...
        Resolve the trainer's config exactly as the trainer will, refuse a device or run directory
        that a live run holds (clearing stale PID files), decide whether to resume, run the
        trainer's own pre-flight checks (caches exist, manifest matches the model, segment fits...),
        write logs/<run>/launch.json and print shell assignments for the launcher to eval.
    torchrun --output_dir RUN_DIR -- TORCHRUN ARGS...
        Run torchrun (python -m torch.distributed.run) and pass on its exit status, except after a
        stop signal: torchrun answers one with exit 1 and a SignalException traceback even when
        every worker saved; when the run's status.json says 'stopped' at the iteration latest.pt
        holds, the workers saved and stopped cleanly, and this exits 0 (as a single process does).
    status [RUN_DIR...] [--plot] [--logs_root logs]
        One block per run: state, PID, device, uptime, progress, losses, speed, ETA, newest
        checkpoint, log path, GPU memory/utilisation. Reads files only (no torch import: fast).

Layout: the run directory is the trainer's --output_dir (runs/<run>: config.json, training.log,
metrics.jsonl, status.json, checkpoints). The launcher's files live in logs/<run>/ (<run> = the
run directory's name): training.log (the trainer's stdout/stderr under nohup, appended across
launches), train.pid (the PID of the launched process group) and launch.json (device, run
directory, command, time). A multi-node launch (--nnodes) writes training.node<R>.log and
train.node<R>.pid per node instead; status shows every node's last log line.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAINER = ROOT / "finetune_decoder_48khz.py"
TRAINER_NAME = TRAINER.name
# a live process of a run is one of the trainers (train_codec.py writes the same status.json)
TRAINER_NAMES = (TRAINER_NAME, "train_codec.py")
CHECKPOINT_GLOB = "*.pt"


class LaunchError(Exception):
    """A refusal; the message is one sentence that names the fix."""


# ================================================================================ processes
def pid_alive(pid: int | None) -> bool:
    """True when ``pid`` is a live (non-zombie) process that runs the trainer (guards PID reuse)."""
    if not pid or pid <= 0:
        return False
    proc = Path(f"/proc/{pid}")
    if Path("/proc/self").exists():  # Linux: a zombie is dead, and the command line must match
        try:
            stat = (proc / "stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                return False
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
            return False
        return any(name in cmdline for name in TRAINER_NAMES)
    try:  # elsewhere: signal 0 only tests existence
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def gpu_set(device: str) -> set[str]:
    """'0,2' -> {'0', '2'}; 'cpu' -> empty."""
    return set() if device == "cpu" else {d for d in device.split(",") if d}


def launched_runs(logs_root: Path) -> list[Path]:
    return sorted(p.parent for p in logs_root.glob("*/launch.json"))


# ================================================================================ preflight
def check_live_runs(logs_root: Path, out: Path, device: str, log_dir: Path) -> list[str]:
    """Refuse when a live run holds ``out`` or GPU ``device``; clear stale PID files. Returns notes."""
    notes = []
    for run_log in launched_runs(logs_root):
        pid_file = run_log / "train.pid"
        pid = read_pid(pid_file)
        if pid is None:
            continue
        info = read_json(run_log / "launch.json") or {}
        if not pid_alive(pid):
            pid_file.unlink(missing_ok=True)
            notes.append(f"cleared a stale PID file {pid_file} (process {pid} is gone)")
            continue
        other_out = Path(info.get("output_dir", "")).resolve()
        if other_out == out:
            raise LaunchError(f"a live run (PID {pid}) already writes to {out}; follow it with "
                              f"'tail -f {run_log / 'training.log'}' or stop it with 'kill {pid}' first")
        shared = gpu_set(device) & gpu_set(str(info.get("device", "cpu")))
        if shared:
            raise LaunchError(f"GPU {','.join(sorted(shared))} is in use by the live run {other_out} (PID {pid}); "
                              f"choose another GPU or stop it with 'kill {pid}'")
    # a run started by hand (not through the launcher) still marks its directory in status.json
    status = read_json(out / "status.json") or {}
    if status.get("state") == "running" and pid_alive(status.get("pid")):
        raise LaunchError(f"a live trainer (PID {status['pid']}) already writes to {out}; stop it first "
                          f"with 'kill {status['pid']}'")
    info = read_json(log_dir / "launch.json")
    if info and Path(info.get("output_dir", "")).resolve() != out:
        raise LaunchError(f"log folder {log_dir} belongs to the run directory {info.get('output_dir')}; "
                          f"give this run an --output_dir with another name")
    return notes


def preflight(args: argparse.Namespace) -> str:
    sys.path.insert(0, str(ROOT))  # the package beside this script, also without an install
    from snac.fileio import write_json_atomic
    from snac.train.checkpoint import find_latest_checkpoint
    from snac.train.config import ConfigError, resolve_config

    trainer_args = list(args.trainer_args)
    if trainer_args and trainer_args[0] == "--":
        trainer_args = trainer_args[1:]
    try:
        # several GPUs run under torchrun, where each rank takes its LOCAL_RANK GPU: --device 0
        trainer_device = "cpu" if args.device == "cpu" else "0" if "," in args.device else args.device
        cfg = resolve_config(trainer_args + ["--device", trainer_device])
    except (ConfigError, SystemExit) as e:
        raise LaunchError(f"bad trainer flags: {e}") from e
    out = Path(cfg.output_dir).resolve()
    logs_root = Path(args.logs_root)
    log_dir = logs_root / out.name
    # node 0 of a multi-node run guards the run and records the launch; the others cannot see its
    # processes (another machine) and share its files
    notes = check_live_runs(logs_root, out, args.device, log_dir) if args.node_rank == 0 else []

    latest = find_latest_checkpoint(out)
    resume = ""
    if args.fresh and cfg.resume:
        raise LaunchError(f"--fresh and --resume {cfg.resume} both given: drop one")
    if latest is not None and args.fresh:
        raise LaunchError(f"--fresh, but {out} already holds checkpoints (newest {latest.name}); a fresh "
                          "start would overwrite them: choose a new --output_dir, or drop --fresh to resume")
    if latest is not None and cfg.resume is None:
        resume = "auto"
        cfg.resume = "auto"
        notes.append(f"resuming from {latest} (--resume auto; pass --fresh with a new --output_dir to start over)")
    elif cfg.resume:
        notes.append(f"resuming as asked: --resume {cfg.resume}")
    elif args.fresh:
        cfg.fresh = True  # the trainer gets --fresh too: leftovers of an earlier run are set aside
        notes.append(f"starting a new run in {out} (--fresh)")
    else:
        notes.append(f"starting a new run in {out}")

    from snac.train.distributed import DistInfo
    from snac.train.plan import PreflightError, preflight, total_iterations

    try:
        plan = preflight(cfg, DistInfo())  # the trainer's own pre-flight, without starting it
    except PreflightError as e:
        raise LaunchError(str(e)) from e
    notes.append(f"{len(plan.train_coarse)} training rows, {len(plan.epochs)} epochs, "
                 f"{total_iterations(cfg, plan)} iterations planned")

    log_dir.mkdir(parents=True, exist_ok=True)
    launch = {"output_dir": str(out), "device": args.device, "config": cfg.config,
              "trainer_args": trainer_args + (["--resume", "auto"] if resume else []),
              "time": time.time(), "resume": resume or cfg.resume}
    if args.node_rank == 0:
        write_json_atomic(log_dir / "launch.json", launch)
    for note in notes:
        print(note, file=sys.stderr)
    return (f"OUTPUT_DIR={shlex.quote(str(out))}; LOG_DIR={shlex.quote(str(log_dir))}; "
            f"RESUME={shlex.quote(resume)}")


# ================================================================================ status
def node_lines(log_dir: Path | None) -> list[str]:
    """A multi-node launch's per-node logs (logs/<run>/training.node<R>.log on the shared
    filesystem): one line per node with its last non-empty log line."""
    if log_dir is None:
        return []
    lines = []
    def node(log: Path) -> str:
        return log.stem[len("training.node"):]

    for log in sorted(log_dir.glob("training.node*.log"), key=lambda p: int(node(p)) if node(p).isdigit() else -1):
        try:
            last = next((line for line in reversed(log.read_text(errors="replace").splitlines()) if line.strip()), "")
        except OSError as e:
            last = f"unreadable ({e.strerror})"
        lines.append(f"node {node(log):<8}{last[-200:] or '(empty log)'}")
    return lines


def age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0, int(seconds))
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def num(value, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def last_error_line(log: Path | None) -> str | None:
    """The last line of a log that looks like an error (a traceback's final line, 'error: ...')."""
    if log is None or not log.is_file():
        return None
    with open(log, "rb") as f:
        f.seek(max(0, log.stat().st_size - 65536))
        lines = f.read().decode(errors="replace").splitlines()
    for line in reversed(lines):
        s = line.strip()
        low = s.lower()
        if s and ("error" in low or "exception" in low or s.startswith("Killed")):
            return s
    return None


def gpu_lines(device: str | None) -> list[str]:
    """GPU memory and utilisation from nvidia-smi for the run's GPU indices (as nvidia-smi numbers them)."""
    if not device or not shutil.which("nvidia-smi"):
        return []
    indices = device.split()[0].replace("cuda:", "")
    if not all(i.isdigit() for i in indices.split(",")):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-i", indices, "--query-gpu=index,name,memory.used,memory.total,"
                              "utilization.gpu", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    lines = []
    for row in out.stdout.strip().splitlines():
        index, name, used, total, util = [v.strip() for v in row.split(",")]
        lines.append(f"gpu          {index} {name}: {used}/{total} MiB, {util}% utilisation")
    return lines


def run_state(status: dict | None, alive: bool, log: Path | None) -> tuple[str, str | None]:
    """(state word, error line) from status.json and process liveness."""
    state = (status or {}).get("state")
    if alive:
        return ("running" if state in (None, "running") else f"running ({state} written, still exiting)"), None
    if state == "finished":
        return "finished", None
    if state == "stopped":
        return "stopped (by a signal, latest.pt saved; relaunch the same command to resume)", None
    if state == "failed":
        return "crashed", (status or {}).get("error") or last_error_line(log)
    if state == "running":
        return ("crashed (the process is gone without a final status: killed, out of memory or a reboot)",
                last_error_line(log))
    return "not started or failed before training began", last_error_line(log)


RUN_MARKERS = ("status.json", "config.json", "training.log", "metrics.jsonl")


def is_run_dir(run_dir: Path, logs_root: Path) -> bool:
    """True when ``run_dir`` holds a trainer's files, or a launch in ``logs_root`` targets it."""
    if any((run_dir / name).is_file() for name in RUN_MARKERS) or any(run_dir.glob(CHECKPOINT_GLOB)):
        return True
    launch = read_json(logs_root / run_dir.name / "launch.json")
    return bool(launch) and Path(launch.get("output_dir", "")).resolve() == run_dir.resolve()


def describe(run_dir: Path, logs_root: Path, plot: bool) -> list[str]:
    status = read_json(run_dir / "status.json")
    log_dir = logs_root / run_dir.name
    launch = read_json(log_dir / "launch.json")
    if launch and Path(launch.get("output_dir", "")).resolve() != run_dir.resolve():
        log_dir, launch = None, None  # that log folder belongs to another run of the same name
    pid = read_pid(log_dir / "train.pid") if log_dir else None
    trainer_pid = (status or {}).get("pid")
    alive = pid_alive(pid) or (status is not None and pid_alive(trainer_pid))
    nohup_log = log_dir / "training.log" if log_dir and (log_dir / "training.log").is_file() else None
    run_log = run_dir / "training.log"
    state, error = run_state(status, alive, nohup_log or (run_log if run_log.is_file() else None))
    s = status or {}
    now = time.time()
    lines = [f"== {run_dir}", f"state        {state}"]
    if error:
        lines.append(f"last error   {error}")
    if pid or trainer_pid:
        lines.append(f"pid          {pid or '-'} (launcher process group), trainer {trainer_pid or '-'}")
    device = s.get("device") or (launch or {}).get("device")
    lines.append(f"device       {device or '-'}")
    # nvidia-smi numbering: the launcher's GPU list (the trainer's own name may be remapped by
    # CUDA_VISIBLE_DEVICES under torchrun)
    smi_device = (launch or {}).get("device") or device
    if s.get("start_time"):
        end = now if alive else s.get("update_time", now)
        lines.append(f"uptime       {age(end - s['start_time'])} (started "
                     f"{datetime.datetime.fromtimestamp(s['start_time']).strftime('%Y-%m-%d %H:%M:%S')}; "
                     f"status updated {age(now - s.get('update_time', now))} ago)")
    if status:
        lines += [f"progress     epoch {s.get('epoch') or '-'}/{s.get('epochs') or '-'}, iteration "
                  f"{s.get('iteration') or 0}/{s.get('total_iterations') or '-'}, phase {s.get('phase') or '-'}",
                  f"loss         train {num(s.get('train_loss'))} | val last {num(s.get('val_loss'))}, "
                  f"best {num(s.get('best_val_loss'))}",
                  f"grad norm    generator {num(s.get('grad_norm'), '.3g')}"
                  + (f", discriminators {num(s.get('disc_grad_norm'), '.3g')}" if s.get("disc_grad_norm") is not None
                     else ""),
                  f"speed        {num(s.get('samples_per_s'), '.1f')} samples/s, ETA "
                  f"{age(s.get('eta_s')) if alive and s.get('eta_s') is not None else '-'}"]
        terms = [(name, s.get(key)) for name, key in (("mel", "loss_mel"), ("adv", "loss_adv"),
                                                       ("feat", "loss_feat"), ("val mel", "val_mel"))]
        if any(v is not None for _, v in terms):
            lines.append("terms        " + ", ".join(f"{name} {num(v)}" for name, v in terms if v is not None))
        if s.get("disc_loss") is not None:
            lines.append(f"disc         loss {num(s.get('disc_loss'))} (real {num(s.get('disc_real'))}, "
                         f"fake {num(s.get('disc_fake'))})")
    ckpts = sorted(run_dir.glob(CHECKPOINT_GLOB), key=lambda p: p.stat().st_mtime)
    if ckpts:
        newest = ckpts[-1]
        lines.append(f"checkpoint   {newest} ({age(now - newest.stat().st_mtime)} old; {len(ckpts)} in the run dir)")
    else:
        lines.append("checkpoint   none yet")
    logs = [str(p) for p in (nohup_log, run_log if run_log.is_file() else None) if p]
    lines.append(f"log          {' | '.join(logs) if logs else '-'}")
    lines += node_lines(log_dir)
    if alive:
        lines += gpu_lines(str(smi_device) if smi_device else None)
        if pid:
            lines.append(f"follow       tail -f {nohup_log or run_log}    stop: kill {pid}")
    if plot:
        png = run_dir / "loss_curves.png"
        try:
            sys.path.insert(0, str(ROOT / "scripts"))
            from plot_metrics import plot_metrics

            plot_metrics(run_dir / "metrics.jsonl", png, title=run_dir.name)
            lines.append(f"plot         {png}")
        except (FileNotFoundError, ValueError) as e:
            lines.append(f"plot         not written: {e}")
    return lines


def status(args: argparse.Namespace) -> int:
    logs_root = Path(args.logs_root)
    runs: list[Path] = [Path(r) for r in args.run_dirs]
    if not runs:
        for run_log in launched_runs(logs_root):
            out = (read_json(run_log / "launch.json") or {}).get("output_dir")
            if out:
                runs.append(Path(out))
        runs += sorted(p.parent for p in Path("runs").glob("*/status.json"))
    seen, unique = set(), []
    for r in runs:
        key = r.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(r)
    if not unique:
        print(f"no runs found (none launched into {logs_root}/, no runs/*/status.json); pass a run directory")
        return 1
    missing = [r for r in unique if not r.is_dir()]
    not_runs = [r for r in unique if r.is_dir() and not is_run_dir(r, logs_root)]
    for r in unique:
        if r.is_dir() and r not in not_runs:
            print("\n".join(describe(r, logs_root, args.plot)))
            print()
    for r in missing:
        print(f"== {r}\nstate        no such run directory\n")
    for r in not_runs:
        print(f"== {r}\nstate        not a run directory (no {', '.join(RUN_MARKERS)} or checkpoint, and no "
              f"launch into it in {logs_root}/); pass a trainer --output_dir\n")
    return 1 if missing or not_runs else 0


def run_torchrun(args: argparse.Namespace) -> int:
    """torchrun as a child; a stop signal to this process is passed on to it (a group signal
    reaches it and the workers directly). Exit 0 when a stopped run saved cleanly (see the header)."""
    import signal

    forwarded: list[int] = []  # a stop signal came: only then can torchrun's code be explained away
    extra = list(args.torchrun_args)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    child = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *extra])

    def forward(signum, _frame):
        forwarded.append(signum)
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    rc = child.wait()
    if rc == 0:
        return 0
    out = Path(args.output_dir)
    state = read_json(out / "status.json") or {}
    saved_at = latest_iteration(out / "latest.pt")
    if forwarded and state.get("state") == "stopped" and saved_at is not None and saved_at == state.get("iteration"):
        print(f"torchrun exited {rc} after a stop signal, but every worker saved and stopped: latest.pt holds "
              f"iteration {saved_at} (status.json: stopped); exit 0", flush=True)
        return 0
    return rc if rc > 0 else 128 - rc  # killed by signal N: the shell's 128 + N


def latest_iteration(path: Path) -> int | None:
    """The iteration latest.pt holds (None when missing or unreadable)."""
    sys.path.insert(0, str(ROOT))
    from snac.train.checkpoint import load_checkpoint

    try:
        return int(load_checkpoint(path, mmap=True)["iteration"])
    except (ValueError, KeyError, TypeError):
        return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """``preflight ...`` or ``status ...``. Each command has its own parser named after the shell
    script that runs it, so a usage error names train_status.sh / train_decoder_48khz.sh, not
    this internal file."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else None
    if command == "status":
        st = argparse.ArgumentParser(prog="train_status.sh", description="show training runs (see train_status.sh)")
        st.add_argument("run_dirs", nargs="*", metavar="RUN_DIR")
        st.add_argument("--plot", action="store_true")
        st.add_argument("--logs_root", default="logs")
        return argparse.Namespace(command=command, **vars(st.parse_args(argv[1:])))
    if command == "preflight":
        pre = argparse.ArgumentParser(prog="train_decoder_48khz.sh (pre-flight)")
        pre.add_argument("--device", required=True)
        pre.add_argument("--fresh", action="store_true")
        pre.add_argument("--node_rank", type=int, default=0)
        pre.add_argument("--logs_root", default="logs")
        pre.add_argument("trainer_args", nargs=argparse.REMAINDER)
        return argparse.Namespace(command=command, **vars(pre.parse_args(argv[1:])))
    if command == "torchrun":
        tr = argparse.ArgumentParser(prog="train_decoder_48khz.sh (torchrun)")
        tr.add_argument("--output_dir", required=True)
        tr.add_argument("torchrun_args", nargs=argparse.REMAINDER)
        return argparse.Namespace(command=command, **vars(tr.parse_args(argv[1:])))
    print(f"error: {Path(__file__).name} is run by train_decoder_48khz.sh (preflight) and "
          "train_status.sh (status); run those scripts instead", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "status":
            return status(args)
        if args.command == "torchrun":
            return run_torchrun(args)
        # stdout carries only the shell assignments the launcher evals: anything else printed
        # while importing or checking goes to stderr
        real_stdout = sys.stdout
        with contextlib.redirect_stdout(sys.stderr):
            assignments = preflight(args)
        real_stdout.write(assignments + "\n")
        return 0
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
