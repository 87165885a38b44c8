"""The codec trainer's training windows, read from disk one window at a time.

The training audio (a folder, or a code cache's target audio) is cut into a fixed grid of windows:
file f of L samples (at the model's rate) holds ceil(L / window) windows, the last one padded and
masked. Only the file list and the lengths stay in memory (a few dozen bytes a file), so the peak
RSS does not grow with the hours of audio.

All ranks read one global stream of windows: epoch e is a seeded pseudo-random permutation of every
window (a Feistel network over the window indices, O(1) memory), so an epoch covers each window
exactly once; step s takes stream items [s * B * W, (s + 1) * B * W) and rank r the r-th slice of
B. The data position is one number (windows consumed over all ranks), the same on every rank, so a
resume continues the stream exactly, on the same or on another world size.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..audio import AudioError, audio_info, read_window, resample, resampled_length, source_span
from ..cache.encode import find_audio_files
from ..cache.format import MANIFEST_NAME
from .config import ConfigError

_MASK64 = (1 << 64) - 1


def _mix(x: int) -> int:
    """A 64-bit integer hash (splitmix64's finaliser): the Feistel round function."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def permuted_index(i: int, n: int, key: int, rounds: int = 4) -> int:
    """Position i of a pseudo-random permutation of range(n) chosen by ``key`` (a bijection: every
    index once), without storing the permutation: a Feistel network on the next even power of two,
    cycle-walked back into [0, n)."""
    half = max(1, (max(n - 1, 1).bit_length() + 1) // 2)
    low = (1 << half) - 1
    x = i
    while True:
        left, right = x >> half, x & low
        for r in range(rounds):
            left, right = right, left ^ (_mix(right ^ _mix(key * rounds + r)) & low)
        x = (left << half) | right
        if x < n:
            return x


class _Folder:
    """Files of a folder: lengths from their headers, windows read with ``read_window``."""

    def __init__(self, root: str, sample_rate: int, warn: Callable[[str], None], flag: str):
        self.root, self.sample_rate = Path(root), sample_rate
        names, lengths, skipped = [], [], []
        for rel in find_audio_files(root):
            try:
                info = audio_info(self.root / rel)
            except AudioError as e:
                skipped.append(str(e))
                continue
            names.append(rel)
            lengths.append(resampled_length(info.frames, info.sample_rate, sample_rate))
        if skipped:
            warn(f"{flag}: skipped {len(skipped)} unreadable file(s); first: {skipped[0]}")
        self.names = np.array(names, dtype=np.bytes_) if names else np.zeros(0, dtype="S1")  # compact
        self.lengths = np.array(lengths, dtype=np.int64)

    def read(self, f: int, start: int, frames: int) -> np.ndarray:
        return read_window(self.root / self.names[f].decode(), start, frames, self.sample_rate)


class _Cache:
    """Rows of a code cache: lengths from num_samples, windows from its (embedded) target audio."""

    def __init__(self, root: str, sample_rate: int, flag: str):
        from ..cache.reader import CodeCache

        try:
            self.cache = CodeCache(root)
        except (OSError, ValueError) as e:
            raise ConfigError(f"{flag} {root}: unreadable code cache ({e})") from e
        self.sample_rate, self.source_rate = sample_rate, self.cache.target_sample_rate
        self.lengths = np.array([resampled_length(int(n), self.source_rate, sample_rate)
                                 for n in self.cache.num_samples], dtype=np.int64)

    def read(self, f: int, start: int, frames: int) -> np.ndarray:
        if self.source_rate == self.sample_rate:
            return self.cache.audio(f, start, frames)
        end = min(start + frames, int(self.lengths[f]))
        src_start, src_end, skip = source_span(start, end, self.source_rate, self.sample_rate,
                                               int(self.cache.num_samples[f]))
        x = resample(self.cache.audio(f, src_start, src_end - src_start), self.source_rate, self.sample_rate)
        return x[skip:skip + end - start]


class LazyAudioWindows:
    """Random-order windows (B, 1, window) of a folder of audio or a code cache, read per window.

    ``sample(B)`` returns this rank's (audio, mask) of the next step; mask is 1 on real samples,
    0 on the padded tail of a file's last window. ``state_dict()`` is the global stream position."""

    def __init__(self, root: str, sample_rate: int, window: int, seed: int, rank: int = 0, world_size: int = 1,
                 warn: Callable[[str], None] = print, flag: str = "--audio_dir"):
        self.window, self.seed, self.rank, self.world_size, self.warn = window, seed, rank, world_size, warn
        self.source = _Cache(root, sample_rate, flag) if (Path(root) / MANIFEST_NAME).is_file() \
            else _Folder(root, sample_rate, warn, flag)
        lengths = self.source.lengths
        keep = np.flatnonzero(lengths > 0)
        if not len(keep):
            raise ConfigError(f"{flag} {root} holds no readable audio (wav/flac/ogg/mp3, or a code cache); "
                              "pass a folder of audio")
        self.files = keep  # source index of each non-empty file
        counts = -(-lengths[keep] // window)  # windows per file, the last one padded
        self.first = np.concatenate([[0], np.cumsum(counts)])  # (files + 1,) first window of each file
        self.num_windows = int(self.first[-1])
        self.num_files = len(keep)
        self.seconds = float(lengths.sum()) / sample_rate
        self.consumed = 0  # windows taken from the global stream, over all ranks

    def window_of(self, item: int) -> tuple[int, int]:
        """Stream item -> (file index in the source, start sample): epoch item // N, permuted."""
        epoch, pos = divmod(item, self.num_windows)
        w = permuted_index(pos, self.num_windows, self.seed * 1_000_003 + epoch)
        k = int(np.searchsorted(self.first, w, side="right")) - 1
        return int(self.files[k]), (w - int(self.first[k])) * self.window

    def sample(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """-> audio, mask: (batch, 1, window) each, this rank's share of the next step."""
        base = self.consumed + self.rank * batch
        audio, mask = torch.zeros(batch, 1, self.window), torch.zeros(batch, 1, self.window)
        for i in range(batch):
            f, start = self.window_of(base + i)
            piece = torch.from_numpy(self.source.read(f, start, self.window))
            audio[i, 0, :len(piece)], mask[i, 0, :len(piece)] = piece, 1.0
        self.consumed += batch * self.world_size
        return audio, mask

    def epoch_steps(self, batch: int) -> int:
        """Steps per epoch: every window once over all ranks' batches."""
        return max(1, math.ceil(self.num_windows / (batch * self.world_size)))

    def state_dict(self) -> dict:
        return {"consumed": self.consumed, "num_windows": self.num_windows}

    def load_state_dict(self, state: dict) -> None:
        if "consumed" not in state:  # a checkpoint of the former in-memory sampler: its position has no meaning here
            self.warn("the checkpoint's data position is of the in-memory sampler: the window stream starts over")
            return
        if state["num_windows"] != self.num_windows:
            self.warn(f"the training audio changed since the checkpoint ({state['num_windows']} windows then, "
                      f"{self.num_windows} now): the stream continues at the same position")
        self.consumed = int(state["consumed"])
