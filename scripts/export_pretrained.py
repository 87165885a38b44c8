#!/usr/bin/env python
"""Export a training checkpoint as a model directory in the Hugging Face hub layout.

    uv run python scripts/export_pretrained.py --checkpoint runs/snac48/best_model.pt --output_dir snac48_export
    huggingface-cli upload <you>/snac_48khz snac48_export .

The directory holds ``config.json``, ``model.safetensors`` and a ``README.md`` model card (base
model, training data hours, steps, val metrics). A 48 kHz export stands alone: it also holds the
base model's encoder and quantizer (``base_encoder.safetensors``, about half the size of the
decoder for snac_24khz), so it goes from audio to 48 kHz audio offline; the base is the one the
checkpoint records (``--pretrained_model`` of the run) or ``--base_model``, and it is checked
against the checkpoint (same codec config, same codebooks) before it is written. A plain SNAC
export (the trainer's 24 kHz mode) also gets ``pytorch_model.bin`` so upstream ``snac`` loads it.
It loads with ``SNAC48.from_pretrained(dir)`` + ``SNACEncoder.from_pretrained(dir)``
(``SNAC.from_pretrained`` for a plain SNAC) or ``snac.load_model``. The export is reloaded and
compared tensor by tensor before the script reports success.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from snac import SNAC, SNAC48, SNACEncoder, load_model  # noqa: E402
from snac.hub import looks_like_hub_id  # noqa: E402
from snac.infer import config_difference, same_codec  # noqa: E402

WRITTEN = ("config.json", "model.safetensors", "pytorch_model.bin", "base_encoder.safetensors", "README.md")


def read_checkpoint(path: Path) -> dict:
    if not path.is_file():
        raise SystemExit(f"error: --checkpoint {path} does not exist; pass a .pt file from the run directory")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise SystemExit(f"error: {path} is not a readable training checkpoint ({str(e).splitlines()[0]})") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        raise SystemExit(f"error: {path} is not a checkpoint of finetune_decoder_48khz.py "
                         "(no 'model' / 'model_config'); pass e.g. runs/<run>/best_model.pt")
    return ckpt


def data_hours(config: dict, run_dir: Path) -> dict:
    """Hours and rows of the train/val caches named in the run config, from their manifests."""
    out = {}
    for split in ("train", "val"):
        cache = config.get(f"{split}_codes")
        if not cache:
            continue
        for candidate in (Path(cache), run_dir / cache):
            manifest = candidate / "manifest.json"
            if manifest.is_file():
                m = json.loads(manifest.read_text())
                out[split] = {"hours": m.get("hours"), "rows": m.get("rows"), "cache": str(cache)}
                break
    return out


def last_val_metrics(run_dir: Path, iteration: int | None) -> dict | None:
    """The newest validation row of metrics.jsonl at or before the checkpoint's iteration."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    best = None
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a crash
        if row.get("type") != "val":
            continue
        if iteration is None or row.get("iteration", 0) <= iteration:
            best = row
    return best


def load_base(spec: str | None, recorded: str | None, model: SNAC48) -> SNAC:
    """The base SNAC a 48 kHz checkpoint was trained from, checked against it: same codec config
    and the same (frozen) codebooks and projections as the checkpoint's quantizer."""
    if spec is None:
        if recorded is None:
            raise SystemExit("error: the checkpoint records no --pretrained_model; pass --base_model with "
                             "the base model it was trained from (hub id or local directory)")
        spec = recorded
    try:
        base = load_model(spec)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        raise SystemExit(f"error: cannot load the base model {spec} ({e}); pass --base_model with a local "
                         "directory of the base the checkpoint was trained from") from e
    if not isinstance(base, SNAC):
        raise SystemExit(f"error: base model {spec} is not a base SNAC (a 48 kHz model?); pass the 24 kHz "
                         "base the checkpoint was trained from")
    if not same_codec(base.config, model.base_config):
        raise SystemExit(f"error: base model {spec} is not the codec of this checkpoint "
                         f"({config_difference(base.config, model.base_config)}); pass the right --base_model")
    ours, theirs = model.quantizer.state_dict(), base.quantizer.state_dict()
    if any(not torch.equal(ours[k], theirs[k]) for k in ours):
        raise SystemExit(f"error: base model {spec} has other codebooks than this checkpoint, so its codes "
                         "would not be the ones the decoder learned; pass the base it was trained from "
                         "as --base_model")
    return base


def fmt(value, spec: str = ".4f") -> str:
    return format(value, spec) if isinstance(value, (int, float)) and value is not None else "n/a"


def card_name(spec: str) -> str:
    """A base as a published card shows it: a hub id as it is; a local path relative to the working
    directory when it lies under it, else the folder's name (no absolute path of this machine)."""
    if looks_like_hub_id(spec) or not Path(spec).exists():
        return spec
    path = Path(spec).resolve()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else path.name


def model_card(ckpt: dict, model, hours: dict, val: dict | None, checkpoint: Path, base: str) -> str:
    config = ckpt.get("config") or {}
    rate = model.sampling_rate
    is48 = isinstance(model, SNAC48)
    base_rate = model.base_sampling_rate if is48 else model.sampling_rate
    base_is_hub = looks_like_hub_id(base)
    lines = ["---", "license: mit", "library_name: pytorch",
             "tags:", "- audio", "- speech", "- neural-audio-codec", "- snac"]
    if base_is_hub:
        lines += [f"base_model: {base}"]
    lines += ["---", "", f"# SNAC decoder at {rate // 1000} kHz", ""]
    if is48:
        lines += [f"Decodes the unchanged codes of `{base}` ({base_rate} Hz codec, "
                  f"{len(model.vq_strides)} codebooks, strides {model.vq_strides}) at {rate} Hz: the "
                  f"base decoder, fine-tuned, with a new x{model.factor} upsampling head. Any language "
                  f"model trained on the base model's tokens can use it unchanged.", ""]
    else:
        lines += [f"The decoder of `{base}` fine-tuned at its own {rate} Hz.", ""]
    where = "" if base_is_hub else " (a local model)"
    held = "; its encoder and quantizer are included here as `base_encoder.safetensors`" if is48 else ""
    lines += ["## Training", "", "| | |", "|---|---|", f"| base model | `{base}`{where}{held} |"]
    for split, info in hours.items():
        lines.append(f"| {split} data | {fmt(info.get('hours'), '.2f')} h, {info.get('rows', 'n/a')} utterances |")
    lines += [f"| iterations | {ckpt.get('iteration', 'n/a')} |",
              f"| epoch | {ckpt.get('epoch', 'n/a')} of {config.get('epochs', 'n/a')} "
              f"(phase: {ckpt.get('phase', 'n/a')}) |",
              f"| segment / batch | {config.get('segment_length', 'n/a')} s / {config.get('batch_size', 'n/a')} |",
              f"| learning rate | warmup {config.get('warmup_learning_rate', 'n/a')}, then "
              f"{config.get('learning_rate', 'n/a')} (OneCycle) |",
              f"| loss | {config.get('l1_weight', 'n/a')} x L1 + {config.get('stft_weight', 'n/a')} x "
              f"multi-scale STFT (n_fft {config.get('n_ffts', 'n/a')}) |",
              f"| best val loss | {fmt(ckpt.get('best_val_loss'))} |"]
    if val:
        metrics = ", ".join(f"{k} {fmt(v)}" for k, v in val.items() if k.startswith("loss/"))
        lines.append(f"| val at iteration {val.get('iteration')} | {metrics} |")
    lines += [f"| exported from | `{checkpoint.name}` |", "", "## Use", "", "```python", "import torch"]
    if is48:
        lines += ["from snac import SNAC48, SNACEncoder", "",
                  f'encoder = SNACEncoder.from_pretrained("<this repo or directory>")  # the base\'s encoder '
                  f'({base})',
                  'model = SNAC48.from_pretrained("<this repo or directory>")']
    else:
        lines += ["from snac import SNAC", "", 'model = encoder = SNAC.from_pretrained("<this repo or directory>").eval()']
    lines += [f"audio = torch.zeros(1, 1, {base_rate})  # (B, 1, T) mono at {base_rate} Hz",
              "with torch.inference_mode():",
              "    codes = encoder.encode(audio)",
              f"    audio_out = model.decode(codes)  # (B, 1, T') at {rate} Hz", "```", "",
              "Or with the training repository's command line:", "",
              "```bash", "uv run python inference.py --checkpoint <this directory> --input in.wav --output out.wav",
              "```", "",
              "The decoder's noise blocks draw fresh noise on each call: seed torch for repeatable output.", "",
              "On a GPU, torch lets cuDNN run float32 convolutions in TF32 by default, which changes some codes of a "
              "trained encoder. The training repository's code cache encodes in IEEE float32; to get the same codes, "
              "encode inside `with snac.compiling.conv_precision(tf32=False):` (after `import snac.compiling`).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="training checkpoint (.pt), e.g. runs/<run>/best_model.pt")
    p.add_argument("--output_dir", required=True, help="directory to write config.json, model.safetensors, README.md")
    p.add_argument("--base_model", default=None,
                   help="base SNAC the checkpoint was trained from, hub id or local directory; its encoder "
                        "and quantizer go into a 48 kHz export (default: the run's recorded --pretrained_model)")
    p.add_argument("--overwrite", action="store_true", help="replace the files of a non-empty --output_dir")
    args = p.parse_args(argv)

    checkpoint, out = Path(args.checkpoint), Path(args.output_dir)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise SystemExit(f"error: --output_dir {out} is not empty; pass --overwrite or choose a new directory")
    ckpt = read_checkpoint(checkpoint)
    try:
        model = load_model(checkpoint)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from e
    run_dir = checkpoint.resolve().parent
    config = ckpt.get("config") or {}
    hours = data_hours(config, Path.cwd()) or data_hours(config, run_dir)
    val = last_val_metrics(run_dir, ckpt.get("iteration"))
    recorded = config.get("pretrained_model")
    base_name = args.base_model or recorded or "unknown"
    base = load_base(args.base_model, recorded, model) if isinstance(model, SNAC48) else None

    if out.exists() and args.overwrite:
        for name in WRITTEN:
            (out / name).unlink(missing_ok=True)
    if base is not None:
        model.save_pretrained(out, base=base, base_name=base_name)
    else:
        model.save_pretrained(out)
    (out / "README.md").write_text(model_card(ckpt, model, hours, val, checkpoint, card_name(base_name)))

    # verify: the directory loads with the matching class and holds exactly the checkpoint's tensors
    cls = SNAC48 if isinstance(model, SNAC48) else SNAC
    loaded = cls.from_pretrained(out)
    expected = ckpt["model"]
    got = loaded.state_dict()
    if set(got) != set(expected) or any(not torch.equal(got[k], expected[k].to(got[k].dtype)) for k in got):
        raise SystemExit(f"error: the export in {out} does not reload to the checkpoint's weights")
    if base is not None:
        held, source = SNACEncoder.from_pretrained(out).state_dict(), base.state_dict()
        if any(not torch.equal(v, source[k]) for k, v in held.items()):
            raise SystemExit(f"error: the base encoder in {out} does not reload to {base_name}'s weights")
    size = sum(f.stat().st_size for f in out.iterdir()) / 2**20
    print(f"exported {checkpoint} (iteration {ckpt.get('iteration', '?')}) -> {out} ({size:.1f} MiB): "
          f"{', '.join(sorted(f.name for f in out.iterdir()))}")
    if base is not None:
        print(f"base model {base_name}: its encoder and quantizer are in {out / 'base_encoder.safetensors'}, "
              "so the export needs no download to go from audio to 48 kHz audio")
    print(f"load with {cls.__name__}.from_pretrained('{out}'); publish with: "
          f"huggingface-cli upload <user>/<repo> {out} .")
    return 0


if __name__ == "__main__":
    sys.exit(main())
