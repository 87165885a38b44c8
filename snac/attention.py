"""Local (windowed) multi-head self-attention with rotary position embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RotaryEmbedding(nn.Module):
    """Rotary angles for positions 0..n-1. ``inv_freq`` is persistent (it is in the checkpoints)."""

    def __init__(self, head_dim: int):
        super().__init__()
        inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq)

    def forward(self, n: int, device: torch.device) -> torch.Tensor:
        t = torch.arange(n, device=device, dtype=self.inv_freq.dtype)
        freqs = torch.outer(t, self.inv_freq)  # (n, head_dim / 2)
        return torch.cat((freqs, freqs), dim=-1)  # (n, head_dim)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    return x * angles.cos() + rotate_half(x) * angles.sin()


class LocalMHA(nn.Module):
    """Pre-norm attention inside non-overlapping windows of ``window_size`` frames; residual add.

    Rotary positions restart in every window. T must be a multiple of the window (SNAC pads the
    input so that it is).
    """

    def __init__(self, dim: int, window_size: int, head_dim: int = 64):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.heads = dim // head_dim
        self.head_dim = head_dim
        self.window_size = window_size
        self.to_qkv = nn.Linear(dim, dim * 3, bias=False)
        self.rel_pos = RotaryEmbedding(head_dim)
        self.to_out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t = x.shape
        if t % self.window_size:
            raise ValueError(f"LocalMHA needs a length that is a multiple of {self.window_size}, got {t}")
        w = t // self.window_size
        qkv = self.to_qkv(self.norm(x.transpose(1, 2)))  # (B, T, 3C)
        # (B, T, C) -> (B, heads, windows, window_size, head_dim)
        q, k, v = (z.reshape(b, w, self.window_size, self.heads, self.head_dim).permute(0, 3, 1, 2, 4)
                   for z in qkv.chunk(3, dim=-1))
        angles = self.rel_pos(self.window_size, x.device).to(q.dtype)
        q, k = apply_rotary(q, angles), apply_rotary(k, angles)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.permute(0, 2, 3, 1, 4).reshape(b, t, c)
        return self.to_out(out).transpose(1, 2) + x
