"""Atomic training checkpoints (write, find, rotate, clean) and RNG states as checkpoint data.

A checkpoint is one dict of tensors, numbers, strings, lists and dicts (loadable with
``torch.load(..., weights_only=True)``). It is written to a temporary file in the same directory,
flushed and fsynced, then renamed over the target with ``os.replace``: a crash at any moment
leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import shutil
import signal
from pathlib import Path

import torch

from ..fileio import TMP_MARK, fsync_dir

ITER_RE = re.compile(r"^checkpoint_iter(\d+)\.pt$")
RESUMABLE = re.compile(r"^(latest|checkpoint_iter\d+|checkpoint_epoch\d+(_iter\d+)?)\.pt$")


def maybe_fault(point: str, iteration: int) -> None:
    """Test hook for the kill-and-resume tests: with ``SNAC48_FAULT=<point>:<iteration>[:<SIG>]``
    in the environment this process sends itself SIGKILL (or SIG<SIG>, e.g. TERM) there.
    Points: 'step' (after an optimizer step, before its checkpoints), 'save' (half-way through
    writing a checkpoint file)."""
    spec = os.environ.get("SNAC48_FAULT")
    if not spec:
        return
    parts = spec.split(":")
    if parts[:2] == [point, str(iteration)]:
        os.kill(os.getpid(), getattr(signal, f"SIG{parts[2]}") if len(parts) > 2 else signal.SIGKILL)


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically (temp file, flush, fsync, os.replace)."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    try:
        with open(tmp, "wb") as f:
            data = buffer.getbuffer()
            half = len(data) // 2
            f.write(data[:half])
            if os.environ.get("SNAC48_FAULT"):
                f.flush()  # so a fault here leaves a torn file on disk, as a real crash would
            maybe_fault("save", int(state.get("iteration", -1)))  # killed mid-write: a torn temp file
            f.write(data[half:])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def link_atomic(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Make ``dst`` the same checkpoint as ``src`` (hard link, or a copy where links are not
    supported), atomically: a crash leaves the old ``dst``."""
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f"{dst.name}{TMP_MARK}{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    os.replace(tmp, dst)
    fsync_dir(dst.parent)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    mmap: bool = False) -> dict:
    """Load a checkpoint dict (tensors and plain data only); ValueError with one line if unusable."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist; pass an existing .pt file or --resume auto")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise ValueError(f"refusing {path}: it holds pickled objects, not a checkpoint of this script") from e
    except Exception as e:  # truncated or corrupt zip, wrong format
        raise ValueError(f"checkpoint {path} is unreadable ({type(e).__name__}); "
                         "pick another one or --resume auto") from e
    if not isinstance(state, dict) or "model" not in state or "iteration" not in state:
        raise ValueError(f"{path} is not a training checkpoint of this script (no 'model'/'iteration')")
    return state


def scan_checkpoints(directory: str | os.PathLike) -> tuple[list[tuple[int, float, Path]], list[tuple[Path, str]]]:
    """The resumable checkpoints of ``directory``: (readable ones as (iteration, mtime, path), newest
    first; unreadable ones as (path, one-line reason))."""
    directory = Path(directory)
    readable, skipped = [], []
    if not directory.is_dir():
        return readable, skipped
    for p in sorted(directory.iterdir()):
        if not RESUMABLE.match(p.name):
            continue
        try:
            # mmap: only the small scalars are read, not the weights
            readable.append((int(load_checkpoint(p, mmap=True)["iteration"]), p.stat().st_mtime, p))
        except (ValueError, KeyError, TypeError) as e:
            skipped.append((p, str(e)))
    readable.sort(key=lambda r: r[:2], reverse=True)
    return readable, skipped


def find_latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The newest loadable resumable checkpoint in ``directory`` (highest iteration, then newest
    file), or None. Unreadable files are skipped (:func:`scan_checkpoints` says which and why)."""
    readable, _ = scan_checkpoints(directory)
    return readable[0][2] if readable else None


def abandon(path: Path) -> Path:
    """Rename ``path`` (file or folder) to ``abandoned-<name>`` beside it, never over an earlier
    abandoned one (``abandoned2-<name>``, ...); returns the new path."""
    k, target = 1, path.with_name(f"abandoned-{path.name}")
    while target.exists():
        k += 1
        target = path.with_name(f"abandoned{k}-{path.name}")
    os.rename(path, target)
    return target


def rotate_checkpoints(directory: str | os.PathLike, keep_last: int) -> list[Path]:
    """Delete all but the ``keep_last`` highest ``checkpoint_iter{N}.pt``; returns what was deleted."""
    found = sorted(((int(m.group(1)), p) for p in Path(directory).iterdir()
                    if (m := ITER_RE.match(p.name))), reverse=True)
    removed = [p for _, p in found[keep_last:]]
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


def set_aside_newer(directory: str | os.PathLike, iteration: int) -> list[tuple[Path, Path]]:
    """Rename checkpoints of a later iteration than ``iteration`` to ``abandoned-<name>``.

    Resuming an OLDER checkpoint explicitly abandons what came after it; left in place, those
    files would outrank the new run in ``--resume auto`` and in rotation (and a later best could
    overwrite the abandoned ``best_model.pt``). Renamed, not deleted: nothing finished is lost.
    """
    moved = []
    for p in sorted(Path(directory).iterdir()):
        if not (RESUMABLE.match(p.name) or p.name == "best_model.pt"):
            continue
        try:
            later = int(load_checkpoint(p, mmap=True)["iteration"]) > iteration
        except (ValueError, KeyError, TypeError):
            continue
        if later:
            moved.append((p, abandon(p)))
    return moved


def clean_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Remove temp files left by a crash during a save (call before any save of this run)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = [p for p in directory.iterdir() if TMP_MARK in p.name and p.is_file()]
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


# ----------------------------------------------------------------------------- RNG states
def rng_state() -> dict:
    """Python, NumPy, torch (and CUDA) RNG states as weights_only-loadable data."""
    import random

    import numpy as np

    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype("int64")), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import random

    import numpy as np

    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype("uint32"), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
