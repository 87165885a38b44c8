"""SNAC48: the published codes decoded at a higher rate (48 kHz from snac_24khz).

The base model's quantizer and decoder trunk (up to its last upsampling block) are kept; a new
head upsamples by ``factor = target_sample_rate / base sampling_rate``:

    trunk features (B, C, T) -> upsample xF (B, C, F*T) -> [noise] -> 3 residual units
    -> Snake -> conv (kernel F*(7-1)+1) -> tanh -> (B, 1, F*T)

Smart initialisation makes the head start as "the base output layers, then band-limited
interpolation": the transposed conv zero-stuffs (sample F*m is input m, the rest 0; Snake(0) = 0),
the residual units and the noise start as identities (zero magnitude on their output convs), the
Snake copies the base's final alphas, and the final conv is the base's 7-tap kernel dilated by F
and convolved with a windowed-sinc interpolator. So every F-th output sample equals the base
decoder's output, and the samples between interpolate its pre-tanh signal.

That is the ``full`` head (config ``head.type``; a saved config without a type is one). The
``lite`` head computes the same start for a fraction of the cost:

    trunk features -> base Snake -> base 7-tap conv (at the base rate, copied) -> fixed windowed-sinc
    xF interpolation  +  a learned branch of few channels at F x the rate (1x1 conv in, upsample xF,
    [noise], 3 residual units, Snake, 7-tap conv out: zero at init)  -> tanh

so at step 0 it is the interpolated stock output (every F-th sample equals the stock decode; the
samples between equal the full head's start away from the file ends), and only the branch (and
the copied output layers) run at the new rate or learn.

The ``sinc`` head is the full head with a fixed windowed-sinc (Kaiser) interpolation of the trunk
features in place of the learned transposed conv: zero-stuffing makes an image of the trunk's
0-12 kHz spectrum (its stationary checkerboard lines included) in 12-24 kHz, which the full head's
short interpolator and learned convs let through as tonal lines (docs/quality.md); this upsampler
leaves none (cutoff at 0.94 x the old Nyquist, -86 dB and below from the old Nyquist on, so the x2
checkerboard's line at 12 kHz is gone too), and the added band can only come from the head's
nonlinear layers. At init its
final conv is the base kernel dilated by F: the output is the base output layers applied to the
interpolated features (sample F*m is the base output up to the features' 11-12 kHz, which the
cutoff removes).
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path

import torch
from torch import nn


from .hub import load_weights, model_kind, register_model, resolve_pretrained, save_pretrained_files, save_tensors
from .layers import (NoiseBlock, Snake1d, decoder_trunk, residual_stack, set_weight_norm_weight,
                     wn_conv1d, wn_conv_transpose1d)
from .model import BASE_ENCODER_NAME, SNAC, SNACEncoder
from .vq import ResidualVectorQuantize

BASE_KERNEL = 7  # kernel of the base decoder's final conv (SNAC's architecture)
INTERP_TAPS = 6  # base-rate samples on each side that the initial output interpolation reads
SINC_TAPS = 48  # base-rate samples on each side that the sinc head's upsampler reads
SINC_CUTOFF = 0.94  # its cutoff as a fraction of the base Nyquist: -1 dB at 11 kHz, -86 dB at 12 kHz (x2 from 24 kHz)
SINC_BETA = 9.0  # its Kaiser window's beta (stopband about -90 dB)
BRANCH_INIT = 1e-3  # weight-norm magnitude of the lite branch's output conv at init (see LiteHead.smart_init)
BRANCH_GAIN = 1.0  # fixed factor on the lite branch's output (lite heads of 2026-12-06 saved 10)


def final_kernel_size(factor: int, taps: int | None = None) -> int:
    # the base kernel dilated by F, convolved with a windowed-sinc interpolator of 2*F*taps-1 taps
    return factor * (BASE_KERNEL - 1) + 1 + 2 * factor * (INTERP_TAPS if taps is None else taps) - 2


def interp_taps(factor: int, kernel: int) -> int:
    """Inverse of ``final_kernel_size``: the interpolator's taps per side in a saved head's kernel."""
    taps, rest = divmod(kernel - factor * (BASE_KERNEL - 1) + 1, 2 * factor)
    if rest or taps < 1:
        raise ValueError(f"head final_kernel {kernel} is not a x{factor} head's kernel "
                         f"(expected {final_kernel_size(factor, 1)} + a multiple of {2 * factor})")
    return taps


def sinc_interpolator(factor: int, taps: int) -> torch.Tensor:
    """(2*F*taps - 1,) float64 Hann-squared windowed sinc for xF interpolation of a zero-stuffed
    signal: 1 at offset 0, exactly 0 at the other multiples of F (so the kept samples stay)."""
    offsets = torch.arange(-(factor * taps - 1), factor * taps, dtype=torch.float64) / factor
    interp = torch.sinc(offsets) * torch.cos(torch.pi * offsets / (2 * taps)).pow(2)
    interp[torch.arange(len(offsets)) % factor == (factor * taps - 1) % factor] = 0.0
    interp[factor * taps - 1] = 1.0
    return interp


def kaiser_interpolator(factor: int, taps: int, cutoff: float = SINC_CUTOFF, beta: float = SINC_BETA) -> torch.Tensor:
    """(2*F*taps - 1,) float64 Kaiser-windowed sinc for xF interpolation of a zero-stuffed signal,
    cutoff at ``cutoff`` x the old Nyquist, gain F in the passband. At cutoff 1 it is 1 at offset 0
    and 0 at the other multiples of F (the kept samples stay exactly) but passes the old Nyquist at
    -6 dB: a component there (a x2 stage's checkerboard) becomes a line at the old Nyquist."""
    offsets = torch.arange(-(factor * taps - 1), factor * taps, dtype=torch.float64)
    window = torch.kaiser_window(len(offsets), periodic=False, beta=beta, dtype=torch.float64)
    return cutoff * torch.sinc(cutoff * offsets / factor) * window


class SincUpsample(nn.Module):
    """(B, C, T) -> (B, C, F*T): zero-stuff, then a fixed Kaiser-windowed sinc per channel (no
    parameters: nothing to learn, no image of the input's spectrum above the old Nyquist).

    Computed polyphase: output phase p (samples F*m + p) is a (2*taps + 1)-tap conv of the input at
    the base rate, so no product with a stuffed zero is formed. ``kernel`` (the zero-stuffed form)
    is what the streaming decoder runs."""

    def __init__(self, channels: int, factor: int, taps: int = SINC_TAPS, cutoff: float = SINC_CUTOFF):
        super().__init__()
        self.factor, self.channels, self.taps = factor, channels, taps
        h = kaiser_interpolator(factor, taps, cutoff)  # offsets -(F*taps - 1) ... F*taps - 1
        self.register_buffer("kernel", h.float().view(1, 1, -1).repeat(channels, 1, 1), persistent=False)
        # phase p, tap j reads input m + j - taps for output F*m + p: offset F*(taps - j) + p of h
        offsets = factor * (taps - torch.arange(2 * taps + 1)).view(1, -1) + torch.arange(factor).view(-1, 1)
        centre = factor * taps - 1
        inside = (offsets + centre >= 0) & (offsets + centre < len(h))
        phases = torch.where(inside, h[(offsets + centre).clamp(0, len(h) - 1)], torch.zeros((), dtype=h.dtype))
        self.register_buffer("phases", phases.float().unsqueeze(1).repeat(channels, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t = x.shape
        y = nn.functional.conv1d(x, self.phases.to(x.dtype), padding=self.taps, groups=c)  # (B, C*F, T)
        return y.view(b, c, self.factor, t).transpose(2, 3).reshape(b, c, self.factor * t)


def upsampler(channels: int, factor: int) -> nn.Module:
    """xF transposed conv (kernel 2F) as SNAC's decoder blocks upsample."""
    return wn_conv_transpose1d(channels, channels, kernel_size=2 * factor, stride=factor,
                               padding=math.ceil(factor / 2), output_padding=factor % 2)


def zero_magnitude_(convs: list[nn.Module]) -> None:
    """Zero output, learnable: weight-norm magnitude (and bias) 0, the direction kept random."""
    for conv in convs:
        conv.parametrizations.weight.original0.zero_()
        if conv.bias is not None:
            conv.bias.zero_()


class UpsampleHead(nn.Module):
    """The full head (``sinc_taps`` None: learned transposed conv) or the sinc head (``sinc_taps``:
    the fixed ``SincUpsample`` reading that many trunk samples on each side)."""

    def __init__(self, channels: int, factor: int, noise: bool, depthwise: bool, kernel: int | None = None,
                 sinc_taps: int | None = None, sinc_cutoff: float = SINC_CUTOFF):
        super().__init__()
        self.factor = factor
        kernel = final_kernel_size(factor) if kernel is None else kernel
        self.sinc = sinc_taps is not None
        if self.sinc:
            if kernel % 2 == 0 or kernel < factor * (BASE_KERNEL - 1) + 1:
                raise ValueError(f"sinc head final_kernel {kernel} must be odd and >= {factor * (BASE_KERNEL - 1) + 1}")
            self.upsample = SincUpsample(channels, factor, sinc_taps, sinc_cutoff)
        else:
            self.taps = interp_taps(factor, kernel)  # the interpolator's half-length smart_init fills in
            self.upsample = upsampler(channels, factor)
        self.noise = NoiseBlock(channels) if noise else nn.Identity()
        self.residual = nn.Sequential(*residual_stack(channels, channels if depthwise else 1))
        self.snake = Snake1d(channels)
        self.conv = wn_conv1d(channels, 1, kernel_size=kernel, padding=kernel // 2)
        self.tanh = nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.upsample(x)  # (B, C, T) -> (B, C, F*T)
        x = self.residual(self.noise(x))
        return self.tanh(self.conv(self.snake(x)))  # (B, 1, F*T)

    @torch.no_grad()
    def smart_init(self, base_snake: Snake1d, base_conv: nn.Conv1d) -> None:
        f = self.factor
        c = self.snake.alpha.shape[1]
        # residual units and noise start as identities: zero magnitude on their output conv
        # (the direction stays random so it can learn once the magnitude moves off zero)
        zero_out = [unit.block[-1] for unit in self.residual]
        if isinstance(self.noise, NoiseBlock):
            zero_out.append(self.noise.linear)
        zero_magnitude_(zero_out)
        self.snake.alpha.copy_(base_snake.alpha)
        self.conv.bias.copy_(base_conv.bias)
        # the base kernel dilated by F: the output at samples F*m is the base output
        dilated = torch.zeros(base_conv.weight.shape[:2] + (f * (BASE_KERNEL - 1) + 1,), dtype=torch.float64)
        dilated[..., ::f] = base_conv.weight.double()  # (1, C, F*6+1)
        if self.sinc:  # the features are interpolated already: the dilated kernel, centred, zeros around
            side = (self.conv.weight.shape[-1] - dilated.shape[-1]) // 2
            set_weight_norm_weight(self.conv, nn.functional.pad(dilated, (side, side)).to(self.conv.weight.dtype))
            return
        # zero-stuffing: tap i of the transposed conv lands at output offset i - padding, so the
        # tap at offset 0 alone is 1 -> sample F*m is input m, the F-1 samples between are 0.
        # Snake(0) = 0, so the Snake output is the base's Snake output, zero-stuffed.
        up = torch.zeros_like(self.upsample.weight)  # (C_in, C_out, 2F)
        up[torch.arange(c), torch.arange(c), self.upsample.padding[0]] = 1.0
        set_weight_norm_weight(self.upsample, up)
        self.upsample.bias.zero_()
        # final conv = the dilated base kernel convolved with a Hann-windowed sinc that fills the
        # samples between (band-limited interpolation of the base's pre-tanh output)
        interp = sinc_interpolator(f, self.taps)
        c_in = dilated.shape[1]
        # full convolution of every channel's kernel with the (symmetric) interpolator
        w = torch.nn.functional.conv1d(dilated.reshape(c_in, 1, -1), interp.reshape(1, 1, -1),
                                       padding=len(interp) - 1).reshape(1, c_in, -1)
        set_weight_norm_weight(self.conv, w.to(self.conv.weight.dtype))


class LiteHead(nn.Module):
    """The base's output layers at the base rate, a fixed sinc xF interpolation of their pre-tanh
    output, plus a learned ``branch_channels``-wide branch at the new rate whose output starts at 0."""

    def __init__(self, channels: int, factor: int, noise: bool, depthwise: bool, branch_channels: int = 16,
                 taps: int = INTERP_TAPS, branch_init: float = BRANCH_INIT, branch_gain: float = BRANCH_GAIN):
        super().__init__()
        self.factor, self.taps, self.branch_init, self.branch_gain = factor, taps, branch_init, branch_gain
        self.snake = Snake1d(channels)  # the base's final Snake + 7-tap conv (copied by smart_init)
        self.conv = wn_conv1d(channels, 1, kernel_size=BASE_KERNEL, padding=BASE_KERNEL // 2)
        self.register_buffer("interp", sinc_interpolator(factor, taps).float().view(1, 1, -1), persistent=False)
        c = branch_channels
        self.branch_in = wn_conv1d(channels, c, kernel_size=1)
        self.branch_up = upsampler(c, factor)
        self.noise = NoiseBlock(c) if noise else nn.Identity()
        self.residual = nn.Sequential(*residual_stack(c, c if depthwise else 1))
        self.branch_snake = Snake1d(c)
        self.branch_out = wn_conv1d(c, 1, kernel_size=BASE_KERNEL, padding=BASE_KERNEL // 2)
        self.tanh = nn.Tanh()

    def interpolate(self, y: torch.Tensor) -> torch.Tensor:
        """(B, 1, T) -> (B, 1, F*T): zero-stuff, then the windowed sinc (sample F*m stays y[m])."""
        stuffed = y.new_zeros(y.shape[0], 1, self.factor * y.shape[-1])
        stuffed[..., ::self.factor] = y
        return nn.functional.conv1d(stuffed, self.interp.to(y.dtype), padding=self.interp.shape[-1] // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stock = self.interpolate(self.conv(self.snake(x)))  # (B, 1, F*T) the base output, interpolated
        b = self.residual(self.noise(self.branch_up(self.branch_in(x))))
        return self.tanh(stock + self.branch_gain * self.branch_out(self.branch_snake(b)))

    @torch.no_grad()
    def smart_init(self, base_snake: Snake1d, base_conv: nn.Conv1d) -> None:
        self.snake.load_state_dict(base_snake.state_dict())
        self.conv.load_state_dict(base_conv.state_dict())
        # The branch starts nearly silent, at branch_gain x branch_init = 1e-3 (about 40 dB below
        # speech), not at 0: at exactly 0 no gradient reaches the branch's other layers and the
        # magnitude's own gradient has a random sign (the branch features are random); after 253
        # steps it had only reached 4e-4 and the branch had learned nothing. From 1e-3 it must still
        # grow ~100x, and Adam's step does not scale with the gradient: the trainer gives this conv
        # its own lr (--branch_lr_scale, 30x). A fixed gain of 10 instead also scaled every branch
        # gradient (and so the clipping); measured on held-out speech, the separate lr was better
        # (README, heads).
        zero_magnitude_([self.branch_out] + ([self.noise.linear] if isinstance(self.noise, NoiseBlock) else []))
        self.branch_out.parametrizations.weight.original0.fill_(self.branch_init)


HEAD_TYPES = ("full", "lite", "sinc")


def head_spec(kind: str = "full", branch_channels: int | None = None) -> dict:
    """The ``head`` argument of ``SNAC48``/``from_snac`` from the command-line flags (--head, --head_channels)."""
    return {"type": kind, **({"branch_channels": branch_channels} if branch_channels else {})}


def head_config(factor: int, head: dict | None, channels: int) -> dict:
    """The saved ``config['head']`` filled in (``channels``: the trunk's output channels; a lite
    branch defaults to min(16, channels)): a config without ``type`` is a full head, so exports of
    before the lite head keep loading as they were."""
    head = dict(head or {})
    kind = head.get("type", "full")
    if kind not in HEAD_TYPES:
        raise ValueError(f"head type {kind!r} is not one of {HEAD_TYPES}: a config of a newer version?")
    if head.get("upsample_factor", factor) != factor:
        raise ValueError(f"head upsample_factor {head['upsample_factor']} does not match x{factor} (target / base "
                         "rate): the config is inconsistent")
    if kind == "full":
        return {"type": "full", "upsample_factor": factor,
                "final_kernel": int(head.get("final_kernel", final_kernel_size(factor)))}
    if kind == "sinc":
        taps, cutoff = int(head.get("sinc_taps", SINC_TAPS)), float(head.get("sinc_cutoff", SINC_CUTOFF))
        if taps < 1 or not 0 < cutoff <= 1:
            raise ValueError(f"sinc head needs sinc_taps >= 1 and 0 < sinc_cutoff <= 1, got {taps}, {cutoff}")
        return {"type": "sinc", "upsample_factor": factor,
                "final_kernel": int(head.get("final_kernel", final_kernel_size(factor))), "sinc_taps": taps,
                "sinc_cutoff": cutoff}
    width, taps = int(head.get("branch_channels", min(16, channels))), int(head.get("interp_taps", INTERP_TAPS))
    init, gain = float(head.get("branch_init", BRANCH_INIT)), float(head.get("branch_gain", BRANCH_GAIN))
    if width < 1 or taps < 1 or not (math.isfinite(init) and init >= 0 and math.isfinite(gain) and gain > 0):
        raise ValueError(f"lite head needs branch_channels >= 1, interp_taps >= 1, branch_init >= 0 and "
                         f"branch_gain > 0, got {width}, {taps}, {init}, {gain}")
    return {"type": "lite", "upsample_factor": factor, "branch_channels": width, "interp_taps": taps,
            "branch_init": init, "branch_gain": gain}


@register_model("snac48")
class SNAC48(nn.Module):
    """Decodes a base SNAC model's codes at ``target_sample_rate`` (48 kHz by default)."""

    def __init__(self, base_config: dict, target_sample_rate: int = 48000, head: dict | None = None):
        """``head``: the saved ``config["head"]`` section; its kernel is used as saved, so an export
        keeps loading when the default head constants change. None: today's default head."""
        super().__init__()
        base_rate = base_config["sampling_rate"]
        if target_sample_rate % base_rate or target_sample_rate // base_rate < 2:
            raise ValueError(
                f"SNAC48 needs a base model whose sampling rate divides {target_sample_rate} Hz at "
                f"least twice (24000 Hz -> x2); this base runs at {base_rate} Hz. Use the 24 kHz model")
        cfg = SNAC(**base_config).config  # normalised (latent_dim filled in)
        self.base_config = cfg
        self.factor = target_sample_rate // base_rate
        self.sampling_rate = target_sample_rate
        self.base_sampling_rate = base_rate
        self.hop_length = math.prod(cfg["encoder_rates"])
        self.vq_strides = list(cfg["vq_strides"])
        self.quantizer = ResidualVectorQuantize(cfg["latent_dim"], cfg["codebook_size"],
                                                cfg["codebook_dim"], cfg["vq_strides"])
        layers, channels = decoder_trunk(cfg["latent_dim"], cfg["decoder_dim"], cfg["decoder_rates"],
                                         cfg["noise"], cfg["depthwise"], cfg["attn_window_size"])
        head = head_config(self.factor, head, channels)
        self.config = {"base": cfg, "target_sample_rate": target_sample_rate, "head": head}
        self.decoder = nn.Module()
        self.decoder.model = nn.Sequential(*layers)  # keys decoder.model.N as in the base
        if head["type"] in ("full", "sinc"):
            self.head = UpsampleHead(channels, self.factor, cfg["noise"], cfg["depthwise"], head["final_kernel"],
                                     head.get("sinc_taps"), head.get("sinc_cutoff", SINC_CUTOFF))
        else:
            self.head = LiteHead(channels, self.factor, cfg["noise"], cfg["depthwise"], head["branch_channels"],
                                 head["interp_taps"], head["branch_init"], head["branch_gain"])

    @classmethod
    def from_snac(cls, base: SNAC, target_sample_rate: int = 48000, head: dict | None = None) -> "SNAC48":
        """Copy the base's quantizer and decoder trunk; smart-initialise the new head (``head``: e.g.
        ``{"type": "lite", "branch_channels": 16}``; default the full head)."""
        model = cls(base.config, target_sample_rate, head)
        model.quantizer.load_state_dict(base.quantizer.state_dict())
        n = len(model.decoder.model)
        model.decoder.model.load_state_dict(base.decoder.model[:n].state_dict())
        base_snake, base_conv = base.decoder.model[n], base.decoder.model[n + 1]
        model.head.smart_init(base_snake, base_conv)
        return model.to(next(base.parameters()).device)

    def forward(self, codes: list[torch.Tensor]) -> torch.Tensor:
        return self.decode(codes)

    def decode(self, codes: list[torch.Tensor]) -> torch.Tensor:
        """codes -> (B, 1, factor * len(codes[-1]) * vq_strides[-1] * hop) at ``sampling_rate``."""
        return self.head(self.decoder.model(self.quantizer.from_codes(codes)))

    # ---- loading and saving ----
    @classmethod
    def from_config_dict(cls, config: dict) -> "SNAC48":
        """Build from a saved ``config`` (its ``base``, ``target_sample_rate`` and ``head`` sections).
        A saved lite head without ``branch_gain`` was trained without one (1)."""
        head = config.get("head")
        if head is not None and head.get("type") == "lite":
            head = {"branch_gain": 1.0, **head}
        return cls(config["base"], config.get("target_sample_rate", 48000), head)

    @classmethod
    def from_pretrained(cls, id_or_dir: str | os.PathLike, **hub_kwargs) -> "SNAC48":
        """Load from a hub id or a local directory; ``hub_kwargs`` as in ``SNAC.from_pretrained``.
        The base encoder of a standalone export loads with ``SNACEncoder.from_pretrained``."""
        config, weights = resolve_pretrained(id_or_dir, **hub_kwargs)
        if model_kind(config) != "snac48":
            raise ValueError(f"{id_or_dir} holds a base SNAC model; build the 48 kHz model with "
                             "SNAC48.from_snac(SNAC.from_pretrained(...))")
        model = cls.from_config_dict(config)
        model.load_state_dict(load_weights(weights), strict=True)
        return model.eval()

    def save_pretrained(self, directory: str | os.PathLike, base: SNACEncoder | None = None,
                        base_name: str | None = None) -> None:
        """config.json + model.safetensors. With ``base`` (the SNAC this model was made from) also
        its encoder + quantizer as ``base_encoder.safetensors``, so the directory alone goes from
        audio to codes to 48 kHz audio; ``base_name`` (hub id or path) is recorded as ``base_model``."""
        directory = Path(directory)
        config = copy.deepcopy(self.config)
        if base_name is not None:
            config["base_model"] = str(base_name)
        if base is None:
            (directory / BASE_ENCODER_NAME).unlink(missing_ok=True)  # never leave another base's encoder
        else:
            if base.config != self.base_config:
                raise ValueError("base is not the codec this model decodes: its config differs from the "
                                 "model's base config")
            directory.mkdir(parents=True, exist_ok=True)
            tensors = {k: v.detach().contiguous().cpu() for k, v in base.state_dict().items()
                       if not k.startswith("decoder.")}  # encoder.* + quantizer.*
            save_tensors(tensors, directory / BASE_ENCODER_NAME)
            config["base_encoder"] = BASE_ENCODER_NAME
        save_pretrained_files(directory, config, self.state_dict())
