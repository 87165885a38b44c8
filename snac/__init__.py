"""SNAC codec (published checkpoints reproduced exactly) and its 48 kHz decoder.

The public names load on first use, so ``import snac.audio`` (or the cache reader) does not
import torch; ``from snac import SNAC`` works exactly as in upstream snac.
"""

from importlib import import_module

_PUBLIC = {"SNAC": ".model", "SNACEncoder": ".model", "SNAC48": ".model48", "load_model": ".hub"}
__all__ = list(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'snac' has no attribute {name!r}")
    value = getattr(import_module(_PUBLIC[name], __name__), name)
    globals()[name] = value  # later lookups skip this hook
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
