#!/usr/bin/env bash
# One-call GPU check for a CUDA machine with no network (run from anywhere; it works in the repository root):
#   0. builds the package's C library (libhyperloss, CUDA kernels included) in place, and the standalone C library
#      with CMake, running its ctest
#      (the CUDA kernels against the CPU ones through the C API);
#   1. the Triton and CUDA-backend tests on the GPU (every dtype and precision against float64, torch.compile,
#      autotuning);
#   2. compute-sanitizer memcheck on a small uniformity + alignment case, where compute-sanitizer is installed;
#   3. the benchmark (python -m hyperloss.bench), where that module exists;
#   4. the other tests (tests/ and bench/, CPU-side: CI runs them too) with the time left;
# and prints a compact table of the steps last. Each step has a time limit so the whole run fits one ~10-minute
# command; a step that runs out of time is reported as TIMEOUT and the next one starts.
#
# Usage: bash bench/gpu_check.sh [--out DIR]        (default DIR: bench/results; logs go there too)
# Environment:
#   PYTHON                   interpreter to use (default: python3)
#   GPU_CHECK_SECONDS        total time to plan for (default 540)
#   HYPERLOSS_BENCH_ARGS     benchmark arguments; unset: a short sweep of the headline sizes; set and empty: the
#                            benchmark's own full default sweep (much longer than 10 minutes on a GPU)
set -u -o pipefail

cd "$(dirname "$0")/.."
OUT_DIR=bench/results
if [[ "${1:-}" == "--out" && -n "${2:-}" ]]; then OUT_DIR=$2; fi
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
TOTAL=${GPU_CHECK_SECONDS:-540}
START=$(date +%s)
STAMP=$(date +%Y-%m-%d)
LOG_DIR="$OUT_DIR/gpu-check-$STAMP"
mkdir -p "$LOG_DIR"
# Tuning results persist on disk across the benchmark's child processes (a Triton knob; ignored where unknown).
export TRITON_CACHE_AUTOTUNING=1
unset TRITON_INTERPRET

ROWS=()  # "step|status|seconds|detail"

left() { echo $((TOTAL - ($(date +%s) - START))); }

# run_step NAME LIMIT_SECONDS LOGFILE CMD...: runs CMD under `timeout`, teeing its output to LOGFILE; sets
# STEP_STATUS (PASS, FAIL(rc), TIMEOUT, or SKIP when under 10 s are left) and STEP_SECONDS.
run_step() {
    local name=$1 limit=$2 log=$3 t0=$SECONDS rc
    shift 3
    : >"$log"
    STEP_SECONDS=0
    if ((limit < 10)); then
        STEP_STATUS=SKIP
        echo "no time left" >"$log"
        return
    fi
    echo "=== $name (limit ${limit}s) ==="
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    if ((rc == 0)); then
        STEP_STATUS=PASS
    elif ((rc == 124 || rc == 137)); then
        STEP_STATUS=TIMEOUT
    else
        STEP_STATUS="FAIL($rc)"
    fi
    STEP_SECONDS=$((SECONDS - t0))
}

# --- environment --------------------------------------------------------------------------------------------
ENV_LINE=$("$PY" - <<'EOF' 2>&1
import torch
try:
    import triton
    tv = triton.__version__
except ImportError:
    tv = "missing"
name = torch.cuda.get_device_name() if torch.cuda.is_available() else "NO CUDA"
print(f"{name} | torch {torch.__version__} | triton {tv}")
EOF
)
echo "=== environment: $ENV_LINE"

# --- 0. builds ----------------------------------------------------------------------------------------------
# The package's C library with its CUDA kernels (scikit-build-core + CMake, both in the image; no network needed).
run_step "build libhyperloss" "$(($(left) * 30 / 100))" "$LOG_DIR/build.log" \
    env CMAKE_BUILD_PARALLEL_LEVEL="${MAX_JOBS:-16}" HYPERLOSS_CUDA=ON \
    "$PY" -m pip install --no-build-isolation --no-deps --no-index -e .
ROWS+=("build libhyperloss|$STEP_STATUS|$STEP_SECONDS|$("$PY" -c "import hyperloss; print([b.name for b in hyperloss.backends() if b.available])" 2>&1 | tail -1)")
if command -v cmake >/dev/null 2>&1; then
    run_step "CMake build + ctest" "$(($(left) * 25 / 100))" "$LOG_DIR/ctest.log" bash -c \
        "cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release >/dev/null && cmake --build build-gpu -j ${MAX_JOBS:-16} \
         && cd build-gpu && ctest --output-on-failure"
    ROWS+=("ctest (C API, CUDA vs CPU)|$STEP_STATUS|$STEP_SECONDS|$(grep -E "tests passed|tests failed" "$LOG_DIR/ctest.log" | tail -1)")
else
    ROWS+=("ctest (C API, CUDA vs CPU)|SKIP|0|cmake not installed")
fi

# The C library is built per machine; without it the CPU-backend tests that require it skip.
if ! "$PY" -c "import hyperloss._lib as L; assert L.LOAD_ERROR is None" >/dev/null 2>&1; then
    export HYPERLOSS_NO_EXTENSION=1
    EXT_NOTE="C library not built here: its tests skipped"
else
    EXT_NOTE="C library loaded"
fi

summary_of() {  # the last pytest summary line of a log ("N passed, M skipped in Ts")
    grep -E "(passed|failed|skipped|error|no tests ran|no time left)" "$1" | tail -1 | sed -e 's/=//g' -e 's/^ *//' -e 's/ *$//'
}

# --- 1. tests -----------------------------------------------------------------------------------------------
# Correctness with one block config per kernel variant (tuning every variant of every dtype would compile six
# configs each: minutes); test_gpu_every_config checks each config, and the second run the tuning itself.
run_step "pytest Triton + CUDA backends (GPU)" "$(($(left) * 50 / 100))" "$LOG_DIR/pytest-triton.log" \
    env HYPERLOSS_TRITON_AUTOTUNE=0 "$PY" -m pytest -q -rs tests/test_triton.py tests/test_cuda_backend.py
ROWS+=("pytest triton+cuda (GPU)|$STEP_STATUS|$STEP_SECONDS|$(summary_of "$LOG_DIR/pytest-triton.log")")
run_step "pytest autotuning" "$(($(left) * 20 / 100))" "$LOG_DIR/pytest-autotune.log" \
    "$PY" -m pytest -q tests/test_triton.py -k autotuning
ROWS+=("pytest autotuning|$STEP_STATUS|$STEP_SECONDS|$(summary_of "$LOG_DIR/pytest-autotune.log")")

# --- 2. compute-sanitizer -----------------------------------------------------------------------------------
SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
if [[ -z "$SANITIZER" ]]; then
    ROWS+=("compute-sanitizer|SKIP|0|not installed")
else
    cat >"$LOG_DIR/sanitize_case.py" <<'EOF'
# Small Triton uniformity and alignment calls, every kernel variant, for compute-sanitizer memcheck.
import torch

import hyperloss.native
from hyperloss import triton as T

torch.manual_seed(0)
for dtype in (torch.float32, torch.bfloat16):
    for d in (40, 300):  # registers and chunked-D accumulator paths
        x = torch.randn(100, d, device="cuda", dtype=dtype)
        q = torch.randn(37, d, device="cuda", dtype=dtype)
        T.uniform_lse(x, None, 2.0, True, False, False)
        T.uniform_lse(x, q, 2.0, True, True, True)
        T.uniform_lse(x[::2], q.T.contiguous().T, 2.0, False, True, True)
        T.align(x, x.flip(0), 1.5, True)
        T.align(x, x.flip(0), 2.0, False)
        if hyperloss.native.available_cuda()[0]:  # the CUDA C++ kernels, where the extension has them
            hyperloss.native.uniform_lse(x, q, 2.0, True, True, True)
            hyperloss.native.uniform_lse(x[::2], None, 2.0, True, False, False)
            hyperloss.native.align(x, x.flip(0), 1.5, True)
torch.cuda.synchronize()
print("sanitizer case done")
EOF
    # No caching allocator (out-of-bounds accesses land outside any allocation) and one block config (no tuning).
    run_step "compute-sanitizer memcheck" "$(($(left) * 30 / 100))" "$LOG_DIR/sanitizer.log" \
        env PYTORCH_NO_CUDA_MEMORY_CACHING=1 HYPERLOSS_TRITON_AUTOTUNE=0 \
        "$SANITIZER" --tool memcheck --error-exitcode 1 "$PY" "$LOG_DIR/sanitize_case.py"
    ROWS+=("compute-sanitizer memcheck|$STEP_STATUS|$STEP_SECONDS|$(grep -E "ERROR SUMMARY" "$LOG_DIR/sanitizer.log" | tail -1)")
fi

# --- 3. benchmark -------------------------------------------------------------------------------------------
if "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('hyperloss.bench') is None)" 2>/dev/null; then
    if [[ -z "${HYPERLOSS_BENCH_ARGS+set}" ]]; then
        # The headline sizes (uniformity N = 65536 / 262144, alignment N = 2^20) against the paper's code.
        HYPERLOSS_BENCH_ARGS="--impls paper triton cuda --n 65536 262144 1048576 --budget 1 --timeout 60"
    fi
    # shellcheck disable=SC2086  # the arguments are meant to split
    run_step "benchmark" "$(($(left) * 70 / 100))" "$LOG_DIR/bench.log" \
        "$PY" -m hyperloss.bench --device cuda --out "$OUT_DIR" $HYPERLOSS_BENCH_ARGS
    ROWS+=("benchmark|$STEP_STATUS|$STEP_SECONDS|results in $OUT_DIR (args: ${HYPERLOSS_BENCH_ARGS:-defaults})")
else
    ROWS+=("benchmark|SKIP|0|hyperloss.bench not found")
fi

# --- 4. the other tests (CPU-side, also run by CI), with the time left ------------------------------------------
run_step "pytest tests (the rest)" "$(($(left) * 70 / 100))" "$LOG_DIR/pytest-rest.log" \
    "$PY" -m pytest -q tests --ignore=tests/test_triton.py --ignore=tests/test_cuda_backend.py
ROWS+=("pytest other tests|$STEP_STATUS|$STEP_SECONDS|$(summary_of "$LOG_DIR/pytest-rest.log"); $EXT_NOTE")
run_step "pytest bench" "$(($(left) - 5))" "$LOG_DIR/pytest-bench.log" "$PY" -m pytest -q bench
ROWS+=("pytest bench|$STEP_STATUS|$STEP_SECONDS|$(summary_of "$LOG_DIR/pytest-bench.log")")

# --- compact table, last ------------------------------------------------------------------------------------
echo
echo "=== gpu_check: $ENV_LINE | $(($(date +%s) - START))s | logs: $LOG_DIR"
printf '%-28s %-10s %6s  %s\n' "step" "status" "secs" "detail"
FAILED=0
for row in "${ROWS[@]}"; do
    IFS='|' read -r step status secs detail <<<"$row"
    printf '%-28s %-10s %6s  %s\n' "$step" "$status" "$secs" "$detail"
    [[ "$status" == PASS || "$status" == SKIP ]] || FAILED=1
done
exit $FAILED
