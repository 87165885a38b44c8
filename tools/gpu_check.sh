#!/usr/bin/env bash
# The GPU checks and benchmarks in one short run: the CUDA tests, then bench_model, the code flips,
# bench_cache, bench_train and bench_stream on the first GPU. Each step has its own time limit and log.
#
#   bash tools/gpu_check.sh OUT_DIR [STEP ...]       # steps: env tests model modes flips cache train stream
#   PYTHON=python3 SPEECH=DIR bash tools/gpu_check.sh OUT_DIR tests flips
#
# PYTHON runs the project (default: uv run python). SPEECH: a folder of recorded speech for the
# code flips (default: synthetic signals). SNAC_SKIP_REFERENCE=1 on a machine without PyPI (the
# speed table then leaves upstream SNAC out). LIMIT_SCALE multiplies every step's limit (default 1;
# the limits add up to 655 s, sized for one H100 or H200: where one command may run 10 minutes at
# most, run it as two, e.g. "env tests model flips" then "modes cache train stream"). Prints each step's
# exit status, time and last lines; OUT_DIR/<step>.log holds the whole output. Exits 1 if a step
# failed: a machine where torch sees no CUDA GPU fails the env and tests steps.
set -u
all="env tests model modes flips cache train stream"
out=${1:?usage: bash tools/gpu_check.sh OUT_DIR [$all]}
shift
steps=${*:-$all}
for s in $steps; do
    [[ " $all " == *" $s "* ]] || { echo "unknown step $s (steps: $all)"; exit 2; }
done
read -r -a py <<< "${PYTHON:-uv run python}"
scale=${LIMIT_SCALE:-1}
mkdir -p "$out"
out=$(cd "$out" && pwd)  # absolute: the steps run from the repository root
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 SNAC48_REQUIRE_GPU=1
failed=0

step() {  # name, limit in seconds, command...
    local name=$1 limit
    limit=$(awk -v a="$2" -v s="$scale" 'BEGIN { l = int(a * s); printf "%d", l < 1 ? 1 : l }')
    shift 2
    echo "== $name (limit ${limit} s): $*"
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    echo "   exit $rc after $((SECONDS - start)) s$( ( [ $rc = 124 ] || [ $rc = 137 ] ) && echo ' (time limit)'); $out/$name.log ends:"
    tail -n 30 "$out/$name.log" | sed 's/^/   | /'
    [ $rc = 0 ] || failed=1
}

for s in $steps; do
    case $s in
        env) step env 30 bash -c "nvidia-smi -L; ${py[*]} -c 'import torch, sys; print(sys.version.split()[0], \
torch.__version__, torch.version.cuda); assert torch.cuda.is_available(), \"torch sees no CUDA GPU\"; \
print(torch.cuda.get_device_name())'" ;;
        tests) step tests 120 "${py[@]}" -m pytest -q -s -p no:cacheprovider tests/test_gpu.py ;;
        model) step model 90 "${py[@]}" benchmarks/bench_model.py --device cuda --seconds 10 --repeats 5 \
            --lite_channels 16,32 --memory_seconds 60 --train_snake ;;
        modes) step modes 120 "${py[@]}" benchmarks/bench_model.py --device cuda --seconds 10 --repeats 5 \
            --lite_channels 16 --memory_seconds 0 --modes ;;
        flips) step flips 45 "${py[@]}" benchmarks/bench_model.py --device cuda --code_flips --flips_files 40 \
            ${SPEECH:+--flips_audio "$SPEECH"} ;;
        cache) step cache 90 "${py[@]}" benchmarks/bench_cache.py --model full --device cuda:0 --files 2000 \
            --encode_files 200 --plan_files 10000 ;;
        train) step train 100 "${py[@]}" benchmarks/bench_train.py --arch snac_24khz --device 0 --batch_size 16 \
            --segment_length 2 --steps 10 --memory_batch_sizes 8,16,32 --compile ;;
        stream) step stream 60 "${py[@]}" benchmarks/bench_stream.py --device cuda --threads 4 --repeats 1 ;;
    esac
done
exit $failed
