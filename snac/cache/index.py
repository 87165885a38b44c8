"""The flat random-access copy of a cache's shards (``index-<digest>/``), built once per set of shards.

Parquet is the storage and exchange format. Reading it per row is slow (~30 rows/s), so
``build_index`` writes a flat copy: one raw file of all tokens with each row's codebooks
contiguous, plus numpy arrays of per-row starts and lengths, rows ordered by path.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..fileio import write_json_atomic
from .format import INDEX_PREFIX, codes_column, list_shards, now_iso, read_manifest

INDEX_VERSION = 2


# bytes read from the end of each shard for the index digest: parquet's footer (row groups, column
# chunk offsets, sizes and statistics) sits there, so any rewrite of a shard changes them
_TAIL_BYTES = 1 << 16


def shard_digest(shards: list[Path], manifest: dict) -> str:
    """Names the index of this set of shards: their names, sizes and the last bytes of each
    (the parquet footer). Content, not modification times: a copied or downloaded cache
    (``cp -r``, rsync without -t) keeps its index."""
    h = hashlib.sha1(f"v{INDEX_VERSION}".encode())
    h.update(json.dumps([manifest["model_config"], manifest["embed_audio"]], sort_keys=True).encode())
    for s in shards:
        size = s.stat().st_size
        h.update(f"{s.name}:{size};".encode())
        with open(s, "rb") as f:
            f.seek(max(0, size - _TAIL_BYTES))
            h.update(f.read())
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

    ``index-<digest>/`` where the digest covers the shard names, sizes and footers, so a changed
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
    final = cache_dir / f"{INDEX_PREFIX}{shard_digest(shards, manifest)}"
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
            "created": now_iso()}, durable=True)
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


def main(argv: list[str] | None = None) -> None:
    """``python -m snac.cache CACHE_DIR``: (re)build the flat random-access index of a cache."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m snac.cache", description=main.__doc__)
    ap.add_argument("cache_dir")
    ap.add_argument("--force", action="store_true", help="rebuild even if an up-to-date index exists")
    args = ap.parse_args(argv)
    t = time.monotonic()
    d = build_index(args.cache_dir, force=args.force)
    print(f"index {d} ready in {time.monotonic() - t:.1f} s")


if __name__ == "__main__":
    main()
