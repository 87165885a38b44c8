"""Scoring decoders on a folder of held-out audio: the loop behind ``scripts/evaluate.py`` and
``scripts/quality_check.py`` (one copy).

``evaluate_systems`` encodes each file once with the base model's encoder (at the base rate), lets
every system decode those codes with the same noise seed on every chunk, brings each output to the
comparison rate, trims it to the reference and scores it with ``snac.metrics.all_metrics``; it can
also write each system's decode as a wav and side-by-side spectrogram PNGs. Beside the distances every
row has ``mel_distance_low`` (the 0-12 kHz band: did a head damage what it inherited?), the tonal
prominence of the output and of the reference in the scored band (``tonal_max_db`` / ``tonal_mean_db``,
``ref_tonal_*``: stationary lines), and, for a file with no scored band (a low-passed recording),
``invented_band_db``: the output's share of its energy in the band, which a decoder that does not
invent a top band keeps far below 0 dB. A ``BandReplication`` system is decoded as its base (chunked,
like every system) and widened once over the whole decode, so its STFT sees no chunk seams.
``codes_information`` is the control that shows a base codec's codes carry information: its mel distance with its own
codes against the same codes shuffled in time.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf
import torch

from .audio import AUDIO_EXTENSIONS, AudioError, load_audio, resample
from .compiling import conv_precision
from .infer import decode_codes, encode_audio
from .bwe import BandReplication
from .metrics import all_metrics, band_share_db, mel_distance, mel_distance_low, min_samples, tonal_prominence

METRIC_KEYS = ("mel_distance", "mel_distance_low", "stft_distance", "si_sdr", "lsd_high_band", "high_band_energy_db",
               "tonal_max_db", "tonal_mean_db", "ref_tonal_max_db", "ref_tonal_mean_db", "invented_band_db",
               "pesq_wb", "stoi")


def find_eval_files(root: str | Path, limit: int | None = None) -> list[Path]:
    """Audio files under ``root`` (recursively, sorted by path; symlinks followed). With ``limit``, that
    many spread evenly over the sorted list (files i * n // limit), so a subset of a folder of languages
    or speakers keeps every one of them in proportion rather than only the first few."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder of audio files")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
    if not limit or limit >= len(files):
        return files
    return [files[i * len(files) // limit] for i in range(limit)]


def scored_band(low: float, high: float, source_rate: int, rate: int) -> tuple[float, float] | None:
    """The part of the band [low, high] that a source at ``source_rate`` has, compared at ``rate``:
    clipped at the source's (and the comparison's) Nyquist; None when nothing above ``low`` is left."""
    top = min(high, source_rate / 2, rate / 2)
    return (low, top) if top > low else None


def fit(x: np.ndarray, n: int) -> np.ndarray:
    """Trim or zero-pad to n samples."""
    return x[:n] if len(x) >= n else np.pad(x, (0, n - len(x)))


def mean(values: list) -> float | None:
    """Mean of the values that exist (None and NaN left out); None when none does."""
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else None


def spectrogram_png(path: Path, title: str, signals: dict[str, np.ndarray], rate: int, band_low: float) -> None:
    """One row per signal (dB magnitude, 2048-point FFT), a dashed line at ``band_low``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_fft, hop = 2048, 512
    fig, axes = plt.subplots(len(signals), 1, figsize=(10, 2.6 * len(signals)), sharex=True, squeeze=False)
    window = torch.hann_window(n_fft)
    for ax, (name, x) in zip(axes[:, 0], signals.items()):
        spec = torch.stft(torch.as_tensor(x, dtype=torch.float32), n_fft, hop, window=window,
                          return_complex=True).abs()
        db = 20 * torch.log10(spec.clamp_min(1e-5)).numpy()
        extent = (0, len(x) / rate, 0, rate / 2000)
        ax.imshow(db, origin="lower", aspect="auto", extent=extent, cmap="magma", vmin=-80, vmax=max(0, db.max()))
        ax.axhline(band_low / 1000, color="cyan", lw=0.6, ls="--")
        ax.set_ylabel("kHz")
        ax.set_title(name, fontsize=9, loc="left")
    axes[-1, 0].set_xlabel("seconds")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def extra_metrics(ref: np.ndarray, est: np.ndarray, rate: int, band: tuple[float, float] | None,
                  nominal_band: tuple[float, float], silence_db: float | None, errors: dict[str, str],
                  ref_cache: dict) -> dict:
    """The metrics beside ``all_metrics`` (module docstring); a metric that raises is None, its error
    in ``errors``. ``nominal_band``: the band the decoder is asked to fill, scored for invention when
    the reference has no ``band``. ``ref_cache``: one dict per file, so the reference's own figures
    are computed once for every system."""
    def ref_tonal():
        if "tonal" not in ref_cache:
            ref_cache["tonal"] = tonal_prominence(ref, rate, *band)
        return ref_cache["tonal"]

    metrics = {"mel_distance_low": lambda: mel_distance_low(ref, est, rate, silence_db=silence_db)}
    if band is not None:
        metrics["tonal"] = lambda: tonal_prominence(est, rate, *band)
        metrics["ref_tonal"] = ref_tonal
    else:
        metrics["invented_band_db"] = lambda: band_share_db(est, rate, *nominal_band, silence_db=silence_db)
    out = {"mel_distance_low": None, "tonal_max_db": None, "tonal_mean_db": None, "ref_tonal_max_db": None,
           "ref_tonal_mean_db": None, "invented_band_db": None}
    for name, compute in metrics.items():
        try:
            value = compute()
        except Exception as e:
            errors[name] = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}".rstrip(": ")
            continue
        if name.endswith("tonal"):
            out[f"{name}_max_db"], out[f"{name}_mean_db"] = value
        else:
            out[name] = value
    return out


class Skipped(Exception):
    """A file that cannot be scored; the message is the reason ('silent', 'too short: ...', ...)."""


def read_reference(path: Path, max_seconds: float | None, rates: tuple[int, ...] = ()) -> tuple[np.ndarray, int]:
    """Mono audio of a file at its own rate, cut to the first ``max_seconds``. Raises ``Skipped`` for a
    file no metric can score: unreadable, silent (every sample 0: every distance to it is meaningless),
    or shorter than the metrics' FFTs (``min_samples``) at any of ``rates``."""
    try:
        audio, rate = load_audio(path, mono=True)
    except AudioError as e:
        raise Skipped(f"unreadable: {str(e).removeprefix(f'{path}: ')}") from e
    audio = audio[:int(max_seconds * rate)] if max_seconds else audio
    if not np.any(audio):
        raise Skipped("silent" + (f" (its first {max_seconds:g} s)" if max_seconds else ""))
    need = min_samples()
    for r in rates:
        if len(audio) * r / rate < need:
            raise Skipped(f"too short: {len(audio) / rate * 1000:.1f} ms, the metrics need {need} samples at {r} Hz")
    return audio, rate


def skipped_note(skipped: dict[str, str]) -> str:
    """'2 files skipped: silent (a.wav, b.wav); 1 file skipped: too short (c.wav)' (reasons grouped)."""
    groups: dict[str, list[str]] = {}
    for name, reason in skipped.items():
        groups.setdefault(reason.split(":")[0].split(" (")[0], []).append(name)
    return "; ".join(f"{len(names)} file{'s' * (len(names) > 1)} skipped: {reason} ({', '.join(names)})"
                     for reason, names in groups.items())


def finite_or_none(value):
    """A metric value for strict JSON: NaN and +-inf become None."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


@conv_precision(tf32=False)  # IEEE float32 on a GPU: the cache's codes, figures that do not depend on the card
def evaluate_systems(files: list[Path], root: Path, base: torch.nn.Module, systems: dict[str, torch.nn.Module], *,
                     rate: int, band_hz: tuple[float, float], silence_db: float | None = None,
                     min_band_db: float | None = None,
                     max_seconds: float | None = None, chunk_seconds: float | None = 30.0, seed: int = 0,
                     device: torch.device | str = "cpu", optional: bool = False, spectrograms: int = 0,
                     out_dir: Path | None = None, audio_dir: Path | None = None,
                     progress: Callable = lambda it, **kw: it) -> dict:
    """Score every system on every file (see the module docstring).

    ``base`` is a SNAC whose encoder makes the codes; ``systems`` maps a name to a model that decodes
    them (a SNAC at its own rate or a SNAC48). ``min_band_db``: a file whose reference holds less than
    this share of its energy in the band (``band_share_db``) is left out of the band metrics, like a
    source whose Nyquist is below the band (a 44.1 kHz file low-passed at 8 kHz). ``audio_dir``: each system's decode is written as
    ``audio_dir/<system>/<relative path>.wav`` at ``rate``. ``spectrograms``: the first N files get a
    PNG in ``out_dir/spectrograms``. Files no metric can score (``read_reference``: unreadable, silent,
    too short) are left out of every metric and listed in 'skipped' (relative path -> reason); a metric
    that is not finite on a file counts as a failure of that metric. Returns {'rows', 'mean', 'counts',
    'failures' (name -> metric -> ['file: error']), 'skipped', 'spectrograms', 'seconds', 'upsampled',
    'no_band', 'clipped', 'band_empty'}; every number is finite or None (strict JSON). The mean of
    ``invented_band_db`` is over the files with no scored band only (the low-passed group).
    """
    low, high = band_hz
    codec_rate = base.sampling_rate
    rows: list[dict] = []
    pngs: list[str] = []
    failures: dict[str, dict[str, list[str]]] = {name: {} for name in systems}
    skipped: dict[str, str] = {}
    seconds, upsampled, no_band, clipped, band_empty = 0.0, 0, 0, 0, 0
    for path in progress(files, desc="evaluating", unit="file"):
        rel = path.relative_to(root)
        try:
            audio, src_rate = read_reference(path, max_seconds, (rate, codec_rate))
        except Skipped as e:
            skipped[str(rel)] = str(e)
            continue
        ref = resample(audio, src_rate, rate)
        seconds += len(audio) / src_rate
        # score only the part of the band the source has: none for a 24 kHz source, up to 16 kHz for 32 kHz
        band = scored_band(low, high, src_rate, rate)
        share = None if band is None else finite_or_none(band_share_db(ref, rate, *band, silence_db=silence_db))
        if min_band_db is not None and share is not None and share < min_band_db:
            band, band_empty = None, band_empty + 1  # the recording holds (next to) nothing there
        no_band += band is None
        clipped += band is not None and band[1] < high
        upsampled += src_rate < rate
        codes = encode_audio(base, resample(audio, src_rate, codec_rate), chunk_seconds, device=device)
        decoded, raw, ref_cache = {}, {}, {}  # raw: id(model) -> its decode, shared by a BandReplication of it
        for name, system in systems.items():
            # a BandReplication widens its base's whole decode at once: per chunk, each chunk's STFT
            # would start and end on its own (seams in the replicated band)
            model = system.base if isinstance(system, BandReplication) else system
            if id(model) not in raw:  # reseeded per chunk: a SNAC48 and its base draw the same trunk noise
                raw[id(model)] = decode_codes(model, codes, chunk_seconds, device=device, seed=seed)
            y = system.widen(raw[id(model)]) if model is not system else raw[id(model)]
            decoded[name] = fit(resample(y, system.sampling_rate, rate), len(ref))
            errors: dict[str, str] = {}
            m = all_metrics(ref, decoded[name], rate, band, optional=optional, errors=errors, silence_db=silence_db)
            m.update(extra_metrics(ref, decoded[name], rate, band, (low, min(high, rate / 2)), silence_db, errors,
                                   ref_cache))
            for metric, value in m.items():
                if finite_or_none(value) is None and value is not None:
                    m[metric], errors[metric] = None, f"not finite ({value})"
            for metric, error in errors.items():
                failures[name].setdefault(metric, []).append(f"{rel}: {error}")
            rows.append({"file": str(rel), "system": name, "source_sample_rate": src_rate,
                         "band_hz": list(band) if band else None, "reference_band_share_db": share, **m,
                         "errors": errors})
            if audio_dir is not None:
                wav = Path(audio_dir) / name / rel.with_suffix(".wav")
                wav.parent.mkdir(parents=True, exist_ok=True)
                sf.write(wav, np.clip(decoded[name], -1.0, 1.0), rate, subtype="PCM_16")
        if len(pngs) < spectrograms and out_dir is not None:
            png = Path(out_dir) / "spectrograms" / (str(rel.with_suffix("")).replace("/", "__") + ".png")
            spectrogram_png(png, str(rel), {"original": ref, **decoded}, rate, low)
            pngs.append(str(png.relative_to(out_dir)))
    keys = [k for k in METRIC_KEYS if any(k in r for r in rows)]
    return {"rows": rows, "failures": failures, "skipped": skipped, "spectrograms": pngs, "seconds": seconds,
            "upsampled": upsampled, "no_band": no_band, "clipped": clipped, "band_empty": band_empty,
            "mean": {name: {k: mean([r.get(k) for r in rows if r["system"] == name]) for k in keys}
                     for name in systems},
            "counts": {name: sum(r["system"] == name for r in rows) for name in systems}}


def shuffle_codes(codes: list[torch.Tensor], vq_strides: list[int], generator: torch.Generator) -> list[torch.Tensor]:
    """The same codes in another time order: coarse position k moves to a random place and takes the
    finer levels' tokens under it along (codebook i's tokens k*s0/si ... (k+1)*s0/si - 1), so every
    level keeps its codes and their nesting and only the order in time is lost. codes: 1-D per level."""
    n = len(codes[0])
    order = torch.randperm(n, generator=generator)
    out = []
    for c, s in zip(codes, vq_strides):
        per = vq_strides[0] // s  # tokens of this level under one coarse token
        out.append(c[: n * per].view(n, per)[order].reshape(-1))
    return out


@torch.no_grad()
@conv_precision(tf32=False)
def codes_information(base: torch.nn.Module, files: list[Path], *, silence_db: float | None = None,
                      max_seconds: float | None = None, chunk_seconds: float | None = 30.0, seed: int = 0,
                      device: torch.device | str = "cpu") -> dict[str, float | None]:
    """Mean mel distance (at the base rate) of the base decoding its own codes, and the same codes
    shuffled in time (``shuffle_codes``, seeded). A codec whose codes carry information is much worse
    shuffled; one whose decoder ignores them is not. Also the codebook use: per level, the share of
    its codes that any file's codes use. -> {'own', 'shuffled', 'code_use', 'files'}."""
    rate = base.sampling_rate
    own, shuffled = [], []
    used = [torch.zeros(q.codebook.num_embeddings, dtype=torch.bool) for q in base.quantizer.quantizers]
    generator = torch.Generator().manual_seed(seed)
    for path in files:
        try:
            audio, src_rate = read_reference(path, max_seconds, (rate,))
        except Skipped:
            continue  # evaluate_systems lists it
        ref = resample(audio, src_rate, rate)
        codes = encode_audio(base, ref, chunk_seconds, device=device)
        for level, c in zip(used, codes):
            level[c.cpu()] = True
        for codes_used, bucket in ((codes, own), (shuffle_codes(codes, base.vq_strides, generator), shuffled)):
            y = fit(decode_codes(base, codes_used, chunk_seconds, device=device, seed=seed), len(ref))
            bucket.append(mel_distance(ref, y, rate, silence_db))
    return {"own": mean(own), "shuffled": mean(shuffled), "code_use": [u.float().mean().item() for u in used],
            "files": len(files)}
