"""Names, shard schema and manifest of a code cache: what is on disk and how it is checked.

A shard row holds plain Arrow types: ``id`` string, ``path`` string (relative to the manifest's
``input_root``), ``duration`` double (seconds of the source), ``num_samples`` int64 (samples at the
target rate), ``num_coarse`` int32 (tokens of codebook 0), ``sample_rate`` int32 and ``channels``
int16 of the source, ``codes_<j>`` list<int16> (list<int32> when codebook_size > 32768) for every
codebook j (coarse first; len(codes_j) * vq_strides[j] is equal across j), and with embedded audio
``audio`` binary (FLAC of the target-rate mono audio).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..fileio import write_json_atomic

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SETTINGS_NAME = "cache_settings.json"
META_DIR = "_meta"
SHARD_PREFIX = "shard-w"
SHARD_SUFFIX = ".parquet"
INDEX_PREFIX = "index-"
LOCK_NAME = ".lock"
QUARANTINE_DIR = "_quarantine"  # rows set aside by the resume scan (stale or duplicate), never deleted


def codes_column(j: int) -> str:
    return f"codes_{j}"


def code_dtype(codebook_size: int) -> np.dtype:
    """Smallest signed integer type holding every code (int16 for the published 4096)."""
    return np.dtype(np.int16) if codebook_size <= np.iinfo(np.int16).max + 1 else np.dtype(np.int32)


def shard_schema(num_codebooks: int, codebook_size: int, embed_audio: bool,
                 metadata: dict | None = None) -> pa.Schema:
    """Arrow schema of a shard (plain types: pandas, duckdb and HF datasets read it unchanged)."""
    code_type = pa.from_numpy_dtype(code_dtype(codebook_size))
    fields = [pa.field("id", pa.string()), pa.field("path", pa.string()),
              pa.field("duration", pa.float64()), pa.field("num_samples", pa.int64()),
              pa.field("num_coarse", pa.int32()), pa.field("sample_rate", pa.int32()),
              pa.field("channels", pa.int16())]
    fields += [pa.field(codes_column(j), pa.list_(code_type)) for j in range(num_codebooks)]
    if embed_audio:
        fields.append(pa.field("audio", pa.binary()))
    meta = {b"snac_cache": json.dumps(metadata).encode()} if metadata else None
    return pa.schema(fields, metadata=meta)


def now_iso() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def shard_name(worker_index: int, seq: int) -> str:
    return f"{SHARD_PREFIX}{worker_index:05d}-{seq:06d}{SHARD_SUFFIX}"


def list_shards(cache_dir: str | os.PathLike) -> list[Path]:
    """Complete shards (renamed from their temporary names), sorted by name."""
    cache_dir = Path(cache_dir)
    return sorted(p for p in cache_dir.glob(f"{SHARD_PREFIX}*{SHARD_SUFFIX}") if p.is_file())


def reject_log(cache_dir: Path, worker_index: int) -> Path:
    """A worker's log of files it could not cache (one JSON object per line)."""
    return Path(cache_dir) / META_DIR / f"rejected-w{worker_index:05d}.jsonl"


def read_rejections(cache_dir: str | os.PathLike) -> dict[str, str]:
    """{path: latest reason} over every worker's rejection log."""
    out: dict[str, tuple[str, str]] = {}
    for log in sorted((Path(cache_dir) / META_DIR).glob("rejected-w*.jsonl")):
        for line in log.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if rec["path"] not in out or rec.get("time", "") >= out[rec["path"]][1]:
                out[rec["path"]] = (rec["reason"], rec.get("time", ""))
    return {p: r for p, (r, _) in out.items()}



def weights_fingerprint(model) -> str:
    """sha256 over the encoder + quantizer tensors of ``model``'s state dict, in key order.

    Codes depend on exactly these weights (the decoder is not used to make them), so two models
    with equal fingerprints make equal codes. Each tensor contributes its key, dtype, shape and
    raw bytes; the result does not depend on the device the model sits on.
    """
    import torch

    h = hashlib.sha256()
    found = 0
    for key, tensor in model.state_dict().items():
        if not key.startswith(("encoder.", "quantizer.")):
            continue
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        found += 1
    if not found:
        raise ValueError(f"{type(model).__name__} has no encoder./quantizer. tensors to fingerprint; "
                         "pass the SNAC model that makes the codes")
    return h.hexdigest()


def resampler_name() -> str:
    """The resampler every cached file went through (recorded: another one changes the codes)."""
    import soxr

    return f"soxr-HQ {getattr(soxr, '__version__', '?')}"


def validate_target_sample_rate(target_sample_rate: int, base_sample_rate: int) -> None:
    """The one rule for an output rate: the base model's own rate (stock decoder) or a multiple
    of it, at least 2x (a SNAC48-style head upsamples by that integer). Raises ValueError."""
    t, b = int(target_sample_rate), int(base_sample_rate)
    if t != b and (t % b or t < 2 * b):
        raise ValueError(f"--target_sample_rate {t} must equal the base rate {b} or be a multiple "
                         f"of it (>= 2x), e.g. {2 * b}")


def model_settings(model_id: str, config: dict, target_sample_rate: int, embed_audio: bool,
                   input_root: str, weights_fingerprint: str | None = None) -> dict:
    """What every run into one cache directory must agree on (model_config is SNAC.config;
    ``weights_fingerprint`` is :func:`weights_fingerprint` of the model that makes the codes)."""
    import torch

    from ..model import SNAC

    with torch.device("meta"):  # only the derived attributes are needed: no weights, no memory
        model = SNAC(**config)
    return {
        "format_version": FORMAT_VERSION,
        "model_id": str(model_id),
        "model_config": model.config,
        "hop_length": model.hop_length,
        "vq_strides": list(model.vq_strides),
        "pad_multiple": model.pad_multiple,
        "num_codebooks": len(model.vq_strides),
        "codebook_size": model.config["codebook_size"],
        "code_dtype": code_dtype(model.config["codebook_size"]).name,
        "model_sample_rate": model.sampling_rate,
        "target_sample_rate": int(target_sample_rate),
        "embed_audio": bool(embed_audio),
        "input_root": str(input_root),
        "weights_fingerprint": weights_fingerprint,
        "resampler": resampler_name(),
    }


def write_manifest(cache_dir: str | os.PathLike, settings: dict, run: dict | None = None) -> dict:
    """Merge what is on disk (complete shards, every worker's rejection log) into manifest.json.

    It is derived from the shards, not from in-memory counters, so it is right after any mix of
    crashed and resumed runs. ``run`` adds facts of the last run (files listed, workers failed...).
    """
    cache_dir = Path(cache_dir)
    run = dict(run or {})
    shards, rows, seconds, upsampled, paths = [], 0, 0.0, 0, []
    for shard in list_shards(cache_dir):
        t = pq.read_table(shard, columns=["path", "duration", "sample_rate"])
        shards.append({"name": shard.name, "rows": t.num_rows})
        rows += t.num_rows
        seconds += float(pc.sum(t["duration"]).as_py() or 0.0)
        upsampled += int(pc.sum(pc.less(t["sample_rate"], settings["target_sample_rate"])).as_py() or 0)
        paths.extend(t["path"].to_pylist())
    unique = set(paths)
    listed = run.pop("listed_files", None)
    listed = None if listed is None else set(listed)
    # a rejection of a file that is no longer listed is history, not part of this cache's accounting
    rejected = [{"path": p, "reason": r} for p, r in sorted(read_rejections(cache_dir).items())
                if p not in unique and (listed is None or p in listed)]
    missing = None if listed is None else len(listed - unique - {r["path"] for r in rejected})
    failed = run.get("failed_workers", [])
    manifest = dict(settings)
    manifest.update({
        "rows": rows,
        "listed": None if listed is None else len(listed),  # rows == listed - len(rejected) - missing
        "hours": seconds / 3600.0,
        "upsampled": upsampled,
        "duplicates": len(paths) - len(unique),
        "missing": missing,
        "complete": (rows > 0 and not failed and not run.get("interrupted") and missing in (0, None)
                     and len(paths) == len(unique)),
        "shards": shards,
        "rejected": rejected,
        "created": now_iso(),
        **run,
    })
    write_json_atomic(cache_dir / MANIFEST_NAME, manifest, durable=True)
    return manifest


def read_manifest(cache_dir: str | os.PathLike) -> dict:
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        raise FileNotFoundError(f"code cache {cache_dir} does not exist; make it with "
                                "cache_codes_multigpu.py --output_dir (or fix the path)")
    path = cache_dir / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{cache_dir} has no {MANIFEST_NAME}: it is not a finished code cache; "
                                "run (or resume) cache_codes_multigpu.py with --output_dir pointing at it")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); rerun cache_codes_multigpu.py to rewrite it") from e
    required = ("format_version", "model_id", "model_config", "hop_length", "vq_strides",
                "model_sample_rate", "target_sample_rate", "input_root", "embed_audio", "rows")
    lacking = [k for k in required if k not in manifest]
    if lacking:
        raise ValueError(f"{path} lacks {', '.join(lacking)}; it was not written by this project's "
                         "cache_codes_multigpu.py: re-make the cache")
    if manifest["format_version"] != FORMAT_VERSION:
        raise ValueError(f"{path} has cache format {manifest['format_version']}, this code reads "
                         f"{FORMAT_VERSION}; re-make the cache with this version")
    return manifest


def canonical_model_config(config: dict) -> dict:
    """SNAC.config with defaults filled (a SNAC48 config contributes its base)."""
    if "base" in config:
        config = config["base"]
    out = dict(config)
    if out.get("latent_dim") is None and "encoder_dim" in out and "encoder_rates" in out:
        out["latent_dim"] = out["encoder_dim"] * 2 ** len(out["encoder_rates"])
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def compare_model_configs(cache_config: dict, expected: dict) -> list[str]:
    """Differences 'key: cache value vs expected value' between two SNAC configs (empty if equal)."""
    a, b = canonical_model_config(cache_config), canonical_model_config(expected)
    return [f"{k}: {a.get(k)!r} (cache) vs {b.get(k)!r} (expected)"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]

