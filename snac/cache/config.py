"""The caching run's one config object (every flag of cache_codes_multigpu.py) and the device list.

The parser is built from :class:`CacheConfig`'s fields; bad values fail in ``validate`` with one line.
"""

from __future__ import annotations

import dataclasses
import os

from ..compiling import BACKEND_HELP, TF32_HELP, check_backend
from ..presets import DEFAULT_BASE


def _opt(default, help: str):
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass
class CacheConfig:
    """Every option of cache_codes_multigpu.py; the parser is built from these fields."""
    input_dir: str | None = _opt(None, "folder searched recursively for wav/flac/ogg/mp3; paths in the "
                                       "cache are relative to it")
    file_list: str | None = _opt(None, "text file of audio paths, one per line; a relative path is relative "
                                       "to the folder holding the list (prepare_dataset_folder.py writes "
                                       "such lists); with --input_dir too, cache paths are relative to it")
    output_dir: str = _opt("", "cache directory: parquet shards + manifest.json (required)")
    pretrained_model: str = _opt(DEFAULT_BASE, "hub id or local dir of the frozen SNAC model")
    devices: str | None = _opt(None, "'0,1,2,3' or 'cpu'; default: every visible GPU, else cpu")
    workers_per_device: int = _opt(1, "worker processes per device")
    target_sample_rate: int = _opt(48000, "rate of the audio the new decoder produces (row num_samples "
                                          "and embedded audio are at this rate)")
    shard_rows: int = _opt(1000, "rows per parquet shard; a crash loses at most this many (redone on resume)")
    batch_seconds: float = _opt(60.0, "padded audio seconds per encoder batch (items of equal padded length)")
    sort_by_length: bool = _opt(True, "each worker reads its files' headers first and caches them shortest "
                                      "first, so batches of equal padded length fill up (same codes either way)")
    compile: bool = _opt(False, "torch.compile each worker's encoder (graphs counted in the summary; codes equal "
                                "eager's except at float near-ties)")
    compile_backend: str = _opt("inductor", BACKEND_HELP)
    tf32: bool = _opt(False, "the encoder: " + TF32_HELP)
    limit: int | None = _opt(None, "cache only the first N files (sorted by path); a later run without it "
                                   "finishes the rest")
    embed_audio: bool = _opt(False, "store the target-rate mono audio as FLAC bytes in each row")
    overwrite: bool = _opt(False, "delete this cache's files in --output_dir first and start over")
    max_seconds: float = _opt(1800.0, "files longer than this many seconds are rejected with a reason")
    io_threads: int | None = _opt(None, "file-reading threads per worker (default: its share of the CPUs)")
    log_every: float = _opt(30.0, "seconds between plain progress log lines")

    def validate(self) -> None:
        if not self.output_dir:
            raise ValueError("--output_dir is required: the directory that will hold the cache")
        if self.input_dir is None and self.file_list is None:
            raise ValueError("pass --input_dir DIR or --file_list FILE")
        for name in ("workers_per_device", "target_sample_rate", "shard_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        for name in ("batch_seconds", "max_seconds", "log_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name} must be > 0, got {getattr(self, name)}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {self.limit}")
        check_backend(self.compile_backend)
        if self.io_threads is not None and self.io_threads < 1:
            raise ValueError(f"--io_threads must be >= 1, got {self.io_threads}")


def parse_devices(devices: str | None) -> list[str]:
    """'0,1' -> ['cuda:0', 'cuda:1']; 'cpu' -> ['cpu']; None -> every visible GPU, else ['cpu']."""
    import torch

    if devices is None or devices.strip() == "":
        n = torch.cuda.device_count()
        return [f"cuda:{i}" for i in range(n)] if n else ["cpu"]
    out = []
    for d in devices.split(","):
        d = d.strip()
        if d == "cpu":
            out.append("cpu")
        elif d.removeprefix("cuda:").isdigit():
            idx = int(d.removeprefix("cuda:"))
            if idx >= torch.cuda.device_count():
                raise ValueError(f"--devices names GPU {idx} but {torch.cuda.device_count()} are visible; "
                                 "pick from those or pass --devices cpu")
            out.append(f"cuda:{idx}")
        else:
            raise ValueError(f"--devices entry {d!r} is neither a GPU index nor 'cpu' (e.g. --devices 0,1,2,3)")
    return out


def rank_cpus() -> int:
    """CPUs this process may run on, shared with the other ranks on its node (torchrun's
    LOCAL_WORLD_SIZE); at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)))


def worker_cpus(workers: int) -> int:
    """CPUs of one of this process's ``workers``: the CPUs this process may run on, shared with the
    other ranks on the node (torchrun's LOCAL_WORLD_SIZE), at most OMP_NUM_THREADS when it is set
    (torch threads beyond the cores only spin against each other: 3-5x slower measured)."""
    cpus = rank_cpus()
    share = max(1, cpus // max(1, workers))
    omp = os.environ.get("OMP_NUM_THREADS", "")
    return min(share, int(omp)) if omp.isdigit() and int(omp) > 0 else share


def default_io_threads(cpus: int, device: str) -> int:
    """File-reading threads of one worker with ``cpus`` CPUs: all of them beside a GPU, half on
    a CPU worker (the other half encodes), at most 8."""
    return max(1, min(8, cpus if device != "cpu" else cpus // 2))
