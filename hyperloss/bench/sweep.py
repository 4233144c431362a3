"""Which cases a sweep runs, and running them: each in its own child process, timed there by a standard timer
(``torch.utils.benchmark.Timer.blocked_autorange`` on the CPU, ``triton.testing.do_bench`` on a GPU)."""

import functools
import gc
import itertools
import statistics
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch.utils.benchmark import Timer

from . import cases, isolation

SKIPPED = "skipped (smaller N failed)"  # after an OOM or timeout, the same series' larger N are not tried
# The CPU sweep takes minutes on two cores (the paper's code: seconds a call at N = 8192); a GPU's goes up to OOM.
DEFAULT_NS = {"cpu": {"uniform": (1024, 2048, 4096, 8192), "align": (1 << 16, 1 << 18)}}
DEFAULT_NS["cuda"] = {"uniform": tuple(1 << k for k in range(10, 19)), "align": (1 << 16, 1 << 18, 1 << 20)}
QUICK_NS, DEFAULT_D, QUICK_D = {"uniform": (128, 256), "align": (1024, 4096)}, 128, 32
DEFAULT_DTYPES = {"cpu": ("fp32",), "cuda": ("fp32", "bf16")}  # bf16: the library's backends only, unless named
DEFAULT_PRECISION = {"cpu": "highest", "cuda": "high"}  # fp32 on a GPU: TF32 products, as trainers run it
SLOW_TO_START = ("compiled-dense",)  # left out of --quick: torch.compile takes seconds per shape


class Case(NamedTuple):
    """One measurement: an implementation of an op at one size and dtype."""

    op: str
    mode: str
    dtype: str
    precision: str  # torch.set_float32_matmul_precision for fp32; "-" for other dtypes
    d: int
    n: int
    impl: str
    device: str


def build_plan(device: str, quick: bool = False, **choices: Sequence | int | None) -> tuple[list[Case], dict[str, str]]:
    """The cases: every combination of ``choices`` (ops, ns, d, dtypes, precisions, impls, modes; unset: the device's
    defaults), config by config, N ascending, the paper first (a dtype named runs all; a default non-fp32 one, the
    library's); and the implementations left out: "impl" or "impl (op, dtype)" -> why."""
    names, impls = list(cases.implementations()), choices.get("impls")
    if unknown := set(impls or ()) - set(names):
        raise ValueError(f"unknown implementations {sorted(unknown)}; known: {', '.join(names)}")
    names, planned, left_out, by_dtype = [n for n in names if n in (impls or names)], [], {}, {}
    if quick and not impls:
        names = [n for n in names if n not in SLOW_TO_START]
        left_out = dict.fromkeys(SLOW_TO_START, "left out of --quick: torch.compile takes seconds per shape")
    ops, modes, dtypes = choices.get("ops") or cases.OPS, choices.get("modes") or ["fwdbwd"], choices.get("dtypes")
    for op, mode, dtype in itertools.product(ops, modes, dtypes or DEFAULT_DTYPES[device]):
        runnable = []
        for name in names:
            if not dtypes and dtype != "fp32" and cases.backend(name) in (None, "reference"):
                continue
            if reason := cases.unavailable_reason(name, op, device):
                left_out.setdefault(name, reason)
            elif reason := cases.unsupported_dtype(name, op, device, dtype):
                by_dtype[f"{name} ({op}, {dtype})"] = reason
            else:
                runnable.append(name)
        sizes = sorted(choices.get("ns") or (QUICK_NS if quick else DEFAULT_NS[device])[op])
        d = choices.get("d") or (QUICK_D if quick else DEFAULT_D)
        precisions = (choices.get("precisions") or [DEFAULT_PRECISION[device]]) if dtype == "fp32" else ["-"]
        for precision, n in itertools.product(precisions, sizes):  # precision only changes fp32 products
            planned += [Case(op, mode, dtype, precision, d, n, name, device) for name in runnable]
    # An implementation that ran somewhere is not "left out" because one op does not apply to it.
    return planned, {k: v for k, v in left_out.items() if k not in {c.impl for c in planned}} | by_dtype


def summarize(times_ms: list[float]) -> dict:
    """Median, quartiles (the inclusive method, as torch's Measurement) and range of the timed calls."""
    q1, median, q3 = statistics.quantiles(times_ms, n=4, method="inclusive") if len(times_ms) > 1 else times_ms * 3
    stats = {"median_ms": median, "q1_ms": q1, "q3_ms": q3, "min_ms": min(times_ms), "max_ms": max(times_ms)}
    return {k: round(v, 6) for k, v in stats.items()}


def measure_case(case: Case, budget_s: float) -> dict:
    """In the child: a warm-up call (compilation, autotuning), a call for the peak extra memory, then the timer for
    ``budget_s``: GPU times per call, CPU times per block of calls (several only where a call is too short to time)."""
    device = torch.device(case.device)
    if case.dtype == "fp32":
        torch.set_float32_matmul_precision(case.precision)
    inputs = cases.make_inputs(case.op, case.n, case.d, case.dtype, device, grad=case.mode == "fwdbwd")
    step = cases.make_step(cases.build_loss(case.impl, case.op), inputs, case.mode)
    start = time.perf_counter()
    loss = float(step())  # float() waits for the device
    warmup_ms = (time.perf_counter() - start) * 1e3
    # What lives after the warm-up (torch's and the compiler's objects) is never garbage: frozen, it is not scanned
    # by a collection that could otherwise fall inside a timed call.
    gc.collect()
    gc.freeze()
    for tensor in inputs:  # the warm-up's gradients go before the baseline: the call's own count in its peak
        tensor.grad = None
    peak = isolation.peak_extra_memory(step, device)
    if device.type == "cuda":
        from triton.testing import do_bench

        times_ms = do_bench(step, warmup=1, rep=budget_s * 1e3, return_mode="all")
        reps = len(times_ms)
    else:
        timer = Timer("step()", globals={"step": step}, num_threads=torch.get_num_threads())
        m = timer.blocked_autorange(min_run_time=budget_s)
        times_ms, reps = [t * 1e3 for t in m.times], m.number_per_run * len(m.times)
    times = {"times_ms": [round(t, 6) for t in times_ms], "reps": reps, "warmup_ms": round(warmup_ms, 3)}
    return {"status": isolation.OK, **times, "peak_extra_bytes": peak, "loss": loss} | summarize(times_ms)


def run_case(case: Case, budget_s: float, timeout_s: float, memory_cap: int | None = None) -> dict:
    """Measures ``case`` in a child (``memory_cap``: address space beyond its start); failures come as a status."""
    return isolation.run_in_child(functools.partial(measure_case, case, budget_s), timeout_s, memory_cap)


def run_sweep(plan: list[Case], execute: Callable[[Case], dict], on_result: Callable[[int, int, dict], None]) -> None:
    """Runs each case through ``execute`` into ``on_result(index, total, row)``; after a failure, skips larger N."""
    failed_at: dict[Case, tuple[int, str]] = {}
    for index, case in enumerate(plan, 1):
        series = case._replace(n=0)  # the cases that differ only in N
        failure = failed_at.get(series)
        if failure is not None and case.n > failure[0]:
            outcome = {"status": SKIPPED, "error": f"{failure[1]} at N={failure[0]}"}
        else:
            outcome = execute(case)
            if outcome["status"] in (isolation.OOM, isolation.TIMEOUT):
                failed_at.setdefault(series, (case.n, outcome["status"]))
        on_result(index, len(plan), case._asdict() | outcome)
