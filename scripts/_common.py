"""Shared by the tests and the benchmarks: upstream SNAC 1.2.1 (PyPI, MIT) as a reference.

``import_reference()`` returns it imported as `snac_ref`. The wheel is downloaded with pip into a
cache folder on first use and its package folder renamed (its imports are relative). Nothing of it
is committed or installed into the project.
"""

import importlib
import os
import warnings
import subprocess
import sys
import zipfile
from pathlib import Path

CACHE = Path(os.environ.get("SNAC_REF_CACHE", Path.home() / ".cache" / "snac48-tests"))
WHEEL = "snac==1.2.1"


def import_reference():
    """Return the upstream `snac` module, or raise RuntimeError saying why it is unavailable."""
    pkg = CACHE / "pkg"
    if not (pkg / "snac_ref" / "__init__.py").is_file():
        wheels = CACHE / "wheels"
        wheels.mkdir(parents=True, exist_ok=True)
        args = ["-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheels), WHEEL]
        proc = subprocess.run([sys.executable, *args], capture_output=True, text=True)
        if proc.returncode != 0:  # uv venvs have no pip: borrow one for this command only
            proc = subprocess.run(["uv", "run", "--no-project", "--with", "pip", "python", *args],
                                  capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"could not download {WHEEL} from PyPI (set SNAC_SKIP_REFERENCE=1 to "
                               f"skip the parity tests offline): {proc.stderr.strip()[-300:]}")
        wheel = next(wheels.glob("snac-1.2.1-*.whl"))
        tmp = CACHE / "pkg.tmp"
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                if name.startswith("snac/"):
                    target = tmp / "snac_ref" / name[len("snac/"):]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(z.read(name))
        if not pkg.exists():
            tmp.replace(pkg)
    if str(pkg) not in sys.path:
        sys.path.insert(0, str(pkg))
    with warnings.catch_warnings():
        # upstream decorates snake() with torch.jit.script, which torch >= 2.10 deprecates at import
        # time; it is upstream's code, not ours, so the warning says nothing about this project
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)
        return importlib.import_module("snac_ref")
