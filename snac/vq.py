"""Residual vector quantizer with per-codebook temporal strides (coarse to fine).

Inference (``forward``, ``from_codes``) is upstream SNAC's exactly; ``forward_train`` adds the
VQ-VAE training terms (commitment and codebook losses, in the projected space) for codec training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import wn_conv1d


class VectorQuantize(nn.Module):
    def __init__(self, input_dim: int, codebook_size: int, codebook_dim: int, stride: int = 1):
        super().__init__()
        self.stride = stride
        self.in_proj = wn_conv1d(input_dim, codebook_dim, kernel_size=1)
        self.out_proj = wn_conv1d(codebook_dim, input_dim, kernel_size=1)
        self.codebook = nn.Embedding(codebook_size, codebook_dim)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D, T) residual -> (quantized contribution (B, D, T), codes (B, T / stride))."""
        z_q, codes, _, _ = self.forward_train(z)
        return z_q, codes

    def forward_train(self, z: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``forward`` plus the training terms, each (B,) (mean over codebook_dim x frames):
        commitment ||z_e - sg(q)||^2 pulls the encoder to its code, codebook ||sg(z_e) - q||^2 pulls
        the code to the encoder; both in the projected (codebook_dim) space. Gradients reach the
        encoder through the straight-through estimator."""
        if self.stride > 1:
            z = F.avg_pool1d(z, self.stride, self.stride)
        z_e = self.in_proj(z)  # (B, codebook_dim, T / stride)
        codes = self.nearest(z_e)
        q = self.codebook(codes).transpose(1, 2).to(z_e.dtype)  # raw codebook rows
        commitment = (z_e - q.detach()).pow(2).mean((1, 2))
        codebook = (z_e.detach() - q).pow(2).mean((1, 2))
        z_q = z_e + (q - z_e).detach()  # straight-through: value q, gradient of z_e
        z_q = self.out_proj(z_q)
        if self.stride > 1:
            z_q = z_q.repeat_interleave(self.stride, dim=-1)
        return z_q, codes, commitment, codebook

    def nearest(self, z_e: torch.Tensor) -> torch.Tensor:
        """(B, codebook_dim, T) -> (B, T) int64: cosine nearest neighbour, searched in float32."""
        b, d, t = z_e.shape
        enc = F.normalize(z_e.float().transpose(1, 2).reshape(b * t, d))
        cb = F.normalize(self.codebook.weight.float())
        # squared L2 distance between unit vectors; the search runs in float32 (ties flip in bf16)
        dist = enc.pow(2).sum(1, keepdim=True) - 2 * enc @ cb.t() + cb.pow(2).sum(1, keepdim=True).t()
        return dist.neg().max(1)[1].reshape(b, t)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, T_i) codes -> (B, D, T_i * stride) contribution to the latent."""
        z_p = self.codebook(codes).transpose(1, 2)  # raw codebook rows, (B, codebook_dim, T_i)
        z_q = self.out_proj(z_p)
        if self.stride > 1:
            z_q = z_q.repeat_interleave(self.stride, dim=-1)
        return z_q


class ResidualVectorQuantize(nn.Module):
    def __init__(self, input_dim: int, codebook_size: int, codebook_dim: int, vq_strides: list[int]):
        super().__init__()
        self.vq_strides = list(vq_strides)
        self.quantizers = nn.ModuleList(
            VectorQuantize(input_dim, codebook_size, codebook_dim, stride) for stride in vq_strides
        )

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, D, T) latent -> (quantized latent, codes coarse first)."""
        z_q, codes, _, _ = self.forward_train(z)
        return z_q, codes

    def forward_train(self, z: torch.Tensor
                      ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """``forward`` plus the commitment and codebook losses summed over the codebooks, each (B,)."""
        z_q = torch.zeros_like(z)
        residual = z
        codes = []
        commitment = codebook = z.new_zeros(z.shape[0])
        for q in self.quantizers:
            z_q_i, idx, commitment_i, codebook_i = q.forward_train(residual)
            z_q = z_q + z_q_i
            residual = residual - z_q_i
            codes.append(idx)
            commitment, codebook = commitment + commitment_i, codebook + codebook_i
        return z_q, codes, commitment, codebook

    def from_codes(self, codes: list[torch.Tensor]) -> torch.Tensor:
        if len(codes) != len(self.quantizers):
            raise ValueError(f"expected {len(self.quantizers)} code tensors (one per codebook, "
                             f"strides {self.vq_strides}), got {len(codes)}")
        lengths = [c.shape[-1] * s for c, s in zip(codes, self.vq_strides)]
        if any(n != lengths[0] for n in lengths[1:]):  # (not set(): hashing a symbolic size pins it)
            raise ValueError(f"code lengths {[c.shape[-1] for c in codes]} do not cover the same "
                             f"time span with strides {self.vq_strides} (len_i * stride_i must be equal)")
        z_q = 0.0
        for q, c in zip(self.quantizers, codes):
            z_q = z_q + q.decode(c)
        return z_q
