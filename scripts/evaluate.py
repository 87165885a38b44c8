#!/usr/bin/env python
"""Evaluate a 48 kHz decoder against the stock 24 kHz decoder on held-out audio.

    uv run python scripts/evaluate.py --checkpoint runs/snac48/best_model.pt --input_dir data/val \
        --output_dir eval_report
    uv sync --extra eval   # optional: PESQ-WB and STOI (packages pesq, pystoi)

Each file is downmixed to mono; the reference is the file at ``--sample_rate`` (48 kHz). The
codes come from the base model's encoder on the file resampled to the base rate; they are
decoded by the checkpoint (48 kHz), by the stock base decoder (24 kHz, resampled to 48 kHz) and,
when the comparison rate is above the base's, by the stock decode widened with a classical band
replication (snac/bwe.py: the DSP baseline a learned head has to beat), all trimmed to the
reference's length; the noise is reseeded at every decoding chunk, so every system draws the same
noise on every chunk. Metrics (snac/metrics.py): mel distance,
multi-resolution STFT distance, SI-SDR, log-spectral distance of the 12-24 kHz band, mel distance of
the 0-12 kHz band, tonal-line prominence of the output and of the reference in the band (for a
file with no band: the share of the output's energy it puts there, 'invented'), and PESQ-WB /
STOI at 16 kHz when the optional packages are installed. The band is scored only where the source
has it: clipped at the source's Nyquist (16 kHz for a 32 kHz file), skipped when the source has
nothing above its low edge (24 kHz and lower sources). A metric that fails on a file (PESQ finds
no utterance, ...) is counted and reported per system, not dropped. Writes ``report.md`` and
``metrics.json`` (means, failures and per-file rows) and spectrogram PNGs comparing the original
with every decode. Without ``--checkpoint`` only the stock decoder and its band replication are measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from snac import SNAC  # noqa: E402
from snac.bwe import BandReplication  # noqa: E402
from snac.audio import AUDIO_EXTENSIONS  # noqa: E402
from snac.evaluation import evaluate_systems, find_eval_files, scored_band, skipped_note  # noqa: E402,F401 (scored_band: tests)
from snac.hub import load_model  # noqa: E402
from snac.infer import load_codec_pair, resolve_device  # noqa: E402
from snac.metrics import optional_metrics_available  # noqa: E402
from snac.presets import DEFAULT_BASE  # noqa: E402

COLUMNS = [("mel_distance", "mel dist. ↓", ".3f"), ("mel_distance_low", "mel dist. 0-12 kHz ↓", ".3f"),
           ("stft_distance", "MR-STFT dist. ↓", ".3f"),
           ("si_sdr", "SI-SDR dB ↑", ".2f"), ("lsd_high_band", "LSD {band} dB ↓", ".2f"),
           ("high_band_energy_db", "{band} energy dB (0 = right)", ".1f"),
           ("tonal_max_db", "lines max dB", ".1f"), ("ref_tonal_max_db", "ref. lines max dB", ".1f"),
           ("tonal_mean_db", "lines mean dB", ".2f"), ("ref_tonal_mean_db", "ref. lines mean dB", ".2f"),
           ("invented_band_db", "invented {band} share dB (no-band files)", "+.1f"),
           ("pesq_wb", "PESQ-WB ↑", ".3f"), ("stoi", "STOI ↑", ".3f")]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input_dir", required=True, help="held-out audio (ideally 48 kHz), searched recursively")
    p.add_argument("--checkpoint", default=None,
                   help="model to evaluate: training checkpoint .pt, exported dir or hub id (omit: stock only)")
    p.add_argument("--base_model", default=None,
                   help=f"base SNAC for the codes and the stock decode (default: the checkpoint's recorded "
                        f"--pretrained_model, else {DEFAULT_BASE})")
    p.add_argument("--output_dir", default="eval_report",
                   help="where report.md, metrics.json, spectrograms/ go (default: eval_report)")
    p.add_argument("--sample_rate", type=int, default=48000,
                   help="rate of the references and the comparison (default: 48000)")
    p.add_argument("--band", default="12000,24000",
                   help="band of the log-spectral distance, Hz 'low,high' (default: 12000,24000); clipped "
                        "at each source's Nyquist")
    p.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:N or a GPU index (default: cuda:0 if there is a GPU, else cpu)")
    p.add_argument("--limit", type=int, default=None, help="evaluate N files spread evenly over the sorted list")
    p.add_argument("--max_seconds", type=float, default=None, help="evaluate only the first S seconds of each file")
    p.add_argument("--spectrograms", type=int, default=4, help="files that get a spectrogram PNG (default: 4)")
    p.add_argument("--chunk_seconds", type=float, default=30.0,
                   help="encode/decode chunk, bounds memory (default: 30); 0 = whole file in one piece")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the decoders' noise, reseeded per chunk, the same for both systems (default: 0)")
    p.add_argument("--silence_db", type=float, default=None,
                   help="leave out of the mel and band metrics the reference's frames more than this many dB "
                        "below its loudest frame (default: off, every frame counts)")
    p.add_argument("--min_band_db", type=float, default=None,
                   help="leave a file out of the band distance when its recording holds less than this share of "
                        "its energy in the band, dB (a low-passed recording; default: off)")
    p.add_argument("--no_optional", action="store_true", help="skip PESQ/STOI even when installed")
    args = p.parse_args(argv)
    try:
        low, high = (float(v) for v in args.band.split(","))
    except ValueError:
        p.error(f"--band must be two numbers 'low,high' in Hz, got {args.band!r}")
    if not 0 <= low < high:
        p.error(f"--band {args.band}: need 0 <= low < high")
    if args.sample_rate <= 0 or args.chunk_seconds < 0:
        p.error("--sample_rate must be > 0 and --chunk_seconds >= 0")
    if args.limit is not None and args.limit < 1 or args.max_seconds is not None and args.max_seconds <= 0:
        p.error("--limit must be >= 1 and --max_seconds > 0 when given")
    args.band_hz = (low, high)
    return args


def failure_notes(failures: dict[str, dict[str, list[str]]], counts: dict[str, int]) -> list[str]:
    """'PESQ-WB failed on 2 of 6 file(s) for model 48 kHz (first: a.wav: NoUtterancesError: ...)'."""
    labels = {k: label.format(band="band") for k, label, _ in COLUMNS}
    notes = []
    for system, per_metric in failures.items():
        for metric, items in per_metric.items():
            notes.append(f"{labels.get(metric, metric).split(' ')[0]} failed on {len(items)} of {counts[system]} file(s) "
                         f"for {system}, left out of its mean (first: {items[0]})")
    return notes


def markdown(report: dict) -> str:
    band = report["settings"]["band_label"]
    header = ["system"] + [label.format(band=band) for _, label, _ in COLUMNS] + ["files"]
    lines = [f"# Evaluation: {report['settings']['checkpoint'] or 'stock decoder only'}", "",
             f"{report['settings']['files']} files, {report['settings']['seconds']:.1f} s of audio from "
             f"`{report['settings']['input_dir']}`, compared at {report['settings']['sample_rate']} Hz "
             f"(base model `{report['settings']['base_model']}`, noise seed {report['settings']['seed']}).", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for system, means in report["mean"].items():
        cells = [system] + [format(means[k], f) if means.get(k) is not None else "n/a" for k, _, f in COLUMNS]
        lines.append("| " + " | ".join(cells + [str(report["counts"][system])]) + " |")
    lines += ["", "SI-SDR compares the waveforms sample by sample. A codec trained on spectral losses alone (such "
              "as the shipped base, mel only) leaves the phase free, so its SI-SDR is far below 0 dB (about -30 "
              "to -50 dB) even where it sounds close: read the mel distance and the band figures first."]
    notes = report["notes"]
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    if report["spectrograms"]:
        lines += ["", "## Spectrograms", ""] + [f"![{Path(p).stem}]({p})" for p in report["spectrograms"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    # a context, not torch.set_grad_enabled(False): callers in the same process keep autograd
    with torch.no_grad():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from e
    root = Path(args.input_dir)
    if not root.is_dir():
        raise SystemExit(f"error: --input_dir {root} is not a folder of audio files")
    files = find_eval_files(root, args.limit)
    if not files:
        raise SystemExit(f"error: --input_dir {root} holds no audio ({', '.join(AUDIO_EXTENSIONS)})")

    try:
        if args.checkpoint:
            model, base, base_spec = load_codec_pair(args.checkpoint, args.base_model, True, True, DEFAULT_BASE)
        else:
            base_spec = args.base_model or DEFAULT_BASE
            model, base = None, load_model(base_spec).eval()
            if not isinstance(base, SNAC):
                raise ValueError(f"--base_model {base_spec} is not a base SNAC with an encoder")
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        raise SystemExit(f"error: {e}") from e
    base = base.to(device)
    systems: dict[str, torch.nn.Module] = {f"stock {base.sampling_rate // 1000} kHz": base}
    rate, (low, high) = args.sample_rate, args.band_hz
    if rate > base.sampling_rate:
        systems[f"band replication {rate // 1000} kHz"] = BandReplication(base, rate)
    if model is not None:
        systems[f"model {model.sampling_rate // 1000} kHz"] = model.to(device)
    optional = optional_metrics_available()
    use_optional = not args.no_optional and any(optional.values())
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the hub's weight digest line

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    result = evaluate_systems(files, root, base, systems, rate=rate, band_hz=args.band_hz,
                              silence_db=args.silence_db, min_band_db=args.min_band_db,
                              max_seconds=args.max_seconds, chunk_seconds=args.chunk_seconds or None,
                              seed=args.seed, device=device, optional=use_optional,
                              spectrograms=args.spectrograms, out_dir=out, progress=tqdm)
    if len(result["skipped"]) == len(files):
        raise SystemExit(f"error: no file of --input_dir {root} can be scored: {skipped_note(result['skipped'])}")
    rows, pngs, failures, seconds = result["rows"], result["spectrograms"], result["failures"], result["seconds"]
    upsampled, clipped, notes = result["upsampled"], result["clipped"], []
    if result["skipped"]:  # left out of every metric: a distance to silence or to a few samples means nothing
        notes.append(skipped_note(result["skipped"]) + ": left out of every metric.")
    no_band = result["no_band"] - result["band_empty"]  # by rate; band_empty: by content
    if upsampled:
        notes.append(f"{upsampled} file(s) had a rate below {rate} Hz and were upsampled for the reference.")
    if no_band:
        notes.append(f"{no_band} file(s) at {2 * low:.0f} Hz or below have nothing above {low:.0f} Hz: "
                     "left out of the band distance.")
    if result["band_empty"]:
        notes.append(f"{result['band_empty']} file(s) hold less than {args.min_band_db:g} dB of their energy in the "
                     "band (low-passed recordings): left out of the band distance.")
    if clipped:
        notes.append(f"{clipped} file(s) have a Nyquist below {high:.0f} Hz: their band distance stops there "
                     "(per-file bands in metrics.json).")
    notes += failure_notes(failures, result["counts"])
    if not use_optional:
        why = "--no_optional" if args.no_optional else "packages pesq/pystoi not installed (uv sync --extra eval)"
        notes.append(f"PESQ-WB and STOI skipped: {why}.")
    elif not all(optional.values()):
        notes.append(f"optional metric packages present: {optional}")
    notes.append("The stock decode is resampled from its own rate to the comparison rate; both systems decode "
                 "the same codes with the same noise seed.")
    metric_keys = [k for k, _, _ in COLUMNS]
    report = {
        "settings": {"input_dir": str(root), "checkpoint": args.checkpoint, "base_model": base_spec,
                     "sample_rate": rate, "band_hz": [low, high], "band_label": f"{low / 1000:g}-{high / 1000:g} kHz",
                     "files": len(files) - len(result["skipped"]), "skipped": result["skipped"],
                     "seconds": seconds, "seed": args.seed, "max_seconds": args.max_seconds,
                     "silence_db": args.silence_db,
                     "elapsed_s": time.time() - start},
        "mean": {name: {k: result["mean"][name].get(k) for k in metric_keys} for name in systems},
        "counts": result["counts"],
        "failures": {name: {k: len(v) for k, v in per.items()} for name, per in failures.items()},
        "notes": notes, "spectrograms": pngs, "files": rows,
    }
    (out / "metrics.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")  # strict: null, no NaN
    (out / "report.md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {out / 'report.md'}, {out / 'metrics.json'} and {len(pngs)} spectrogram(s) in {out / 'spectrograms'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
