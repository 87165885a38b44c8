"""Writing a cache: shards (temporary name, fsync, rename), rejection logs, the resume scan,
and a synthetic cache of random codes for tests and benchmarks (through the same writer).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import queue
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..fileio import write_json_atomic
from .encode import LoadedItem
from .format import (QUARANTINE_DIR, SETTINGS_NAME, SHARD_PREFIX, SHARD_SUFFIX, code_dtype, codes_column,
                     list_shards, model_settings, now_iso, reject_log, shard_name, shard_schema,
                     weights_fingerprint, write_manifest)

# A worker writes its buffer as a shard once it holds this much wall time of work, so a crash
# loses at most this much (the rows are redone on resume) even when --shard_rows is large.
SHARD_MAX_SECONDS = 600.0


def _next_seq(cache_dir: Path, worker_index: int) -> int:
    prefix = f"{SHARD_PREFIX}{worker_index:05d}-"
    seqs = [int(p.name[len(prefix):-len(SHARD_SUFFIX)]) for p in cache_dir.glob(f"{prefix}*{SHARD_SUFFIX}")
            if p.name[len(prefix):-len(SHARD_SUFFIX)].isdigit()]
    return max(seqs, default=-1) + 1


class ShardWriter:
    """Buffers rows of one worker and writes them as shards: temporary name, fsync, rename.

    Rows are written when ``shard_rows`` are buffered or the buffer is ``max_seconds`` old. With
    ``background`` a thread writes each full shard while the caller goes on (encoding the next
    batches): at most one shard is being written and one waits, so memory stays bounded and a
    slow disk slows the caller only when it is two shards behind. A write error is raised by the
    next ``add`` or ``flush``. ``on_written(name, count)`` runs (in the writing thread) once a
    shard is durable; ``count`` is the shards written so far. ``flush`` writes the rest and
    returns when every shard is on disk.
    """

    def __init__(self, cache_dir: Path, worker_index: int, schema: pa.Schema, shard_rows: int,
                 max_seconds: float = SHARD_MAX_SECONDS, background: bool = False,
                 on_written: Callable[[str, int], None] | None = None):
        self.cache_dir = Path(cache_dir)
        self.worker_index = worker_index
        self.schema = schema
        self.num_codebooks = sum(1 for n in schema.names if n.startswith("codes_"))
        self.embed = "audio" in schema.names
        self.shard_rows = shard_rows
        self.max_seconds = max_seconds
        self.seq = _next_seq(self.cache_dir, worker_index)
        self.written: list[str] = []
        self.on_written = on_written
        self._error: BaseException | None = None
        self._jobs: queue.Queue | None = None
        if background:
            self._jobs = queue.Queue(maxsize=1)
            threading.Thread(target=self._drain, name=f"shard-writer-{worker_index}", daemon=True).start()
        self._reset()

    def _reset(self) -> None:
        self.rows: list[tuple[LoadedItem, list[np.ndarray]]] = []
        self.started = time.monotonic()

    def add(self, item: LoadedItem, codes: list[np.ndarray]) -> None:
        self._raise_error()
        self.rows.append((item, codes))
        if len(self.rows) >= self.shard_rows or time.monotonic() - self.started > self.max_seconds:
            self._submit()

    def table(self, rows: list | None = None) -> pa.Table:
        rows = self.rows if rows is None else rows
        items = [it for it, _ in rows]
        cols: dict[str, pa.Array] = {
            "id": pa.array([it.row_id for it in items], pa.string()),
            "path": pa.array([it.path for it in items], pa.string()),
            "duration": pa.array([it.duration for it in items], pa.float64()),
            "num_samples": pa.array([it.num_samples for it in items], pa.int64()),
            "num_coarse": pa.array([len(c[0]) for _, c in rows], pa.int32()),
            "sample_rate": pa.array([it.sample_rate for it in items], pa.int32()),
            "channels": pa.array([it.channels for it in items], pa.int16()),
        }
        for j in range(self.num_codebooks):
            arrays = [c[j] for _, c in rows]
            offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
            np.cumsum([len(a) for a in arrays], out=offsets[1:])
            values = pa.array(np.concatenate(arrays))
            cols[codes_column(j)] = pa.ListArray.from_arrays(pa.array(offsets), values)
        if self.embed:
            cols["audio"] = pa.array([it.flac for it in items], pa.binary())
        return pa.table(cols, schema=self.schema)

    def _submit(self) -> None:
        """Hand the buffered rows on as the next shard (written here, or by the thread)."""
        if not self.rows:
            return
        name, rows = shard_name(self.worker_index, self.seq), self.rows
        self.seq += 1
        self._reset()
        if self._jobs is None:
            self._write(name, rows)
        else:
            self._jobs.put((name, rows))  # blocks while one shard is written and one waits

    def _write(self, name: str, rows: list) -> None:
        write_parquet_durable(self.table(rows), self.cache_dir / name)
        self.written.append(name)
        if self.on_written is not None:
            self.on_written(name, len(self.written))

    def _drain(self) -> None:
        while True:
            name, rows = self._jobs.get()
            try:
                if self._error is None:  # after a failed write, later shards are not written either
                    self._write(name, rows)
            except BaseException as e:  # noqa: BLE001 (re-raised in the caller's thread)
                self._error = e
            finally:
                self._jobs.task_done()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"writing a shard to {self.cache_dir} failed: {self._error}") from self._error

    def flush(self) -> None:
        """Write the buffered rows; returns once every shard handed on is durable (or raises)."""
        self._submit()
        if self._jobs is not None:
            self._jobs.join()
        self._raise_error()


def write_parquet_durable(table: pa.Table, final: Path) -> None:
    """Temporary name beside ``final``, fsync, rename: a reader sees the old file or the whole new one."""
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp, compression="zstd")
    with open(tmp, "rb") as f:  # durable before it becomes visible as complete
        os.fsync(f.fileno())
    os.replace(tmp, final)


@dataclasses.dataclass
class ShardScan:
    """What the resume scan found: paths cached once in readable shards, unreadable shards
    (renamed ``*.corrupt``), and rows moved to ``_quarantine/`` ({shard, rows, reason, file})."""
    done: set
    corrupt: list
    quarantined: list


def _quarantine(cache_dir: Path, shard: Path, table: pa.Table, reason: str) -> str:
    """Write ``table`` (rows set aside from ``shard``) under _quarantine/; returns its relative path."""
    directory = cache_dir / QUARANTINE_DIR
    directory.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    dest = directory / f"{shard.stem}.{reason}-{stamp}-{os.getpid()}{SHARD_SUFFIX}"
    write_parquet_durable(table, dest)
    return f"{QUARANTINE_DIR}/{dest.name}"


def scan_shards(cache_dir: str | os.PathLike, listed: set[str] | None = None, fix: bool = True) -> ShardScan:
    """The resume scan. With ``fix`` (rank 0 only, under the run lock): an unreadable shard is
    renamed ``*.corrupt`` (its files are redone); rows of files not in ``listed`` ("stale") and
    second copies of a path already seen in an earlier shard ("duplicate") are moved out of their
    shard into ``_quarantine/`` (written there first, then the shard is rewritten without them),
    so the cache holds each listed file at most once and nothing is deleted. Without ``fix`` it
    only reads the paths."""
    cache_dir = Path(cache_dir)
    scan = ShardScan(set(), [], [])
    for shard in list_shards(cache_dir):
        try:
            paths = pq.read_table(shard, columns=["path"])["path"].to_pylist()
        except Exception:
            if fix and shard.exists():
                shard.rename(shard.with_name(shard.name + ".corrupt"))
            scan.corrupt.append(shard.name)
            continue
        reasons, seen = [], set()
        for p in paths:  # per row: None (keep), "stale" or "duplicate"
            reasons.append("stale" if listed is not None and p not in listed
                           else "duplicate" if p in scan.done or p in seen else None)
            seen.add(p)
        if fix and any(reasons):
            table = pq.read_table(shard)
            for reason in ("stale", "duplicate"):
                mask = pa.array([r == reason for r in reasons])
                n = sum(r == reason for r in reasons)
                if n:
                    dest = _quarantine(cache_dir, shard, table.filter(mask), reason)
                    scan.quarantined.append({"shard": shard.name, "rows": n, "reason": reason, "file": dest})
            keep = table.filter(pa.array([r is None for r in reasons]))
            if keep.num_rows:
                write_parquet_durable(keep, shard)
            else:
                shard.unlink()
            paths = [p for p, r in zip(paths, reasons) if r is None]
        scan.done.update(paths)
    return scan


def append_rejection(cache_dir: Path, worker_index: int, path: str, reason: str) -> None:
    """Record that ``path`` could not be cached, and why (merged into the manifest)."""
    with open(reject_log(cache_dir, worker_index), "a") as f:
        f.write(json.dumps({"path": path, "reason": reason, "time": now_iso()}) + "\n")


def write_synthetic_cache(out_dir: str | os.PathLike, num_rows: int, model_config: dict, *,
                          target_sample_rate: int = 48000, rows_per_shard: int = 10000,
                          min_coarse: int = 1, max_coarse: int = 120, seed: int = 0,
                          model_id: str = "synthetic", model=None) -> dict:
    """For tests and benchmarks: a cache of random codes (no audio, no model run) written by the
    production :class:`ShardWriter`. Row lengths are uniform in [min_coarse, max_coarse] coarse
    tokens; paths are shuffled across shards so the index's path order differs from shard order.
    ``model`` (optional) records its weights fingerprint, as a real run does. Returns the manifest."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = model_settings(model_id, model_config, target_sample_rate, False, str(out / "no_audio"),
                              None if model is None else weights_fingerprint(model))
    strides, size = settings["vq_strides"], settings["codebook_size"]
    ratios = [strides[0] // s for s in strides]
    dtype = code_dtype(size)
    spc = strides[0] * settings["hop_length"] * target_sample_rate // settings["model_sample_rate"]
    writer = ShardWriter(out, 0, shard_schema(len(strides), size, False), shard_rows=rows_per_shard,
                         max_seconds=math.inf)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(num_rows)
    for lo in range(0, num_rows, rows_per_shard):  # one shard's draws at a time (bounded memory)
        idx = perm[lo:lo + rows_per_shard]
        n = len(idx)
        num_coarse = rng.integers(min_coarse, max_coarse + 1, n).astype(np.int64)
        num_samples = num_coarse * spc - rng.integers(0, spc, n)
        # per codebook j: all rows' tokens in one draw, row i owning [starts_j[i], starts_j[i + 1])
        starts = [np.concatenate([[0], np.cumsum(num_coarse * r)]) for r in ratios]
        values = [rng.integers(0, size, int(st[-1]), dtype=dtype) for st in starts]
        for i, row in enumerate(idx.tolist()):
            path = f"spk{row % 997:03d}/utt{row:08d}.wav"
            item = LoadedItem(path=path, row_id=path[:-len(".wav")], audio=None,
                              duration=float(num_samples[i]) / target_sample_rate,
                              num_samples=int(num_samples[i]), sample_rate=target_sample_rate, channels=1,
                              flac=None)
            writer.add(item, [v[st[i]:st[i + 1]] for v, st in zip(values, starts)])
    writer.flush()
    write_json_atomic(out / SETTINGS_NAME, settings, durable=True)
    return write_manifest(out, settings, {"synthetic": True})
