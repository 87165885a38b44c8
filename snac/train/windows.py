"""Training data: time-aligned windows of cached codes and target audio.

A window starts at a coarse-token index ``k`` and spans ``n`` coarse tokens. With strides s_i,
hop length ``hop``, model rate R_in and audio rate R_out (all from the cache manifest / model
config):

    codebook i : tokens [k * s_0 / s_i, (k + n) * s_0 / s_i)
    audio      : samples [k * P, (k + n) * P), with P = s_0 * hop * R_out / R_in

(snac_24khz -> 48 kHz: P = 4 * 512 * 2 = 4096.) A model with local attention also needs the
window start and length, in latent frames, on its attention-window grid, so k and n are
multiples of ``token_multiple = lcm(s_0, attn_window) / s_0``.

Items shorter than the window are padded on every scale with code 0 (a valid embedding index)
and their audio with zeros; ``mask`` marks the real output samples so the loss ignores the rest.

Randomness lives only in :class:`WindowSampler`: a window's row and start are a pure function of
(seed, epoch, position in the epoch), so a resumed run (any number of DataLoader workers, any world
size) sees exactly the windows the uninterrupted run would have seen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ..audio import resample, resampled_length, source_span


# ----------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class WindowGeometry:
    """Every length of an aligned window, derived from the model/cache config."""

    vq_strides: tuple[int, ...]
    hop_length: int
    model_sample_rate: int  # R_in: the codes' model rate
    audio_sample_rate: int  # rate of the audio stored in the cache
    output_sample_rate: int  # R_out: rate the trained model decodes at
    attn_window_size: int | None = None

    def __post_init__(self) -> None:
        for rate, what in ((self.audio_sample_rate, "cache audio"), (self.output_sample_rate, "output")):
            if (self.coarse_input_samples * rate) % self.model_sample_rate:
                raise ValueError(
                    f"{what} rate {rate} Hz is not a whole number of samples per coarse token "
                    f"({self.coarse_input_samples} samples at {self.model_sample_rate} Hz); choose a "
                    f"rate that is a multiple of {self.model_sample_rate // math.gcd(self.model_sample_rate, self.coarse_input_samples)} Hz")
        if any(self.vq_strides[0] % s for s in self.vq_strides):
            raise ValueError(f"vq_strides {list(self.vq_strides)} must each divide the coarsest stride")

    @classmethod
    def from_configs(cls, model_config: dict, audio_sample_rate: int, output_sample_rate: int) -> "WindowGeometry":
        """From a base SNAC config (hub config.json keys)."""
        return cls(tuple(model_config["vq_strides"]), math.prod(model_config["encoder_rates"]),
                   model_config["sampling_rate"], audio_sample_rate, output_sample_rate,
                   model_config.get("attn_window_size"))

    @property
    def coarse_input_samples(self) -> int:
        """Model-rate samples per coarse token: s_0 * hop (2048 for snac_24khz)."""
        return self.vq_strides[0] * self.hop_length

    def samples_per_token(self, rate: int) -> int:
        """Samples at ``rate`` per coarse token: s_0 * hop * rate / R_in."""
        return self.coarse_input_samples * rate // self.model_sample_rate

    @property
    def output_samples_per_token(self) -> int:
        return self.samples_per_token(self.output_sample_rate)

    @property
    def audio_samples_per_token(self) -> int:
        return self.samples_per_token(self.audio_sample_rate)

    @property
    def token_multiple(self) -> int:
        """Window starts and lengths are multiples of this many coarse tokens (attention grid)."""
        s0 = self.vq_strides[0]
        return math.lcm(s0, self.attn_window_size or 1) // s0

    def tokens_for_seconds(self, seconds: float) -> int:
        """Coarse tokens of a ``seconds`` window: rounded DOWN to the token grid (never longer
        than asked), at least one grid step."""
        per_second = self.model_sample_rate / self.coarse_input_samples
        n = math.floor(seconds * per_second + 1e-9)
        g = self.token_multiple
        return max(g, n // g * g)

    def code_span(self, k: int, n: int, scale: int) -> tuple[int, int]:
        """(start, length) in tokens of codebook ``scale`` for coarse window [k, k + n)."""
        ratio = self.vq_strides[0] // self.vq_strides[scale]
        return k * ratio, n * ratio

    def seconds(self, n: int) -> float:
        return n * self.coarse_input_samples / self.model_sample_rate


# ----------------------------------------------------------------------------- dataset
class WindowDataset(torch.utils.data.Dataset):
    """Map-style dataset indexed by ``(row, k, n)`` tuples (made by the samplers below).

    Returns a dict: ``codes`` list of int64 arrays (n * s_0 / s_i,), ``audio`` float32
    (n * P_out,), ``mask`` float32 (n * P_out,) with 1 on real audio, ``row`` int.
    Audio is read partially (only the window) from the cache.
    """

    def __init__(self, cache: Any, geometry: WindowGeometry):
        self.cache = cache
        self.geometry = geometry

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, item: tuple[int, int, int]) -> dict:
        row, k, n = (int(v) for v in item)
        g = self.geometry
        codes = []
        # the cache clips at the row end: pad every scale up to the same instant with code 0
        for scale, c in enumerate(self.cache.codes(row, k, n)):
            length = g.code_span(k, n, scale)[1]
            c = np.asarray(c, dtype=np.int64)[:length]
            if len(c) < length:
                c = np.concatenate([c, np.zeros(length - len(c), dtype=np.int64)])
            codes.append(c)
        # audio samples [k * P_out, (k + n) * P_out) at the output rate
        p_out = g.output_samples_per_token
        out_start, out_len = k * p_out, n * p_out
        audio = self._output_audio(row, out_start, out_len)
        # real audio ends at the row's last sample and at the end of its codes, whichever is first
        row_end = resampled_length(int(self.cache.num_samples[row]), g.audio_sample_rate, g.output_sample_rate)
        codes_end = int(self.cache.num_coarse[row]) * p_out
        valid = max(0, min(len(audio), row_end - out_start, codes_end - out_start))
        audio = np.concatenate([audio[:valid], np.zeros(out_len - valid, dtype=np.float32)])
        mask = np.zeros(n * p_out, dtype=np.float32)
        mask[:valid] = 1.0
        return {"codes": codes, "audio": audio, "mask": mask, "row": row, "start": k}


    def _output_audio(self, row: int, start: int, frames: int) -> np.ndarray:
        """(<= frames,) float32: samples [start, start + frames) of the row at the output rate.

        At another cache rate the window is read with the resampling filter's reach as a margin on
        each side (``source_span``), resampled and cut, so it equals the same slice of the whole
        row resampled; resampling the bare window would get its edges wrong."""
        g = self.geometry
        if g.audio_sample_rate == g.output_sample_rate:
            return np.asarray(self.cache.audio(row, start, frames), dtype=np.float32)[:frames]
        src_start, src_end, skip = source_span(start, start + frames, g.audio_sample_rate, g.output_sample_rate,
                                               int(self.cache.num_samples[row]))
        if src_end <= src_start:
            return np.zeros(0, dtype=np.float32)
        src = np.asarray(self.cache.audio(row, src_start, src_end - src_start), dtype=np.float32)
        return resample(src, g.audio_sample_rate, g.output_sample_rate)[skip:skip + frames]


def collate_windows(items: Sequence[dict]) -> dict:
    """Stack items: codes list of (B, T_i) int64, audio/mask (B, 1, T) float32, rows/starts (B,)."""
    return {
        "codes": [torch.from_numpy(np.stack([it["codes"][i] for it in items]))
                  for i in range(len(items[0]["codes"]))],
        "audio": torch.from_numpy(np.stack([it["audio"] for it in items]))[:, None],
        "mask": torch.from_numpy(np.stack([it["mask"] for it in items]))[:, None],
        "rows": torch.tensor([it["row"] for it in items], dtype=torch.int64),
        "starts": torch.tensor([it["start"] for it in items], dtype=torch.int64),
    }


# ----------------------------------------------------------------------------- samplers
def window_start(seed: int, epoch: int, position: int, num_coarse: int, n: int, multiple: int) -> int:
    """Random start k (a multiple of ``multiple``) of a window of n tokens in a row of
    ``num_coarse`` tokens; a pure function of (seed, epoch, position)."""
    slots = max(0, num_coarse - n) // multiple + 1
    rng = np.random.default_rng([seed, epoch, position, 1])
    return int(rng.integers(slots)) * multiple


class WindowSampler(torch.utils.data.Sampler):
    """Batch sampler over training rows: each epoch a seeded permutation of the rows, one random
    window per row, sharded across ranks without overlap.

    The data position is ``consumed``: how many items of the epoch's (global) order the trainer
    has trained on. It is advanced by :meth:`advance` after each step (not by iteration, since a
    DataLoader reads ahead), saved by :meth:`state_dict`, and an iterator made after
    :meth:`load_state_dict` yields exactly the batches the uninterrupted run would have yielded
    next. With another world size the remaining items of the epoch are re-sharded.
    """

    def __init__(self, num_coarse: np.ndarray, seed: int, rank: int = 0, world_size: int = 1):
        self.num_coarse = np.asarray(num_coarse, dtype=np.int64)
        self.seed = int(seed)
        self.rank, self.world_size = rank, world_size
        self.epoch = 0  # 0-based epoch of the current position
        self.consumed = 0  # items of this epoch's global order already trained on
        self.window_tokens = 1
        self.token_multiple = 1
        self.batch_size = 1

    def configure(self, window_tokens: int, batch_size: int, token_multiple: int) -> None:
        """Window length and per-rank batch size of the current epoch (the curriculum)."""
        self.window_tokens, self.batch_size, self.token_multiple = window_tokens, batch_size, token_multiple

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch, 0]).permutation(len(self.num_coarse))

    def _remaining_for_rank(self) -> tuple[np.ndarray, np.ndarray]:
        """(positions in the epoch order, row ids) that this rank still has to see."""
        order = self.order(self.epoch)
        positions = np.arange(self.consumed, len(order))
        pad = -len(positions) % self.world_size
        if pad:  # every rank gets the same number of items: repeat the EPOCH's first ones (like
            # DistributedSampler), not the first still left, so a resumed rank pads as the uninterrupted run
            positions = np.concatenate([positions, np.arange(pad) % len(order)])
        positions = positions[self.rank::self.world_size]
        return positions, order[positions]

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        # snapshot the position now: advance() during the iteration must not shift it
        positions, rows = self._remaining_for_rank()
        return self._batches(positions, rows, self.epoch, self.window_tokens, self.batch_size,
                             self.token_multiple)

    def _batches(self, positions: np.ndarray, rows: np.ndarray, epoch: int, n: int, b: int,
                 multiple: int) -> Iterator[list[tuple[int, int, int]]]:
        for i in range(0, len(rows), b):
            yield [(int(r), window_start(self.seed, epoch, int(p), int(self.num_coarse[r]), n, multiple), n)
                   for p, r in zip(positions[i:i + b], rows[i:i + b])]

    def __len__(self) -> int:
        return self.batches_left()

    def batches_left(self) -> int:
        per_rank = math.ceil((len(self.num_coarse) - self.consumed) / self.world_size)
        return math.ceil(per_rank / self.batch_size)

    def batches_in_epoch(self, batch_size: int) -> int:
        """Steps of a whole epoch at ``batch_size`` per rank (for OneCycleLR's total)."""
        return math.ceil(math.ceil(len(self.num_coarse) / self.world_size) / batch_size)

    def advance(self) -> bool:
        """Record one trained step (a global batch); True when the epoch is finished."""
        self.consumed = min(len(self.num_coarse), self.consumed + self.batch_size * self.world_size)
        return self.consumed >= len(self.num_coarse)

    def start_epoch(self, epoch: int) -> None:
        self.epoch, self.consumed = epoch, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed, "seed": self.seed,
                "num_rows": len(self.num_coarse), "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        if int(state["num_rows"]) != len(self.num_coarse):
            raise ValueError(f"data position was saved for {state['num_rows']} training rows, this run "
                             f"has {len(self.num_coarse)} (--train_codes or --limit changed)")
        self.seed = int(state["seed"])
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])


def validation_items(num_coarse: np.ndarray, n: int, multiple: int, rank: int = 0,
                     world_size: int = 1) -> list[tuple[int, int, int]]:
    """One deterministic window per val row (centred, on the token grid), rows rank::world_size."""
    items = []
    for row in range(rank, len(num_coarse), world_size):
        k = max(0, int(num_coarse[row]) - n) // 2 // multiple * multiple
        items.append((row, k, n))
    return items


def batched(items: list, batch_size: int) -> list[list]:
    return [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
