"""SNAC: multi-scale neural audio codec (encoder, residual VQ, decoder)."""

from __future__ import annotations

import json
import math
import os

import torch
from torch import nn

from .hub import load_weights, model_kind, register_model, resolve_pretrained, save_pretrained_files
from .layers import Decoder, Encoder
from .vq import ResidualVectorQuantize


def check_audio(audio: torch.Tensor, sampling_rate: int) -> None:
    if not isinstance(audio, torch.Tensor) or audio.dim() != 3 or audio.shape[1] != 1:
        shape = tuple(audio.shape) if isinstance(audio, torch.Tensor) else type(audio).__name__
        raise ValueError(f"expected mono audio of shape (B, 1, T) at {sampling_rate} Hz, got {shape}")


@register_model("snac")
class SNAC(nn.Module):
    """The published SNAC codec. Constructor arguments are the keys of the hub's config.json."""

    def __init__(self, sampling_rate: int = 44100, encoder_dim: int = 64,
                 encoder_rates: list[int] = (3, 3, 7, 7), latent_dim: int | None = None,
                 decoder_dim: int = 1536, decoder_rates: list[int] = (7, 7, 3, 3),
                 attn_window_size: int | None = 32, codebook_size: int = 4096, codebook_dim: int = 8,
                 vq_strides: list[int] = (8, 4, 2, 1), noise: bool = True, depthwise: bool = True):
        super().__init__()
        if latent_dim is None:
            latent_dim = encoder_dim * 2 ** len(encoder_rates)
        self.config = dict(
            sampling_rate=sampling_rate, encoder_dim=encoder_dim, encoder_rates=list(encoder_rates),
            latent_dim=latent_dim, decoder_dim=decoder_dim, decoder_rates=list(decoder_rates),
            attn_window_size=attn_window_size, codebook_size=codebook_size,
            codebook_dim=codebook_dim, vq_strides=list(vq_strides), noise=noise, depthwise=depthwise)
        self.sampling_rate = sampling_rate
        self.hop_length = math.prod(encoder_rates)
        self.vq_strides = list(vq_strides)
        self.attn_window_size = attn_window_size
        self.encoder = Encoder(encoder_dim, list(encoder_rates), depthwise, attn_window_size)
        self.quantizer = ResidualVectorQuantize(latent_dim, codebook_size, codebook_dim, vq_strides)
        self.decoder = Decoder(latent_dim, decoder_dim, list(decoder_rates), noise, depthwise,
                               attn_window_size)

    @property
    def pad_multiple(self) -> int:
        """Input lengths are right-padded with zeros to a multiple of this many samples."""
        return self.hop_length * math.lcm(self.vq_strides[0], self.attn_window_size or 1)

    def preprocess(self, audio: torch.Tensor) -> torch.Tensor:
        check_audio(audio, self.sampling_rate)
        length = audio.shape[-1]
        right_pad = -length % self.pad_multiple
        return nn.functional.pad(audio, (0, right_pad))

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, 1, T) -> (audio_hat (B, 1, T), codes coarse first)."""
        length = audio.shape[-1]
        z = self.encoder(self.preprocess(audio))
        z_q, codes = self.quantizer(z)
        return self.decoder(z_q)[..., :length], codes

    def encode(self, audio: torch.Tensor) -> list[torch.Tensor]:
        """(B, 1, T) at ``sampling_rate`` -> list of (B, T_pad / hop / stride_i) int64, coarse first."""
        z = self.encoder(self.preprocess(audio))
        _, codes = self.quantizer(z)
        return codes

    def decode(self, codes: list[torch.Tensor]) -> torch.Tensor:
        """codes -> (B, 1, len(codes[-1]) * vq_strides[-1] * hop); nothing is trimmed."""
        return self.decoder(self.quantizer.from_codes(codes))

    # ---- loading and saving ----
    @classmethod
    def from_config_dict(cls, config: dict) -> "SNAC":
        return cls(**config)

    @classmethod
    def from_config(cls, path: str | os.PathLike) -> "SNAC":
        with open(path) as f:
            return cls(**json.load(f))

    @classmethod
    def from_pretrained(cls, id_or_dir: str | os.PathLike) -> "SNAC":
        """Load from a hub id or a local directory (config.json + model.safetensors/pytorch_model.bin)."""
        config, weights = resolve_pretrained(id_or_dir)
        if model_kind(config) != "snac":
            raise ValueError(f"{id_or_dir} holds a 48 kHz model; load it with SNAC48.from_pretrained")
        model = cls(**config)
        model.load_state_dict(load_weights(weights), strict=True)
        return model.eval()

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        save_pretrained_files(directory, self.config, self.state_dict())
