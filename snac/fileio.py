"""Atomic file writes shared by the cache and the trainer: temp file beside the target, rename over it.

A crash at any moment leaves the old file or the new one, never a torn one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

TMP_MARK = ".tmp-"  # temp files are "<name>.tmp-<pid>" beside their target (swept after a crash)


def fsync_dir(directory: Path) -> None:
    """fsync a directory, so a rename in it survives a power loss (best effort)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json_atomic(path: str | os.PathLike, obj, durable: bool = False) -> None:
    """Write JSON to a temp file beside ``path`` and rename it over: readers never see half a
    file. ``durable`` also fsyncs (manifests, settings) — not needed for a status file rewritten
    every log step."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
