"""Running the cases: each in its own child process, timed, with its peak extra memory, under a time limit.

A child process per case gives a clean memory baseline, lets a case be killed when it runs past its time limit
(a running kernel cannot be interrupted in-process), and keeps an out-of-memory failure from affecting the next
case. The children are forked from a forkserver that has imported torch and hyperloss once, so a case starts in
milliseconds instead of the seconds an import takes; the forkserver itself never touches CUDA or runs an OpenMP
region, which is what makes forking from it safe.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import multiprocessing
import os
import resource
import signal
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import cases
from .plan import Case, Plan

OK = "ok"
OOM = "oom"
TIMEOUT = "timeout"
ERROR = "error"
SKIPPED = "skipped (smaller N failed)"
FAILED = (OOM, TIMEOUT)  # statuses after which the same implementation is not tried at a larger N


@dataclass(frozen=True)
class Settings:
    """How each case is measured."""

    budget_s: float = 5.0  # time for the timed repetitions of one case, after its warm-up call
    max_reps: int = 20
    min_reps: int = 3
    timeout_s: float = 180.0  # per case, warm-up (and compilation) included
    memory_cap_bytes: int | None = None  # CPU: address-space limit of a child, so it fails cleanly instead of
    # waking the kernel's OOM killer on a machine shared with others


# ----------------------------------------------------------------------------------------------------------------
# Child processes


@functools.cache
def _context() -> multiprocessing.context.BaseContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])  # torch and hyperloss, imported once in the server
    return ctx


def _failure(error: BaseException) -> dict:
    text = str(error).strip().splitlines()
    message = f"{type(error).__name__}: {text[0] if text else ''}"[:300]
    oom = isinstance(error, MemoryError | torch.OutOfMemoryError) or any(
        s in str(error).lower() for s in ("out of memory", "can't allocate memory", "cannot allocate memory")
    )
    return {"status": OOM if oom else ERROR, "error": message}


def _proc_status_kb(field: str) -> int | None:
    """A field of /proc/self/status (VmRSS, VmHWM, VmSize) in kB; None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _child_main(conn, task: Callable[[], dict], memory_cap: int | None) -> None:
    # Its own process group, so that a kill on timeout also reaches what it started (torch.compile workers).
    with contextlib.suppress(OSError):
        os.setpgrp()
    size_kb = _proc_status_kb("VmSize")
    if memory_cap and size_kb is not None:
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = size_kb * 1024 + memory_cap
        resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    try:
        result = task()
    except BaseException as error:  # every failure is a result; the sweep goes on
        result = _failure(error)
    conn.send(result)
    conn.close()


def _kill(proc: multiprocessing.process.BaseProcess) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # it had not made its own group yet
        proc.kill()


def run_in_child(task: Callable[[], dict], timeout_s: float, memory_cap: int | None = None) -> dict:
    """Runs ``task`` (picklable, returning a dict with a "status") in a child process and returns its result.

    A child still running after ``timeout_s`` is killed and reported as a timeout; one killed by SIGKILL
    without an answer (the kernel's OOM killer) as out of memory.
    """
    ctx = _context()
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(sender, task, memory_cap))
    start = time.monotonic()
    proc.start()
    sender.close()
    result = None
    try:
        if receiver.poll(timeout_s):
            with contextlib.suppress(EOFError):  # it died without answering
                result = receiver.recv()
        else:
            _kill(proc)
            result = {"status": TIMEOUT, "error": f"still running after {timeout_s:g} s"}
        proc.join(timeout=30)
    finally:
        if proc.is_alive():
            _kill(proc)
            proc.join()
        receiver.close()
    if result is None:
        if proc.exitcode == -signal.SIGKILL:
            result = {"status": OOM, "error": "killed by SIGKILL (most likely the kernel's out-of-memory killer)"}
        else:
            result = {"status": ERROR, "error": f"the child process exited with code {proc.exitcode}"}
    result["wall_s"] = round(time.monotonic() - start, 3)
    return result


# ----------------------------------------------------------------------------------------------------------------
# Peak extra memory


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def _release_free_heap() -> None:
    """Returns glibc's free heap pages to the system (~1 ms), so that the RSS baseline holds live memory only."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _reset_rss_peak() -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory a call needs beyond what is live just before it, the largest over the measured calls.

    CUDA: ``max_memory_allocated`` minus ``memory_allocated``, the peak reset before each call. CPU: peak RSS
    (VmHWM) minus RSS, the peak reset before each call after glibc has returned its free pages. Without that
    return, RSS creeps up over repeated calls (allocator fragmentation across OpenMP threads' arenas: +25 MB
    over 20 calls of the native kernel at N = 8192) and the figure would depend on the repetition count. Where
    the peak cannot be reset, it is the peak since the child started minus the RSS before the warm-up call.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0
        if device.type == "cuda":
            self.method = "cuda: max_memory_allocated - memory_allocated before each call"
            self._base = 0
        else:
            self.method = "rss: VmHWM - VmRSS before each call (free heap returned first)"
            self._base = (_proc_status_kb("VmRSS") or 0) * 1024  # kept if the peak cannot be reset
            self._resettable = True

    def before_call(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        if not self._resettable:
            return
        _release_free_heap()
        if _reset_rss_peak():
            self._base = (_proc_status_kb("VmRSS") or 0) * 1024
        else:
            self._resettable = False
            self.method = "rss: VmHWM since start - VmRSS before the warm-up (includes warm-up)"

    def after_call(self) -> None:
        if self.device.type == "cuda":
            extra = torch.cuda.max_memory_allocated(self.device) - self._base
        else:
            extra = (_proc_status_kb("VmHWM") or 0) * 1024 - self._base
        self.peak = max(self.peak, extra)


# ----------------------------------------------------------------------------------------------------------------
# One case


def measure_case(case: Case, settings: Settings) -> dict:
    """Runs in the child: one warm-up call (compilation, autotuning), then timed calls until the time budget is
    spent (at least ``min_reps``, at most ``max_reps``), each synchronized, with the peak extra memory."""
    device = torch.device(case.device)
    if case.dtype == "fp32":
        torch.set_float32_matmul_precision(case.precision)
    inputs = cases.make_inputs(case.op, case.n, case.d, case.dtype, device, requires_grad=case.mode == "fwdbwd")
    step = cases.make_step(cases.build_loss(case.impl, case.op), inputs, case.mode, device)
    memory = PeakMemory(device)
    start = time.perf_counter()
    step()
    warmup = time.perf_counter() - start
    # What is alive after the warm-up (torch's and the compiler's objects, hundreds of thousands) is never
    # garbage: frozen, it is not scanned, and the collection before each call takes microseconds, not ~150 ms.
    gc.collect()
    gc.freeze()
    times: list[float] = []
    begin = time.perf_counter()
    while len(times) < settings.max_reps and (
        len(times) < settings.min_reps or time.perf_counter() - begin < settings.budget_s
    ):
        cases.clear_grads(inputs)  # the previous call's gradients are not part of this call's baseline
        memory.before_call()
        t0 = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t0)
        memory.after_call()
    return {
        "status": OK,
        "times_ms": [round(t * 1e3, 6) for t in times],
        "warmup_ms": round(warmup * 1e3, 3),
        "peak_extra_bytes": memory.peak,
        "memory_method": memory.method,
        "loss": float(loss),
    }


def summarize(times_ms: list[float]) -> dict:
    """Median, quartiles (inclusive method) and range of the timed calls."""
    q1, median, q3 = statistics.quantiles(times_ms, n=4, method="inclusive") if len(times_ms) > 1 else times_ms * 3
    stats = {"median_ms": median, "q1_ms": q1, "q3_ms": q3, "min_ms": min(times_ms), "max_ms": max(times_ms)}
    return {**{k: round(v, 6) for k, v in stats.items()}, "reps": len(times_ms)}


def run_case(case: Case, settings: Settings) -> dict:
    """Measures ``case`` in a child process; a failure is returned as a status, never raised."""
    result = run_in_child(
        functools.partial(measure_case, case, settings), settings.timeout_s, settings.memory_cap_bytes
    )
    if result["status"] == OK:
        result.update(summarize(result["times_ms"]))
    return result


def run_sweep(
    plan: Plan, execute: Callable[[Case], dict], on_result: Callable[[int, int, dict], None] | None = None
) -> list[dict]:
    """Runs every case of ``plan`` through ``execute``; after an out-of-memory or timeout of an implementation,
    its larger sizes in the same series are recorded as skipped instead of run."""
    failed_at: dict[tuple, tuple[int, str]] = {}
    rows = []
    for index, case in enumerate(plan.cases, 1):
        failure = failed_at.get(case.series)
        if failure is not None and case.n > failure[0]:
            outcome = {"status": SKIPPED, "error": f"{failure[1]} at N={failure[0]}"}
        else:
            outcome = execute(case)
            if outcome["status"] in FAILED:
                failed_at.setdefault(case.series, (case.n, outcome["status"]))
        row = {**case.as_dict(), **outcome}
        rows.append(row)
        if on_result is not None:
            on_result(index, len(plan.cases), row)
    return rows


# ----------------------------------------------------------------------------------------------------------------
# Ceilings: the device's matmul, copy and exp rates, for the floor of each case

# Reference figures for an NVIDIA H100 80GB HBM3, kept here (not measured by this suite): used on a GPU for a
# ceiling this suite does not measure (the exp rate), and for any other ceiling whose measurement failed.
H100_CEILINGS = {
    "matmul_bf16": 774e12,
    "matmul_fp16": 774e12,
    "matmul_fp32_highest": 50.7e12,
    "matmul_fp32_high": 406e12,
    "matmul_fp32_medium": 774e12,  # fp32 products through bf16
    "copy": 2.97e12,  # bytes/s, read + write
    "exp": 4.0e12,  # exp2 per second, Triton, SFU bound
}


def _rate(stmt: str, amount: float, min_run_time: float, **tensors: torch.Tensor) -> dict:
    """``amount`` per second of ``stmt``: the median over repeated short runs for ``min_run_time`` seconds
    (``torch.utils.benchmark``, which synchronizes the device), and their spread (half-IQR over the median)."""
    from torch.utils import benchmark

    timer = benchmark.Timer(stmt, globals=tensors, num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=min_run_time)
    return {"value": amount / m.median, "spread": round(m.iqr / 2 / m.median, 4), "repeats": len(m.times)}


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo where there is one."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    import platform

    return platform.processor() or platform.machine()


def probe(device_type: str, keys: tuple[str, ...], small: bool) -> dict:
    """Runs in a child: the device's description and its measured ceilings for ``keys``.

    Matmul rates come from square products per dtype/precision, the copy rate from a device-to-device copy, each
    the median of repeated short runs with its spread; exp throughput needs a dedicated kernel to measure
    (torch.exp is memory bound), so it is not measured here.
    """
    device = torch.device(device_type)
    info: dict = {"torch_threads": torch.get_num_threads()}
    if device_type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            name=props.name,
            memory_bytes=props.total_memory,
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            cuda=torch.version.cuda,
        )
    size = (2048 if small else 8192) if device_type == "cuda" else (512 if small else 2048)
    nbytes = (1 << 26 if small else 1 << 30) if device_type == "cuda" else (1 << 24 if small else 1 << 28)
    seconds = 0.1 if small else 1.0  # of repeats per ceiling
    measured = {}
    for key in keys:
        if key.startswith("matmul_"):
            _, dtype, *precision = key.split("_")  # matmul_<dtype>[_<precision>]
            if precision:
                torch.set_float32_matmul_precision(precision[0])
            a, b = (torch.randn(size, size, device=device).to(cases.DTYPES[dtype]) for _ in range(2))
            measured[key] = _rate("a @ b", 2 * size**3, seconds, a=a, b=b)
        elif key == "copy":
            src = torch.empty(nbytes // 4, device=device)
            measured[key] = _rate("dst.copy_(src)", 2 * nbytes, seconds, src=src, dst=torch.empty_like(src))
    return {"status": OK, "info": info, "measured": measured, "sizes": {"matmul": size, "copy_bytes": nbytes}}
