"""``CodeCache``: random access to a cache's rows (codes of every codebook and the target audio).

It memory-maps the small per-row arrays of the flat index and reads a row's tokens with one
``os.pread``: opening is O(1), nothing is a Python list of rows, forked DataLoader workers share
everything, and random reads do not map gigabytes of page cache into each process.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..audio import decode_flac, read_window
from .format import (INDEX_PREFIX, canonical_model_config, compare_model_configs, list_shards, read_manifest,
                     weights_fingerprint)
from .index import build_index, shard_digest

# A row up to this size is read whole with one pread and sliced; longer rows per codebook.
_WHOLE_ROW_BYTES = 1 << 16


class CodeCache:
    """Random access to a code cache's rows (codes of every codebook and the target audio).

    Opening memory-maps the flat index (built here if missing or stale, atomically), so it is
    O(1) in time and memory; per-row metadata are numpy arrays, never Python lists of rows, and
    forked DataLoader workers share the mapped pages. Row i is ordered by source path.

    ``expected_model_config`` (a SNAC or SNAC48 config dict) makes the reader refuse codes made
    by a different model config; ``expected_model`` (the SNAC model itself) also compares the
    weights fingerprint, refusing codes made with other weights of the same config. ``audio_root``
    overrides the manifest's ``input_root`` (a cache moved to another machine without embedded audio).
    A read-only cache whose index is up to date opens without writing anything.
    """

    def __init__(self, cache_dir: str | os.PathLike, expected_model_config: dict | None = None, *,
                 expected_model=None, audio_root: str | os.PathLike | None = None):
        self.cache_dir = Path(cache_dir)
        self.manifest = read_manifest(self.cache_dir)
        m = self.manifest
        if expected_model is not None and expected_model_config is None:
            expected_model_config = expected_model.config
        if expected_model_config is not None:
            diffs = compare_model_configs(m["model_config"], expected_model_config)
            if diffs:
                raise ValueError(
                    f"code cache {self.cache_dir} was made by model {m['model_id']} with a different "
                    f"config ({'; '.join(diffs)}); cache config {json.dumps(m['model_config'], sort_keys=True)} "
                    f"vs expected {json.dumps(canonical_model_config(expected_model_config), sort_keys=True)}. "
                    f"Fix: train with the model that made the cache ({m['model_id']}) or re-make the cache "
                    f"with cache_codes_multigpu.py --pretrained_model <your model>")
        if expected_model is not None:
            mine = weights_fingerprint(expected_model)
            if m.get("weights_fingerprint") != mine:
                raise ValueError(
                    f"code cache {self.cache_dir} was made with other weights than the expected model "
                    f"(fingerprint {m.get('weights_fingerprint') or 'not recorded'} in the cache vs {mine}); "
                    f"train with the model that made it ({m['model_id']}) or re-make the cache with "
                    "cache_codes_multigpu.py --pretrained_model <your model> --overwrite")
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
        directory = self.cache_dir / f"{INDEX_PREFIX}{shard_digest(shards, self.manifest)}"
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

    def __repr__(self) -> str:
        return (f"CodeCache({str(self.cache_dir)!r}, rows={len(self)}, model={self.manifest['model_id']}, "
                f"strides={self.vq_strides}, {self.model_sample_rate}->{self.target_sample_rate} Hz)")

