#!/usr/bin/env bash
# Launch finetune_decoder_48khz.py in the background under nohup, on one GPU or on the CPU.
#
# usage: ./train_decoder_48khz.sh GPU|cpu [--config FILE] [--fresh] [--dry_run] [multi-node flags] [trainer flags...]
#
#   GPU            GPU index as nvidia-smi numbers it (e.g. 0), or "cpu"; a list such as 0,1,2,3 runs
#                  one DDP process per GPU under torchrun (CUDA_VISIBLE_DEVICES set to that list)
#   --config FILE  trainer JSON config (default: configs/finetune_48khz.json); flags after it win
#   --fresh        never resume: refuse if the run directory already holds checkpoints; leftovers of an
#                  earlier run (best_model.pt, unreadable or abandoned-* checkpoints) are renamed abandoned-*
#   --dry_run      run the checks and print the command, start nothing
#   multi-node     --nnodes N --node_rank R --master_addr HOST [--master_port PORT (29500)]: run the same
#                  command on every node (R = 0..N-1); torchrun meets at HOST:PORT (c10d rendezvous, job id
#                  = the run's name), one process per listed GPU. The run directory, the caches and this
#                  folder's logs/ must be on a filesystem every node shares; only rank 0 writes the run
#                  directory. Each node logs to logs/<run>/training.node<R>.log (PID in train.node<R>.pid).
#   trainer flags  anything finetune_decoder_48khz.py accepts (see its --help), e.g.
#                  --train_codes cache/train --val_codes cache/val --output_dir runs/snac48
#
# Before starting it checks: uv is installed, the config exists, the GPU exists (nvidia-smi), no
# live run holds this GPU or run directory (stale PID files are cleared), and the trainer's own
# pre-flight (caches exist, their manifest matches the model, segments fit the data). When the run
# directory already holds a checkpoint it resumes with --resume auto.
#
# Files: the run directory is the trainer's --output_dir (runs/<run>: checkpoints, metrics.jsonl,
# status.json, its own training.log); logs/<run>/training.log is the process's stdout/stderr
# (appended across launches) and logs/<run>/train.pid its PID (the process group leader, uv).
# Follow: tail -f logs/<run>/training.log   Check: ./train_status.sh   Stop: kill <PID>
# (SIGTERM: the trainer finishes its step, saves latest.pt and exits; run the same command to resume).
# Exit status: 0 started (or --help); 1 the trainer died right after starting, or the pre-flight
# crashed; 2 a refusal (bad argument, missing config/GPU/uv, busy GPU or run directory, failed
# pre-flight), explained in one sentence on stderr.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "error: $*" >&2; exit 2; }

if [[ $# -lt 1 ]]; then usage >&2; exit 2; fi
case "$1" in -h|--help) usage; exit 0 ;; esac
DEVICE="$1"; shift
[[ "$DEVICE" =~ ^([0-9]+(,[0-9]+)*|cpu)$ ]] || die "the first argument must be a GPU index (e.g. 0), a list (0,1,2,3) or 'cpu', got '$DEVICE' (see --help)"

CONFIG="$ROOT/configs/finetune_48khz.json"
FRESH=()
EXTRA=()
DRY_RUN=0 NNODES=1 NODE_RANK="" MASTER_ADDR="" MASTER_PORT=29500
need_value() { [[ $2 -ge 2 ]] || die "$1 needs a value (see --help)"; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --config) [[ $# -ge 2 ]] || die "--config needs a file"; CONFIG="$2"; shift 2 ;;
        --config=*) CONFIG="${1#*=}"; shift ;;
        --fresh) FRESH=(--fresh); shift ;;
        --dry_run) DRY_RUN=1; shift ;;
        --nnodes) need_value "$1" $#; NNODES="$2"; shift 2 ;;
        --node_rank) need_value "$1" $#; NODE_RANK="$2"; shift 2 ;;
        --master_addr) need_value "$1" $#; MASTER_ADDR="$2"; shift 2 ;;
        --master_port) need_value "$1" $#; MASTER_PORT="$2"; shift 2 ;;
        --device|--device=*) die "give the device as the first argument (GPU index or cpu), not --device" ;;
        *) EXTRA+=("$1"); shift ;;
    esac
done

[[ "$NNODES" =~ ^[1-9][0-9]*$ ]] || die "--nnodes must be a whole number >= 1, got '$NNODES'"
[[ "$MASTER_PORT" =~ ^[0-9]+$ ]] || die "--master_port must be a port number, got '$MASTER_PORT'"
if (( NNODES > 1 )); then
    [[ "$NODE_RANK" =~ ^[0-9]+$ ]] && (( NODE_RANK < NNODES )) || die "--nnodes $NNODES needs --node_rank 0..$((NNODES - 1)) (this node's number), got '$NODE_RANK'"
    [[ -n "$MASTER_ADDR" ]] || die "--nnodes $NNODES needs --master_addr: the host name or IP of node 0, which every node can reach"
elif [[ -n "$NODE_RANK$MASTER_ADDR" ]]; then
    die "--node_rank and --master_addr are for a run on several machines: add --nnodes N"
fi
command -v uv >/dev/null 2>&1 || die "uv is not on PATH; install it (curl -LsSf https://astral.sh/uv/install.sh | sh) and open a new shell"
[[ -f "$CONFIG" ]] || die "config file $CONFIG does not exist; pass --config with an existing JSON (see $ROOT/configs/)"
if [[ "$DEVICE" != cpu ]]; then
    command -v nvidia-smi >/dev/null 2>&1 || die "nvidia-smi not found, so GPU $DEVICE cannot be checked; install the NVIDIA driver or use 'cpu'"
    for gpu in ${DEVICE//,/ }; do
        nvidia-smi -i "$gpu" -L >/dev/null 2>&1 || die "GPU $gpu does not exist; nvidia-smi -L lists: $(nvidia-smi -L 2>/dev/null | cut -d'(' -f1 | paste -sd';' -)"
    done
fi

# Python pre-flight (the trainer's own config resolution and checks); prints shell assignments.
ASSIGN="$(uv run --project "$ROOT" python "$ROOT/scripts/launcher.py" preflight --device "$DEVICE" \
    --node_rank "${NODE_RANK:-0}" ${FRESH[@]+"${FRESH[@]}"} -- --config "$CONFIG" ${EXTRA[@]+"${EXTRA[@]}"})" || exit $?
OUTPUT_DIR="" LOG_DIR="" RESUME=""
eval "$ASSIGN"
[[ -n "$OUTPUT_DIR" && -n "$LOG_DIR" ]] || die "the pre-flight did not name a run directory (internal error)"

LOG="$LOG_DIR/training.log"
PID_FILE="$LOG_DIR/train.pid"
if (( NNODES > 1 )); then LOG="$LOG_DIR/training.node$NODE_RANK.log"; PID_FILE="$LOG_DIR/train.node$NODE_RANK.pid"; fi
ARGS=(--config "$CONFIG")
ARGS+=(${EXTRA[@]+"${EXTRA[@]}"})
if [[ -n "$RESUME" ]]; then ARGS+=(--resume "$RESUME"); fi
ARGS+=(${FRESH[@]+"${FRESH[@]}"})  # the trainer sets aside an earlier run's leftovers (best_model.pt, ...)
NPROC=$(( $(tr -cd , <<< "$DEVICE" | wc -c) + 1 ))
if (( NNODES > 1 )); then
    # every node runs this same command; torchrun's agents meet at node 0 (c10d) and number the ranks
    [[ "$DEVICE" == cpu ]] || export CUDA_VISIBLE_DEVICES="$DEVICE"
    # under launcher.py like the one-node case: a stop signal every worker answered by saving exits 0
    RUNNER=(python "$ROOT/scripts/launcher.py" torchrun --output_dir "$OUTPUT_DIR" -- --nnodes "$NNODES"
            --node_rank "$NODE_RANK" --nproc_per_node "$NPROC" --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv_id "$(basename "$OUTPUT_DIR")")
    ARGS+=(--device "$([[ "$DEVICE" == cpu ]] && echo cpu || echo 0)")
elif [[ "$DEVICE" == *,* ]]; then
    # one process per listed GPU; each rank uses cuda:LOCAL_RANK of CUDA_VISIBLE_DEVICES
    export CUDA_VISIBLE_DEVICES="$DEVICE"
    # torchrun under launcher.py: a stop signal that every worker answered by saving exits 0, not
    # torchrun's 1 (see launcher.py torchrun)
    RUNNER=(python "$ROOT/scripts/launcher.py" torchrun --output_dir "$OUTPUT_DIR" -- --standalone --nproc_per_node "$NPROC")
    ARGS+=(--device 0)
else
    RUNNER=(python)
    ARGS+=(--device "$DEVICE")
fi

if (( DRY_RUN )); then
    echo "would run: ${CUDA_VISIBLE_DEVICES:+CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES }uv run ${RUNNER[*]} $ROOT/finetune_decoder_48khz.py ${ARGS[*]}"
    echo "log: $LOG"
    exit 0
fi
echo "===== $(date '+%Y-%m-%d %H:%M:%S') launch on $DEVICE: ${RUNNER[*]} finetune_decoder_48khz.py ${ARGS[*]}" >> "$LOG"
# setsid: the run gets its own process group, so a closed SSH session or Ctrl-C in this shell
# cannot reach it; uv forwards SIGTERM to the trainer, so 'kill PID' stops it cleanly.
SETSID=()
if command -v setsid >/dev/null 2>&1; then SETSID=(setsid); fi
PYTHONUNBUFFERED=1 ${SETSID[@]+"${SETSID[@]}"} nohup uv run --project "$ROOT" "${RUNNER[@]}" \
    "$ROOT/finetune_decoder_48khz.py" "${ARGS[@]}" >> "$LOG" 2>&1 < /dev/null &
PID=$!
echo "$PID" > "$PID_FILE"

# a start that dies at once (bad flag the pre-flight could not see) is reported here, not later
for _ in 1 2 3 4; do
    sleep 0.5
    if ! ps -p "$PID" -o stat= 2>/dev/null | grep -qv Z; then  # gone, or a zombie not yet reaped
        wait "$PID" || true
        rm -f "$PID_FILE"
        echo "error: the trainer exited right after starting; last lines of $LOG:" >&2
        tail -n 5 "$LOG" >&2
        exit 1
    fi
done

cat <<MSG
started finetune_decoder_48khz.py on $DEVICE${RESUME:+ (resuming: --resume $RESUME)}
  PID       $PID   (saved in $PID_FILE)
  run dir   $OUTPUT_DIR
  log       $LOG
follow:  tail -f $LOG
check:   $ROOT/train_status.sh $OUTPUT_DIR
stop:    kill $PID      (saves latest.pt and exits; run the same command again to resume)
MSG
