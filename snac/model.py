"""SNAC: multi-scale neural audio codec (encoder, residual VQ, decoder)."""

from __future__ import annotations

import json
import math
import os

import torch
from torch import nn

from .hub import (CONFIG_NAME, load_weights, model_kind, register_model, resolve_extra_file,
                  resolve_pretrained, save_pretrained_files)
from .layers import Decoder, Encoder
from .vq import ResidualVectorQuantize

BASE_ENCODER_NAME = "base_encoder.safetensors"  # the base's encoder + quantizer inside a 48 kHz export


def check_audio(audio: torch.Tensor, sampling_rate: int) -> None:
    if not isinstance(audio, torch.Tensor) or audio.dim() != 3 or audio.shape[1] != 1:
        shape = tuple(audio.shape) if isinstance(audio, torch.Tensor) else type(audio).__name__
        raise ValueError(f"expected mono audio of shape (B, 1, T) at {sampling_rate} Hz, got {shape}")


class SNACEncoder(nn.Module):
    """The encoder and quantizer of a SNAC: mono audio -> codes, without the decoder.

    What a 48 kHz export holds of its base model (``SNAC48.save_pretrained(dir, base=...)``), so
    the export goes from audio to 48 kHz audio on its own. Constructor arguments are the keys of
    the hub's config.json, as for ``SNAC``; ``SNAC`` is this plus the decoder.
    """

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
        # registration order encoder, quantizer (, decoder) is the published state_dict's key order
        self.encoder = Encoder(encoder_dim, list(encoder_rates), depthwise, attn_window_size)
        self.quantizer = ResidualVectorQuantize(latent_dim, codebook_size, codebook_dim, vq_strides)
        self._build_decoder()

    def _build_decoder(self) -> None:
        """An encoder alone has no decoder; ``SNAC`` adds it here."""

    @property
    def pad_multiple(self) -> int:
        """Input lengths are right-padded with zeros to a multiple of this many samples."""
        return self.hop_length * math.lcm(self.vq_strides[0], self.attn_window_size or 1)

    def preprocess(self, audio: torch.Tensor) -> torch.Tensor:
        check_audio(audio, self.sampling_rate)
        length = audio.shape[-1]
        right_pad = -length % self.pad_multiple
        return nn.functional.pad(audio, (0, right_pad))

    def encode(self, audio: torch.Tensor) -> list[torch.Tensor]:
        """(B, 1, T) at ``sampling_rate`` -> list of (B, T_pad / hop / stride_i) int64, coarse first."""
        z = self.encoder(self.preprocess(audio))
        _, codes = self.quantizer(z)
        return codes

    @classmethod
    def from_pretrained(cls, id_or_dir: str | os.PathLike, **hub_kwargs) -> "SNACEncoder":
        """The encoder + quantizer of a 48 kHz export (its ``base_encoder.safetensors``) or of a
        plain SNAC directory / hub repo (the decoder's tensors are skipped)."""
        weights = resolve_extra_file(id_or_dir, BASE_ENCODER_NAME, **hub_kwargs)
        if weights is not None:  # a 48 kHz export: its config's "base" section is the codec's config
            with open(resolve_extra_file(id_or_dir, CONFIG_NAME, **hub_kwargs)) as f:
                config = json.load(f)["base"]
        else:
            config, weights = resolve_pretrained(id_or_dir, **hub_kwargs)
        if "base" in config:
            raise ValueError(f"{id_or_dir} is a 48 kHz model without its base's encoder "
                             f"({BASE_ENCODER_NAME}); load the base it was trained from instead")
        model = SNACEncoder(**config)
        state = {k: v for k, v in load_weights(weights).items() if not k.startswith("decoder.")}
        model.load_state_dict(state, strict=True)
        return model.eval()


@register_model("snac")
class SNAC(SNACEncoder):
    """The published SNAC codec. Constructor arguments are the keys of the hub's config.json."""

    def _build_decoder(self) -> None:
        c = self.config
        self.decoder = Decoder(c["latent_dim"], c["decoder_dim"], c["decoder_rates"], c["noise"],
                               c["depthwise"], c["attn_window_size"])

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, 1, T) -> (audio_hat (B, 1, T), codes coarse first)."""
        length = audio.shape[-1]
        z = self.encoder(self.preprocess(audio))
        z_q, codes = self.quantizer(z)
        return self.decoder(z_q)[..., :length], codes

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
    def from_pretrained(cls, id_or_dir: str | os.PathLike, **hub_kwargs) -> "SNAC":
        """Load from a hub id or a local directory (config.json + model.safetensors/pytorch_model.bin).

        ``hub_kwargs`` are upstream snac's: passed to ``huggingface_hub.hf_hub_download``
        (revision, cache_dir, token, local_files_only, ...); ignored for a local directory."""
        config, weights = resolve_pretrained(id_or_dir, **hub_kwargs)
        if model_kind(config) != "snac":
            raise ValueError(f"{id_or_dir} holds a 48 kHz model; load it with SNAC48.from_pretrained")
        model = cls(**config)
        model.load_state_dict(load_weights(weights), strict=True)
        return model.eval()

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """config.json + model.safetensors + pytorch_model.bin (what upstream snac loads)."""
        save_pretrained_files(directory, self.config, self.state_dict(), torch_copy=True)
