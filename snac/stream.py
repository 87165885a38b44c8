"""Streaming decode: codes pushed a few coarse frames at a time, audio out as soon as it is final.

    dec = StreamingDecoder(model)            # a SNAC or a SNAC48 (any head)
    pcm = dec.push(codes_of_k_frames)        # list of (B, n_i) ints -> (B, 1, m) final samples
    tail = dec.flush()                       # the rest, at the end of the stream

How: the decoder is rebuilt as a graph of streaming nodes, one per layer, each holding only the
state it still needs. A conv keeps the last ``(kernel - 1) * dilation`` inputs (its left context)
and emits an output only once its right context has arrived; a transposed conv keeps the inputs
that still overlap the next outputs; a residual unit keeps the skip input until the block's
(later) output at the same position is out; an attention layer emits whole windows (they do not
overlap); the lite head's two branches are joined position by position. At ``flush`` every layer
pads its input's end with zeros, as the whole-file decode does, so the concatenated output equals
``model.decode(all codes)`` to float rounding and has its length. No sample is computed twice.

The latency is the decoder's right receptive field, derived from the layers (``final_count`` of
every node: how many outputs are final once n inputs have arrived), not a constant. With
``lookahead_ms`` below it the decoder also emits the samples that would still wait for right
context, taken from a throw-away flush of a copy of the state: "as if the stream ended here"
(zero padding at every layer's end, exactly what the offline decode does at a file's end). Those
samples are approximate; their error is measured by ``benchmarks/bench_stream.py``.

Noise: a NoiseBlock draws from the global RNG on every call unless it has a ``position_seed``
(``snac.infer.position_noise(model, seed)``), which makes its noise a function of the position;
then a seeded stream equals a seeded offline decode.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .attention import LocalMHA
from .infer import alignment_frames, codec_config, output_samples_per_frame, position_noise
from .layers import DecoderBlock, NoiseBlock, ResidualUnit, Snake1d
from .model import SNAC
from .model48 import SNAC48, LiteHead, SincUpsample, UpsampleHead


MATMUL_BELOW = 16  # a transposed conv on fewer new inputs than this runs as one matmul


# ---- streaming nodes: step(x, final) takes the next inputs, returns the next final outputs ----
class _Node:
    def step(self, x: torch.Tensor, final: bool) -> torch.Tensor:
        """x: (B, C, n) the inputs after those already given; returns the outputs that are final
        now, after those already returned. ``final``: the stream ends after x (pad its end)."""
        raise NotImplementedError

    def final_count(self, n: int) -> int:
        """Outputs that are final once n inputs have arrived (the stream not ended)."""
        return n

    def nodes(self) -> list["_Node"]:
        return [self]


class _Pointwise(_Node):
    def __init__(self, fn):
        self.fn = fn

    def step(self, x, final):
        return self.fn(x)


class _ZeroStuff(_Node):
    """(B, C, n) -> (B, C, F*n): sample F*m is input m, the rest 0 (the interpolations of the lite and sinc heads)."""

    def __init__(self, factor: int):
        self.factor = factor

    def step(self, x, final):
        out = x.new_zeros(x.shape[0], x.shape[1], self.factor * x.shape[-1])
        out[..., ::self.factor] = x
        return out

    def final_count(self, n):
        return self.factor * n


class _Conv(_Node):
    """Stride-1 conv with zero padding ``padding`` on both ends: output t reads inputs
    t - padding ... t - padding + span, so it waits for ``span - padding`` inputs after t."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, padding: int, dilation: int = 1,
                 groups: int = 1):
        self.weight, self.bias = weight.detach(), None if bias is None else bias.detach()
        self.padding, self.dilation, self.groups = padding, dilation, groups
        self.span = (weight.shape[-1] - 1) * dilation
        self.buf: torch.Tensor | None = None  # inputs from (next output - padding) on

    @classmethod
    def of(cls, conv: nn.Conv1d) -> "_Conv":
        if conv.stride[0] != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise TypeError(f"no streaming form for {conv}: only stride-1 convs with numeric zero padding")
        return cls(conv.weight, conv.bias, conv.padding[0], conv.dilation[0], conv.groups)

    def step(self, x, final):
        if self.span == 0 and self.padding == 0:  # 1x1: nothing to keep
            if x.shape[-1] == 0:
                return x.new_zeros(x.shape[0], self.weight.shape[0], 0)
            return F.conv1d(x, self.weight, self.bias, groups=self.groups)
        if self.buf is None:  # left zero padding
            self.buf = x.new_zeros(x.shape[0], x.shape[1], self.padding)
        buf = torch.cat((self.buf, x), -1)
        if final:  # right zero padding
            buf = F.pad(buf, (0, self.padding))
        n = buf.shape[-1] - self.span  # outputs whose whole window is in buf
        if n <= 0:
            self.buf = buf
            return x.new_zeros(x.shape[0], self.weight.shape[0], 0)
        self.buf = buf[..., n:]
        return F.conv1d(buf, self.weight, self.bias, dilation=self.dilation, groups=self.groups)

    def final_count(self, n):
        return max(0, n + self.padding - self.span)


class _ConvTranspose(_Node):
    """Transposed conv (stride s, kernel k, padding p, output_padding): full-output sample u reads
    inputs floor((u - k + 1) / s) ... floor(u / s), so u is final once input floor(u / s) is in;
    the output is the full output from u = p on."""

    def __init__(self, conv: nn.ConvTranspose1d):
        if conv.dilation[0] != 1 or conv.padding_mode != "zeros":
            raise TypeError(f"no streaming form for {conv}: only dilation 1 and zero padding")
        self.weight = conv.weight.detach()
        self.bias = None if conv.bias is None else conv.bias.detach()
        self.stride, self.padding, self.groups = conv.stride[0], conv.padding[0], conv.groups
        self.kernel, self.output_padding = self.weight.shape[-1], conv.output_padding[0]
        self.keep = -(-self.kernel // self.stride) - 1  # earlier inputs the next outputs still read
        # on a few inputs as one matmul (torch's transposed conv took 10x longer on 5 inputs of 1024
        # channels; on many it is the faster): the kernel zero-padded to (keep + 1) strides,
        # (C_in, C_out, (keep + 1) s) -> (C_in, C_out * (keep + 1) * s)
        if self.groups == 1:
            w = F.pad(self.weight, (0, (self.keep + 1) * self.stride - self.kernel))
            self.matrix = w.reshape(w.shape[0], -1)
        self.prev: torch.Tensor | None = None
        self.to_drop, self.inputs, self.outputs = self.padding, 0, 0

    def step(self, x, final):
        s, keep = self.stride, self.keep
        if self.prev is None:
            self.prev = x.new_zeros(x.shape[0], x.shape[1], keep)
        self.inputs += x.shape[-1]
        if final:  # zero inputs after the end: every output that reads the last input is then out
            x = F.pad(x, (0, keep))
        n = x.shape[-1]
        buf = torch.cat((self.prev, x), -1)
        self.prev = buf[..., buf.shape[-1] - keep:]
        if n == 0:
            return x.new_zeros(x.shape[0], self.weight.shape[1] * self.groups, 0)
        y = self._new_outputs(buf)
        if self.to_drop:  # the first ``padding`` outputs are cropped away
            cut = min(self.to_drop, y.shape[-1])
            y, self.to_drop = y[..., cut:], self.to_drop - cut
        if final:
            total = (self.inputs - 1) * s - 2 * self.padding + self.kernel + self.output_padding
            y = y[..., :max(0, total - self.outputs)]
        self.outputs += y.shape[-1]
        return y

    def _new_outputs(self, buf: torch.Tensor) -> torch.Tensor:
        """(B, C, keep + n) -> (B, C', n s): full-output samples [keep s, (keep + n) s), which read
        only these inputs (and no later ones)."""
        s, keep, n = self.stride, self.keep, buf.shape[-1] - self.keep
        if self.groups != 1 or n >= MATMUL_BELOW:
            return F.conv_transpose1d(buf, self.weight, self.bias, stride=s, groups=self.groups)[..., keep * s:(keep + n) * s]
        b = buf.shape[0]
        # input i adds parts[i, :, r] to output block i + r (block q: samples [q s, (q + 1) s))
        parts = (buf.transpose(1, 2) @ self.matrix).view(b, keep + n, -1, keep + 1, s)
        y = parts[:, keep:, :, 0]
        for r in range(1, keep + 1):
            y = y + parts[:, keep - r:keep + n - r, :, r]
        y = y.permute(0, 2, 1, 3).reshape(b, -1, n * s)  # (B, n, C', s) -> (B, C', n s)
        return y if self.bias is None else y + self.bias[:, None]

    def final_count(self, n):
        return max(0, n * self.stride - self.padding)


class _Noise(_Node):
    def __init__(self, block: NoiseBlock):
        self.block, self.weight, self.position = block, block.linear.weight.detach(), 0

    def step(self, x, final):
        if not self.block.enabled or x.shape[-1] == 0:
            return x
        b, _, t = x.shape
        noise = self.block.draw(b, t, self.position, x.device, x.dtype)
        self.position += t
        return x + noise * F.conv1d(x, self.weight)  # NoiseBlock.forward, its 1x1 conv folded


class _Attention(_Node):
    """Non-overlapping windows: a window is emitted once its last input is in. At the end a partial
    window is zero-padded (reached only by the approximate lookahead: a real stream's length is
    checked to be whole windows, as the offline decode requires)."""

    def __init__(self, attention: LocalMHA):
        self.attention, self.window = attention, attention.window_size
        self.buf: torch.Tensor | None = None

    def step(self, x, final):
        buf = x if self.buf is None else torch.cat((self.buf, x), -1)
        n = buf.shape[-1]
        whole = n // self.window * self.window
        if final and whole < n:
            y = self.attention(F.pad(buf, (0, whole + self.window - n)))[..., :n]
            self.buf = buf[..., n:]
            return y
        self.buf = buf[..., whole:]
        return self.attention(buf[..., :whole]) if whole else buf[..., :0]

    def final_count(self, n):
        return n // self.window * self.window


class _Chain(_Node):
    def __init__(self, nodes: list[_Node]):
        self.children = nodes

    def step(self, x, final):
        for node in self.children:
            x = node.step(x, final)
        return x

    def final_count(self, n):
        for node in self.children:
            n = node.final_count(n)
        return n

    def nodes(self):
        return [self] + [n for child in self.children for n in child.nodes()]


class _Join(_Node):
    """Two branches of the same input, joined sample by sample by ``combine`` once both have it."""

    def __init__(self, a: _Node, b: _Node, combine):
        self.a, self.b, self.combine = a, b, combine
        self.pending_a: torch.Tensor | None = None
        self.pending_b: torch.Tensor | None = None

    def step(self, x, final):
        ya, yb = self.a.step(x, final), self.b.step(x, final)
        if self.pending_a is not None:
            ya, yb = torch.cat((self.pending_a, ya), -1), torch.cat((self.pending_b, yb), -1)
        m = min(ya.shape[-1], yb.shape[-1])
        self.pending_a, self.pending_b = ya[..., m:], yb[..., m:]
        return self.combine(ya[..., :m], yb[..., :m])

    def final_count(self, n):
        return min(self.a.final_count(n), self.b.final_count(n))

    def nodes(self):
        return [self] + self.a.nodes() + self.b.nodes()


class _Residual(_Join):
    """x + block(x): the skip input waits for the block's output at the same position."""

    def __init__(self, block: _Node):
        super().__init__(_Pointwise(lambda x: x), block, lambda skip, y: skip + y)


def _build(module: nn.Module) -> _Node:
    """The streaming form of a decoder module (its weights read now: build after loading them)."""
    if isinstance(module, nn.Sequential):
        return _Chain([_build(m) for m in module])
    if isinstance(module, DecoderBlock):
        return _build(module.block)
    if isinstance(module, ResidualUnit):
        return _Residual(_build(module.block))
    if isinstance(module, nn.Conv1d):
        return _Conv.of(module)
    if isinstance(module, nn.ConvTranspose1d):
        return _ConvTranspose(module)
    if isinstance(module, NoiseBlock):
        return _Noise(module)
    if isinstance(module, LocalMHA):
        return _Attention(module)
    if isinstance(module, (Snake1d, nn.Tanh, nn.Identity)):
        return _Pointwise(module)
    if isinstance(module, SincUpsample):
        return _Chain([_ZeroStuff(module.factor), _Conv(module.kernel, None, module.kernel.shape[-1] // 2,
                                                        groups=module.channels)])
    if isinstance(module, UpsampleHead):
        return _Chain([_build(m) for m in (module.upsample, module.noise, module.residual, module.snake,
                                           module.conv, module.tanh)])
    if isinstance(module, LiteHead):  # tanh(interpolate(conv(snake(x))) + gain * branch(x))
        interp = module.interp
        stock = _Chain([_build(module.snake), _build(module.conv), _ZeroStuff(module.factor),
                        _Conv(interp, None, interp.shape[-1] // 2)])
        branch = _Chain([_build(m) for m in (module.branch_in, module.branch_up, module.noise, module.residual,
                                             module.branch_snake, module.branch_out)])
        gain = module.branch_gain
        return _Join(stock, branch, lambda a, b: torch.tanh(a + gain * b))
    raise TypeError(f"no streaming form for {type(module).__name__}")


# ---- the decoder ----
class StreamingDecoder:
    """Decode a SNAC's or a SNAC48's codes as they arrive, whole coarse frames at a time.

    ``lookahead_ms=None`` (exact): the output equals ``model.decode(all codes)`` to float rounding
    (noise off, or position-seeded noise) and lags the codes by ``latency_samples``, the decoder's
    right receptive field. A smaller ``lookahead_ms`` lags less and is approximate near each push's
    end (zero padding of the missing right context). The model's weights are read when the decoder
    is built; every stream of a batch advances together.
    """

    def __init__(self, model: SNAC | SNAC48, lookahead_ms: float | None = None):
        if not isinstance(model, (SNAC, SNAC48)):
            raise TypeError(f"StreamingDecoder needs a SNAC or a SNAC48, got {type(model).__name__}")
        cfg = codec_config(model)
        self.model = model
        self.vq_strides = list(cfg["vq_strides"])
        self.codebook_size = cfg["codebook_size"]
        self.period = alignment_frames(cfg)  # latent frames; raises unless every stride divides the first
        self.frame_latents = self.vq_strides[0]  # latent frames per coarse frame
        self.sampling_rate = model.sampling_rate
        self.samples_per_latent = output_samples_per_frame(model)
        self.samples_per_frame = self.frame_latents * self.samples_per_latent  # output samples per coarse frame
        parts = [model.decoder.model] + ([model.head] if isinstance(model, SNAC48) else [])
        self._graph = _Chain([_build(part) for part in parts])
        self.exact_latency_samples = self._derive_latency()
        if lookahead_ms is None:
            self.latency_samples = self.exact_latency_samples
        else:
            if not (isinstance(lookahead_ms, (int, float)) and math.isfinite(lookahead_ms) and lookahead_ms >= 0):
                raise ValueError(f"lookahead_ms must be a number >= 0 (or None for exact), got {lookahead_ms!r}")
            self.latency_samples = min(self.exact_latency_samples, round(lookahead_ms * self.sampling_rate / 1000))
        self.frames = 0          # coarse frames pushed
        self.exact_samples = 0   # samples the graph has made final
        self.emitted = 0         # samples returned (>= exact_samples with a short lookahead)
        self.batch: int | None = None
        self.flushed = False
        self._empty: torch.Tensor | None = None  # (B, latent_dim, 0): the graph's input at flush

    @property
    def latency_ms(self) -> float:
        return 1000 * self.latency_samples / self.sampling_rate

    def _derive_latency(self) -> int:
        """Largest lag (samples received - samples final) over push boundaries, from the layers'
        ``final_count``. Past the first push with output no clamp binds, so the lag is periodic
        with the alignment period from there: one period more covers it."""
        lags, n, first = [], 0, None
        per_period = self.period // self.frame_latents
        while first is None or n < first + per_period:
            n += 1
            final = self._graph.final_count(n * self.frame_latents)
            lags.append(n * self.samples_per_frame - final)
            if final > 0 and first is None:
                first = n
        return max(lags)

    def _check_codes(self, codes) -> list[torch.Tensor]:
        strides, s0 = self.vq_strides, self.vq_strides[0]
        if not isinstance(codes, (list, tuple)) or len(codes) != len(strides):
            got = f"{len(codes)} tensors" if isinstance(codes, (list, tuple)) else type(codes).__name__
            raise ValueError(f"push takes a list of {len(strides)} code tensors (one per codebook, strides "
                             f"{strides}), got {got}")
        k = None
        device = next(self.model.parameters()).device
        for i, (c, s) in enumerate(zip(codes, strides)):
            if not isinstance(c, torch.Tensor):
                raise TypeError(f"codebook {i}: expected a torch tensor of shape (B, n), got {type(c).__name__}")
            if c.dtype.is_floating_point or c.dtype.is_complex or c.dtype == torch.bool:
                raise TypeError(f"codebook {i}: codes must be an integer tensor, got {c.dtype}: pass token ids "
                                "as torch.long")
            if c.dim() != 2:
                raise ValueError(f"codebook {i}: expected shape (B, n), got {tuple(c.shape)}")
            per_frame = s0 // s
            if c.shape[1] == 0 or c.shape[1] % per_frame:
                raise ValueError(f"codebook {i} has {c.shape[1]} codes: not a whole number (>= 1) of coarse "
                                 f"frames of {per_frame} codes (strides {strides}); push whole frames only")
            if k is None:
                k = c.shape[1] // per_frame
            elif c.shape[1] != k * per_frame:
                raise ValueError(f"codebook {i} has {c.shape[1]} codes but codebook 0 holds {k} frames "
                                 f"({k * per_frame} expected)")
            if c.shape[0] != (self.batch if self.batch is not None else codes[0].shape[0]):
                raise ValueError(f"codebook {i}: batch size {c.shape[0]}, the stream's is "
                                 f"{self.batch or codes[0].shape[0]}; every push holds the same streams")
            lo, hi = int(c.min()), int(c.max())
            if lo < 0 or hi >= self.codebook_size:
                raise ValueError(f"codebook {i}: code values must lie in [0, {self.codebook_size}), got "
                                 f"[{lo}, {hi}]: codes of another model, or TTS token offsets not removed?")
        return [c.to(device, torch.long) for c in codes]

    def _check_open(self) -> None:
        if self.flushed:
            raise RuntimeError("push/flush after flush(): the stream has ended; make a new StreamingDecoder")

    @torch.inference_mode()
    def push(self, codes: list[torch.Tensor]) -> torch.Tensor:
        """codes: one (B, n_i) integer tensor per codebook, k >= 1 whole coarse frames
        (n_i = k * vq_strides[0] / vq_strides[i]) -> (B, 1, m) samples final now (m may be 0)."""
        self._check_open()
        codes = self._check_codes(codes)
        self.batch = codes[0].shape[0]
        z = self.model.quantizer.from_codes(codes)  # (B, latent_dim, k * vq_strides[0])
        self._empty = z[..., :0]
        self.frames += codes[0].shape[1]
        return self._emit(self._graph.step(z, False), final=False)

    @torch.inference_mode()
    def flush(self) -> torch.Tensor:
        """The samples still held back, at the end of the stream; the decoder is closed after it."""
        self._check_open()
        self.flushed = True
        if self._empty is None:
            return torch.zeros(0, 1, 0)
        latents = self.frames * self.frame_latents
        if latents % self.period:
            raise ValueError(f"the stream holds {latents} latent frames, not a multiple of the attention "
                             f"window's grid ({self.period}): the offline decode refuses it too; push "
                             f"{self.period // self.frame_latents} coarse frames per window")
        return self._emit(self._graph.step(self._empty, True), final=True)

    def _emit(self, exact: torch.Tensor, final: bool) -> torch.Tensor:
        """The new exact samples not yet returned, then (short lookahead) the approximate ones up to
        ``latency_samples`` behind the codes."""
        already = self.emitted - self.exact_samples  # of these, sent earlier as approximations
        self.exact_samples += exact.shape[-1]
        out = exact[..., max(0, already):]
        self.emitted = max(self.emitted, self.exact_samples)
        target = self.frames * self.samples_per_frame - self.latency_samples
        if not final and target > self.emitted:
            nodes = self._graph.nodes()
            saved = [dict(node.__dict__) for node in nodes]  # state tensors are replaced, never changed in place
            guess = self._graph.step(self._empty, True)  # "as if the stream ended here"
            for node, state in zip(nodes, saved):
                node.__dict__.clear()
                node.__dict__.update(state)
            start = self.emitted - self.exact_samples
            out = torch.cat((out, guess[..., start:start + target - self.emitted]), -1)
            self.emitted = target
        return out


# ---- TTS token layout ----
def interleaved_order(vq_strides: list[int]) -> list[tuple[int, int]]:
    """(codebook, index within the frame) of each token of a coarse frame, in the TTS order: by
    start time, coarse first at equal times (a depth-first walk of the code tree for 4/2/1:
    c0[j], c1[2j], c2[4j], c2[4j+1], c1[2j+1], c2[4j+2], c2[4j+3])."""
    s0 = vq_strides[0]
    if any(s0 % s for s in vq_strides):
        raise ValueError(f"vq_strides {list(vq_strides)}: every stride must divide the first one")
    return [(i, t) for _, i, t in sorted((t * s, i, t) for i, s in enumerate(vq_strides) for t in range(s0 // s))]


def frames_from_interleaved(tokens, vq_strides: list[int], codebook_size: int | None = None) -> list[torch.Tensor]:
    """TTS tokens, frame after frame (1-D, or (B, N) for a batch) -> one (B, n_i) long tensor per
    codebook (B = 1 for 1-D), ready for ``StreamingDecoder.push``."""
    order = interleaved_order(vq_strides)
    tokens = torch.as_tensor(tokens)
    if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
        raise TypeError(f"tokens must be integers, got {tokens.dtype}")
    if tokens.dim() == 1:
        tokens = tokens[None]
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be 1-D or (B, N), got shape {tuple(tokens.shape)}")
    per_frame = len(order)
    if tokens.shape[1] % per_frame:
        raise ValueError(f"{tokens.shape[1]} tokens are not whole frames of {per_frame} tokens (strides "
                         f"{list(vq_strides)}): {tokens.shape[1] % per_frame} left over")
    if tokens.numel() and (int(tokens.min()) < 0 or (codebook_size is not None and int(tokens.max()) >= codebook_size)):
        bound = f"[0, {codebook_size})" if codebook_size is not None else ">= 0"
        raise ValueError(f"token values must be {bound}, got [{int(tokens.min())}, {int(tokens.max())}]: "
                         "remove the TTS vocabulary's code offsets first")
    frames = tokens.long().reshape(tokens.shape[0], -1, per_frame)  # (B, frames, tokens per frame)
    return [frames[:, :, [p for p, (ci, _) in enumerate(order) if ci == i]].reshape(tokens.shape[0], -1)
            for i in range(len(vq_strides))]


def interleave(codes: list[torch.Tensor], vq_strides: list[int]) -> torch.Tensor:
    """Inverse of ``frames_from_interleaved``: (B, n_i) codes -> (B, N) tokens in the TTS order."""
    order = interleaved_order(vq_strides)
    b = codes[0].shape[0]
    per = [vq_strides[0] // s for s in vq_strides]
    return torch.stack([codes[i].reshape(b, -1, per[i])[:, :, t] for i, t in order], -1).reshape(b, -1)


# ---- inference.py --stream ----
def stream_to_wav(model: SNAC | SNAC48, codes: list[torch.Tensor], path: str | Path, length: int,
                  subtype: str = "PCM_16", lookahead_ms: float | None = None, seed: int | None = 0) -> dict:
    """Decode one item's 1-D codes one coarse frame at a time, appending each piece to a wav as it
    is made (header first, so a player can follow the file). The noise is position-seeded with
    ``seed``. Writes ``length`` samples (trimmed or zero-padded). Returns the timings."""
    import numpy as np
    import soundfile as sf

    dec = StreamingDecoder(model, lookahead_ms)
    s0, device = dec.vq_strides[0], next(model.parameters()).device
    frames = len(codes[0])
    written, first_audio = 0, None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with position_noise(model, seed), sf.SoundFile(str(path), "w", samplerate=dec.sampling_rate, channels=1,
                                                    subtype=subtype, format="WAV") as f:
        for j in range(frames + 1):
            if j < frames:
                piece = dec.push([c[None, j * (s0 // s):(j + 1) * (s0 // s)].to(device)
                                  for c, s in zip(codes, dec.vq_strides)])
            else:
                piece = dec.flush()
            take = piece.reshape(-1)[:max(0, length - written)].float().cpu().numpy()
            if len(take):
                f.write(np.clip(take, -1.0, 1.0))
                f.flush()
                written += len(take)
                if first_audio is None:
                    first_audio = time.perf_counter() - start
        if written < length:
            f.write(np.zeros(length - written, dtype=np.float32))
    elapsed = time.perf_counter() - start
    first_audio = elapsed if first_audio is None else first_audio
    audio_s = length / dec.sampling_rate
    mode = "exact" if lookahead_ms is None or dec.latency_samples == dec.exact_latency_samples else "approximate"
    summary = (f"streamed {frames} frames: first audio after {1000 * first_audio:.0f} ms, {audio_s:.2f} s of audio in "
               f"{elapsed:.2f} s ({audio_s / max(elapsed, 1e-9):.2f}x real time; real-time factor "
               f"{elapsed / max(audio_s, 1e-9):.3f}), latency {dec.latency_ms:.1f} ms ({mode})")
    return {"first_audio_s": first_audio, "elapsed_s": elapsed, "audio_s": audio_s, "latency_ms": dec.latency_ms,
            "summary": summary}
