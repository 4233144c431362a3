#!/usr/bin/env bash
# One-command GPU check, sized for one device command of at most 9 minutes on a bare CUDA machine with no network
# (torch, Triton, nvcc, CMake/Ninja, pytest present). Run from anywhere; it works in the repository root.
#
#   1. GPU tests, two at a time: the Triton backend's tests (tests/test_triton.py, one block config per kernel) on
#      the GPU, while the package's C library with its hand-written CUDA kernels builds (CPU-bound; the ahead-of-time
#      Triton kernels, on by default, are left out of this one: HYPERLOSS_TRITON_AOT=OFF, the comparison library);
#   2. the headline Triton benchmarks: uniformity forward+backward, D = 128, bf16 and fp32 "high" (tf32) at
#      N = 65536 and 262144, bf16 at 2^20 (autotuning capped at the 2^17 bucket), alignment fp32 at 2^20, with
#      peak extra memory (JSON); meanwhile (niced) the standalone C library with the Triton kernels compiled ahead
#      of time (CMake -G Ninja, -DHYPERLOSS_TRITON_AOT=ON: csrc/cuda/aot/README.md) builds in build-gpu;
#   3. the CUDA backend's and JAX's tests on the GPU (the package's library: the hand-written CUDA kernels), ctest
#      of the AOT build (test_cuda: CUDA vs the float64 CPU kernel for every dtype, precision and gradient, counting
#      the calls that ran the AOT kernels; triton_aot: each lean sweep launched), the CUDA backend's tests on the AOT
#      library (HYPERLOSS_LIBRARY_DIR=build-gpu), and uniformity (N = 65536; MoCo: 256 rows against a 65536-row
#      queue) and alignment timed on the CUDA backend with each library against the Triton backend (JSON);
#   4. compute-sanitizer memcheck on small Triton and CUDA calls (the CUDA ones on the AOT library where it built).
# Every step has a time limit and is stopped by SIGINT (pytest and the benchmarks then write what they have).
# Everything goes into at most 5 files in the output folder: gpu-check.log (every step's output), gpu-check.json
# (the Triton benchmark), gpu-check-cuda.json (the CUDA backend's timings), gpu-check.md (the table of steps),
# gpu-check-sanitizer.log.
#
# Usage: bash bench/gpu_check.sh [--out DIR] [--dry-run]   (default DIR: bench/results)
#   --dry-run   print the plan and its time budget, run nothing (CI runs this)
# Environment: PYTHON (default python3); GPU_CHECK_SECONDS (total budget, default 530: 9 minutes less 10 s).
set -u -o pipefail

cd "$(dirname "$0")/.."
# A HYPERLOSS_TRITON_AOT left in the environment would also switch the AOT library's kernels off at run time.
unset HYPERLOSS_TRITON_AOT
OUT_DIR=bench/results
DRY_RUN=0
while (($#)); do
    case $1 in
    --out)
        OUT_DIR=$2
        shift 2
        ;;
    --dry-run)
        DRY_RUN=1
        shift
        ;;
    *)
        echo "usage: bash bench/gpu_check.sh [--out DIR] [--dry-run]" >&2
        exit 2
        ;;
    esac
done
PY=${PYTHON:-python3}
TOTAL=${GPU_CHECK_SECONDS:-530}

# The plan: step name | share of the budget (percent) | what it runs (no "|" inside). The shares add up to 100.
PLAN=(
    "1 GPU tests (Triton) + C library build (CUDA)|28|pytest tests/test_triton.py on the GPU, meanwhile pip install -e . (HYPERLOSS_CUDA=ON, HYPERLOSS_TRITON_AOT=OFF: hand-written, Ninja)"
    "2 headline Triton benchmarks + AOT build|26|uniform fwd+bwd D=128: bf16/fp32-high N=65536,262144; bf16 N=2^20; align fp32 N=2^20; meanwhile cmake -DHYPERLOSS_TRITON_AOT=ON"
    "3 CUDA + JAX tests, AOT ctest, CUDA timings|34|pytest test_cuda_backend.py test_jax.py; ctest (AOT); pytest test_uniform.py -k cuda on the AOT library; cuda vs triton N=65536, MoCo 256 x 65536"
    "4 compute-sanitizer memcheck|12|small Triton and CUDA calls under memcheck"
)

limit_of() { echo $((TOTAL * $1 / 100)); }
# The limit a step gets: its share, but never past the total (less 15 s for the table and a stopped step's exit);
# SECONDS counts from the script's start, the environment probe included.
limit_for() {
    local share left
    share=$(limit_of "$1")
    left=$((TOTAL - SECONDS - 15))
    echo $((share < left ? share : left))
}

if ((DRY_RUN)); then
    echo "gpu_check plan: total budget ${TOTAL}s (one device command of at most 540s), output in $OUT_DIR"
    sum=0
    for row in "${PLAN[@]}"; do
        IFS='|' read -r name share what <<<"$row"
        printf '  %-48s %4ss  %s\n' "$name" "$(limit_of "$share")" "$what"
        sum=$((sum + $(limit_of "$share")))
    done
    echo "  total of the step limits: ${sum}s <= ${TOTAL}s"
    echo "  files: $OUT_DIR/gpu-check.log gpu-check.json gpu-check-cuda.json gpu-check.md gpu-check-sanitizer.log (5 <= 8)"
    exit 0
fi

mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu-check.log"
JSON="$OUT_DIR/gpu-check.json"
CUDA_JSON="$OUT_DIR/gpu-check-cuda.json"
TABLE="$OUT_DIR/gpu-check.md"
SANITIZER_LOG="$OUT_DIR/gpu-check-sanitizer.log"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
: >"$LOG"
START=$(date +%s)
unset TRITON_INTERPRET
export TRITON_CACHE_AUTOTUNING=1 # tuning results on disk, next to Triton's compiled kernels

ROWS=() # "step|status|seconds|detail"

write_table() {
    {
        echo "# gpu_check: $ENV_LINE, $(($(date +%s) - START)) s"
        echo
        echo "| step | status | s | detail |"
        echo "|---|---|---:|---|"
        for row in "${ROWS[@]}"; do
            IFS='|' read -r step status secs detail <<<"$row"
            echo "| $step | $status | $secs | $detail |"
        done
    } >"$TABLE"
}

# run_limited LIMIT LOGFILE CMD...: CMD under `timeout -s INT` (then KILL 15 s later); sets STATUS and SECONDS_TAKEN.
# status_of RC: the PASS/TIMEOUT/FAIL word of a run_limited's exit code (124, 137, 130: its time limit); a
# run_limited in a background subshell leaves only that code.
status_of() { if (($1 == 0)); then echo PASS; elif (($1 == 124 || $1 == 137 || $1 == 130)); then echo TIMEOUT; else echo "FAIL($1)"; fi; }

run_limited() {
    local limit=$1 log=$2 t0=$SECONDS rc
    shift 2
    if ((limit < 10)); then
        STATUS=NO-TIME
        SECONDS_TAKEN=0
        echo "no time left" >"$log"
        return 0
    fi
    timeout -s INT --kill-after=15 "$limit" "$@" >"$log" 2>&1
    rc=$?
    STATUS=$(status_of "$rc")
    SECONDS_TAKEN=$((SECONDS - t0))
    return "$rc"
}

append_log() { # append_log TITLE FILE
    {
        echo "===== $1 ====="
        cat "$2"
        echo
    } >>"$LOG"
}

summary_of() { grep -E "(passed|failed|skipped|error|no tests ran|no time left)" "$1" | tail -1 | sed -e 's/=//g' -e 's/^ *//'; }

ENV_LINE=$("$PY" -c "
import torch
try:
    import triton; tv = triton.__version__
except ImportError:
    tv = 'missing'
name = torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO CUDA'
print(f'{name} | torch {torch.__version__} | triton {tv}')" 2>&1 | tail -1)
echo "environment: $ENV_LINE" | tee -a "$LOG"

# --- 1. Triton GPU tests || the C library's CUDA build ------------------------------------------------------
LIMIT=$(limit_for 28)
TESTS_T0=$SECONDS
run_limited "$LIMIT" "$TMP/triton-tests.log" env HYPERLOSS_TRITON_AUTOTUNE=0 "$PY" -m pytest -q -rs -x \
    tests/test_triton.py -p no:cacheprovider &
TESTS_PID=$!
run_limited "$LIMIT" "$TMP/build.log" env CMAKE_GENERATOR=Ninja CMAKE_BUILD_PARALLEL_LEVEL="${MAX_JOBS:-16}" \
    HYPERLOSS_CUDA=ON HYPERLOSS_TRITON_AOT=OFF "$PY" -m pip install --no-build-isolation --no-deps --no-index -e .
BUILD_STATUS=$STATUS BUILD_SECONDS=$SECONDS_TAKEN
wait "$TESTS_PID"
TESTS_STATUS=$(status_of $?)
TESTS_SECONDS=$((SECONDS - TESTS_T0))
append_log "pytest tests/test_triton.py (GPU)" "$TMP/triton-tests.log"
append_log "build libhyperloss (CUDA)" "$TMP/build.log"
ROWS+=("pytest triton (GPU)|$TESTS_STATUS|$TESTS_SECONDS|$(summary_of "$TMP/triton-tests.log")")
ROWS+=("build libhyperloss (CUDA)|$BUILD_STATUS|$BUILD_SECONDS|")
write_table

# --- 2. headline Triton benchmarks || the C library with the AOT Triton kernels ----------------------------
# The AOT build runs niced beside the benchmarks (CPU against GPU work; the benchmarks' first calls compile too) and
# may run into step 3's share, which waits for it.
AOT_LIMIT=$(($(limit_for 26) + $(limit_of 34) / 3))
AOT_T0=$SECONDS
run_limited "$AOT_LIMIT" "$TMP/aot-build.log" nice -n 10 bash -c \
    "cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DHYPERLOSS_TRITON_AOT=ON \
       -DHYPERLOSS_AOT_PYTHON=$(readlink -f "$(command -v "$PY")") && cmake --build build-gpu" &
AOT_PID=$!

cat >"$TMP/gpu_timing.py" <<'EOF'
# What both benchmark scripts use: the timing (the best of `repeat` CUDA-event timings after one untimed call), and
# their results written at the end, also when the step's time limit stops them (SIGINT).
import contextlib
import json

import torch


def record(results, row):
    results["runs"].append(row)
    print(json.dumps(row), flush=True)


@contextlib.contextmanager
def saved_on_exit(out, results):
    try:
        yield
    except KeyboardInterrupt:
        results["interrupted"] = True
    finally:
        with open(out, "w") as f:
            json.dump(results, f, indent=1)


def timed(fn, repeat=5):
    fn()  # tuning and compilation
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeat):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(); fn(); stop.record(); torch.cuda.synchronize()
        best = min(best, start.elapsed_time(stop))
    return best
EOF
cat >"$TMP/headline.py" <<'EOF'
# Uniformity forward+backward and alignment on the Triton backend; partial results are written on SIGINT.
import sys, time
import torch
import hyperloss
from gpu_timing import record, saved_on_exit, timed

out = sys.argv[1]
results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "runs": []}
try:
    import triton
    results["triton"] = triton.__version__
except ImportError:
    pass


def uniform_step(x):
    x.grad = None
    hyperloss.uniform_loss(x, 2.0, backend="triton").backward()


cases = [("uniform", torch.bfloat16, None, 65536), ("uniform", torch.float32, "high", 65536),
         ("uniform", torch.bfloat16, None, 262144), ("uniform", torch.float32, "high", 262144),
         ("uniform", torch.bfloat16, None, 1 << 20), ("align", torch.float32, None, 1 << 20)]
with saved_on_exit(out, results):
    for loss, dtype, precision, n in cases:
        torch.manual_seed(0)
        if precision is not None:
            torch.set_float32_matmul_precision(precision)
        x = torch.nn.functional.normalize(torch.randn(n, 128, device="cuda"), dim=1).to(dtype).requires_grad_()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        if loss == "uniform":
            first = time.perf_counter(); uniform_step(x); torch.cuda.synchronize(); first = time.perf_counter() - first
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            ms = timed(lambda: uniform_step(x), repeat=3 if n > 262144 else 5)
            peak = torch.cuda.max_memory_allocated() - base
        else:
            y = torch.nn.functional.normalize(torch.randn(n, 128, device="cuda"), dim=1).requires_grad_()
            step = lambda: hyperloss.align_loss(x, y, backend="triton").backward()
            first = time.perf_counter(); step(); torch.cuda.synchronize(); first = time.perf_counter() - first
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            ms = timed(step)
            peak = torch.cuda.max_memory_allocated() - base
        row = {"loss": loss, "dtype": str(dtype).removeprefix("torch."), "precision": precision, "n": n, "d": 128,
               "ms": ms, "first_call_s": first, "peak_extra_bytes": peak, "input_bytes": x.numel() * x.element_size()}
        record(results, row)
        torch.set_float32_matmul_precision("highest")
EOF
LIMIT=$(limit_for 26)
run_limited "$LIMIT" "$TMP/headline.log" "$PY" "$TMP/headline.py" "$JSON"
append_log "headline Triton benchmarks" "$TMP/headline.log"
ROWS+=("headline benchmarks|$STATUS|$SECONDS_TAKEN|$(grep -c '"ms"' "$TMP/headline.log") of 6 runs in $JSON")
write_table

# --- 3. CUDA + JAX tests, the AOT build's ctest and tests, CUDA timings -------------------------------------
cat >"$TMP/cuda_timing.py" <<'EOF'
# Uniformity (bf16, fp32 "high"; bf16 MoCo: 256 rows against a 65536-row queue, which the AOT path splits into
# column segments) and alignment (fp32) forward+backward, D = 128, on the CUDA backend (and with "handwritten", the
# Triton backend beside it); the library is whichever hyperloss._lib loads (HYPERLOSS_LIBRARY_DIR).
import json, os, sys
import torch
import hyperloss
from hyperloss import _lib
from gpu_timing import record, saved_on_exit, timed

out, library = sys.argv[1], sys.argv[2]
results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "runs": []}
if os.path.exists(out):
    with open(out) as f:
        results = json.load(f)
backends = ["triton", "cuda"] if library == "handwritten" else ["cuda"]
cases = [("uniform", torch.bfloat16, None, 65536), ("uniform", torch.float32, "high", 65536),
         ("moco", torch.bfloat16, None, 256), ("align", torch.float32, None, 1 << 20)]
with saved_on_exit(out, results):
    for loss, dtype, precision, n in cases:
        torch.manual_seed(0)
        torch.set_float32_matmul_precision(precision or "highest")
        x = torch.nn.functional.normalize(torch.randn(n, 128, device="cuda"), dim=1).to(dtype).requires_grad_()
        y = torch.nn.functional.normalize(torch.randn(n, 128, device="cuda"), dim=1).to(dtype).requires_grad_()
        queue = torch.nn.functional.normalize(torch.randn(65536, 128, device="cuda"), dim=1).to(dtype)
        for backend in backends:
            def step():
                x.grad = y.grad = None
                if loss == "uniform":
                    hyperloss.uniform_loss(x, 2.0, backend=backend).backward()
                elif loss == "moco":
                    hyperloss.uniform_loss(x, 2.0, queue=queue, intra_batch=False, backend=backend).backward()
                else:
                    hyperloss.align_loss(x, y, backend=backend).backward()
            ms = timed(step)
            row = {"loss": loss, "dtype": str(dtype).removeprefix("torch."), "precision": precision, "n": n, "d": 128,
                   "backend": backend, "library": library if backend == "cuda" else "triton (JIT)",
                   "library_file": _lib.lib._name if backend == "cuda" else None, "ms": ms,
                   "queue_rows": queue.shape[0] if loss == "moco" else 0}
            record(results, row)
EOF
LIMIT=$(limit_for 34)
T3=$SECONDS
left3() { echo $((LIMIT - (SECONDS - T3))); }
rm -f "$CUDA_JSON"
# HYPERLOSS_JAX_GPU=1: test_jax.py's GPU cases must run (a jax whose CUDA plugin fails to start would drop them).
run_limited "$((LIMIT * 40 / 100))" "$TMP/cuda-tests.log" env XLA_PYTHON_CLIENT_PREALLOCATE=false HYPERLOSS_JAX_GPU=1 \
    "$PY" -m pytest -q -rs tests/test_cuda_backend.py tests/test_jax.py -p no:cacheprovider
append_log "pytest tests/test_cuda_backend.py tests/test_jax.py (the package's library)" "$TMP/cuda-tests.log"
ROWS+=("pytest cuda backend + jax (GPU)|$STATUS|$SECONDS_TAKEN|$(summary_of "$TMP/cuda-tests.log")")
run_limited "$(($(left3) / 5))" "$TMP/cuda-timing.log" "$PY" "$TMP/cuda_timing.py" "$CUDA_JSON" handwritten
append_log "timings: triton and cuda (hand-written kernels)" "$TMP/cuda-timing.log"
ROWS+=("timings triton + cuda (hand-written)|$STATUS|$SECONDS_TAKEN|$(grep -c '"ms"' "$TMP/cuda-timing.log") of 8 runs in $CUDA_JSON")
wait "$AOT_PID"
AOT_STATUS=$(status_of $?)
append_log "CMake build with the AOT Triton kernels" "$TMP/aot-build.log"
ROWS+=("cmake build (AOT)|$AOT_STATUS|$((SECONDS - AOT_T0))|$(grep -m1 -o "Triton kernels ahead of time ON[^)]*)" "$TMP/aot-build.log")")
AOT_LIB=""
if [[ $AOT_STATUS == PASS ]]; then
    AOT_LIB=$PWD/build-gpu
    run_limited "$(($(left3) / 3))" "$TMP/ctest.log" bash -c "cd build-gpu && ctest --output-on-failure"
    # ctest prints a test's output only when it fails: the AOT call count is in its own log. A skipped test (77: no
    # GPU seen) is a failure here.
    AOT_CALLS=$(grep -h -m2 -E "ahead-of-time Triton kernels:|this GPU (runs|does not run)" \
        build-gpu/Testing/Temporary/LastTest.log 2>/dev/null | tr '\n' ' ')
    if grep -q "\*\*\*Skipped" "$TMP/ctest.log"; then STATUS="FAIL(skipped)"; fi
    append_log "ctest (AOT build)" "$TMP/ctest.log"
    ROWS+=("ctest (AOT build)|$STATUS|$SECONDS_TAKEN|$(grep -E "tests passed|tests failed" "$TMP/ctest.log" | tail -1); $AOT_CALLS")
    # The torch cases that reach the AOT kernels: 16-bit inputs and float32 at tf32/bf16 (test_cuda_backend.py has
    # only float64 and exact float32).
    run_limited "$(($(left3) * 2 / 3))" "$TMP/aot-tests.log" env HYPERLOSS_LIBRARY_DIR="$AOT_LIB" "$PY" -m pytest -q \
        -rs tests/test_uniform.py -k "cuda and (half_precision or float32_precisions or queue_matches)" \
        -p no:cacheprovider
    append_log "pytest tests/test_uniform.py -k cuda (HYPERLOSS_LIBRARY_DIR=build-gpu: the AOT kernels)" "$TMP/aot-tests.log"
    ROWS+=("pytest cuda backend (AOT library)|$STATUS|$SECONDS_TAKEN|$(summary_of "$TMP/aot-tests.log")")
    run_limited "$(left3)" "$TMP/aot-timing.log" env HYPERLOSS_LIBRARY_DIR="$AOT_LIB" "$PY" "$TMP/cuda_timing.py" \
        "$CUDA_JSON" aot
    append_log "timings: cuda (AOT library)" "$TMP/aot-timing.log"
    ROWS+=("timings cuda (AOT)|$STATUS|$SECONDS_TAKEN|$(grep -c '"ms"' "$TMP/aot-timing.log") of 4 runs in $CUDA_JSON")
fi
write_table

# --- 4. compute-sanitizer -----------------------------------------------------------------------------------
SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
if [[ -z "$SANITIZER" ]]; then
    ROWS+=("compute-sanitizer|SKIP|0|not installed")
else
    cat >"$TMP/sanitize_case.py" <<'EOF'
# Small Triton uniformity and alignment calls, every kernel variant, for compute-sanitizer memcheck.
import torch

from hyperloss import backends
from hyperloss import triton as T

torch.manual_seed(0)
for dtype in (torch.float32, torch.bfloat16):
    for d in (40, 300):  # registers and chunked-D accumulator paths
        x = torch.randn(100, d, device="cuda", dtype=dtype)
        q = torch.randn(37, d, device="cuda", dtype=dtype)
        T.uniform_lse(x, None, 2.0, True, False, False)
        T.uniform_lse(x, q, 2.0, True, True, True)
        T.uniform_lse(x[::2], q.T.contiguous().T, 2.0, False, True, True)
        T.uniform_lse(x * 30, q, 2.0, True, True, True)  # rows the lean sweep flags: the fallback recomputes them
        T.align(x, x.flip(0), 1.5, True)
        if backends.availability("cuda")[0]:  # the CUDA C++ kernels, where the library has them
            t, alpha = torch.tensor(2.0, dtype=torch.float64), torch.tensor(1.5, dtype=torch.float64)
            backends.get("cuda").uniform_lse(x, q, t, True, True, True)
            backends.get("cuda").align(x, x.flip(0), alpha, True)
torch.cuda.synchronize()
print("sanitizer case done")
EOF
    run_limited "$(limit_for 12)" "$SANITIZER_LOG" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 HYPERLOSS_TRITON_AUTOTUNE=0 \
        ${AOT_LIB:+HYPERLOSS_LIBRARY_DIR="$AOT_LIB"} "$SANITIZER" --tool memcheck --error-exitcode 1 "$PY" \
        "$TMP/sanitize_case.py"
    ROWS+=("compute-sanitizer memcheck|$STATUS|$SECONDS_TAKEN|$(grep -E "ERROR SUMMARY" "$SANITIZER_LOG" | tail -1)")
fi
write_table

# --- the table of steps (written after every step: a run stopped from outside keeps what it finished) ----------
cat "$TABLE"
FAILED=0
for row in "${ROWS[@]}"; do
    IFS='|' read -r _ status _ _ <<<"$row"
    [[ "$status" == PASS || "$status" == SKIP ]] || FAILED=1 # NO-TIME: not run, so not passed
done
exit $FAILED
