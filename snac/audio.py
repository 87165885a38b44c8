"""Audio helpers shared by the cache, the trainer, inference and evaluation.

Everything reads with soundfile (torchaudio 2.11 I/O would need torchcodec and FFmpeg) and resamples
with libsoxr (python-soxr), one function for every caller. Arrays are float32; multichannel arrays are
(channels, frames), mono arrays are (frames,). Every failure raises ``AudioError`` (or
``FileNotFoundError``) with one line that names the file, the problem and the fix. Importing this
module does not import torch; ``resample`` imports it only when handed a tensor.

Public API (kept stable; other modules import it):

- ``AUDIO_EXTENSIONS``: suffixes the project treats as audio.
- ``AudioError``: a file exists but cannot be used as audio.
- ``audio_info(path) -> AudioInfo(frames, sample_rate, channels)``: header only.
- ``load_audio(path, mono=False) -> (array, sample_rate)``.
- ``to_mono(x) -> (frames,)``.
- ``resample(x, orig_sr, new_sr)``: torch tensor or numpy array in, same type out, time on the last axis.
- ``resampled_length(frames, orig_sr, new_sr) -> int``: what ``resample`` returns (rounded half up).
- ``read_window(path, start, frames, target_sr) -> (n,) float32``: a window at ``target_sr`` read by seeking;
  ``source_span(...)`` is its arithmetic, for windows of audio held elsewhere (FLAC bytes in the cache).
- ``StreamResampler`` / ``iter_resampled_blocks(path, target_sr, block_seconds, mono=True)``: a file
  read, downmixed and resampled in blocks; memory flat in the file's length; the blocks concatenate
  to exactly ``resample(load_audio(path, mono=True)[0], sr, target_sr)``.
- ``encode_flac(x, sample_rate) -> bytes`` / ``decode_flac(data, start=0, frames=None) -> (x, sr)``.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import soundfile as sf
import soxr

if TYPE_CHECKING:  # torch is imported lazily, only by resample() when it is handed a tensor
    import torch

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")

# libsoxr's "HQ" recipe (20-bit precision, linear phase, passband to ~91% of the lower Nyquist):
# a sine comes out at 130 dB SNR against the analytic one for 44.1k->48k, 48k->24k and 24001->24k.
# "VHQ" reaches ~150 dB for the same speed but has a longer filter (a wider read_window margin);
# no source here carries more than 24 bits and the codec's own error is ~100 dB above either, so HQ.
_QUALITY = "HQ"
# Half-length of HQ's filter, in samples of the lower of the two rates, past which its taps are
# below float32 resolution: an impulse's response falls under 1e-7 of its peak within ~110 samples
# for every pair measured (4 kHz..384 kHz, odd rates included); 128 adds slack.
_FILTER_HALF_LENGTH = 128
# python-soxr refuses more channels than this in one call; resample() batches rows in groups.
_MAX_CHANNELS_PER_CALL = 4096

class AudioError(ValueError):
    """A file exists but cannot be used as audio (corrupt, empty, unsupported, non-finite)."""


class AudioInfo(NamedTuple):
    frames: int
    sample_rate: int
    channels: int


def format_duration(seconds: float) -> str:
    """An amount of audio a person can read at any scale: '3.2 s', '12.5 min', '1.25 h' (a tiny run
    is not '0.000 h')."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _first_line(e: BaseException, path: str | os.PathLike | None = None) -> str:
    """The error's first line; without ``path`` in it (the message that quotes it names it already:
    soundfile's "Error opening '<path>': ..." becomes "Error opening: ...")."""
    text = str(e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    return line.replace(f" '{path}'", "") if path is not None else line


def _check_exists(path: str | os.PathLike) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such audio file; check the path")
    if os.path.isdir(path):
        raise AudioError(f"{path} is a directory, not an audio file")


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Frames, sample rate and channels from the header, without decoding samples."""
    _check_exists(path)
    try:
        info = sf.info(str(path))
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError with the library's text
        raise AudioError(f"{path}: cannot read audio ({_first_line(e, path)}); "
                         f"re-encode it as wav or flac, or remove it") from e
    return AudioInfo(int(info.frames), int(info.samplerate), int(info.channels))


def load_audio(path: str | os.PathLike, mono: bool = False) -> tuple[np.ndarray, int]:
    """Read a whole file as float32.

    Returns ``(x, sample_rate)`` with x of shape (channels, frames), or (frames,) when ``mono``
    (channels averaged). Raises AudioError for unreadable, empty or non-finite audio.
    """
    _check_exists(path)
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (frames, channels)
    except Exception as e:
        raise AudioError(f"{path}: cannot read audio ({_first_line(e, path)}); "
                         f"re-encode it as wav or flac, or remove it") from e
    if data.shape[0] == 0:
        raise AudioError(f"{path}: empty audio (0 samples); remove it")
    if not np.isfinite(data).all():
        raise AudioError(f"{path}: audio holds NaN or Inf samples; re-export it or remove it")
    x = np.ascontiguousarray(data.T)  # (channels, frames)
    return (to_mono(x), int(sr)) if mono else (x, int(sr))


def to_mono(x: np.ndarray) -> np.ndarray:
    """(channels, frames) -> (frames,) by averaging channels; a 1-D array passes through."""
    if x.ndim == 1:
        return x
    if x.ndim != 2:
        raise ValueError(f"expected audio of shape (frames,) or (channels, frames), got {x.shape}")
    return x[0].copy() if x.shape[0] == 1 else x.mean(axis=0, dtype=np.float32)


def _check_rates(orig_sr: int, new_sr: int) -> None:
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {new_sr}")


def resampled_length(frames: int, orig_sr: int, new_sr: int) -> int:
    """Length that ``resample`` returns for ``frames`` input samples.

    libsoxr returns frames * new_sr / orig_sr rounded half up; this computes it in integers, so it
    stays exact for any length (a float formula would drift for files of hours at odd rates).
    """
    _check_rates(orig_sr, new_sr)
    return frames if orig_sr == new_sr else (2 * frames * new_sr + orig_sr) // (2 * orig_sr)


def _resample_rows(rows: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """(N, T) float32/float64 -> (N, resampled_length(T)) of the same dtype, each row independently."""
    out = np.empty((rows.shape[0], resampled_length(rows.shape[1], orig_sr, new_sr)), dtype=rows.dtype)
    for i in range(0, rows.shape[0], _MAX_CHANNELS_PER_CALL):
        group = rows[i:i + _MAX_CHANNELS_PER_CALL]
        # soxr wants (frames, channels); group.T is that layout without a copy (channel-split memory)
        out[i:i + len(group)] = soxr.resample(group.T, orig_sr, new_sr, quality=_QUALITY).T
    return out


def resample(x: torch.Tensor | np.ndarray, orig_sr: int, new_sr: int) -> torch.Tensor | np.ndarray:
    """Resample along the last axis with libsoxr (linear phase, HQ). Returns the input's type.

    (..., T) -> (..., resampled_length(T, orig_sr, new_sr)); leading axes are independent signals.
    A numpy array comes back as float32; a tensor keeps its dtype and device (computed on the CPU in
    float64 for float64 tensors, float32 otherwise). Not differentiable: a tensor that requires grad
    is refused. Equal rates return ``x`` itself.
    """
    _check_rates(orig_sr, new_sr)
    if orig_sr == new_sr:
        return x
    if isinstance(x, np.ndarray):
        rows = np.ascontiguousarray(x, dtype=np.float32).reshape(math.prod(x.shape[:-1]), x.shape[-1])
        y = _resample_rows(rows, orig_sr, new_sr)  # (N, T')
        return y.reshape(*x.shape[:-1], y.shape[-1])
    import torch  # only here: readers that never hand over a tensor never import torch

    if not isinstance(x, torch.Tensor):
        raise TypeError(f"resample expects a numpy array or a torch tensor, got {type(x).__name__}")
    if x.requires_grad:
        raise ValueError("resample is not differentiable (libsoxr runs on the CPU); pass x.detach(), "
                         "or use torchaudio.functional.resample inside a loss")
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    rows = x.detach().to(device="cpu", dtype=work).reshape(math.prod(x.shape[:-1]), x.shape[-1])
    y = _resample_rows(np.ascontiguousarray(rows.numpy()), orig_sr, new_sr)  # (N, T')
    return torch.from_numpy(y.reshape(*x.shape[:-1], y.shape[-1])).to(device=x.device, dtype=x.dtype)


def _source_margin(orig_sr: int, new_sr: int) -> int:
    """Source samples each side of a window that the resampling filter reaches."""
    return math.ceil(_FILTER_HALF_LENGTH * orig_sr / min(orig_sr, new_sr))


def source_span(start: int, end: int, orig_sr: int, new_sr: int, src_frames: int) -> tuple[int, int, int]:
    """Source samples to resample for output samples [start, end) of a signal of ``src_frames``.

    Returns ``(src_start, src_end, skip)``: ``resample(src[src_start:src_end], orig_sr, new_sr)
    [skip:skip + end - start]`` equals ``resample(src, orig_sr, new_sr)[start:end]`` (see
    ``read_window`` for the tolerance). The span carries the filter's reach as a margin on each
    side, and starts on a source sample whose time lies on the output grid (a multiple of
    orig_sr / gcd), so the chunk's output grid is the whole signal's; for rates with no common
    factor that rounding reads up to one second of extra source.
    """
    g = math.gcd(orig_sr, new_sr)
    step_src, step_dst = orig_sr // g, new_sr // g
    margin = _source_margin(orig_sr, new_sr)
    src_start = max(0, (start * orig_sr // new_sr - margin) // step_src * step_src)
    src_end = min(src_frames, -(-end * orig_sr // new_sr) + margin)
    return src_start, src_end, start - src_start // step_src * step_dst


def read_window(path: str | os.PathLike, start: int, frames: int | None, target_sr: int) -> np.ndarray:
    """Read samples [start, start + frames) of the file resampled to ``target_sr``, mono float32.

    Only the needed part of the file is read (seek). When the file's rate differs from
    ``target_sr``, the ``source_span`` around the window (the filter's reach as a margin) is read,
    resampled and cut, so the result matches resampling the whole file and slicing: within 1e-5 of
    the signal's RMS (measured <= 5e-6 in the first seconds for 44.1k/16k/96k/24001/96001 -> 48k;
    float32 rounding). For rates in no simple ratio (24001, 96001) libsoxr's whole-file clock drifts
    by ~1e-8 of a sample per output sample, so deep into long files the window, which restarts the
    clock, differs from the whole-file slice by up to ~1e-4 of the RMS after 100 s (the window is
    the closer of the two to exact resampling). The window is shorter than ``frames`` (possibly
    empty) where it runs past the end. ``frames=None`` reads to the end.
    """
    if start < 0:
        raise ValueError(f"window start must be >= 0, got {start}")
    info = audio_info(path)
    sr = info.sample_rate
    total = resampled_length(info.frames, sr, target_sr)
    end = total if frames is None else min(total, start + max(0, frames))
    if end <= start:
        return np.zeros(0, dtype=np.float32)
    src_start, src_end, skip = (start, end, 0) if sr == target_sr else \
        source_span(start, end, sr, target_sr, info.frames)
    try:
        with sf.SoundFile(str(path)) as f:
            f.seek(src_start)
            data = f.read(src_end - src_start, dtype="float32", always_2d=True)  # (frames, channels)
    except Exception as e:
        raise AudioError(f"{path}: cannot read window [{start}, {end}) at {target_sr} Hz "
                         f"({_first_line(e)})") from e
    y = resample(to_mono(np.ascontiguousarray(data.T)), sr, target_sr)
    return np.ascontiguousarray(y[skip:skip + end - start], dtype=np.float32)


class StreamResampler:
    """Resample one continuous signal fed in blocks; the outputs concatenate to ``resample`` of the whole.

    ``process(block)`` takes (frames,) or (channels, frames) float32 and returns what is ready
    (fewer samples than a block's share at first: the filter's delay); ``flush()`` returns the rest
    once the signal has ended. Memory is the filter's state, not the signal's length.
    """

    def __init__(self, orig_sr: int, new_sr: int, channels: int = 1):
        _check_rates(orig_sr, new_sr)
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.orig_sr, self.new_sr, self.channels = orig_sr, new_sr, channels
        self._stream = soxr.ResampleStream(orig_sr, new_sr, channels, dtype="float32", quality=_QUALITY)
        self._done = False

    def _run(self, block: np.ndarray, last: bool) -> np.ndarray:
        if self._done:
            raise RuntimeError("StreamResampler was flushed; make a new one for the next signal")
        block = np.asarray(block, dtype=np.float32)
        mono = block.ndim == 1
        if (mono and self.channels != 1) or (not mono and block.shape[0] != self.channels) or block.ndim > 2:
            raise ValueError(f"expected blocks of shape (frames,) for 1 channel or (channels, frames) "
                             f"with {self.channels} channels, got {block.shape}")
        y = self._stream.resample_chunk(block if mono else np.ascontiguousarray(block.T), last=last)
        self._done = last
        return y if mono else np.ascontiguousarray(y.T)

    def process(self, block: np.ndarray) -> np.ndarray:
        """(frames,) or (channels, frames) in -> the output samples that are ready, same layout."""
        return self._run(block, last=False)

    def flush(self) -> np.ndarray:
        """The remaining output after the last block; the resampler cannot be fed again."""
        empty = np.zeros(0 if self.channels == 1 else (self.channels, 0), dtype=np.float32)
        return self._run(empty, last=True)


def iter_resampled_blocks(path: str | os.PathLike, target_sr: int, block_seconds: float = 10.0,
                          mono: bool = True) -> Iterator[np.ndarray]:
    """Yield a file read, downmixed (``mono``) and resampled to ``target_sr`` in blocks, float32.

    Every block holds round(block_seconds * target_sr) samples except the last (shorter, never
    empty); (frames,) when ``mono``, else (channels, frames). Concatenated they equal
    ``resample(load_audio(path, mono)[0], sr, target_sr)`` exactly (same libsoxr stream, same
    downmix), so the total is ``resampled_length(audio_info(path).frames, sr, target_sr)``. Peak
    memory is a few blocks whatever the file's length. Raises AudioError like ``load_audio``.
    """
    if not block_seconds > 0:
        raise ValueError(f"block_seconds must be > 0, got {block_seconds}")
    info = audio_info(path)
    sr = info.sample_rate
    out_frames = max(1, round(block_seconds * target_sr))
    in_frames = max(1, round(block_seconds * sr))
    resampler = StreamResampler(sr, target_sr, 1 if mono else info.channels)
    pending: list[np.ndarray] = []  # resampled pieces not yet yielded, (frames,) or (channels, frames)
    held = 0
    read = 0
    try:
        with sf.SoundFile(str(path)) as f:
            while True:
                data = f.read(in_frames, dtype="float32", always_2d=True)  # (frames, channels)
                last = len(data) == 0
                if not last and not np.isfinite(data).all():
                    raise AudioError(f"{path}: audio holds NaN or Inf samples; re-export it or remove it")
                read += len(data)
                if last and read == 0:
                    raise AudioError(f"{path}: empty audio (0 samples); remove it")
                x = np.ascontiguousarray(data.T)  # (channels, frames)
                y = resampler.flush() if last else resampler.process(to_mono(x) if mono else x)
                pending.append(y)
                held += y.shape[-1]
                while held >= out_frames or (last and held > 0):
                    joined = np.concatenate(pending, axis=-1)
                    n = min(out_frames, held)
                    yield joined[..., :n]
                    pending, held = [joined[..., n:]], held - n
                if last:
                    return
    except AudioError:
        raise
    except Exception as e:
        raise AudioError(f"{path}: cannot read audio ({_first_line(e, path)}); "
                         f"re-encode it as wav or flac, or remove it") from e


def encode_flac(x: np.ndarray, sample_rate: int, subtype: str = "PCM_16") -> bytes:
    """Mono (frames,) float32 -> FLAC file bytes (samples beyond [-1, 1] are clipped)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"encode_flac expects mono audio of shape (frames,), got {x.shape}")
    buf = io.BytesIO()
    sf.write(buf, np.clip(x, -1.0, 1.0), sample_rate, format="FLAC", subtype=subtype)
    return buf.getvalue()


def decode_flac(data: bytes | memoryview, start: int = 0,
                frames: int | None = None) -> tuple[np.ndarray, int]:
    """FLAC bytes -> (mono float32 samples [start, start + frames), sample_rate); decodes only that part."""
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            if start > 0:
                if start >= f.frames:
                    return np.zeros(0, dtype=np.float32), int(f.samplerate)
                f.seek(start)
            out = f.read(-1 if frames is None else frames, dtype="float32", always_2d=True)
            return to_mono(np.ascontiguousarray(out.T)), int(f.samplerate)
    except Exception as e:
        raise AudioError(f"embedded FLAC audio cannot be decoded ({_first_line(e)}); "
                         "the cache row is damaged: re-run the caching for that file") from e
