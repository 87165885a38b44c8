"""SNAC codec (published checkpoints reproduced exactly) and its 48 kHz decoder."""

from .hub import load_model
from .model import SNAC, SNACEncoder
from .model48 import SNAC48

__all__ = ["SNAC", "SNAC48", "SNACEncoder", "load_model"]
