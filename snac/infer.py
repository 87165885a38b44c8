"""Inference helpers: chunked encoding/decoding with bounded memory, and a codes file format.

Long files are cut into chunks on the model's alignment grid (a multiple of
``lcm(vq_strides[0], attn_window_size or 1)`` latent frames, so every codebook and every attention
window starts at the same place as in a whole-file pass). Each chunk is processed together with
``context`` frames of its neighbours on both sides, and only its own span is kept. The context is
an upper bound of the receptive field computed from the model config, so the kept samples equal
those of a whole-file pass up to float rounding, except for the NoiseBlocks: they draw fresh
Gaussian noise on every call, so chunked and whole decodes differ by the noise term exactly as two
whole decodes with different seeds do. ``noise_disabled`` switches the noise off to measure the
seam error alone; ``seed`` reseeds the noise at every chunk (``chunk_seed``), so two decoders that
share noise blocks (a SNAC48 and its base) draw the same noise on every chunk, not only the first.

Encoding takes the signal as a stream of blocks (``encode_blocks``), so a file read and resampled
block by block (``snac.audio.iter_resampled_blocks``) is encoded with host memory bounded by one
chunk plus its context, whatever the file's length.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .layers import NoiseBlock, sub_seed
from .model import SNAC, SNACEncoder
from .model48 import SNAC48
from .presets import DEFAULT_BASE

RESIDUAL_RADIUS = 3 * (1 + 3 + 9)  # three k7 residual units, dilations 1, 3, 9: +-39 samples
CODES_FORMAT = "snac-codes"
CODES_SUFFIX = ".codes.npz"


def resolve_device(spec: str | None) -> torch.device:
    """'cpu' | 'cuda' | 'cuda:N' | 'N' -> torch.device (default: cuda:0 when there is one, else cpu);
    ValueError naming the fix for a GPU that is not there."""
    if spec is None:
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    spec = str(spec)
    dev = torch.device(f"cuda:{spec}" if spec.isdigit() else spec)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {spec} asks for a GPU but torch sees none; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {spec}: only {torch.cuda.device_count()} GPU(s) visible")
    return dev


def codec_config(model: SNAC | SNAC48) -> dict:
    """The config of the codec whose codes ``model`` decodes (the base config for a SNAC48)."""
    return model.base_config if isinstance(model, SNAC48) else model.config


def alignment_frames(config: dict) -> int:
    """Latent frames between chunk boundaries that keep every codebook and attention window aligned."""
    strides = config["vq_strides"]
    if any(strides[0] % s for s in strides):
        raise ValueError(f"vq_strides {strides}: chunking needs every stride to divide the first one")
    return math.lcm(strides[0], config["attn_window_size"] or 1)


def decoder_context_frames(model: SNAC | SNAC48) -> int:
    """Latent frames of context on each side that cover the decoder's receptive field.

    Bound from the architecture: depthwise/plain k7 input conv (3 frames), one attention window
    (when present), then per decoder block a transposed conv (1 input sample) and three residual
    units (39 output samples), the k7 output conv, and for a SNAC48 the head (one more upsampler,
    residual stack and its long final conv). Rounded up to the alignment grid.
    """
    cfg = codec_config(model)
    radius = 3.0 + (cfg["attn_window_size"] or 0)
    scale = 1  # output samples per latent frame so far
    for rate in cfg["decoder_rates"]:
        radius += 1 / scale + RESIDUAL_RADIUS / (scale * rate)
        scale *= rate
    if isinstance(model, SNAC48) and model.config["head"]["type"] == "lite":
        factor, taps = model.factor, model.config["head"]["interp_taps"]
        # the stock k7 conv + the interpolator at the base rate; the branch: upsampler, residual
        # stack and k7 conv at F x the rate
        radius += max((3 + taps) / scale, 1 / scale + (RESIDUAL_RADIUS + 3) / (scale * factor))
    elif isinstance(model, SNAC48):
        factor = model.factor
        kernel = model.head.conv.kernel_size[0]
        radius += 1 / scale + (RESIDUAL_RADIUS + kernel // 2) / (scale * factor)
    else:
        radius += 3 / scale  # final k7 conv
    align = alignment_frames(cfg)
    return math.ceil(radius / align) * align


def encoder_context_samples(model: SNAC) -> int:
    """Input samples of context on each side that cover the encoder's receptive field.

    Bound from the architecture: k7 input conv, per encoder block three residual units (39
    samples) and a strided conv of kernel 2*stride, an attention window, the k7 latent conv.
    Rounded up to ``pad_multiple``.
    """
    cfg = model.config
    radius = 3.0
    scale = 1  # input samples per sample at the current layer
    for rate in cfg["encoder_rates"]:
        radius += RESIDUAL_RADIUS * scale + 2 * rate * scale
        scale *= rate
    radius += ((cfg["attn_window_size"] or 0) + 3) * scale
    return math.ceil(radius / model.pad_multiple) * model.pad_multiple


@contextlib.contextmanager
def noise_disabled(model: nn.Module) -> Iterator[None]:
    """Temporarily turn every NoiseBlock into an identity (to compare decodes deterministically)."""
    blocks = [m for m in model.modules() if isinstance(m, NoiseBlock)]
    before = [block.enabled for block in blocks]
    for block in blocks:
        block.enabled = False
    try:
        yield
    finally:
        for block, enabled in zip(blocks, before):
            block.enabled = enabled


def set_position_noise(model: nn.Module, seed: int | None) -> None:
    """Give every NoiseBlock of ``model`` position-indexed noise: block i (in ``model.modules()``
    order) gets ``sub_seed(seed, i)``, so a streamed decode equals an offline one with the same
    seed, and a SNAC48 and its base draw the same trunk noise. ``None``: back to the global RNG."""
    blocks = [m for m in model.modules() if isinstance(m, NoiseBlock)]
    for index, block in enumerate(blocks):
        block.position_seed = None if seed is None else sub_seed(seed, index)


@contextlib.contextmanager
def position_noise(model: nn.Module, seed: int | None) -> Iterator[None]:
    """``set_position_noise`` for the duration of a ``with`` block (then the global RNG again)."""
    blocks = [m for m in model.modules() if isinstance(m, NoiseBlock)]
    before = [block.position_seed for block in blocks]
    set_position_noise(model, seed)
    try:
        yield
    finally:
        for block, seed_before in zip(blocks, before):
            block.position_seed = seed_before


def output_samples_per_frame(model: SNAC | SNAC48) -> int:
    """Decoded samples per latent frame: hop x (output rate / codec rate)."""
    if isinstance(model, SNAC48):
        return model.hop_length * model.factor
    return model.hop_length


def _as_1d(codes: list[torch.Tensor]) -> list[torch.Tensor]:
    out = []
    for c in codes:
        c = torch.as_tensor(c)
        if c.dim() == 2 and c.shape[0] == 1:
            c = c[0]
        if c.dim() != 1:
            raise ValueError(f"expected codes of one item: 1-D tensors or (1, T_i), got shape {tuple(c.shape)}")
        out.append(c.long())
    return out


def check_codes(model: SNAC | SNAC48, codes: list[torch.Tensor]) -> list[torch.Tensor]:
    """Validate one item's codes against the model (count, value range, lengths); return them 1-D."""
    cfg = codec_config(model)
    codes = _as_1d(codes)
    strides = cfg["vq_strides"]
    if len(codes) != len(strides):
        raise ValueError(f"got {len(codes)} codebooks but the model has {len(strides)} (strides {strides}); "
                         "were these codes made by another model?")
    spans = {len(c) * s for c, s in zip(codes, strides)}
    if len(spans) != 1:
        raise ValueError(f"code lengths {[len(c) for c in codes]} do not cover one time span with strides "
                         f"{strides}")
    for c in codes:
        if len(c) and (int(c.min()) < 0 or int(c.max()) >= cfg["codebook_size"]):
            raise ValueError(f"code values must lie in [0, {cfg['codebook_size']}); got "
                             f"[{int(c.min())}, {int(c.max())}]: codes from another model?")
    return codes


def _chunk_spans(total: int, chunk: int, context: int) -> Iterator[tuple[int, int, int, int]]:
    """(keep_start, keep_end, piece_start, piece_end) over [0, total) with ``context`` each side."""
    for start in range(0, total, chunk):
        end = min(start + chunk, total)
        yield start, end, max(0, start - context), min(total, end + context)


def chunk_frames(config: dict, chunk_seconds: float) -> int:
    """Chunk length in latent frames for ``chunk_seconds`` of audio, on the alignment grid (>= 1 step)."""
    hop = math.prod(config["encoder_rates"])
    align = alignment_frames(config)
    frames = chunk_seconds * config["sampling_rate"] / hop
    return max(align, int(frames // align) * align)


def chunk_seed(seed: int, index: int) -> int:
    """The torch seed of chunk ``index`` of a decode seeded with ``seed`` (independent streams)."""
    return sub_seed(seed, index)


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@torch.inference_mode()
def iter_decode(model: SNAC | SNAC48, codes: list[torch.Tensor], chunk_seconds: float | None = 30.0,
                context_frames: int | None = None, device: str | torch.device | None = None,
                seed: int | None = None, precision: str = "fp32") -> Iterator[np.ndarray]:
    """Decode one item's codes chunk by chunk; yields float32 arrays at ``model.sampling_rate``.

    The concatenation has ``len(codes[-1]) * vq_strides[-1] * samples_per_frame`` samples, the
    same as ``model.decode`` (nothing trimmed). ``chunk_seconds=None`` decodes in one piece.
    Device memory is bounded by one chunk plus its context. ``seed``: torch is seeded with
    ``chunk_seed(seed, i)`` before chunk i, so the noise of a chunk does not depend on what the
    chunks before it drew (None: the global RNG runs on). ``precision`` bf16 / fp16: the decoder
    runs under autocast (the output is float32 either way).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    cfg = codec_config(model)
    codes = check_codes(model, codes)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    strides = cfg["vq_strides"]
    total = len(codes[0]) * strides[0]  # latent frames
    if total == 0:
        return
    chunk = total if chunk_seconds is None else chunk_frames(cfg, chunk_seconds)
    context = decoder_context_frames(model) if context_frames is None else context_frames
    if context % alignment_frames(cfg):
        raise ValueError(f"context_frames must be a multiple of {alignment_frames(cfg)} (alignment grid)")
    spf = output_samples_per_frame(model)
    for index, (keep_start, keep_end, start, end) in enumerate(_chunk_spans(total, chunk, context)):
        if seed is not None:
            torch.manual_seed(chunk_seed(seed, index))
        piece = [c[start // s:end // s].unsqueeze(0).to(device) for c, s in zip(codes, strides)]
        with torch.autocast(device.type, dtype=PRECISIONS[precision], enabled=PRECISIONS[precision] is not None):
            audio = model.decode(piece)[0, 0]  # (1, 1, (end - start) * spf) -> (samples,)
        yield audio[(keep_start - start) * spf:(keep_end - start) * spf].float().cpu().numpy()


def decode_codes(model: SNAC | SNAC48, codes: list[torch.Tensor], chunk_seconds: float | None = 30.0,
                 context_frames: int | None = None, device: str | torch.device | None = None,
                 seed: int | None = None, precision: str = "fp32") -> np.ndarray:
    """Chunked decode of one item's codes into one float32 array (see ``iter_decode``)."""
    parts = list(iter_decode(model, codes, chunk_seconds, context_frames, device, seed, precision))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def encode_audio(model: SNACEncoder, audio: torch.Tensor | np.ndarray, chunk_seconds: float | None = 30.0,
                 context_samples: int | None = None, device: str | torch.device | None = None
                 ) -> list[torch.Tensor]:
    """Encode one mono signal at ``model.sampling_rate`` in overlapping chunks; returns 1-D int64 codes.

    Chunks and contexts are multiples of ``pad_multiple``; the signal is right-padded once, like
    ``model.encode``, so the codes equal a whole-file encode except at float near-ties.
    """
    return encode_blocks(model, [audio], chunk_seconds, context_samples, device)


@torch.inference_mode()
def encode_blocks(model: SNACEncoder, blocks: Iterable[torch.Tensor | np.ndarray],
                  chunk_seconds: float | None = 30.0, context_samples: int | None = None,
                  device: str | torch.device | None = None) -> list[torch.Tensor]:
    """``encode_audio`` of the concatenation of ``blocks`` (any lengths), read as they come.

    A chunk is encoded as soon as its span plus ``context`` samples after it have arrived, so only
    one chunk plus its context plus one block is held, and the codes are the same as
    ``encode_audio`` of the whole signal (the chunk spans are the same). ``chunk_seconds=None``
    holds the whole signal and encodes it in one piece.
    """
    if not isinstance(model, SNACEncoder):
        raise TypeError(f"encoding needs a SNAC with an encoder, got {type(model).__name__}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    mult = model.pad_multiple
    chunk = None if chunk_seconds is None else \
        max(mult, int(chunk_seconds * model.sampling_rate) // mult * mult)
    context = encoder_context_samples(model) if context_samples is None else context_samples
    if context % mult:
        raise ValueError(f"context_samples must be a multiple of pad_multiple={mult}")
    frame_samples = [model.hop_length * s for s in model.vq_strides]  # input samples per code
    out: list[list[torch.Tensor]] = [[] for _ in model.vq_strides]

    def encode_span(buffer: torch.Tensor, offset: int, span: tuple[int, int, int, int]) -> None:
        keep_start, keep_end, start, end = span  # absolute samples; buffer[0] is sample ``offset``
        piece = buffer[start - offset:end - offset].reshape(1, 1, -1).to(device)
        codes = model.encode(piece)  # list of (1, (end - start) / frame_samples_i)
        for i, (c, n) in enumerate(zip(codes, frame_samples)):
            out[i].append(c[0, (keep_start - start) // n:(keep_end - start) // n].cpu())

    pending: list[torch.Tensor] = []  # received samples from ``offset`` on, not yet concatenated
    offset, received, next_start = 0, 0, 0  # next_start: first sample of the next chunk to keep
    for block in blocks:
        block = torch.as_tensor(block, dtype=torch.float32).reshape(-1)
        pending.append(block)
        received += len(block)
        # a chunk whose span and right context have all arrived is encoded as in a whole pass
        # (there the signal runs on past end + context too, so the spans agree)
        if chunk is None or received < next_start + chunk + context:
            continue
        buffer = torch.cat(pending)
        while received >= next_start + chunk + context:
            span = (next_start, next_start + chunk, max(0, next_start - context), next_start + chunk + context)
            encode_span(buffer, offset, span)
            next_start += chunk
        drop = max(0, next_start - context) - offset  # samples no later piece reads
        buffer, offset = buffer[drop:], offset + drop
        pending = [buffer]
    if received == 0:
        raise ValueError("cannot encode an empty signal")
    buffer = torch.cat(pending)
    buffer = nn.functional.pad(buffer, (0, -received % mult))  # the whole signal's right padding
    total = received + (-received % mult)
    step = total if chunk is None else chunk
    for span in _chunk_spans(total, step, context):
        if span[0] >= next_start:
            encode_span(buffer, offset, span)
    return [torch.cat(parts) for parts in out]


# ---- codes files --------------------------------------------------------------------------------

def save_codes(path: str | os.PathLike, codes: list[torch.Tensor], meta: dict) -> None:
    """Write one item's codes to ``.npz``: ``codes_0`` (coarsest) ... plus ``meta`` as JSON text.

    ``meta`` should hold ``model_config`` (the codec config) and the source audio's
    ``source_sample_rate`` and ``source_num_samples`` so a decode can be trimmed to its duration.
    Plain arrays only: numpy opens it with ``allow_pickle=False``.
    """
    codes = _as_1d(codes)
    size = meta.get("model_config", {}).get("codebook_size", 1 << 31)
    dtype = np.int16 if size <= np.iinfo(np.int16).max + 1 else np.int32
    arrays = {f"codes_{i}": c.numpy().astype(dtype) for i, c in enumerate(codes)}
    meta = dict(meta, format=CODES_FORMAT, version=1, num_codebooks=len(codes))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, meta=np.array(json.dumps(meta)), **arrays)
    os.replace(tmp, path)


def load_codes(path: str | os.PathLike) -> tuple[list[torch.Tensor], dict]:
    """Read a file written by ``save_codes``: (list of 1-D int64 codes, meta dict)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if meta.get("format") != CODES_FORMAT:
                raise KeyError("format")
            codes = [torch.from_numpy(data[f"codes_{i}"].astype(np.int64))
                     for i in range(meta["num_codebooks"])]
    except (KeyError, ValueError, OSError) as e:
        raise ValueError(f"{path} is not a codes file written by inference.py --save_codes ({e})") from e
    return codes, meta


def normalise_codec_config(config: dict) -> dict:
    """A codec config with ``latent_dim`` filled in and lists as lists, for comparisons."""
    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
    if cfg.get("latent_dim") is None:
        cfg["latent_dim"] = cfg["encoder_dim"] * 2 ** len(cfg["encoder_rates"])
    return cfg


def same_codec(a: dict, b: dict) -> bool:
    """True when two codec configs describe the same codec (so their codes are interchangeable)."""
    return normalise_codec_config(a) == normalise_codec_config(b)


def config_difference(a: dict, b: dict) -> str:
    """'key: a vs b, ...' for the keys where two codec configs differ."""
    a, b = normalise_codec_config(a), normalise_codec_config(b)
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return ", ".join(f"{k}: {a.get(k)} vs {b.get(k)}" for k in keys)


def recorded_base_model(checkpoint: str | os.PathLike) -> str | None:
    """The base model a checkpoint names, when it is usable here (an existing path or a hub id):
    a training checkpoint's ``config["pretrained_model"]``, an export directory's ``base_model``.
    None otherwise."""
    from .hub import CONFIG_NAME, looks_like_hub_id

    path = Path(checkpoint)
    try:
        if path.is_file():
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            spec = (ckpt.get("config") or {}).get("pretrained_model")
        elif (path / CONFIG_NAME).is_file():
            spec = json.loads((path / CONFIG_NAME).read_text()).get("base_model")
        else:
            return None
    except Exception:
        return None
    if not spec:
        return None
    spec = str(spec)
    return spec if Path(spec).exists() or looks_like_hub_id(spec) else None


def held_base_encoder(checkpoint: str | os.PathLike) -> SNACEncoder | None:
    """The base encoder + quantizer a standalone 48 kHz export holds; None when it holds none."""
    from .hub import resolve_extra_file
    from .model import BASE_ENCODER_NAME

    path = Path(checkpoint)
    if path.is_file() or resolve_extra_file(checkpoint, BASE_ENCODER_NAME) is None:
        return None
    return SNACEncoder.from_pretrained(checkpoint)


def expected_codes_fingerprint(checkpoint: str | os.PathLike, model: SNAC | SNAC48,
                               base: SNACEncoder | None = None) -> str | None:
    """``weights_fingerprint`` (the cache's: encoder + quantizer) of the weights whose codes ``model``
    decodes: its own for a plain SNAC, else the base's (given, held by an export, or recorded in a
    training checkpoint). None when nothing tells (an export without its base encoder)."""
    from .cache.format import weights_fingerprint

    if isinstance(model, SNAC):
        return weights_fingerprint(model)
    if base is not None:
        return weights_fingerprint(base)
    if Path(checkpoint).is_file():
        return torch.load(checkpoint, map_location="cpu", weights_only=True).get("base_weights_fingerprint")
    held = held_base_encoder(checkpoint)
    return None if held is None else weights_fingerprint(held)


def load_codec_pair(checkpoint: str | os.PathLike, base_model: str | None, need_encoder: bool,
                    need_stock: bool, default_base: str = DEFAULT_BASE
                    ) -> tuple[SNAC | SNAC48, SNACEncoder | None, str | None]:
    """Load a checkpoint's decoder and, when needed, its base.

    The base is loaded when ``need_stock`` (the stock decoder is wanted: a full SNAC) or when
    ``need_encoder`` and the model has no encoder of its own (a SNAC48). Returns (model, base or
    None, base spec). Without ``base_model``, an export's own base encoder is used when only the
    encoder is needed (no network, no pointer to follow); otherwise the base is the checkpoint's
    recorded base model, else ``default_base``. A base whose codec config differs from the model's
    is refused (ValueError naming the differing keys). Both in eval mode, on CPU.
    """
    from .hub import load_model

    model = load_model(checkpoint).eval()
    if not (need_stock or (need_encoder and isinstance(model, SNAC48))):
        return model, None, None
    base, spec = None, base_model
    if base_model is None and not need_stock:
        base = held_base_encoder(checkpoint)
        spec = f"the base encoder held in {checkpoint}" if base is not None else None
    if base is None:
        spec = base_model or recorded_base_model(checkpoint) or default_base
        try:
            base = load_model(spec).eval()
        except (FileNotFoundError, RuntimeError) as e:
            raise type(e)(f"base model: {e}. Pass --base_model with the local directory of the base "
                          "model the checkpoint was trained from") from e
    if not isinstance(base, SNACEncoder):
        raise ValueError(f"base model {spec} is a 48 kHz model; pass the 24 kHz base it was trained from "
                         f"(e.g. {default_base})")
    if not same_codec(base.config, codec_config(model)):
        raise ValueError(f"base model {spec} is not the codec this checkpoint decodes "
                         f"({config_difference(base.config, codec_config(model))}); pass the run's "
                         "--pretrained_model as --base_model")
    return model, base, spec
