"""One process per directory: an exclusive, non-blocking ``flock`` on a lock file that holds the PID.

Used by the code cache (one caching run per cache), both trainers (one run per run directory) and
anything else that writes a folder it must own. The kernel drops the lock when the process dies
(SIGKILL included), so a stale lock file never blocks a rerun.

    lock = acquire_dir_lock(out, what="a training run")   # DirLocked(RuntimeError) if held
    ...                                                  # the directory is ours
    lock.close()                                         # or let the process end
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

LOCK_NAME = ".lock"


class DirLocked(RuntimeError):
    """Another live process holds the directory; ``pid`` is the one its lock file names ('?' if none)."""

    def __init__(self, message: str, pid: str):
        super().__init__(message)
        self.pid = pid


def acquire_dir_lock(directory: str | os.PathLike, name: str = LOCK_NAME, what: str = "another run") -> IO:
    """Lock ``directory`` (which must exist) for this process; returns the open lock file (keep it
    open while the directory is in use). Raises :class:`DirLocked` with one line naming the PID
    that holds it. ``what`` names the kind of holder in that line ('another caching run', ...)."""
    import fcntl

    directory = Path(directory)
    f = open(directory / name, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        pid = f.read().strip() or "?"
        f.close()
        raise DirLocked(f"{what} (pid {pid}) is writing to {directory}; wait for it to finish or stop it "
                        f"first (kill {pid})" if pid != "?" else
                        f"{what} is writing to {directory}; wait for it to finish or stop it first", pid) from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f
