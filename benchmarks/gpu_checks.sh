#!/usr/bin/env bash
# Everything this project measures on a GPU, in one call (the device machine's 15 minutes are for all tries
# together, and each start costs minutes). From the repository root, on the machine with the GPU:
#
#     OUT=/some/folder bash benchmarks/gpu_checks.sh          # QUICK=1: seconds-long shapes, to try the script
#
# 1. the test suite (the modules whose imports the machine has: its image may lack decord, av or datasets),
# 2. the fused k-medoids kernel against the torch backend on CUDA (`tests/clustering_cases.py cuda`),
# 3. `benchmarks/benchmark_speed.py` on CUDA (bf16 autocast, sdpa): speed, memory and kernel launches,
# 4. `benchmark_speed.py --compile`: eager vs `torch.compile(fullgraph=True)` vs CUDA graphs
#    (`mode="reduce-overhead"`) for B/32 4x49 and stock CLIP (the suite's tests/test_compile.py also replays a
#    CUDA graph under `torch.cuda.set_sync_debug_mode("error")`).
# Each step has its own time limit (8.5 minutes in all, leaving time to rerun within the machine's budget) and
# log under $OUT; one failing does not stop the others. The script exits non-zero when any step failed, and its
# last lines say which.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/gpu}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONPATH=. MPLBACKEND=Agg HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
failed=()

step() {  # step NAME SECONDS COMMAND...: run with a limit, log to $OUT/NAME.log, remember a failure
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name: rc=$rc in $((SECONDS - start)) s (log: $OUT/$name.log)"
    tail -n 3 "$OUT/$name.log" | sed 's/^/    /'
    [ "$rc" -eq 0 ] || failed+=("$name")
}

"$PY" - >"$OUT/machine.txt" 2>&1 <<'EOF'
import torch, transformers
print("torch", torch.__version__, "transformers", transformers.__version__, "cuda", torch.version.cuda)
print("device:", torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device")
EOF
cat "$OUT/machine.txt"

if [ "${QUICK:-0}" = 1 ]; then  # on a CPU: the interpreted kernel, the tiny speed shapes
    step tests 300 "$PY" -m pytest -q -p no:cacheprovider tests/test_clustering.py
    TRITON_INTERPRET=1 step clustering_cuda 300 "$PY" tests/clustering_cases.py cpu --check
    step benchmark_speed 300 "$PY" benchmarks/benchmark_speed.py --quick --output_dir "$OUT"
    step benchmark_compile 300 "$PY" benchmarks/benchmark_speed.py --compile --quick --repeats 2 --output_dir "$OUT"
else
    # Test modules that cannot import here are collected as errors and reported in the log, not hidden.
    step tests 130 "$PY" -m pytest -q -p no:cacheprovider --continue-on-collection-errors
    step clustering_cuda 50 "$PY" tests/clustering_cases.py cuda --check
    step benchmark_speed 220 "$PY" benchmarks/benchmark_speed.py --output_dir "$OUT"
    step benchmark_compile 110 "$PY" benchmarks/benchmark_speed.py --compile --output_dir "$OUT"
fi

if [ ${#failed[@]} -eq 0 ]; then
    echo "all steps passed"
else
    echo "failed steps: ${failed[*]}"
    exit 1
fi
