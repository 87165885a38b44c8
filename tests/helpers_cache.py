"""Shared helpers for the cache tests: a tiny SNAC in hub layout and generated audio files."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from snac import SNAC
from snac.presets import TINY_24KHZ as TINY_CONFIG

REPO = Path(__file__).resolve().parent.parent


def encode_single(model, audio, device: str = "cpu") -> list[np.ndarray]:
    """Reference: codes of one mono model-rate signal (T,) encoded alone -> list of (T_j,) int64."""
    x = torch.as_tensor(audio, dtype=torch.float32).reshape(1, 1, -1).to(device)
    with torch.inference_mode():
        return [c[0].cpu().numpy() for c in model.encode(x)]


def save_tiny_model(directory: Path, seed: int = 0, config: dict | None = None) -> Path:
    torch.manual_seed(seed)
    SNAC(**(config or TINY_CONFIG)).save_pretrained(directory)
    return directory


def write_audio(path: Path, seconds: float, sample_rate: int, channels: int = 1, seed: int = 0,
                subtype: str | None = None, silent: bool = False) -> Path:
    """Noise bursts with a tone (so codes vary), or zeros; (frames, channels) as soundfile wants."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = max(1, int(round(seconds * sample_rate)))
    rng = np.random.default_rng(seed)
    t = np.arange(frames) / sample_rate
    # each channel its own tone (so a mono mix differs clearly from any one channel), plus noise
    tones = (200 + 50 * seed) * (1 + 0.75 * np.arange(channels))  # (channels,) Hz
    x = 0.3 * np.sin(2 * np.pi * tones * t[:, None]) + 0.05 * rng.standard_normal((frames, channels))
    if silent:
        x = np.zeros((frames, channels))
    sf.write(path, x.astype(np.float32), sample_rate, subtype=subtype)
    return path


def load_script(relative: str):
    """Import a repo script (e.g. 'cache_codes_multigpu.py') as a module, to call its main()."""
    path = REPO / relative
    name = "_script_" + path.stem
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
