"""Convolutional building blocks of SNAC: Snake, residual units, encoder/decoder blocks, noise.

Every conv is weight-normalised with the parametrization API (keys end in
``parametrizations.weight.original0`` / ``original1``), which is the layout of the published
checkpoints. Convs come from factory functions so they add no nesting level of their own.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from .attention import LocalMHA


def wn_conv1d(*args, **kwargs) -> nn.Conv1d:
    return weight_norm(nn.Conv1d(*args, **kwargs))


def wn_conv_transpose1d(*args, **kwargs) -> nn.ConvTranspose1d:
    return weight_norm(nn.ConvTranspose1d(*args, **kwargs))


@torch.no_grad()
def set_weight_norm_weight(conv: nn.Module, weight: torch.Tensor) -> None:
    """Make a weight-normed conv's effective ``.weight`` equal ``weight``.

    Writing into ``conv.weight`` would change nothing (it is recomputed from the originals on
    every access), so this sets magnitude (original0, norm over all dims but 0) and direction
    (original1) directly.
    """
    params = conv.parametrizations.weight
    dims = tuple(range(1, weight.dim()))
    params.original0.copy_(weight.norm(dim=dims, keepdim=True))
    params.original1.copy_(weight)


def _snake_in_place(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """x + sin(alpha x)^2 / (alpha + 1e-9) with every step in place on one fresh buffer: the same
    operations, in the same order, as the plain expression, so the same bits."""
    out = torch.mul(alpha, x)
    return out.sin_().square_().mul_((alpha + 1e-9).reciprocal()).add_(x)


class _Snake(torch.autograd.Function):
    """Snake for training: the forward is the in-place one, and only ``x`` and ``alpha`` are kept
    for the backward, which recomputes sin and cos. The plain expression's autograd keeps three
    more activation-sized tensors per Snake (alpha x, its sine, the sine squared), most of a
    training step's activation memory. The gradient is the same function computed another way:
    equal to autograd's to float rounding (tested), not to the bit."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, alpha)
        return _snake_in_place(x, alpha)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, alpha = ctx.saved_tensors
        inv = (alpha + 1e-9).reciprocal()
        ax = torch.mul(alpha, x)
        sine = torch.sin(ax)
        sin2 = ax.cos_().mul_(sine).mul_(2.0)  # sin(2 alpha x)
        grad_x = grad_alpha = None
        if ctx.needs_input_grad[0]:  # dy/dx = 1 + alpha sin(2 alpha x) / (alpha + eps)
            grad_x = (sin2 * (alpha * inv)).add_(1.0).mul_(grad).to(x.dtype)
        if ctx.needs_input_grad[1]:  # dy/dalpha = (x sin(2 alpha x) - sin(alpha x)^2 / (alpha + eps)) / (alpha + eps)
            term = sin2.mul_(x).sub_(sine.square_().mul_(inv)).mul_(grad)
            dims = [d for d in range(term.dim()) if alpha.shape[d] == 1 and term.shape[d] != 1]
            grad_alpha = ((term.sum(dims, keepdim=True) if dims else term) * inv).to(alpha.dtype)  # sum([]) sums all
        return grad_x, grad_alpha


def snake(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """(B, C, T) with alpha (1, C, 1): x + sin(alpha x)^2 / alpha.

    Without autograd (inference, validation, a frozen layer) the operations run in place on one
    buffer: bit-identical to the plain formula, and about 3x faster on CPU (one allocation instead
    of four: the unfused version's time is mostly fresh memory). With autograd, the same forward
    and a recomputing backward (:class:`_Snake`: far less activation memory)."""
    if torch.is_grad_enabled() and (x.requires_grad or alpha.requires_grad):
        return _Snake.apply(x, alpha)
    return _snake_in_place(x, alpha)


class Snake1d(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return snake(x, self.alpha)


NOISE_BLOCK = 4096  # positions per seeded block of position-indexed noise


class NoiseBlock(nn.Module):
    """Adds per-sample Gaussian noise scaled by a learned 1x1 conv of the input.

    The noise is drawn on every call (in eval mode too), so decoding is random unless the
    global RNG is seeded, the gains are zero, or ``enabled`` is False (an identity then; not part
    of the state_dict). With ``position_seed`` set (None by default; not in the state_dict) the
    noise of position t is a function of (seed, t) alone: drawn in blocks of ``NOISE_BLOCK``
    positions, block j from a CPU generator seeded by (seed, j), so a decode split into pieces
    (``snac.stream``, passing each piece's ``offset``) draws the same noise as a whole decode.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.linear = wn_conv1d(dim, dim, kernel_size=1, bias=False)
        self.enabled = True
        self.position_seed: int | None = None

    def draw(self, b: int, t: int, offset: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """(b, 1, t) noise for positions [offset, offset + t)."""
        if self.position_seed is None:
            return torch.randn((b, 1, t), device=device, dtype=dtype)
        first, last = offset // NOISE_BLOCK, (offset + t - 1) // NOISE_BLOCK
        blocks = [torch.randn((b, NOISE_BLOCK), generator=torch.Generator().manual_seed(
            sub_seed(self.position_seed, j))) for j in range(first, last + 1)] if t else [torch.zeros(b, 0)]
        start = offset - first * NOISE_BLOCK
        return torch.cat(blocks, 1)[:, None, start:start + t].to(device, dtype)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """``offset``: the absolute position of x's first sample (matters with ``position_seed`` only)."""
        if not self.enabled:
            return x
        b, _, t = x.shape
        return x + self.draw(b, t, offset, x.device, x.dtype) * self.linear(x)


def sub_seed(seed: int, index: int) -> int:
    """An independent torch seed for item ``index`` of a stream seeded with ``seed``."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0] >> 1)


class ResidualUnit(nn.Module):
    def __init__(self, dim: int, dilation: int = 1, kernel: int = 7, groups: int = 1):
        super().__init__()
        pad = ((kernel - 1) * dilation) // 2
        self.block = nn.Sequential(
            Snake1d(dim),
            wn_conv1d(dim, dim, kernel_size=kernel, dilation=dilation, padding=pad, groups=groups),
            Snake1d(dim),
            wn_conv1d(dim, dim, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        crop = (x.shape[-1] - y.shape[-1]) // 2
        if crop > 0:
            x = x[..., crop:-crop]
        return x + y


def residual_stack(dim: int, groups: int) -> list[nn.Module]:
    return [ResidualUnit(dim, dilation=d, groups=groups) for d in (1, 3, 9)]


class EncoderBlock(nn.Module):
    def __init__(self, output_dim: int, stride: int, groups: int = 1):
        super().__init__()
        input_dim = output_dim // 2
        self.block = nn.Sequential(
            *residual_stack(input_dim, groups),
            Snake1d(input_dim),
            wn_conv1d(input_dim, output_dim, kernel_size=2 * stride, stride=stride,
                      padding=math.ceil(stride / 2)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)  # (B, C, T) -> (B, 2C, T / stride)


class DecoderBlock(nn.Module):
    def __init__(self, input_dim: int, output_dim: int, stride: int, noise: bool, groups: int = 1):
        super().__init__()
        layers: list[nn.Module] = [
            Snake1d(input_dim),
            wn_conv_transpose1d(input_dim, output_dim, kernel_size=2 * stride, stride=stride,
                                padding=math.ceil(stride / 2), output_padding=stride % 2),
        ]
        if noise:
            layers.append(NoiseBlock(output_dim))
        layers += residual_stack(output_dim, groups)
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)  # (B, C_in, T) -> (B, C_out, T * stride)


class Encoder(nn.Module):
    def __init__(self, d_model: int, strides: list[int], depthwise: bool, attn_window_size: int | None):
        super().__init__()
        layers: list[nn.Module] = [wn_conv1d(1, d_model, kernel_size=7, padding=3)]
        for stride in strides:
            d_model *= 2
            layers.append(EncoderBlock(d_model, stride, groups=d_model // 2 if depthwise else 1))
        if attn_window_size is not None:
            layers.append(LocalMHA(d_model, window_size=attn_window_size))
        layers.append(wn_conv1d(d_model, d_model, kernel_size=7, padding=3,
                                groups=d_model if depthwise else 1))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)  # (B, 1, T) -> (B, latent_dim, T / hop)


def decoder_trunk(input_channel: int, channels: int, rates: list[int], noise: bool,
                  depthwise: bool, attn_window_size: int | None) -> tuple[list[nn.Module], int]:
    """The decoder up to (and including) its last upsampling block; returns (layers, out channels)."""
    if depthwise:
        layers: list[nn.Module] = [
            wn_conv1d(input_channel, input_channel, kernel_size=7, padding=3, groups=input_channel),
            wn_conv1d(input_channel, channels, kernel_size=1),
        ]
    else:
        layers = [wn_conv1d(input_channel, channels, kernel_size=7, padding=3)]
    if attn_window_size is not None:
        layers.append(LocalMHA(channels, window_size=attn_window_size))
    output_dim = channels
    for i, stride in enumerate(rates):
        input_dim, output_dim = channels // 2**i, channels // 2 ** (i + 1)
        layers.append(DecoderBlock(input_dim, output_dim, stride, noise,
                                   groups=output_dim if depthwise else 1))
    return layers, output_dim


class Decoder(nn.Module):
    """latent (B, latent_dim, T) -> audio (B, 1, T * prod(rates)).

    With ``output_layers=False`` it stops after the last upsampling block (the trunk that the
    48 kHz model reuses) and returns features of ``out_channels`` channels.
    """

    def __init__(self, input_channel: int, channels: int, rates: list[int], noise: bool,
                 depthwise: bool, attn_window_size: int | None, output_layers: bool = True):
        super().__init__()
        layers, self.out_channels = decoder_trunk(input_channel, channels, rates, noise,
                                                  depthwise, attn_window_size)
        if output_layers:
            layers += [Snake1d(self.out_channels),
                       wn_conv1d(self.out_channels, 1, kernel_size=7, padding=3), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def fold_weight_norm(model: nn.Module, state_dict: dict | None = None) -> nn.Module:
    """For inference: load ``state_dict`` (if given), then replace every weight-norm
    parametrization by its current plain weight, so ``.weight`` is no longer recomputed on every
    forward. The folded model's state_dict has plain ``weight`` keys: save the unfolded one."""
    from torch.nn.utils import parametrize

    if state_dict is not None:
        model.load_state_dict(state_dict)
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model
