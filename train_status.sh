#!/usr/bin/env bash
# Show the state of training runs launched with train_decoder_48khz.sh (or any trainer run dir).
#
# usage: ./train_status.sh [RUN_DIR...] [--plot]
#
#   RUN_DIR   a trainer --output_dir (default: every run in logs/*/launch.json and runs/*/status.json)
#   --plot    also write RUN_DIR/loss_curves.png from RUN_DIR/metrics.jsonl
#
# Per run: running / finished / stopped / crashed (with the last error line), PID, device, uptime,
# epoch, iteration, phase, last train loss, last and best val loss, samples/s, ETA, newest
# checkpoint and its age, log paths, and GPU memory/utilisation from nvidia-smi when present; for a
# multi-node launch (logs/ on the shared filesystem) every node's last log line.
# Exit status: 0 every run was shown; 1 a named RUN_DIR does not exist or is not a run directory
# (no status.json, config.json, training.log, metrics.jsonl or checkpoint), or no run was found;
# 2 a usage error (unknown flag) or uv is not on PATH.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
case "${1:-}" in -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;; esac
command -v uv >/dev/null 2>&1 || { echo "error: uv is not on PATH; install it (curl -LsSf https://astral.sh/uv/install.sh | sh)" >&2; exit 2; }
exec uv run --project "$ROOT" python "$ROOT/scripts/launcher.py" status "$@"
