"""From input files to codes: listing, loading (mono, resampled), length buckets, batch encoder.

Items are grouped by padded length so a batch never adds padding an item would not get alone;
a worker reads its files shortest first (durations from the headers) so those groups fill up.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..audio import AUDIO_EXTENSIONS, AudioError, audio_info, encode_flac, load_audio, resample, resampled_length
from .format import code_dtype

PENDING_BATCHES = 16  # a worker holds at most this many batches of loaded audio


# ---- input files ----

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

    The one rule: a relative line is relative to the folder holding the list file (absolute
    lines are taken as they are), whatever else is passed, so a list means the same files from
    any working directory. ``input_root`` only sets the root that cache paths are relative to
    (every file must be under it); without it the root is the common folder of all files.
    Returns (absolute input root, sorted unique posix paths relative to it).
    """
    list_file = Path(list_file)
    if not list_file.is_file():
        raise FileNotFoundError(f"file list {list_file} does not exist; pass an existing --file_list")
    base = Path(os.path.abspath(list_file.parent))
    absolute = []
    for line in list_file.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = Path(line)
        absolute.append(os.path.normpath(p if p.is_absolute() else base / p))
    if not absolute:
        raise ValueError(f"file list {list_file} names no files; put one audio path per line")
    root = os.path.abspath(input_root) if input_root is not None else \
        os.path.commonpath([os.path.dirname(a) for a in absolute])
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


def header_seconds(path: str | os.PathLike) -> float | None:
    """A file's duration from its header (nothing decoded); None when the header cannot be read
    (such a file is rejected when it is loaded, with the loader's reason)."""
    try:
        info = audio_info(path)
    except (AudioError, OSError):
        return None
    return info.frames / info.sample_rate if info.sample_rate > 0 else None


def sort_by_length(items: list, seconds: list[float | None]) -> list:
    """``items`` shortest first by ``seconds`` (unreadable headers first; ties keep their order),
    so files of equal padded length arrive together and fill their batches."""
    key = [-1.0 if s is None else s for s in seconds]
    return [items[i] for i in sorted(range(len(items)), key=key.__getitem__)]


# ---- one file -> model input; batches of equal padded length -> codes ----

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


def stack_padded(items: list[LoadedItem], pad_multiple: int, pin: bool = False):
    """Items of one padded length -> (B, 1, length), each zero-padded exactly as SNAC pads it alone.
    ``pin``: in page-locked memory, so the copy to a GPU runs asynchronously (one copy, no staging)."""
    import torch

    length = padded_length(items[0].audio.shape[-1], pad_multiple)
    out = torch.zeros(len(items), 1, length, dtype=items[0].audio.dtype, pin_memory=pin)
    for row, it in zip(out, items):
        row[0, :it.audio.shape[-1]] = it.audio
    return out


class LengthBuckets:
    """Groups items by padded length, so a batch never adds padding beyond what the item gets
    alone (extra zeros would change its last frames through the conv biases).

    ``add`` returns the batches that are ready: a bucket is emitted before it would exceed
    ``batch_samples`` padded samples, and the fullest bucket is emitted early whenever the
    pending audio exceeds ``max_pending_samples`` (bounds memory when lengths are spread).
    With ``sorted_input`` (items arrive shortest first) a bucket shorter than the item just added
    is complete and is emitted at once; an item out of order only starts a new bucket.
    """

    def __init__(self, pad_multiple: int, batch_samples: int, max_pending_samples: int,
                 sorted_input: bool = False):
        self.pad_multiple = pad_multiple
        self.batch_samples = max(batch_samples, pad_multiple)
        self.max_pending_samples = max(max_pending_samples, self.batch_samples)
        self.sorted_input = sorted_input
        self.buckets: dict[int, list[LoadedItem]] = {}
        self.pending = 0

    def fill(self, batch: list[LoadedItem]) -> float:
        """Fraction of the batch's capacity in samples (``batch_samples``, or its padded size when
        one item alone is longer) that holds real audio rather than padding or nothing."""
        padded = len(batch) * padded_length(batch[0].audio.shape[-1], self.pad_multiple)
        return sum(it.audio.shape[-1] for it in batch) / max(self.batch_samples, padded)

    def add(self, item: LoadedItem) -> list[list[LoadedItem]]:
        length = padded_length(item.audio.shape[-1], self.pad_multiple)
        ready = [self._pop(n) for n in sorted(self.buckets) if n < length] if self.sorted_input else []
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


class FileTooLarge(Exception):
    """One file that does not fit in memory even alone on the CPU: the file's fault (a rejection),
    unlike every other encoder error, which is the model's or the device's and stops the worker."""


def host_copy(model):
    """A CPU copy of ``model`` built from its config and state dict: the state dict's tensors are
    copied device -> host one by one, so nothing new is allocated on the model's device (a
    ``deepcopy`` would first clone the whole model there)."""
    import torch

    copy = type(model)(**model.config)
    copy.load_state_dict({k: v.detach().to("cpu") for k, v in model.state_dict().items()})
    return copy.eval().requires_grad_(False) if isinstance(copy, torch.nn.Module) else copy


class BatchEncoder:
    """Encodes batches of equal padded length; on out-of-memory halves the batch and retries,
    and a single item that still does not fit is encoded on the CPU.

    ``encode(items)`` -> list (per item) of lists (per codebook) of int16/int32 numpy arrays.
    ``cpu_model_loader`` (optional, e.g. loading the weights from disk) makes the CPU model of the
    fallback; without it the model is copied to the host with :func:`host_copy`. Raises
    :class:`FileTooLarge` for a single item that runs out of memory on the CPU; any other error
    (device, model) propagates. ``tf32``: let cuDNN's float32 convolutions use TF32 (default:
    IEEE float32, see :func:`snac.compiling.conv_precision`).
    """

    def __init__(self, model, device: str, pad_multiple: int, codebook_size: int, cpu_model_loader=None,
                 tf32: bool = False):
        self.model = model
        self.device = device
        self.tf32 = tf32
        self.pad_multiple = pad_multiple
        self.dtype = code_dtype(codebook_size)
        self.oom_retries = 0
        self.cpu_model_loader = cpu_model_loader
        self._cpu_model = None

    def _run(self, model, x, device: str) -> list:
        import torch

        from ..compiling import conv_precision

        torch_dtype = torch.int16 if self.dtype == np.int16 else torch.int32
        with torch.inference_mode(), conv_precision(self.tf32):
            codes = model.encode(x.to(device, non_blocking=True))
            return [c.to(torch_dtype).cpu().numpy() for c in codes]  # per codebook (B, T_j)

    def _try(self, model, items: list[LoadedItem], device: str) -> list | None:
        """Codes per codebook (B, T_j), or None when the device ran out of memory. The caller
        retries after this returns, so the failed attempt's tensors (held by the exception's
        traceback frames) are already freed when the smaller batch runs."""
        try:
            return self._run(model, stack_padded(items, self.pad_multiple, pin=device.startswith("cuda")), device)
        except Exception as e:
            if not _is_oom(e):
                raise
        return None

    def encode(self, items: list[LoadedItem]) -> list[list[np.ndarray]]:
        import torch

        codes = self._try(self.model, items, self.device)
        if codes is None:
            self.oom_retries += 1
            if self.device.startswith("cuda"):
                torch.cuda.empty_cache()
            if len(items) > 1:
                half = len(items) // 2
                return self.encode(items[:half]) + self.encode(items[half:])
            if self.device != "cpu":  # a file too long for the device even alone: encode it on the CPU
                if self._cpu_model is None:
                    self._cpu_model = (self.cpu_model_loader or (lambda: host_copy(self.model)))()
                codes = self._try(self._cpu_model, items, "cpu")
            if codes is None:
                seconds = items[0].duration
                raise FileTooLarge(f"out of memory encoding {seconds:.0f} s even alone on the CPU; split "
                                   "the file or lower --max_seconds")
        return [[c[b] for c in codes] for b in range(len(items))]
