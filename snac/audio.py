"""Audio helpers shared by the cache, the trainer and inference.

Everything reads with soundfile (torchaudio 2.11 I/O would need torchcodec and FFmpeg) and resamples
with ``torchaudio.functional.resample``. Arrays are float32; multichannel arrays are (channels, frames),
mono arrays are (frames,). Every failure raises ``AudioError`` (or ``FileNotFoundError``) with one line
that names the file, the problem and the fix.

Public API (kept stable; other modules import it):

- ``AUDIO_EXTENSIONS``: suffixes the project treats as audio.
- ``AudioError``: a file exists but cannot be used as audio.
- ``audio_info(path) -> AudioInfo(frames, sample_rate, channels)``: header only.
- ``load_audio(path, mono=False) -> (array, sample_rate)``.
- ``to_mono(x) -> (frames,)``.
- ``resample(x, orig_sr, new_sr)``: torch tensor or numpy array in, same type out, time on the last axis.
- ``resampled_length(frames, orig_sr, new_sr) -> int``: what ``resample`` returns (ceil).
- ``read_window(path, start, frames, target_sr) -> (n,) float32``: a window at ``target_sr`` read by seeking.
- ``encode_flac(x, sample_rate) -> bytes`` / ``decode_flac(data, start=0, frames=None) -> (x, sr)``.
"""

from __future__ import annotations

import io
import math
import os
from typing import NamedTuple

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")

# torchaudio's default sinc filter: 6 zero crossings each side of the lower of the two rates.
_LOWPASS_FILTER_WIDTH = 6


class AudioError(ValueError):
    """A file exists but cannot be used as audio (corrupt, empty, unsupported, non-finite)."""


class AudioInfo(NamedTuple):
    frames: int
    sample_rate: int
    channels: int


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


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
        raise AudioError(f"{path}: cannot read audio ({_first_line(e)}); "
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
        raise AudioError(f"{path}: cannot read audio ({_first_line(e)}); "
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


def resampled_length(frames: int, orig_sr: int, new_sr: int) -> int:
    """Length that ``resample`` returns for ``frames`` input samples (torchaudio rounds up)."""
    return frames if orig_sr == new_sr else math.ceil(frames * new_sr / orig_sr)


def resample(x: torch.Tensor | np.ndarray, orig_sr: int, new_sr: int) -> torch.Tensor | np.ndarray:
    """Resample along the last axis (torchaudio's windowed sinc). Returns the input's type.

    (..., T) -> (..., resampled_length(T, orig_sr, new_sr)).
    """
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {new_sr}")
    if orig_sr == new_sr:
        return x
    if isinstance(x, np.ndarray):
        y = AF.resample(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), orig_sr, new_sr)
        return y.numpy()
    return AF.resample(x, orig_sr, new_sr)


def _source_margin(orig_sr: int, new_sr: int) -> int:
    """Source samples each side of a window that the resampling filter reaches (plus slack)."""
    return 2 * math.ceil(_LOWPASS_FILTER_WIDTH * orig_sr / min(orig_sr, new_sr)) + 8


def read_window(path: str | os.PathLike, start: int, frames: int | None, target_sr: int) -> np.ndarray:
    """Read samples [start, start + frames) of the file resampled to ``target_sr``, mono float32.

    Only the needed part of the file is read (seek). When the file's rate differs from
    ``target_sr``, a source range with a margin on each side is read, resampled and cut, so the
    result matches resampling the whole file and slicing (up to float rounding). The window is
    shorter than ``frames`` (possibly empty) where it runs past the end. ``frames=None`` reads to
    the end.
    """
    if start < 0:
        raise ValueError(f"window start must be >= 0, got {start}")
    info = audio_info(path)
    total = resampled_length(info.frames, info.sample_rate, target_sr)
    end = total if frames is None else min(total, start + max(0, frames))
    if end <= start:
        return np.zeros(0, dtype=np.float32)
    sr = info.sample_rate
    try:
        with sf.SoundFile(str(path)) as f:
            if sr == target_sr:
                f.seek(start)
                data = f.read(end - start, dtype="float32", always_2d=True)
                return to_mono(np.ascontiguousarray(data.T))
            # Start the source read on a sample whose time lies on the target grid, so output
            # sample 0 of the chunk is target sample (src_start * target_sr / sr) exactly.
            g = math.gcd(sr, target_sr)
            step_src, step_dst = sr // g, target_sr // g
            margin = _source_margin(sr, target_sr)
            src_start = max(0, (start * sr // target_sr - margin) // step_src * step_src)
            src_end = min(info.frames, math.ceil(end * sr / target_sr) + margin)
            f.seek(src_start)
            data = f.read(src_end - src_start, dtype="float32", always_2d=True)
    except Exception as e:
        raise AudioError(f"{path}: cannot read window [{start}, {end}) at {target_sr} Hz "
                         f"({_first_line(e)})") from e
    x = to_mono(np.ascontiguousarray(data.T))
    y = resample(x, sr, target_sr)
    offset = start - src_start // step_src * step_dst
    return np.ascontiguousarray(y[offset:offset + end - start], dtype=np.float32)


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
