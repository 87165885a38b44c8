#!/usr/bin/env python
"""Train a SNAC codec (encoder + VQ + decoder) on a folder of audio with DAC's recipe.

    uv run python scripts/train_codec.py --audio_dir SPEECH --output_dir runs/codec \
        --model_config small_24khz --device cpu --reseed_dead_codes 100
    ... --model_config my_config.json          # any SNAC config.json (upstream's keys)
    ... --pretrained_model DIR_OR_HUB_ID       # continue from published weights instead
    ... --resume auto                          # continue from the newest checkpoint in --output_dir
    ... --fresh                                # start over where only an earlier run's leftovers are
    torchrun --nproc_per_node=4 scripts/train_codec.py ...same flags...   # DDP, one GPU per rank

Loss: mel 15 + adversarial 1 + feature matching 2 (multi-period + multi-band discriminators) +
VQ commitment 0.25 + codebook 1; AdamW lr 1e-4, betas 0.8/0.99, lr * gamma^step for both networks.
Every flag is a key of the optional --config JSON (explicit flags win); `--help` lists them.
The run directory is the decoder trainer's (config.json, training.log, metrics.jsonl, status.json
for ./train_status.sh, TensorBoard, checkpoint_iter{N}.pt, checkpoint_epoch{E}.pt, latest.pt, and
best_model.pt by --val_dir's mel distance); SIGTERM/SIGINT save and exit 0. --audio_dir/--val_dir
may be code caches made with --embed_audio. The end of a run writes a plain SNAC to --export (default OUTPUT_DIR/model): config.json,
model.safetensors and pytorch_model.bin, loadable with SNAC.from_pretrained and upstream snac.
The trainer itself is snac/train/codec.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the repo's snac package

from snac.train.codec import EXIT_BAD_INPUT, resolve_codec_config, run_codec_training  # noqa: E402
from snac.train.config import ConfigError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = resolve_codec_config(argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return run_codec_training(cfg)


if __name__ == "__main__":
    sys.exit(main())
