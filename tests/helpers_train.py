"""Fixtures of the trainer tests: tiny models, real code caches of generated audio, a fake cache
with time-stamped codes and audio, and a runner for the training script."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from snac import SNAC
from snac.audio import encode_flac, resample
from snac.cache.encode import LoadedItem
from snac.cache.format import model_settings, shard_schema, weights_fingerprint, write_manifest
from snac.cache.writer import ShardWriter

from helpers_cache import encode_single

from snac.presets import TINY_24KHZ, TINY_32KHZ  # noqa: F401  (re-exported for the tests)

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "finetune_decoder_48khz.py"


def tiny_snac(config: dict = TINY_24KHZ, seed: int = 0) -> SNAC:
    torch.manual_seed(seed)
    return SNAC(**config).eval()


def save_tiny_model(directory: Path, config: dict = TINY_24KHZ, seed: int = 0) -> Path:
    """A tiny SNAC in the hub layout (config.json + model.safetensors): --pretrained_model DIR."""
    tiny_snac(config, seed).save_pretrained(directory)
    return directory


def make_signal(seconds: float, rate: int, seed: int) -> np.ndarray:
    """A few harmonics with a slow glide plus a little noise: speech-like enough to learn on."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * rate))) / rate
    f0 = rng.uniform(110, 260) * (1 + 0.2 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    x = sum(0.25 / h * np.sin(h * phase + rng.uniform(0, 2 * np.pi)) for h in range(1, 6))
    x = x * (0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(1, 4) * t)) + 0.01 * rng.standard_normal(len(t))
    return x.astype(np.float32)


def write_cache(cache_dir: Path, model: SNAC, durations: list[float], target_sample_rate: int = 48000,
                seed: int = 0, model_id: str = "tiny", embed_audio: bool = False) -> Path:
    """A real code cache (shards + manifest) of generated signals, encoded by ``model`` exactly as
    the caching script does (each file alone). The target-rate audio is embedded as FLAC, or
    written as WAV files in ``<cache_dir>_audio/`` (the manifest's input root)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    audio_root = cache_dir.parent / f"{cache_dir.name}_audio"
    audio_root.mkdir(exist_ok=True)
    settings = model_settings(model_id, model.config, target_sample_rate, embed_audio, str(audio_root),
                              weights_fingerprint(model))
    writer = ShardWriter(cache_dir, 0, shard_schema(len(model.vq_strides), model.config["codebook_size"],
                                                    embed_audio), shard_rows=10_000)
    for i, seconds in enumerate(durations):
        target = make_signal(seconds, target_sample_rate, seed * 1000 + i)
        at_model_rate = resample(target, target_sample_rate, model.sampling_rate)
        codes = encode_single(model, at_model_rate)
        if not embed_audio:
            sf.write(audio_root / f"utt{i:04d}.wav", target, target_sample_rate, subtype="FLOAT")
        writer.add(LoadedItem(path=f"utt{i:04d}.wav", row_id=f"utt{i:04d}", audio=torch.from_numpy(at_model_rate),
                              duration=seconds, num_samples=len(target), sample_rate=target_sample_rate,
                              channels=1, flac=encode_flac(target, target_sample_rate) if embed_audio else None), codes)
    writer.flush()
    write_manifest(cache_dir, settings)
    return cache_dir


class FakeCache:
    """The CodeCache interface over time-stamped data: code value = token index of its scale,
    audio sample value = its sample index / 2**20 (exact in float32). So a window is aligned iff
    every scale's first code and the audio's first sample name the same instant."""

    def __init__(self, config: dict, coarse_lengths: list[int], target_sample_rate: int,
                 short_audio: int = 0):
        self.vq_strides = list(config["vq_strides"])
        self.hop_length = math.prod(config["encoder_rates"])
        self.model_sample_rate = config["sampling_rate"]
        self.target_sample_rate = target_sample_rate
        self.num_coarse = np.asarray(coarse_lengths, dtype=np.int64)
        per_token = self.vq_strides[0] * self.hop_length * target_sample_rate // self.model_sample_rate
        # real audio ends a little before the codes' end (the encoder padded the input)
        self.num_samples = self.num_coarse * per_token - short_audio

    def __len__(self) -> int:
        return len(self.num_coarse)

    def codes(self, i: int, start: int = 0, length: int | None = None) -> list[np.ndarray]:
        n = int(self.num_coarse[i])
        end = n if length is None else min(n, start + length)
        start = min(start, n)
        return [np.arange(start * (self.vq_strides[0] // s), end * (self.vq_strides[0] // s), dtype=np.int64)
                for s in self.vq_strides]

    def audio(self, i: int, start: int = 0, frames: int | None = None) -> np.ndarray:
        total = int(self.num_samples[i])
        end = total if frames is None else min(total, start + frames)
        return (np.arange(start, max(start, end), dtype=np.float64) / 2**20).astype(np.float32)


def base_args(tmp: Path, model_dir: Path, train: Path, val: Path | None, out: Path, **overrides) -> list[str]:
    """Flags of a tiny CPU run (seconds, not minutes)."""
    values = {"pretrained_model": model_dir, "train_codes": train, "output_dir": out, "device": "cpu",
              "batch_size": 4, "epochs": 3, "warmup_epochs": 1, "segment_length": 0.2,
              "val_segment_length": 0.2, "n_ffts": "128,256", "num_workers": 0, "log_every": 1,
              "checkpoint_every": 0, "checkpoint_minutes": 0, "learning_rate": 1e-3,
              "warmup_learning_rate": 1e-3, "seed": 0}
    if val is not None:
        values["val_codes"] = val
    values.update(overrides)
    args = []
    for k, v in values.items():
        if v is None:
            continue
        if isinstance(v, bool):
            args.append(f"--{k}" if v else f"--no-{k}")
        else:
            args += [f"--{k}", json.dumps(v) if isinstance(v, (list, dict)) else str(v)]
    return args


def run_script(args: list[str], env: dict | None = None, timeout: float = 120,
               module: list[str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    cmd = (module or [sys.executable, str(SCRIPT)]) + args
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout, cwd=REPO)


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]



@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on shared cores: one intra-op thread avoids OpenMP spin contention (20x faster
    here). Imported into each trainer test module, where it applies to every test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def load_trainer():
    """The training script as a module (it lives at the repo root, outside the package)."""
    import importlib.util

    if "finetune_decoder_48khz" in sys.modules:
        return sys.modules["finetune_decoder_48khz"]
    spec = importlib.util.spec_from_file_location("finetune_decoder_48khz", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["finetune_decoder_48khz"] = module
    spec.loader.exec_module(module)
    return module


def config(tmp: Path, model_dir: Path, train: Path, val: Path | None, out: Path, **overrides):
    """A validated TrainConfig of a tiny CPU run (same values as ``base_args``)."""
    from snac.train.config import resolve_config

    return resolve_config(base_args(tmp, model_dir, train, val, out, **overrides))


@pytest.fixture(scope="session")
def pycache_env(tmp_path_factory) -> dict:
    """Subprocess env whose bytecode cache lives under pytest's tmp dir: the environment sets
    PYTHONDONTWRITEBYTECODE, and recompiling torch costs each child process ~5 s."""
    return {"PYTHONDONTWRITEBYTECODE": "", "PYTHONPYCACHEPREFIX": str(tmp_path_factory.mktemp("pycache"))}


def small_run_data(root, val_durations: list[float]) -> dict:
    """A tiny model in hub layout plus an 8-row train cache and a val cache, under ``root``."""
    model = tiny_snac()
    return {"root": root, "model": save_tiny_model(root / "model"),
            "train": write_cache(root / "train", model, [0.5, 0.8, 1.0, 0.3, 1.2, 0.6, 0.9, 0.7], seed=1),
            "val": write_cache(root / "val", model, val_durations, seed=2)}


def train_in_process(data: dict, out: Path, **overrides) -> int:
    """A tiny run of ``small_run_data`` in this process (no TensorBoard examples); its exit status."""
    cfg = config(data["root"], data["model"], data["train"], data["val"], out, val_examples=0, **overrides)
    return load_trainer().train(cfg)
