"""The run directory's pre-flight, shared by both trainers (finetune_decoder_48khz.py, train_codec.py).

The order of a start, in both: every check only reads (:func:`check_output_dir`,
:func:`check_resume_file`, :func:`choose_resume` and each trainer's own checks); then rank 0 creates
and locks the run directory (:func:`lock_run_dir`); only then is anything in it renamed or written
(stale temp files, :func:`set_aside_for_fresh`, ``set_aside_newer``, config.json). A refused start
leaves the directory as it was.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import IO, Iterable

import torch

from ..lock import DirLocked, acquire_dir_lock
from .checkpoint import abandon, clean_stale_temps, load_checkpoint, scan_checkpoints, set_aside_newer
from .distributed import DistInfo, agree_any

BEST_NAME = "best_model.pt"


class PreflightError(ValueError):
    """Bad input found before any model work; the message is one line naming the fix."""


def check_output_dir(directory: str) -> None:
    """The run directory must be (or be creatable as) a writable directory: checked before any
    work, on every rank, so a bad path is one line and not a traceback after the model loaded."""
    path = Path(directory)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing == path and not path.is_dir():
        raise PreflightError(f"--output_dir {directory} is a file, not a directory; choose another --output_dir")
    if not existing.is_dir():
        raise PreflightError(f"--output_dir {directory}: {existing} is a file, so no directory can be made "
                             "under it; choose another --output_dir")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PreflightError(f"--output_dir {directory}: no permission to write in {existing}; choose a "
                             "writable --output_dir")


def check_resume_file(resume: str) -> dict:
    """An explicit ``--resume PATH``: the checkpoint dict (weights memory-mapped), or one line."""
    if not Path(resume).is_file():
        raise PreflightError(f"--resume {resume} does not exist; pass a checkpoint file or 'auto'")
    try:
        return load_checkpoint(resume, mmap=True)
    except ValueError as e:
        raise PreflightError(f"--resume: {e}") from e


def leftovers(out: Path, unreadable: Iterable[Path], export: Path | None) -> list[Path]:
    """What a run left that a fresh start would overwrite or hide: unreadable checkpoints,
    ``abandoned-*`` ones, best_model.pt and the exported model."""
    found = list(unreadable)
    if out.is_dir():
        found += sorted(p for p in out.iterdir() if p.name.startswith("abandoned"))
    found += [p for p in (out / BEST_NAME, export) if p is not None and p.exists() and p not in found]
    return found


def choose_resume(out: Path, resume: str | None, fresh: bool, export: Path | None = None
                  ) -> tuple[Path | None, list[str], list[Path]]:
    """Which checkpoint a run starts from -> (path or None, log notes, leftovers a --fresh start sets aside).

    ``--resume auto`` takes the newest readable checkpoint and notes every unreadable one it skipped.
    No run starts fresh where checkpoints are (that needs ``--resume auto`` or a new directory), nor
    where only leftovers of a run are (:func:`leftovers`) unless ``fresh``."""
    if resume not in (None, "auto"):
        return Path(resume), [], []
    readable, unreadable = scan_checkpoints(out)
    notes = [f"skipped {p.name}: {why}" for p, why in unreadable]
    if readable:
        newest = readable[0][2].name
        if fresh:
            raise PreflightError(f"--fresh, but {out} holds checkpoints (newest {newest}); a fresh start would "
                                 "overwrite them: choose a new --output_dir, or drop --fresh and pass --resume auto")
        if resume == "auto":
            return readable[0][2], notes, []
        raise PreflightError(f"{out} already holds checkpoints (newest {newest}); pass --resume auto to continue "
                             "that run or choose a new --output_dir")
    left = leftovers(out, (p for p, _ in unreadable), export)
    if left and not fresh:
        names = ", ".join(p.name for p in left[:4]) + (f" and {len(left) - 4} more" if len(left) > 4 else "")
        raise PreflightError(f"{out} holds no checkpoint to resume but holds {names} of an earlier run: pass "
                             "--fresh to start over in it (those are renamed abandoned-*, nothing is deleted) "
                             "or choose a new --output_dir")
    return None, notes, left


def set_aside_for_fresh(left: list[Path]) -> list[tuple[Path, Path]]:
    """--fresh: rename what the new run would overwrite or outrank (not earlier abandoned-* files)."""
    return [(p, abandon(p)) for p in left if not p.name.startswith("abandoned")]


def lock_run_dir(out: Path, dist_info: DistInfo, device: torch.device) -> IO | None:
    """Rank 0 creates the run directory and locks it for this run (snac.lock: the file .lock holds
    the PID). Every rank raises PreflightError (one line naming the PID) when another run holds it."""
    lock, error = None, None
    if dist_info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        try:
            lock = acquire_dir_lock(out, what="another training run")
        except DirLocked as e:
            error = str(e)
    if agree_any(torch.tensor([float(error is not None)], device=device))[0]:
        raise PreflightError(error or f"another training run holds {out} (rank 0 says which)")
    return lock


def best_val_on_disk(out: Path, key: str, config: dict, validation_keys: Iterable[str]) -> tuple[float, str | None]:
    """best_model.pt's own best val (``key`` in its dict; inf when absent, unreadable or measured by
    another validation), and a log note when it is unreadable. A resume keeps the lower of this and
    its checkpoint's, so a run resumed from an older checkpoint cannot overwrite a better best_model.pt."""
    path = out / BEST_NAME
    if not path.exists():
        return math.inf, None
    try:
        best = load_checkpoint(path, mmap=True)
    except ValueError as e:
        return math.inf, f"{BEST_NAME} is unreadable ({e}); the next best replaces it"
    saved = best.get("config", {})
    if any(saved.get(k) != config.get(k) for k in validation_keys):
        return math.inf, None
    value = best.get(key)
    return (math.inf if value is None else float(value)), None


def prepare_run_dir(out: Path, resumed_older: int | None, left: list[Path]) -> list[str]:
    """Rank 0, under the lock, after every check: sweep a crashed save's temp files, set aside the
    checkpoints after the iteration ``resumed_older`` (a --resume PATH), and (a --fresh start) the
    old run's leftovers. Returns what it did, one log line each."""
    notes = [f"removed stale temporary file {p.name} (left by a crash during a save)" for p in clean_stale_temps(out)]
    if resumed_older is not None:
        notes += [f"resuming an older checkpoint: renamed {old.name} (a later iteration) to {new.name}"
                  for old, new in set_aside_newer(out, resumed_older)]
    notes += [f"--fresh: renamed {old.name} (of an earlier run) to {new.name}" for old, new in set_aside_for_fresh(left)]
    return notes
