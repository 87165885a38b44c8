"""Two torchrun "nodes" on this machine: two torchrun invocations (--nnodes 2, one process each) that
meet through a c10d rendezvous on localhost, each in its own process group (so a test can SIGKILL a
whole node), and an audit hook that records every file a node's Python processes write."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

# installed in every Python process of a node through PYTHONPATH (sitecustomize): one JSON line per
# write-like file operation, appended to $SNAC48_AUDIT_LOG (its own descriptor, opened first)
AUDIT_HOOK = '''
import json, os, sys
_log = os.environ.get("SNAC48_AUDIT_LOG")
if _log:
    _fd = os.open(_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    _WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    def _hook(event, args):
        paths = []
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            mode, flags = args[1], args[2]
            if (mode and any(c in mode for c in "wax+")) or (not mode and flags & _WRITE):
                paths = [args[0]]
        elif event in ("os.rename", "os.replace", "os.link", "os.symlink"):
            paths = [args[1]]
        elif event in ("os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree", "os.truncate"):
            paths = [args[0]]
        for p in paths:
            if isinstance(p, int):
                continue
            p = os.path.abspath(os.fsdecode(p))
            os.write(_fd, (json.dumps([event, p, os.getpid()]) + "\\n").encode())
    sys.addaudithook(_hook)
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def node_env(tmp: Path, name: str, base: dict) -> dict:
    """The environment of one node: one thread, the audit hook, its log at tmp/audit-<name>.jsonl."""
    hook = tmp / "audit_hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(AUDIT_HOOK)
    path = os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, **base, "OMP_NUM_THREADS": "1", "PYTHONPATH": path,
            "SNAC48_AUDIT_LOG": str(tmp / f"audit-{name}.jsonl")}


def start_node(node_rank: int, port: int, script: Path, args: list, cwd: Path, env: dict, log: Path,
               nnodes: int = 2, nproc: int = 1) -> subprocess.Popen:
    """One torchrun 'node' in its own session; stdout and stderr go to ``log``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes), "--node_rank", str(node_rank),
           "--nproc_per_node", str(nproc), "--rdzv_backend", "c10d", "--rdzv_endpoint", f"localhost:{port}",
           "--max_restarts", "0", str(script), *[str(a) for a in args]]
    cwd.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def run_nodes(tmp: Path, script: Path, args: list, base_env: dict, timeout: float = 300, nnodes: int = 2,
              nproc: int = 1, tag: str = "run") -> list[tuple[int, str]]:
    """Run ``script args`` on ``nnodes`` nodes x ``nproc`` processes; -> [(exit code, output)] per node.
    Node k runs in tmp/<tag>-cwd<k> (empty) and audits to tmp/audit-<tag><k>.jsonl."""
    port = free_port()
    procs = [start_node(k, port, script, args, tmp / f"{tag}-cwd{k}", node_env(tmp, f"{tag}{k}", base_env),
                        tmp / f"{tag}-node{k}.log", nnodes, nproc) for k in range(nnodes)]
    return [(wait_node(p, timeout), (tmp / f"{tag}-node{k}.log").read_text()) for k, p in enumerate(procs)]


def wait_node(proc: subprocess.Popen, timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_node(proc)
        raise


def _procs() -> dict[int, tuple[str, int]]:
    """pid -> (state, parent pid) of every process."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(stat.parent.name)] = (fields[0], int(fields[1]))
    return out


def node_pids(proc: subprocess.Popen) -> list[int]:
    """The node's processes: torchrun's agent and every descendant (its workers run in their own
    sessions, so the agent's process group alone is not the node)."""
    table, pids = _procs(), [proc.pid]
    for pid in pids:
        pids += [p for p, (_, parent) in table.items() if parent == pid]
    return pids


def stopped_in(proc: subprocess.Popen) -> bool:
    """Whether a process of the node is stopped (state T: e.g. SNAC48_FAULT=step:N:STOP)."""
    table = _procs()
    return any(table.get(p, ("", 0))[0] == "T" for p in node_pids(proc))


def _signal_node(proc: subprocess.Popen, sig: int) -> None:
    for pid in node_pids(proc):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def freeze_node(proc: subprocess.Popen) -> None:
    """SIGSTOP every process of the node: what it wrote so far can be counted before the kill."""
    _signal_node(proc, signal.SIGSTOP)


def kill_node(proc: subprocess.Popen) -> None:
    """SIGKILL every process of the node (agent, workers, their children), as a dead machine."""
    _signal_node(proc, signal.SIGKILL)
    proc.wait()


def wait_for(condition, timeout: float, procs: list[subprocess.Popen]) -> bool:
    """Poll ``condition()`` until true, a node exits, or the time is up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and all(p.poll() is None for p in procs):
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def written(tmp: Path, name: str, under: list[Path]) -> set[str]:
    """Paths under any of ``under`` that node ``name``'s processes wrote, created, renamed or removed."""
    log = tmp / f"audit-{name}.jsonl"
    roots = [str(Path(u).absolute()) + os.sep for u in under]
    events = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return {p for _, p, _ in events if any(p.startswith(r) or p + os.sep == r for r in roots)}
