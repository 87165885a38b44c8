#!/usr/bin/env bash
# The GPU checks and benchmarks in one short run: the CUDA tests, then bench_model, the code flips,
# bench_cache and bench_train on the first GPU. Each step has its own time limit and log.
#
#   bash scripts/gpu_check.sh OUT_DIR [STEP ...]       # steps: env tests model modes flips cache train
#   PYTHON=python3 SPEECH=DIR bash scripts/gpu_check.sh OUT_DIR tests flips
#
# PYTHON runs the project (default: uv run python). SPEECH: a folder of recorded speech for the
# code flips (default: synthetic signals). LIMIT_SCALE multiplies every step's limit (default 1;
# the limits add up to about 9 minutes, sized for one H100 or H200). Prints each step's exit status,
# time and last lines; OUT_DIR/<step>.log holds the whole output. Exits 1 if a step failed.
set -u
out=${1:?usage: bash scripts/gpu_check.sh OUT_DIR [env tests model modes flips cache train]}
shift
steps=${*:-env tests model modes flips cache train}
read -r -a py <<< "${PYTHON:-uv run python}"
scale=${LIMIT_SCALE:-1}
cd "$(dirname "$0")/.."
mkdir -p "$out"
export PYTHONUNBUFFERED=1
failed=0

step() {  # name, limit in seconds, command...
    local name=$1 limit
    limit=$(awk -v a="$2" -v s="$scale" 'BEGIN { printf "%d", a * s }')
    shift 2
    echo "== $name (limit ${limit} s): $*"
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    echo "   exit $rc after $((SECONDS - start)) s$([ $rc = 124 ] && echo ' (time limit)'); $out/$name.log ends:"
    tail -n 30 "$out/$name.log" | sed 's/^/   | /'
    [ $rc = 0 ] || failed=1
}

for s in $steps; do
    case $s in
        env) step env 60 bash -c "nvidia-smi -L; ${py[*]} -c 'import torch, sys; print(sys.version.split()[0], \
torch.__version__, torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name())'" ;;
        tests) step tests 150 "${py[@]}" -m pytest -q -s -p no:cacheprovider tests/test_gpu.py ;;
        model) step model 90 "${py[@]}" scripts/bench_model.py --device cuda --seconds 10 --repeats 5 \
            --lite_channels 16,32 --memory_seconds 60 --train_snake ;;
        modes) step modes 150 "${py[@]}" scripts/bench_model.py --device cuda --seconds 10 --repeats 5 \
            --lite_channels 16 --memory_seconds 0 --modes ;;
        flips) step flips 45 "${py[@]}" scripts/bench_model.py --device cuda --code_flips --flips_files 40 \
            ${SPEECH:+--flips_audio "$SPEECH"} ;;
        cache) step cache 120 "${py[@]}" scripts/bench_cache.py --model full --device cuda:0 --files 2000 \
            --encode_files 200 --plan_files 10000 ;;
        train) step train 120 "${py[@]}" scripts/bench_train.py --arch snac_24khz --device 0 --batch_size 16 \
            --segment_length 2 --steps 10 --memory_batch_sizes 8,16,32 --compile ;;
        *) echo "unknown step $s (steps: env tests model modes flips cache train)"; exit 2 ;;
    esac
done
exit $failed
