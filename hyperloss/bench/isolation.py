"""A child process per case: a clean memory baseline, killed past its time limit (a running kernel cannot be stopped
in-process), an out-of-memory failure kept from the next case. Children fork from a server that imported torch and
hyperloss once and never touches CUDA or runs an OpenMP region, which makes forking from it safe."""

import contextlib
import ctypes
import gc
import multiprocessing
import os
import resource
import signal
import time
from collections.abc import Callable

import torch

OK, OOM, TIMEOUT, ERROR = "ok", "oom", "timeout", "error"
OOM_TEXTS = ("out of memory", "can't allocate memory", "cannot allocate memory")
CONTEXT = multiprocessing.get_context("forkserver")  # started on the first case
CONTEXT.set_forkserver_preload(["hyperloss.bench.sweep"])  # torch and hyperloss, imported once in the server


def proc_kb(field: str, path: str = "/proc/self/status") -> int:
    """A field in kB of /proc/self/status (VmRSS, VmHWM, VmSize) or /proc/meminfo (MemAvailable); 0 off Linux."""
    with contextlib.suppress(OSError), open(path) as f:
        return next((int(line.split()[1]) for line in f if line.startswith(field + ":")), 0)
    return 0


def _child_main(conn, task: Callable[[], dict], memory_cap: int | None) -> None:
    with contextlib.suppress(OSError):  # its own process group: a kill on timeout reaches torch.compile's workers
        os.setpgrp()
    if memory_cap and proc_kb("VmSize"):  # an allocation past the cap fails cleanly, no kernel OOM killer
        limit, hard = proc_kb("VmSize") * 1024 + memory_cap, resource.getrlimit(resource.RLIMIT_AS)[1]
        resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    try:
        result = task()
    except BaseException as error:  # every failure is a result; the sweep goes on
        text = str(error).strip().partition("\n")[0]
        oom = isinstance(error, MemoryError | torch.OutOfMemoryError) or any(s in text.lower() for s in OOM_TEXTS)
        result = {"status": OOM if oom else ERROR, "error": f"{type(error).__name__}: {text}"[:300]}
    conn.send(result)
    conn.close()


def _kill(proc: multiprocessing.process.BaseProcess) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # it had not made its own group yet
        proc.kill()


def run_in_child(task: Callable[[], dict], timeout_s: float, memory_cap: int | None = None) -> dict:
    """Runs ``task`` (picklable, returning a dict with a "status") in a child process and returns its result: a
    timeout when still running after ``timeout_s`` (then killed); out of memory when killed by SIGKILL unanswered."""
    receiver, sender = CONTEXT.Pipe(duplex=False)
    proc = CONTEXT.Process(target=_child_main, args=(sender, task, memory_cap))
    start, result = time.monotonic(), None
    proc.start()
    sender.close()
    try:
        if not receiver.poll(timeout_s):
            _kill(proc)
            result = {"status": TIMEOUT, "error": f"still running after {timeout_s:g} s"}
        with contextlib.suppress(EOFError):  # it died without answering
            result = result or receiver.recv()
        proc.join(timeout=30)
    finally:
        if proc.is_alive():
            _kill(proc)
            proc.join()
        receiver.close()
    if result is None and proc.exitcode == -signal.SIGKILL:
        result = {"status": OOM, "error": "killed by SIGKILL (most likely the kernel's out-of-memory killer)"}
    result = result or {"status": ERROR, "error": f"the child process exited with code {proc.exitcode}"}
    return result | {"wall_s": round(time.monotonic() - start, 3)}


def peak_extra_memory(call: Callable[[], object], device: torch.device) -> int:
    """The peak memory ``call`` needs beyond what is live before it. CUDA: max_memory_allocated - memory_allocated,
    the peak reset first. CPU: VmHWM - VmRSS, the peak reset (clear_refs; where it cannot be, the peak since the start)
    after glibc returned its free heap (malloc_trim: else RSS creeps up from call to call in the OpenMP arenas)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        call()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS (Linux >= 4.0)
    base = proc_kb("VmRSS") * 1024
    call()
    return proc_kb("VmHWM") * 1024 - base
