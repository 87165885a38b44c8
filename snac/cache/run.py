"""The code cache: SNAC codes of a corpus in parquet shards, and a random-access reader.

Layout of a cache directory::

    manifest.json              model id + config, hop, strides, rates, rows, hours, shards, rejected...
    cache_settings.json        what a resumed run must agree with (model config, target rate, ...)
    shard-wGGGGG-SSSSSS.parquet  one row per file (written to a temporary name, then renamed)
    _meta/rejected-wGGGGG.jsonl  files that could not be cached, with reasons (merged into the manifest)
    index-<digest>/            flat random-access copy of the shards (built once; see build_index)

A shard row holds plain Arrow types: ``id`` string, ``path`` string (relative to the manifest's
``input_root``), ``duration`` double (seconds of the source), ``num_samples`` int64 (samples at the
target rate), ``num_coarse`` int32 (tokens of codebook 0), ``sample_rate`` int32 and ``channels``
int16 of the source, ``codes_<j>`` list<int16> (list<int32> when codebook_size > 32768) for every
codebook j (coarse first; len(codes_j) * vq_strides[j] is equal across j), and with embedded audio
``audio`` binary (FLAC of the target-rate mono audio).

Parquet is the storage and exchange format. Reading it per row is slow (~30 rows/s), so
``build_index`` writes a flat copy: one raw file of all tokens with each row's codebooks
contiguous, plus numpy arrays of per-row starts and lengths, rows ordered by path.
``CodeCache`` memory-maps the small per-row arrays and reads a row's tokens with one
``os.pread``: opening is O(1), nothing is a Python list of rows, forked DataLoader workers share
everything, and random reads do not map gigabytes of page cache into each process.

The caching run itself (``run_caching``) is here too; ``cache_codes_multigpu.py`` only parses flags.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import hashlib
import json
import math
import os
import queue as queue_module
import shutil
import signal
import sys
import threading
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .audio import (AUDIO_EXTENSIONS, AudioError, audio_info, decode_flac, encode_flac, load_audio,
                    read_window, resample, resampled_length)
from .train.checkpoint import write_json_atomic

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SETTINGS_NAME = "cache_settings.json"
META_DIR = "_meta"
SHARD_PREFIX = "shard-w"
SHARD_SUFFIX = ".parquet"
INDEX_PREFIX = "index-"
INDEX_VERSION = 2
LOCK_NAME = ".lock"
PENDING_BATCHES = 16  # a worker holds at most this many batches of loaded audio
# A row up to this size is read whole with one pread and sliced; longer rows per codebook.
_WHOLE_ROW_BYTES = 1 << 16
# A worker writes its buffer as a shard once it holds this much wall time of work, so a crash
# loses at most this much (the rows are redone on resume) even when --shard_rows is large.
SHARD_MAX_SECONDS = 600.0


def codes_column(j: int) -> str:
    return f"codes_{j}"


def code_dtype(codebook_size: int) -> np.dtype:
    """Smallest signed integer type holding every code (int16 for the published 4096)."""
    return np.dtype(np.int16) if codebook_size <= np.iinfo(np.int16).max + 1 else np.dtype(np.int32)


def shard_schema(num_codebooks: int, codebook_size: int, embed_audio: bool,
                 metadata: dict | None = None) -> pa.Schema:
    """Arrow schema of a shard (plain types: pandas, duckdb and HF datasets read it unchanged)."""
    code_type = pa.from_numpy_dtype(code_dtype(codebook_size))
    fields = [pa.field("id", pa.string()), pa.field("path", pa.string()),
              pa.field("duration", pa.float64()), pa.field("num_samples", pa.int64()),
              pa.field("num_coarse", pa.int32()), pa.field("sample_rate", pa.int32()),
              pa.field("channels", pa.int16())]
    fields += [pa.field(codes_column(j), pa.list_(code_type)) for j in range(num_codebooks)]
    if embed_audio:
        fields.append(pa.field("audio", pa.binary()))
    meta = {b"snac_cache": json.dumps(metadata).encode()} if metadata else None
    return pa.schema(fields, metadata=meta)


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


# ================================================================================================
# Input files
# ================================================================================================

def find_audio_files(root: str | os.PathLike) -> list[str]:
    """Audio files under ``root`` (recursively; wav/flac/ogg/mp3, any case), as sorted posix
    paths relative to ``root``. File symlinks count; directory symlinks are not followed."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"input directory {root} does not exist; pass an existing --input_dir")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(root)
        for name in filenames:
            if name.lower().endswith(AUDIO_EXTENSIONS) and not name.startswith("."):
                found.append((rel_dir / name).as_posix())
    return sorted(found)


def read_file_list(list_file: str | os.PathLike,
                   input_root: str | os.PathLike | None = None) -> tuple[str, list[str]]:
    """Read a list of audio paths (one per line; '#' comments and blank lines skipped).

    Relative lines are taken relative to ``input_root`` when given, else to the list file's
    directory. Returns (absolute input root, sorted unique posix paths relative to it); the root
    is ``input_root`` or the common directory of all files.
    """
    list_file = Path(list_file)
    if not list_file.is_file():
        raise FileNotFoundError(f"file list {list_file} does not exist; pass an existing --file_list")
    base = Path(os.path.abspath(input_root if input_root is not None else list_file.parent))
    absolute = []
    for line in list_file.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = Path(line)
        absolute.append(os.path.normpath(p if p.is_absolute() else base / p))
    if not absolute:
        raise ValueError(f"file list {list_file} names no files; put one audio path per line")
    root = str(base) if input_root is not None else os.path.commonpath([os.path.dirname(a) for a in absolute])
    rel = []
    for a in absolute:
        r = os.path.relpath(a, root)
        if r.startswith(".."):
            raise ValueError(f"{a} (from {list_file}) is outside the input root {root}; pass an "
                             "--input_dir that contains every listed file")
        rel.append(Path(r).as_posix())
    return root, sorted(set(rel))


def make_row_ids(rel_paths: list[str]) -> list[str]:
    """Row id = relative path without its extension ('spk1/utt001'); where two files would share
    an id (same stem, different extension) both keep their full relative path."""
    stems = [os.path.splitext(p)[0] for p in rel_paths]
    counts = collections.Counter(stems)
    return [s if counts[s] == 1 else p for s, p in zip(stems, rel_paths)]


def partition(items: list, worker_index: int, num_workers: int) -> list:
    """The worker's disjoint, deterministic share: every num_workers-th item (balanced counts)."""
    if not 0 <= worker_index < num_workers:
        raise ValueError(f"worker index {worker_index} outside [0, {num_workers})")
    return items[worker_index::num_workers]


# ================================================================================================
# One file -> model input; batches of equal padded length -> codes
# ================================================================================================

@dataclasses.dataclass
class LoadedItem:
    path: str             # relative to the input root
    row_id: str
    audio: Any            # torch.Tensor (T,) float32 at the model's rate
    duration: float       # seconds of the source
    num_samples: int      # samples at the target rate
    sample_rate: int      # of the source
    channels: int         # of the source
    flac: bytes | None    # target-rate mono FLAC when embedding audio


def load_item(root: str, rel_path: str, row_id: str, model_sample_rate: int,
              target_sample_rate: int, embed_audio: bool = False,
              max_seconds: float | None = None) -> LoadedItem:
    """Read one file: soundfile -> mono -> resample to the model's rate (and to the target rate
    when embedding). Raises AudioError with a one-line reason for anything unusable."""
    import torch

    path = os.path.join(root, rel_path)
    info = audio_info(path)
    if max_seconds is not None and info.sample_rate > 0 and info.frames / info.sample_rate > max_seconds:
        raise AudioError(f"{info.frames / info.sample_rate:.0f} s is longer than --max_seconds "
                         f"{max_seconds:g}; split the file or raise --max_seconds")
    mono, sr = load_audio(path, mono=True)  # (frames,) float32, raises on empty / NaN
    frames = mono.shape[0]
    flac = None
    if embed_audio:
        flac = encode_flac(resample(mono, sr, target_sample_rate), target_sample_rate)
    audio = resample(torch.from_numpy(mono), sr, model_sample_rate)  # (T,) at the model's rate
    return LoadedItem(path=rel_path, row_id=row_id, audio=audio, duration=frames / sr,
                      num_samples=resampled_length(frames, sr, target_sample_rate),
                      sample_rate=sr, channels=info.channels, flac=flac)


def padded_length(num_samples: int, pad_multiple: int) -> int:
    """Model-rate length after SNAC's right padding (at least one pad multiple)."""
    return max(1, math.ceil(num_samples / pad_multiple)) * pad_multiple


def encode_single(model, audio, device: str = "cpu") -> list[np.ndarray]:
    """Reference: codes of one mono model-rate signal (T,) encoded alone -> list of (T_j,) int64."""
    import torch

    x = torch.as_tensor(audio, dtype=torch.float32).reshape(1, 1, -1).to(device)
    with torch.inference_mode():
        return [c[0].cpu().numpy() for c in model.encode(x)]


class LengthBuckets:
    """Groups items by padded length, so a batch never adds padding beyond what the item gets
    alone (extra zeros would change its last frames through the conv biases).

    ``add`` returns the batches that are ready: a bucket is emitted before it would exceed
    ``batch_samples`` padded samples, and the fullest bucket is emitted early whenever the
    pending audio exceeds ``max_pending_samples`` (bounds memory when lengths are spread).
    """

    def __init__(self, pad_multiple: int, batch_samples: int, max_pending_samples: int):
        self.pad_multiple = pad_multiple
        self.batch_samples = max(batch_samples, pad_multiple)
        self.max_pending_samples = max(max_pending_samples, self.batch_samples)
        self.buckets: dict[int, list[LoadedItem]] = {}
        self.pending = 0

    def add(self, item: LoadedItem) -> list[list[LoadedItem]]:
        length = padded_length(item.audio.shape[-1], self.pad_multiple)
        ready = []
        bucket = self.buckets.setdefault(length, [])
        if bucket and (len(bucket) + 1) * length > self.batch_samples:
            ready.append(self._pop(length))
            bucket = self.buckets.setdefault(length, [])
        bucket.append(item)
        self.pending += length
        while self.pending > self.max_pending_samples:
            fullest = max(self.buckets, key=lambda n: n * len(self.buckets[n]))
            ready.append(self._pop(fullest))
        return ready

    def _pop(self, length: int) -> list[LoadedItem]:
        items = self.buckets.pop(length)
        self.pending -= length * len(items)
        return items

    def flush(self) -> list[list[LoadedItem]]:
        return [self._pop(n) for n in sorted(self.buckets)]


def _is_oom(e: BaseException) -> bool:
    import torch

    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


class BatchEncoder:
    """Encodes batches of equal padded length; on out-of-memory halves the batch and retries,
    and a single item that still does not fit is encoded on the CPU.

    ``encode(items)`` -> list (per item) of lists (per codebook) of int16/int32 numpy arrays.
    """

    def __init__(self, model, device: str, pad_multiple: int, codebook_size: int):
        self.model = model
        self.device = device
        self.pad_multiple = pad_multiple
        self.dtype = code_dtype(codebook_size)
        self.oom_retries = 0
        self._cpu_model = None

    def _stack(self, items: list[LoadedItem]):
        import torch
        import torch.nn.functional as F

        length = padded_length(items[0].audio.shape[-1], self.pad_multiple)
        # (B, 1, length): every item zero-padded exactly as SNAC pads it alone
        return torch.stack([F.pad(it.audio, (0, length - it.audio.shape[-1])) for it in items]).unsqueeze(1)

    def _run(self, model, x, device: str) -> list:
        import torch

        torch_dtype = torch.int16 if self.dtype == np.int16 else torch.int32
        with torch.inference_mode():
            codes = model.encode(x.to(device, non_blocking=True))
            return [c.to(torch_dtype).cpu().numpy() for c in codes]  # per codebook (B, T_j)

    def encode(self, items: list[LoadedItem]) -> list[list[np.ndarray]]:
        import torch

        try:
            codes = self._run(self.model, self._stack(items), self.device)
        except Exception as e:
            if not _is_oom(e):
                raise
            self.oom_retries += 1
            if self.device.startswith("cuda"):
                torch.cuda.empty_cache()
            if len(items) > 1:
                half = len(items) // 2
                return self.encode(items[:half]) + self.encode(items[half:])
            if self.device == "cpu":
                raise
            if self._cpu_model is None:  # a file too long for the GPU even alone
                import copy
                self._cpu_model = copy.deepcopy(self.model).to("cpu")
            codes = self._run(self._cpu_model, self._stack(items), "cpu")
        return [[c[b] for c in codes] for b in range(len(items))]


# ================================================================================================
# Shards
# ================================================================================================

def shard_name(worker_index: int, seq: int) -> str:
    return f"{SHARD_PREFIX}{worker_index:05d}-{seq:06d}{SHARD_SUFFIX}"


def list_shards(cache_dir: str | os.PathLike) -> list[Path]:
    """Complete shards (renamed from their temporary names), sorted by name."""
    cache_dir = Path(cache_dir)
    return sorted(p for p in cache_dir.glob(f"{SHARD_PREFIX}*{SHARD_SUFFIX}") if p.is_file())


def _next_seq(cache_dir: Path, worker_index: int) -> int:
    prefix = f"{SHARD_PREFIX}{worker_index:05d}-"
    seqs = [int(p.name[len(prefix):-len(SHARD_SUFFIX)]) for p in cache_dir.glob(f"{prefix}*{SHARD_SUFFIX}")
            if p.name[len(prefix):-len(SHARD_SUFFIX)].isdigit()]
    return max(seqs, default=-1) + 1


class ShardWriter:
    """Buffers rows of one worker and writes them as shards: temporary name, fsync, rename.

    Rows are written when ``shard_rows`` are buffered or the buffer is ``max_seconds`` old.
    """

    def __init__(self, cache_dir: Path, worker_index: int, schema: pa.Schema, shard_rows: int,
                 max_seconds: float = SHARD_MAX_SECONDS):
        self.cache_dir = Path(cache_dir)
        self.worker_index = worker_index
        self.schema = schema
        self.num_codebooks = sum(1 for n in schema.names if n.startswith("codes_"))
        self.embed = "audio" in schema.names
        self.shard_rows = shard_rows
        self.max_seconds = max_seconds
        self.seq = _next_seq(self.cache_dir, worker_index)
        self.written: list[str] = []
        self._reset()

    def _reset(self) -> None:
        self.rows: list[tuple[LoadedItem, list[np.ndarray]]] = []
        self.started = time.monotonic()

    def add(self, item: LoadedItem, codes: list[np.ndarray]) -> None:
        self.rows.append((item, codes))
        if len(self.rows) >= self.shard_rows or time.monotonic() - self.started > self.max_seconds:
            self.flush()

    def table(self) -> pa.Table:
        items = [it for it, _ in self.rows]
        cols: dict[str, pa.Array] = {
            "id": pa.array([it.row_id for it in items], pa.string()),
            "path": pa.array([it.path for it in items], pa.string()),
            "duration": pa.array([it.duration for it in items], pa.float64()),
            "num_samples": pa.array([it.num_samples for it in items], pa.int64()),
            "num_coarse": pa.array([len(c[0]) for _, c in self.rows], pa.int32()),
            "sample_rate": pa.array([it.sample_rate for it in items], pa.int32()),
            "channels": pa.array([it.channels for it in items], pa.int16()),
        }
        for j in range(self.num_codebooks):
            arrays = [c[j] for _, c in self.rows]
            offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
            np.cumsum([len(a) for a in arrays], out=offsets[1:])
            values = pa.array(np.concatenate(arrays))
            cols[codes_column(j)] = pa.ListArray.from_arrays(pa.array(offsets), values)
        if self.embed:
            cols["audio"] = pa.array([it.flac for it in items], pa.binary())
        return pa.table(cols, schema=self.schema)

    def flush(self) -> str | None:
        if not self.rows:
            return None
        name = shard_name(self.worker_index, self.seq)
        final = self.cache_dir / name
        tmp = self.cache_dir / f"{name}.tmp-{os.getpid()}"
        pq.write_table(self.table(), tmp, compression="zstd")
        with open(tmp, "rb") as f:  # durable before it becomes visible as complete
            os.fsync(f.fileno())
        os.replace(tmp, final)
        self.seq += 1
        self.written.append(name)
        self._reset()
        return name


def read_shard_paths(cache_dir: str | os.PathLike, quarantine: bool = True) -> tuple[set[str], list[str]]:
    """Paths already cached (in complete shards). A shard that cannot be read is renamed
    ``*.corrupt`` (when ``quarantine``) so its files are redone. Returns (paths, unreadable shards)."""
    done: set[str] = set()
    bad = []
    for shard in list_shards(cache_dir):
        try:
            done.update(pq.read_table(shard, columns=["path"])["path"].to_pylist())
        except Exception:
            if quarantine and shard.exists():
                shard.rename(shard.with_name(shard.name + ".corrupt"))
            bad.append(shard.name)
    return done, bad


def _reject_log(cache_dir: Path, worker_index: int) -> Path:
    return cache_dir / META_DIR / f"rejected-w{worker_index:05d}.jsonl"


def read_rejections(cache_dir: str | os.PathLike) -> dict[str, str]:
    """{path: latest reason} over every worker's rejection log."""
    out: dict[str, tuple[str, str]] = {}
    for log in sorted((Path(cache_dir) / META_DIR).glob("rejected-w*.jsonl")):
        for line in log.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if rec["path"] not in out or rec.get("time", "") >= out[rec["path"]][1]:
                out[rec["path"]] = (rec["reason"], rec.get("time", ""))
    return {p: r for p, (r, _) in out.items()}


# ================================================================================================
# Manifest
# ================================================================================================

def model_settings(model_id: str, config: dict, target_sample_rate: int, embed_audio: bool,
                   input_root: str) -> dict:
    """What every run into one cache directory must agree on (model_config is SNAC.config)."""
    from .model import SNAC
    import torch

    with torch.device("meta"):  # only the derived attributes are needed: no weights, no memory
        model = SNAC(**config)
    return {
        "format_version": FORMAT_VERSION,
        "model_id": str(model_id),
        "model_config": model.config,
        "hop_length": model.hop_length,
        "vq_strides": list(model.vq_strides),
        "pad_multiple": model.pad_multiple,
        "num_codebooks": len(model.vq_strides),
        "codebook_size": model.config["codebook_size"],
        "code_dtype": code_dtype(model.config["codebook_size"]).name,
        "model_sample_rate": model.sampling_rate,
        "target_sample_rate": int(target_sample_rate),
        "embed_audio": bool(embed_audio),
        "input_root": str(input_root),
    }


def write_manifest(cache_dir: str | os.PathLike, settings: dict, run: dict | None = None) -> dict:
    """Merge what is on disk (complete shards, every worker's rejection log) into manifest.json.

    It is derived from the shards, not from in-memory counters, so it is right after any mix of
    crashed and resumed runs. ``run`` adds facts of the last run (files listed, workers failed...).
    """
    cache_dir = Path(cache_dir)
    run = dict(run or {})
    shards, rows, seconds, upsampled, paths = [], 0, 0.0, 0, []
    for shard in list_shards(cache_dir):
        t = pq.read_table(shard, columns=["path", "duration", "sample_rate"])
        shards.append({"name": shard.name, "rows": t.num_rows})
        rows += t.num_rows
        seconds += float(pc.sum(t["duration"]).as_py() or 0.0)
        upsampled += int(pc.sum(pc.less(t["sample_rate"], settings["target_sample_rate"])).as_py() or 0)
        paths.extend(t["path"].to_pylist())
    unique = set(paths)
    rejected = [{"path": p, "reason": r} for p, r in sorted(read_rejections(cache_dir).items())
                if p not in unique]
    listed = run.pop("listed_files", None)
    missing = None if listed is None else len(set(listed) - unique - {r["path"] for r in rejected})
    failed = run.get("failed_workers", [])
    manifest = dict(settings)
    manifest.update({
        "rows": rows,
        "hours": seconds / 3600.0,
        "upsampled": upsampled,
        "duplicates": len(paths) - len(unique),
        "missing": missing,
        "complete": (not failed and not run.get("interrupted") and missing in (0, None)
                     and len(paths) == len(unique)),
        "shards": shards,
        "rejected": rejected,
        "created": _now(),
        **run,
    })
    write_json_atomic(cache_dir / MANIFEST_NAME, manifest, durable=True)
    return manifest


def read_manifest(cache_dir: str | os.PathLike) -> dict:
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        raise FileNotFoundError(f"code cache {cache_dir} does not exist; make it with "
                                "cache_codes_multigpu.py --output_dir (or fix the path)")
    path = cache_dir / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{cache_dir} has no {MANIFEST_NAME}: it is not a finished code cache; "
                                "run (or resume) cache_codes_multigpu.py with --output_dir pointing at it")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); rerun cache_codes_multigpu.py to rewrite it") from e
    required = ("format_version", "model_id", "model_config", "hop_length", "vq_strides",
                "model_sample_rate", "target_sample_rate", "input_root", "embed_audio", "rows")
    lacking = [k for k in required if k not in manifest]
    if lacking:
        raise ValueError(f"{path} lacks {', '.join(lacking)}; it was not written by this project's "
                         "cache_codes_multigpu.py: re-make the cache")
    if manifest["format_version"] != FORMAT_VERSION:
        raise ValueError(f"{path} has cache format {manifest['format_version']}, this code reads "
                         f"{FORMAT_VERSION}; re-make the cache with this version")
    return manifest


# ================================================================================================
# Flat random-access index
# ================================================================================================

def _shard_digest(shards: list[Path], manifest: dict) -> str:
    h = hashlib.sha1(f"v{INDEX_VERSION}".encode())
    h.update(json.dumps([manifest["model_config"], manifest["embed_audio"]], sort_keys=True).encode())
    for s in shards:
        st = s.stat()
        h.update(f"{s.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def _write_strings(directory: Path, name: str, strings: pa.Array) -> None:
    """A string column as one utf-8 blob + int64 offsets (rows + 1): no Python objects per row."""
    arr = pc.cast(strings, pa.large_string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset:arr.offset + len(arr) + 1]
    data_buf = arr.buffers()[2]
    data = np.frombuffer(data_buf, dtype=np.uint8)[offsets[0]:offsets[-1]] if data_buf is not None \
        else np.zeros(0, np.uint8)
    np.save(directory / f"{name}_offsets.npy", offsets - offsets[0])
    np.save(directory / f"{name}.npy", data)


def build_index(cache_dir: str | os.PathLike, force: bool = False) -> Path:
    """Write the flat random-access copy of the shards (once per set of shards) and return its dir.

    ``index-<digest>/`` where the digest covers the shard names, sizes and mtimes, so a changed
    cache gets a new index and a stale one is never used. Built in a temporary directory and
    renamed (atomic: concurrent builders are safe; the loser drops its copy). Rows are ordered by
    path, so row i is the same file whatever the worker count of the run that made the cache.

    Files: ``codes.bin`` raw tokens (shard order), each row as [codebook 0 | codebook 1 | ...]
    with num_coarse * r_j tokens of codebook j (r_j = vq_strides[0] / vq_strides[j]);
    ``row_start.npy`` (int64 token offset of each row) and ``num_coarse.npy``; ``num_samples.npy``,
    ``duration.npy``, ``sample_rate.npy``; ``ids``/``paths`` as utf-8 blobs with offsets; with
    embedded audio ``audio.bin`` + ``audio_start.npy``/``audio_size.npy``.
    """
    cache_dir = Path(cache_dir)
    manifest = read_manifest(cache_dir)
    shards = list_shards(cache_dir)
    if not shards:
        raise ValueError(f"code cache {cache_dir} has no shards (0 rows); run cache_codes_multigpu.py "
                         "on a folder with readable audio")
    final = cache_dir / f"{INDEX_PREFIX}{_shard_digest(shards, manifest)}"
    if final.is_dir() and not force:
        return final
    import fcntl

    # several processes opening a new cache at once (DDP ranks): one builds, the others wait
    with open(cache_dir / ".index-build.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
        except OSError:
            pass  # a filesystem without locks: concurrent builders still end atomically (rename)
        if final.is_dir() and not force:
            return final
        return _build_index_locked(cache_dir, manifest, shards, final)


def _build_index_locked(cache_dir: Path, manifest: dict, shards: list[Path], final: Path) -> Path:
    strides = manifest["vq_strides"]
    ratios = [strides[0] // s for s in strides]
    dtype = np.dtype(manifest.get("code_dtype", "int16"))
    embed = bool(manifest["embed_audio"])
    tmp = cache_dir / f".{INDEX_PREFIX}tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        # ---- pass 1: per-row metadata of every shard; the path order ----
        meta_cols = ["id", "path", "duration", "num_samples", "num_coarse", "sample_rate"]
        meta = pa.concat_tables([pq.read_table(s, columns=meta_cols) for s in shards]).combine_chunks()
        n = meta.num_rows
        order = pc.sort_indices(meta["path"]).to_numpy()  # new row -> old (shard-order) row
        sorted_paths = meta["path"].take(order)
        if n > 1:
            same = pc.equal(sorted_paths.slice(1), sorted_paths.slice(0, n - 1)).combine_chunks()
            if pc.any(same).as_py():
                dup = sorted_paths[int(np.flatnonzero(same.to_numpy(zero_copy_only=False))[0])].as_py()
                raise ValueError(f"{cache_dir}: {dup} is cached more than once; delete the later shard "
                                 "holding it (or re-make the cache with --overwrite)")
        num_coarse_old = meta["num_coarse"].to_numpy().astype(np.int64)
        tokens_per_coarse = sum(ratios)  # a row holds num_coarse * sum(r_j) tokens
        row_start_old = np.zeros(n, dtype=np.int64)
        np.cumsum(num_coarse_old[:-1] * tokens_per_coarse, out=row_start_old[1:])
        np.save(tmp / "row_start.npy", row_start_old[order])
        np.save(tmp / "num_coarse.npy", num_coarse_old[order])
        np.save(tmp / "num_samples.npy", meta["num_samples"].to_numpy().astype(np.int64)[order])
        np.save(tmp / "duration.npy", meta["duration"].to_numpy().astype(np.float64)[order])
        np.save(tmp / "sample_rate.npy", meta["sample_rate"].to_numpy().astype(np.int32)[order])
        _write_strings(tmp, "paths", sorted_paths)
        _write_strings(tmp, "ids", meta["id"].take(order))
        del meta, sorted_paths

        # ---- pass 2: tokens (and audio) appended shard by shard, in shard order ----
        code_files = [open(tmp / "codes.bin", "wb")]
        audio_file = open(tmp / "audio.bin", "wb") if embed else None
        audio_start_old = np.zeros(n, dtype=np.int64) if embed else None
        audio_size_old = np.zeros(n, dtype=np.int64) if embed else None
        row, audio_pos = 0, 0
        try:
            for shard in shards:
                cols = [codes_column(j) for j in range(len(strides))] + (["audio"] if embed else [])
                t = pq.read_table(shard, columns=cols).combine_chunks()
                rows = t.num_rows
                coarse = num_coarse_old[row:row + rows]
                local_start = row_start_old[row:row + rows] - row_start_old[row]
                block = np.empty(int(coarse.sum()) * tokens_per_coarse, dtype=dtype)
                before = 0  # tokens of the earlier codebooks in each row, per coarse token
                for j, r in enumerate(ratios):
                    arr = t[codes_column(j)].chunk(0)  # one chunk after combine_chunks
                    offs = arr.offsets.to_numpy().astype(np.int64)
                    lengths = np.diff(offs)
                    if not np.array_equal(lengths, coarse * r):
                        raise ValueError(f"{shard.name}: codes_{j} lengths are not num_coarse x {r}; "
                                         "the shard is damaged: delete it and resume the caching")
                    values = arr.values.to_numpy(zero_copy_only=False)[offs[0]:offs[-1]]
                    # scatter row k's list to block[local_start[k] + coarse[k]*before :][:lengths[k]]
                    dest = local_start + coarse * before - (offs[:-1] - offs[0])
                    block[np.repeat(dest, lengths) + np.arange(len(values))] = values
                    before += r
                code_files[0].write(block.tobytes())
                if embed:
                    blobs = t["audio"].chunk(0)
                    offs = np.frombuffer(blobs.buffers()[1], dtype=np.int32)[
                        blobs.offset:blobs.offset + len(blobs) + 1].astype(np.int64)
                    data = np.frombuffer(blobs.buffers()[2], dtype=np.uint8)[offs[0]:offs[-1]]
                    audio_file.write(data.tobytes())
                    audio_start_old[row:row + rows] = audio_pos + offs[:-1] - offs[0]
                    audio_size_old[row:row + rows] = np.diff(offs)
                    audio_pos += int(offs[-1] - offs[0])
                row += rows
        finally:
            for f in code_files + ([audio_file] if audio_file else []):
                f.flush()
                os.fsync(f.fileno())
                f.close()
        if embed:
            np.save(tmp / "audio_start.npy", audio_start_old[order])
            np.save(tmp / "audio_size.npy", audio_size_old[order])
        write_json_atomic(tmp / "index.json", {
            "index_version": INDEX_VERSION, "rows": n, "code_dtype": dtype.name,
            "vq_strides": strides, "embed_audio": embed, "shards": [s.name for s in shards],
            "created": _now()}, durable=True)
        if final.is_dir():  # --force: replace the old copy
            shutil.rmtree(final)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # anything but "another builder finished first"
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in cache_dir.glob(f"{INDEX_PREFIX}*"):  # stale copies (open mmaps stay valid on POSIX)
        if old != final and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return final


# ================================================================================================
# Reader
# ================================================================================================

def _canonical_model_config(config: dict) -> dict:
    """SNAC.config with defaults filled (a SNAC48 config contributes its base)."""
    if "base" in config:
        config = config["base"]
    out = dict(config)
    if out.get("latent_dim") is None and "encoder_dim" in out and "encoder_rates" in out:
        out["latent_dim"] = out["encoder_dim"] * 2 ** len(out["encoder_rates"])
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def compare_model_configs(cache_config: dict, expected: dict) -> list[str]:
    """Differences 'key: cache value vs expected value' between two SNAC configs (empty if equal)."""
    a, b = _canonical_model_config(cache_config), _canonical_model_config(expected)
    return [f"{k}: {a.get(k)!r} (cache) vs {b.get(k)!r} (expected)"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


class CodeCache:
    """Random access to a code cache's rows (codes of every codebook and the target audio).

    Opening memory-maps the flat index (built here if missing or stale, atomically), so it is
    O(1) in time and memory; per-row metadata are numpy arrays, never Python lists of rows, and
    forked DataLoader workers share the mapped pages. Row i is ordered by source path.

    ``expected_model_config`` (a SNAC or SNAC48 config dict) makes the reader refuse codes made
    by a different model. ``audio_root`` overrides the manifest's ``input_root`` (a cache moved to
    another machine without embedded audio).
    """

    def __init__(self, cache_dir: str | os.PathLike, expected_model_config: dict | None = None, *,
                 audio_root: str | os.PathLike | None = None):
        self.cache_dir = Path(cache_dir)
        self.manifest = read_manifest(self.cache_dir)
        m = self.manifest
        if expected_model_config is not None:
            diffs = compare_model_configs(m["model_config"], expected_model_config)
            if diffs:
                raise ValueError(
                    f"code cache {self.cache_dir} was made by model {m['model_id']} with a different "
                    f"config ({'; '.join(diffs)}); cache config {json.dumps(m['model_config'], sort_keys=True)} "
                    f"vs expected {json.dumps(_canonical_model_config(expected_model_config), sort_keys=True)}. "
                    f"Fix: train with the model that made the cache ({m['model_id']}) or re-make the cache "
                    f"with cache_codes_multigpu.py --pretrained_model <your model>")
        if not m.get("rows") and not list_shards(self.cache_dir):
            raise ValueError(f"code cache {self.cache_dir} holds 0 rows ({len(m.get('rejected', []))} files "
                             "rejected); check the input audio and re-run cache_codes_multigpu.py")
        if m.get("complete") is False:
            import warnings
            warnings.warn(f"code cache {self.cache_dir} is incomplete ({m.get('missing')} listed files neither "
                          f"cached nor rejected, failed workers {m.get('failed_workers')}); rerun the same "
                          "cache_codes_multigpu.py command to finish it", stacklevel=2)
        self.vq_strides: list[int] = list(m["vq_strides"])
        self.num_codebooks: int = len(self.vq_strides)
        self.hop_length: int = int(m["hop_length"])
        self.model_sample_rate: int = int(m["model_sample_rate"])
        self.target_sample_rate: int = int(m["target_sample_rate"])
        self.codebook_size: int = int(m["model_config"]["codebook_size"])
        self.embed_audio: bool = bool(m["embed_audio"])
        self.input_root = Path(audio_root if audio_root is not None else m["input_root"])
        self._ratios = [self.vq_strides[0] // s for s in self.vq_strides]
        self._before = [sum(self._ratios[:j]) for j in range(self.num_codebooks)]
        self._tokens_per_coarse = sum(self._ratios)
        self._audio_root_override = audio_root
        self.index_dir = self._open_index()

    # file descriptors do not pickle: a reader sent to a spawned worker reopens the cache there
    def __getstate__(self) -> dict:
        return {"cache_dir": self.cache_dir, "audio_root": self._audio_root_override}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["cache_dir"], audio_root=state["audio_root"])

    def close(self) -> None:
        for name in ("_codes_fd", "_audio_fd"):
            fd = self.__dict__.pop(name, None)
            if fd is not None:
                os.close(fd)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # ---- index ----
    def _open_index(self) -> Path:
        shards = list_shards(self.cache_dir)
        if not shards:
            raise ValueError(f"code cache {self.cache_dir} has no shards (0 rows); re-run "
                             "cache_codes_multigpu.py on readable audio")
        directory = self.cache_dir / f"{INDEX_PREFIX}{_shard_digest(shards, self.manifest)}"
        if not directory.is_dir():
            if not os.access(self.cache_dir, os.W_OK):
                raise PermissionError(f"{self.cache_dir} has no up-to-date index and is read-only; "
                                      f"build one where it is writable: python -m snac.cache {self.cache_dir}")
            directory = build_index(self.cache_dir)
        info = json.loads((directory / "index.json").read_text())
        dtype = np.dtype(info["code_dtype"])

        def load(name: str) -> np.ndarray:  # plain ndarray view of a read-only mapping
            return np.asarray(np.load(directory / name, mmap_mode="r"))

        self.num_coarse: np.ndarray = load("num_coarse.npy")      # (rows,) int64
        self.num_samples: np.ndarray = load("num_samples.npy")    # (rows,) int64, target rate
        self.durations: np.ndarray = load("duration.npy")         # (rows,) float64 seconds
        self.sample_rates: np.ndarray = load("sample_rate.npy")   # (rows,) int32, of the source
        self._row_start = load("row_start.npy")                 # (rows,) int64 token offset
        self._dtype = dtype
        self._codes_fd = os.open(directory / "codes.bin", os.O_RDONLY)
        self._path_data, self._path_offsets = load("paths.npy"), load("paths_offsets.npy")
        self._id_data, self._id_offsets = load("ids.npy"), load("ids_offsets.npy")
        if self.embed_audio:
            self._audio_fd = os.open(directory / "audio.bin", os.O_RDONLY)
            self._audio_start, self._audio_size = load("audio_start.npy"), load("audio_size.npy")
        self._rows = int(info["rows"])
        if self._rows == 0:
            raise ValueError(f"code cache {self.cache_dir} holds 0 rows; re-run cache_codes_multigpu.py")
        return directory

    # ---- per-row access ----
    def __len__(self) -> int:
        return self._rows

    def _check(self, i: int) -> int:
        if not 0 <= i < self._rows:
            raise IndexError(f"row {i} out of range [0, {self._rows})")
        return int(i)

    def codes(self, i: int, start: int = 0, length: int | None = None) -> list[np.ndarray]:
        """Codes of row i from coarse token ``start`` for ``length`` coarse tokens (None: to the end).

        Codebook j gets tokens [start * s0/sj, (start + length) * s0/sj); the window is clipped at
        the row end (the caller pads). Returns one (n_j,) int64 array per codebook, coarse first.
        """
        i = self._check(i)
        n = int(self.num_coarse[i])
        s = min(max(int(start), 0), n)
        e = n if length is None else min(n, s + max(int(length), 0))
        size = self._dtype.itemsize
        base = int(self._row_start[i]) * size  # byte offset of the row in codes.bin
        if n * self._tokens_per_coarse * size <= _WHOLE_ROW_BYTES:
            # one read of the whole row (its codebooks are contiguous), then slice: (n*sum r_j,)
            row = np.frombuffer(os.pread(self._codes_fd, n * self._tokens_per_coarse * size, base), self._dtype)
            return [row[n * b + s * r:n * b + e * r].astype(np.int64)
                    for b, r in zip(self._before, self._ratios)]
        return [np.frombuffer(os.pread(self._codes_fd, (e - s) * r * size, base + (n * b + s * r) * size),
                              self._dtype).astype(np.int64) for b, r in zip(self._before, self._ratios)]

    def audio(self, i: int, start: int = 0, frames: int | None = None) -> np.ndarray:
        """Target-rate mono float32 samples [start, start + frames) of row i (shorter at the end).

        Decodes only that window: from the embedded FLAC when the cache has it, else from the
        source file (path relative to the input root), resampled to the target rate.
        """
        i = self._check(i)
        total = int(self.num_samples[i])
        start = max(int(start), 0)
        end = total if frames is None else min(total, start + max(int(frames), 0))
        if end <= start:
            return np.zeros(0, dtype=np.float32)
        if self.embed_audio:
            data = os.pread(self._audio_fd, int(self._audio_size[i]), int(self._audio_start[i]))
            x, sr = decode_flac(data, start, end - start)
        else:
            source = self.input_root / self.path(i)
            if not source.exists():
                raise FileNotFoundError(
                    f"source audio {source} of cache row {i} is missing; pass audio_root= the folder "
                    f"that now holds the input (was {self.manifest['input_root']}), or re-make the "
                    "cache with --embed_audio so it carries its audio")
            x = read_window(source, start, end - start, self.target_sample_rate)
        return x[: end - start]

    def _string(self, data: np.ndarray, offsets: np.ndarray, i: int) -> str:
        return data[int(offsets[i]):int(offsets[i + 1])].tobytes().decode("utf-8")

    def row_id(self, i: int) -> str:
        return self._string(self._id_data, self._id_offsets, self._check(i))

    def path(self, i: int) -> str:
        """Source path of row i relative to the input root."""
        return self._string(self._path_data, self._path_offsets, self._check(i))

    def duration(self, i: int) -> float:
        """Seconds of source audio in row i."""
        return float(self.durations[self._check(i)])

    @property
    def samples_per_coarse_token(self) -> float:
        """Target-rate samples covered by one coarse token: s0 * hop * R_target / R_model."""
        return self.vq_strides[0] * self.hop_length * self.target_sample_rate / self.model_sample_rate

    def __repr__(self) -> str:
        return (f"CodeCache({str(self.cache_dir)!r}, rows={len(self)}, model={self.manifest['model_id']}, "
                f"strides={self.vq_strides}, {self.model_sample_rate}->{self.target_sample_rate} Hz)")


# ================================================================================================
# The caching run: one worker process per device slot
# ================================================================================================

def _opt(default, help: str):
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass
class CacheConfig:
    """Every option of cache_codes_multigpu.py; the parser is built from these fields."""
    input_dir: str | None = _opt(None, "folder searched recursively for wav/flac/ogg/mp3; paths in the "
                                       "cache are relative to it")
    file_list: str | None = _opt(None, "text file of audio paths, one per line (relative ones are taken "
                                       "relative to --input_dir if given, else to the list's folder)")
    output_dir: str = _opt("", "cache directory: parquet shards + manifest.json (required)")
    pretrained_model: str = _opt("hubertsiuzdak/snac_24khz", "hub id or local dir of the frozen SNAC model")
    devices: str | None = _opt(None, "'0,1,2,3' or 'cpu'; default: every visible GPU, else cpu")
    workers_per_device: int = _opt(1, "worker processes per device")
    target_sample_rate: int = _opt(48000, "rate of the audio the new decoder produces (row num_samples "
                                          "and embedded audio are at this rate)")
    shard_rows: int = _opt(1000, "rows per parquet shard; a crash loses at most this many (redone on resume)")
    batch_seconds: float = _opt(60.0, "padded audio seconds per encoder batch (items of equal padded length)")
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
        if self.io_threads is not None and self.io_threads < 1:
            raise ValueError(f"--io_threads must be >= 1, got {self.io_threads}")


@dataclasses.dataclass
class WorkerSpec:
    worker_index: int
    num_workers: int
    device: str
    items: list                  # [(relative path, row id)] this worker caches
    input_root: str
    output_dir: str
    pretrained_model: str
    settings: dict
    shard_rows: int
    batch_seconds: float
    max_seconds: float
    torch_threads: int
    io_threads: int
    crash_after_shards: int | None = None  # test hook: hard exit after writing this many shards


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


def _exit_with_launcher(lifeline) -> None:
    """Exit at once when the launcher dies, so no orphan keeps writing shards while a rerun
    resumes (its buffered rows are simply redone). ``lifeline`` is the read end of a pipe whose
    only write end the launcher holds: it reads EOF when the launcher is gone, however it died.
    (PR_SET_PDEATHSIG would not do: a forkserver child's parent is the forkserver, which the
    worker itself keeps alive.)"""
    def watch() -> None:
        try:
            lifeline.recv()
        except (EOFError, OSError):
            pass
        os._exit(70)

    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()


def run_worker(spec: WorkerSpec, events=None, model=None) -> dict:
    """Cache ``spec.items``: threads read and resample files ahead while this thread encodes
    batches of equal padded length and writes shards. Sends ('progress', ...) and finally
    ('done', index, stats) on ``events`` (a queue) when given. ``model`` (already on the device)
    skips loading, for benchmarks in one process. Returns the stats."""
    import torch

    from .model import SNAC

    stop = threading.Event()
    if threading.current_thread() is threading.main_thread() and events is not None:
        signal.signal(signal.SIGTERM, lambda *_: stop.set())  # graceful: write the buffer, exit
        signal.signal(signal.SIGINT, signal.SIG_IGN)          # the launcher handles Ctrl-C
    torch.set_num_threads(spec.torch_threads)
    s = spec.settings
    if model is None:
        model = SNAC.from_pretrained(spec.pretrained_model)
        if model.config != s["model_config"]:
            raise RuntimeError(f"{spec.pretrained_model} changed while caching (config differs from "
                               f"{SETTINGS_NAME}); rerun with --overwrite")
        model = model.eval().to(spec.device)
    out = Path(spec.output_dir)
    schema = shard_schema(s["num_codebooks"], s["codebook_size"], s["embed_audio"],
                          {"model_id": s["model_id"], "model_config": s["model_config"],
                           "target_sample_rate": s["target_sample_rate"], "format_version": FORMAT_VERSION})
    writer = ShardWriter(out, spec.worker_index, schema, spec.shard_rows)
    encoder = BatchEncoder(model, spec.device, s["pad_multiple"], s["codebook_size"])
    batch_samples = int(spec.batch_seconds * s["model_sample_rate"])
    # Speech spans ~100 padded lengths; holding up to 16 batches of audio (~90 MB at 60 s, 24 kHz)
    # lets buckets fill before the fullest is sent early.
    buckets = LengthBuckets(s["pad_multiple"], batch_samples, PENDING_BATCHES * batch_samples)
    reject_path = _reject_log(out, spec.worker_index)
    reject_path.parent.mkdir(parents=True, exist_ok=True)
    stats = collections.Counter()
    pending = collections.Counter()  # progress not yet sent
    last_sent = time.monotonic()
    started = time.monotonic()

    def send(force: bool = False) -> None:
        nonlocal last_sent
        if events is not None and pending and (force or time.monotonic() - last_sent > 0.5):
            events.put(("progress", spec.worker_index, dict(pending)))
            pending.clear()
            last_sent = time.monotonic()

    def reject(path: str, reason: str) -> None:
        with open(reject_path, "a") as f:
            f.write(json.dumps({"path": path, "reason": reason, "time": _now()}) + "\n")
        stats["rejected"] += 1
        pending["rejected"] += 1
        pending["files"] += 1

    def emit(batch: list[LoadedItem]) -> None:
        t0 = time.monotonic()
        try:
            codes = encoder.encode(batch)
        except Exception as e:
            if len(batch) > 1:  # find the item that fails; the others are still cached
                for it in batch:
                    emit([it])
                return
            reject(batch[0].path, f"encoding failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
            return
        stats["encode_seconds"] += time.monotonic() - t0
        for it, c in zip(batch, codes):
            before = len(writer.written)
            writer.add(it, c)
            stats["rows"] += 1
            stats["audio_seconds"] += it.duration
            stats["upsampled"] += it.sample_rate < s["target_sample_rate"]
            pending["files"] += 1
            pending["seconds"] += it.duration
            if spec.crash_after_shards is not None and len(writer.written) > before \
                    and len(writer.written) >= spec.crash_after_shards:
                os._exit(3)  # test hook: die hard like a killed process (no flush, no message)
        send()

    def load(item: tuple[str, str]):
        try:
            return load_item(spec.input_root, item[0], item[1], s["model_sample_rate"],
                             s["target_sample_rate"], s["embed_audio"], spec.max_seconds)
        except (AudioError, FileNotFoundError, MemoryError) as e:
            return (item[0], str(e).replace(os.path.join(spec.input_root, item[0]) + ": ", ""))
        except Exception as e:  # anything else a decoder library throws: still one file's problem
            return (item[0], f"cannot load ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")

    ahead = max(4, 4 * spec.io_threads)
    with ThreadPoolExecutor(spec.io_threads, thread_name_prefix="load") as pool:
        inflight: collections.deque = collections.deque()
        it = iter(spec.items)
        while True:
            while len(inflight) < ahead and not stop.is_set():
                nxt = next(it, None)
                if nxt is None:
                    break
                inflight.append(pool.submit(load, nxt))
            if not inflight:
                break
            res = inflight.popleft().result()
            if isinstance(res, tuple):
                reject(*res)
                send()
            else:
                for batch in buckets.add(res):
                    emit(batch)
        for f in inflight:
            f.cancel()
    for batch in buckets.flush():  # also on a graceful stop: the loaded items are cached
        emit(batch)
    writer.flush()
    send(force=True)
    stats["elapsed"] = time.monotonic() - started
    stats["oom_retries"] = encoder.oom_retries
    stats["shards"] = len(writer.written)
    stats["stopped"] = int(stop.is_set())
    result = dict(stats)
    if events is not None:
        events.put(("done", spec.worker_index, result))
    return result


def worker_context():
    """Start method for the workers: never plain fork (a forked CUDA/OpenMP state breaks).

    On Linux a forkserver that has imported torch and this module once: it never touches CUDA,
    so it is as safe as spawn, and every worker then starts in milliseconds instead of paying
    the torch import again. Elsewhere spawn.
    """
    import multiprocessing as mp

    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["snac.cache", "snac.model"])
        return ctx
    return mp.get_context("spawn")


def _worker_entry(spec: WorkerSpec, events, lifeline) -> None:
    _exit_with_launcher(lifeline)
    try:
        run_worker(spec, events)
    except BaseException as e:
        events.put(("error", spec.worker_index, f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
        raise SystemExit(1)


class _Progress:
    """tqdm over audio hours on a terminal, plus plain log lines every ``log_every`` seconds."""

    def __init__(self, total_files: int, log_every: float, prefix: str = "[cache]"):
        self.total_files = total_files
        self.log_every = log_every
        self.prefix = prefix
        self.files = self.seconds = self.rejected = 0
        self.start = time.monotonic()
        self.last_log = self.start
        self.bar = None
        if sys.stdout.isatty() and total_files:
            from tqdm import tqdm
            self.bar = tqdm(total=0.0, unit="h", desc="audio cached", dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n:.2f}/{total:.2f} h [{elapsed}<{remaining}]{postfix}")

    def update(self, delta: dict) -> None:
        self.files += delta.get("files", 0)
        self.seconds += delta.get("seconds", 0.0)
        self.rejected += delta.get("rejected", 0)
        if self.bar is not None:
            # total hours are unknown until every header is read: extrapolate from files done
            done_cached = max(self.files - self.rejected, 1)
            self.bar.total = self.seconds / 3600 / done_cached * max(self.total_files - self.rejected, 1)
            self.bar.n = self.seconds / 3600
            self.bar.set_postfix_str(f"{self.files}/{self.total_files} files, {self.rejected} rejected", refresh=False)
            self.bar.refresh()
        if time.monotonic() - self.last_log >= self.log_every:
            self.log()

    def line(self) -> str:
        el = time.monotonic() - self.start
        rate = self.seconds / el if el > 0 else 0.0
        frac = self.files / self.total_files if self.total_files else 1.0
        eta = el / frac - el if frac > 0 else float("nan")
        fmt = lambda s: str(datetime.timedelta(seconds=int(s))) if math.isfinite(s) else "?"
        return (f"{self.prefix} {self.files:,}/{self.total_files:,} files ({100 * frac:.1f}%) | "
                f"{self.seconds / 3600:.3f} h of audio | {rate:.1f} audio-s/s | rejected {self.rejected} | "
                f"elapsed {fmt(el)} | ETA {fmt(eta)}")

    def log(self) -> None:
        self.last_log = time.monotonic()
        msg = f"{_now()} {self.line()}"
        if self.bar is not None:
            self.bar.write(msg)
        else:
            print(msg, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _remove_cache_files(out: Path) -> int:
    """--overwrite: delete only what a caching run writes (never other files in the directory)."""
    n = 0
    for p in list(out.glob(f"{SHARD_PREFIX}*")) + [out / MANIFEST_NAME, out / SETTINGS_NAME]:
        if p.is_file():
            p.unlink()
            n += 1
    for d in [out / META_DIR] + list(out.glob(f"{INDEX_PREFIX}*")) + list(out.glob(f".{INDEX_PREFIX}tmp-*")):
        if d.is_dir():
            shutil.rmtree(d)
            n += 1
    return n


def _acquire_lock(out: Path, name: str):
    import fcntl

    f = open(out / name, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        raise RuntimeError(f"another caching run (pid {f.read().strip() or '?'}) is writing to {out}; "
                           "wait for it to finish or stop it first") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


def _dist_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) without it."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def run_caching(cfg: CacheConfig, crash_after_shards: int | None = None) -> int:
    """Cache every input file's codes into ``cfg.output_dir``; returns the exit status (0 = all
    workers finished). Under torchrun (WORLD_SIZE > 1) each rank runs its slots on GPU LOCAL_RANK
    and rank 0 writes the manifest after every rank has finished."""
    from .hub import resolve_pretrained

    cfg.validate()
    t_start = time.monotonic()
    rank, world, local_rank = _dist_env()
    distributed = world > 1
    if distributed:
        import torch.distributed as dist
        dist.init_process_group("gloo", timeout=datetime.timedelta(days=7))
    say = (lambda msg: print(f"{_now()} [cache] {msg}", flush=True)) if rank == 0 else \
        (lambda msg: print(f"{_now()} [cache rank {rank}] {msg}", flush=True))

    # ---- inputs ----
    if cfg.file_list is not None:
        input_root, files = read_file_list(cfg.file_list, cfg.input_dir)
    else:
        input_root, files = os.path.abspath(cfg.input_dir), find_audio_files(cfg.input_dir)
    if not files:
        raise ValueError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) under {input_root}; check --input_dir")
    ids = make_row_ids(files)  # from the full list, so ids do not depend on --limit
    items = list(zip(files, ids))
    if cfg.limit is not None:
        items = items[: cfg.limit]

    # ---- output directory and settings a resumed run must share ----
    out = Path(cfg.output_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    lock = _acquire_lock(out, LOCK_NAME if rank == 0 else f"{LOCK_NAME}-rank{rank}")
    model_config, _ = resolve_pretrained(cfg.pretrained_model)
    model_id = os.path.abspath(cfg.pretrained_model) if os.path.isdir(cfg.pretrained_model) else cfg.pretrained_model
    settings = model_settings(model_id, model_config, cfg.target_sample_rate, cfg.embed_audio, input_root)
    if rank == 0:
        if cfg.overwrite:
            n = _remove_cache_files(out)
            if n:
                say(f"--overwrite: removed {n} files/dirs of the previous cache in {out}")
        settings_path = out / SETTINGS_NAME
        if settings_path.is_file():
            old = json.loads(settings_path.read_text())
            keys = ("model_config", "target_sample_rate", "embed_audio", "input_root", "format_version")
            diff = [k for k in keys if old.get(k) != settings.get(k)]
            if diff:
                raise ValueError(f"{out} holds a cache made with different {', '.join(diff)} "
                                 f"({', '.join(f'{k}={old.get(k)!r}' for k in diff)}); pass --overwrite "
                                 "to start over or choose another --output_dir")
        write_json_atomic(settings_path, settings, durable=True)
        for tmp in out.glob(f"{SHARD_PREFIX}*{SHARD_SUFFIX}.tmp-*"):  # left by a killed run
            tmp.unlink()
        # ---- resume: skip files already in complete shards ----
        done, corrupt = read_shard_paths(out, quarantine=True)
        if corrupt:
            say(f"unreadable shards renamed *.corrupt, their files are redone: {', '.join(corrupt)}")
    if distributed:
        dist.barrier()
        if rank != 0:  # after rank 0 set damaged shards aside; no rank has started writing yet
            done, _ = read_shard_paths(out, quarantine=False)
    devices = parse_devices(cfg.devices)
    if distributed:
        devices = ["cpu"] if devices == ["cpu"] else \
            ([devices[local_rank % len(devices)]] if cfg.devices else [f"cuda:{local_rank}"])
    slots = [d for d in devices for _ in range(cfg.workers_per_device)]
    num_workers = world * len(slots)
    cpus = os.cpu_count() or 1
    local_cpus = max(1, cpus // len(slots))
    specs = []
    for k, device in enumerate(slots):
        g = rank * len(slots) + k
        mine = [it for it in partition(items, g, num_workers) if it[0] not in done]
        specs.append(WorkerSpec(
            worker_index=g, num_workers=num_workers, device=device, items=mine, input_root=input_root,
            output_dir=str(out), pretrained_model=cfg.pretrained_model, settings=settings,
            shard_rows=cfg.shard_rows, batch_seconds=cfg.batch_seconds, max_seconds=cfg.max_seconds,
            torch_threads=local_cpus,
            io_threads=cfg.io_threads or max(1, min(8, local_cpus if device != "cpu" else local_cpus // 2)),
            crash_after_shards=crash_after_shards if g == 0 else None))
    todo = sum(len(s.items) for s in specs)
    mine_total = sum(len(partition(items, s.worker_index, num_workers)) for s in specs)
    say(f"{len(files):,} audio files under {input_root}" + (f" (--limit {cfg.limit})" if cfg.limit else "")
        + f"; {mine_total - todo:,} already cached, {todo:,} to do on {len(slots)} worker(s) "
        f"[{', '.join(slots)}]" + (f" of {num_workers} in all (rank {rank}/{world})" if distributed else ""))
    say(f"model {model_id}: {settings['model_sample_rate']} Hz, hop {settings['hop_length']}, strides "
        f"{settings['vq_strides']}; target {cfg.target_sample_rate} Hz; output {out}")

    # ---- run the workers and follow their progress ----
    ctx = worker_context()
    events = ctx.Queue()
    procs = {}
    lifelines = []  # write ends; closing them (or dying) tells the workers to exit
    for spec in specs:
        if spec.items:
            r, w = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_worker_entry, args=(spec, events, r), name=f"cache-worker-{spec.worker_index}")
            p.start()
            r.close()
            lifelines.append(w)
            procs[spec.worker_index] = p
    progress = _Progress(todo, cfg.log_every, "[cache]" if not distributed else f"[cache rank {rank}]")
    results: dict[int, dict] = {}
    errors: dict[int, str] = {}
    interrupted = False

    def on_signal(signum, frame):
        nonlocal interrupted
        interrupted = True
        for p in procs.values():  # ask our own workers to write their buffers and stop
            if p.is_alive():
                os.kill(p.pid, signal.SIGTERM)

    old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    def dispatch(kind: str, g: int, payload) -> None:
        if kind == "progress":
            progress.update(payload)
        elif kind == "done":
            results[g] = payload
        elif kind == "error":
            errors[g] = payload

    try:
        while True:
            try:
                dispatch(*events.get(timeout=1.0))
            except queue_module.Empty:
                if all(not p.is_alive() for p in procs.values()):
                    break
                if time.monotonic() - progress.last_log >= cfg.log_every:
                    progress.log()
        while True:  # drain messages sent just before the last exit
            try:
                dispatch(*events.get(timeout=0.2))
            except queue_module.Empty:
                break
        for p in procs.values():
            p.join()
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
        progress.close()
        for w in lifelines:
            w.close()
    failed = sorted(g for g, p in procs.items() if p.exitcode != 0 or g not in results)
    device_of = {s.worker_index: s.device for s in specs}
    for g in failed:
        why = errors.get(g, f"exit code {procs[g].exitcode} (killed or crashed without a message)")
        say(f"worker {g} on {device_of[g]} died: {why.strip().splitlines()[0]}")
        if g in errors:
            print(errors[g], file=sys.stderr, flush=True)

    # ---- merge: every rank done, then rank 0 writes the manifest and the flat index ----
    if distributed:
        gathered: list = [None] * world
        dist.all_gather_object(gathered, {"failed": failed, "results": results})
        failed = sorted(g for r in gathered for g in r["failed"])
        results = {g: v for r in gathered for g, v in r["results"].items()}
    elapsed = time.monotonic() - t_start
    encoded_seconds = sum(r.get("audio_seconds", 0.0) for r in results.values())
    status = 0 if not failed and not interrupted else 1
    if rank == 0:
        manifest = write_manifest(out, settings, {
            "listed_files": [f for f, _ in items], "failed_workers": failed, "interrupted": interrupted,
            "last_run": {"workers": num_workers, "devices": slots if not distributed else f"{world} ranks",
                         "elapsed_seconds": round(elapsed, 1), "files_cached": sum(r.get("rows", 0) for r in results.values()),
                         "audio_seconds_per_second": round(encoded_seconds / elapsed, 2) if elapsed > 0 else None,
                         "oom_retries": sum(r.get("oom_retries", 0) for r in results.values())}})
        if manifest["complete"] and manifest["rows"]:
            build_index(out)
        rej = manifest["rejected"]
        say(f"summary: {manifest['rows']:,} rows in {len(manifest['shards'])} shards, "
            f"{manifest['hours']:.3f} h of audio; this run cached {sum(r.get('rows', 0) for r in results.values()):,} "
            f"files ({encoded_seconds / 3600:.3f} h) at {encoded_seconds / max(elapsed, 1e-9):.1f} audio-s/s "
            f"in {datetime.timedelta(seconds=int(elapsed))}; rejected {len(rej)}; upsampled to "
            f"{cfg.target_sample_rate} Hz (source rate below it) {manifest['upsampled']}")
        for r in rej[:10]:
            say(f"  rejected {r['path']}: {r['reason']}")
        if len(rej) > 10:
            say(f"  ... {len(rej) - 10} more in {out / MANIFEST_NAME}")
        if failed or interrupted:
            say(f"INCOMPLETE: {'interrupted' if interrupted else f'{len(failed)} worker(s) died'}; "
                f"completed shards are kept: rerun the same command to finish ({manifest['missing']} files left)")
        elif not manifest["complete"]:
            say(f"INCOMPLETE: {manifest['missing']} listed files are neither cached nor rejected, "
                f"{manifest['duplicates']} duplicates; rerun the same command")
            status = 1
        else:
            say(f"done: {out / MANIFEST_NAME}")
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    lock.close()
    return status


def write_synthetic_cache(out_dir: str | os.PathLike, num_rows: int, model_config: dict, *,
                          target_sample_rate: int = 48000, rows_per_shard: int = 10000,
                          min_coarse: int = 1, max_coarse: int = 120, seed: int = 0,
                          model_id: str = "synthetic") -> dict:
    """For tests and benchmarks: a cache of random codes (no audio, no model run) in the real
    format. Row lengths are uniform in [min_coarse, max_coarse] coarse tokens; paths are shuffled across
    shards so the index's path order differs from shard order. Returns the manifest."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = model_settings(model_id, model_config, target_sample_rate, False, str(out / "no_audio"))
    strides, nc = settings["vq_strides"], settings["num_codebooks"]
    ratios = [strides[0] // s for s in strides]
    dtype = code_dtype(settings["codebook_size"])
    spc = strides[0] * settings["hop_length"] * target_sample_rate // settings["model_sample_rate"]
    schema = shard_schema(nc, settings["codebook_size"], False)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(num_rows)
    for k, lo in enumerate(range(0, num_rows, rows_per_shard)):
        idx = perm[lo:lo + rows_per_shard]
        n = len(idx)
        num_coarse = rng.integers(min_coarse, max_coarse + 1, n).astype(np.int32)
        num_samples = num_coarse.astype(np.int64) * spc - rng.integers(0, spc, n)
        paths = pa.array([f"spk{i % 997:03d}/utt{i:08d}.wav" for i in idx.tolist()], pa.string())
        cols = {"id": pc.replace_substring(paths, ".wav", ""), "path": paths,
                "duration": pa.array(num_samples / target_sample_rate, pa.float64()),
                "num_samples": pa.array(num_samples, pa.int64()), "num_coarse": pa.array(num_coarse),
                "sample_rate": pa.array(np.full(n, target_sample_rate, np.int32)),
                "channels": pa.array(np.ones(n, np.int16))}
        for j, r in enumerate(ratios):
            offsets = np.zeros(n + 1, dtype=np.int32)
            np.cumsum(num_coarse * r, out=offsets[1:])
            values = rng.integers(0, settings["codebook_size"], int(offsets[-1]), dtype=dtype)
            cols[codes_column(j)] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
        pq.write_table(pa.table(cols, schema=schema), out / shard_name(0, k), compression="zstd")
    write_json_atomic(out / SETTINGS_NAME, settings, durable=True)
    return write_manifest(out, settings, {"synthetic": True})


def main(argv: list[str] | None = None) -> None:
    """``python -m snac.cache CACHE_DIR``: (re)build the flat random-access index of a cache."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("cache_dir")
    ap.add_argument("--force", action="store_true", help="rebuild even if an up-to-date index exists")
    args = ap.parse_args(argv)
    t = time.monotonic()
    d = build_index(args.cache_dir, force=args.force)
    print(f"index {d} ready in {time.monotonic() - t:.1f} s")


if __name__ == "__main__":
    main()
