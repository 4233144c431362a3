"""``python -m hyperloss``: what hyperloss can run here.

Prints the hyperloss, Python, torch, Triton and JAX versions, the CPU, the CUDA devices, every backend of
``hyperloss.backends()`` with whether it can run here (and why not), and which backend ``backend="auto"`` picks
for CPU and for CUDA tensors (``HYPERLOSS_BACKEND`` included). Always exits 0: it is a report, not a check.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import platform
import sys
from collections.abc import Sequence

import torch

import hyperloss
from hyperloss import backends

_NOT_INSTALLED = "not installed"


def _version(module: str, distributions: Sequence[str]) -> str:
    """The installed version of ``module`` (from the first of ``distributions`` installed), or "not installed"."""
    for name in distributions:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    if importlib.util.find_spec(module) is None:
        return _NOT_INSTALLED
    try:  # importable but not from a distribution we know (e.g. a source checkout)
        return str(getattr(importlib.import_module(module), "__version__", "unknown version"))
    except Exception as error:  # a report: any failure is worth showing, none is fatal
        return f"installed, but import fails: {error}"


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    if fields:
                        break
                    continue
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_line() -> str:
    """The CPU: model, logical cores (usable by this process), architecture, AVX2/AVX-512 where x86, torch threads."""
    info = _cpuinfo()
    machine = platform.machine()
    model = platform.processor()
    if not model or model == machine:
        model = info.get("model name") or info.get("Hardware") or info.get("Processor") or machine or "unknown"
    cores = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    parts = [f"{cores} logical cores" + (f" ({usable} usable)" if usable != cores else ""), machine]
    if "flags" in info:
        flags = set(info["flags"].split())
        parts.append(f"AVX2 {'yes' if 'avx2' in flags else 'no'}, AVX-512 {'yes' if 'avx512f' in flags else 'no'}")
    from .backends import native

    if native.cpu_isa():
        parts.append(f"cpu kernels: {native.cpu_isa()}")
    parts.append(f"torch threads {torch.get_num_threads()}")
    return f"{model} ({'; '.join(parts)})"


def cuda_lines() -> list[str]:
    """One line per CUDA device torch sees, or one line saying why there is none."""
    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        return ["none (this torch is built without CUDA)"]
    if not torch.cuda.is_available():
        return [f"none (torch built with CUDA {torch.version.cuda}, but no device is visible)"]
    lines = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        lines.append(f"cuda:{i}  {p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.1f} GiB")
    return lines


def _jax_line() -> str:
    version = _version("jax", ["jax"])
    if version == _NOT_INSTALLED:
        return version
    try:
        importlib.import_module("hyperloss.jax")
    except Exception as error:  # e.g. the FFI library is not built
        return f"{version} (hyperloss.jax unavailable: {error})"
    from . import jax as hyperloss_jax

    path = (
        "XLA FFI" if hyperloss_jax.KERNEL_PATH == "ffi" else "jax.pure_callback, CPU only: built without jax's headers"
    )
    return f"{version} (hyperloss.jax available, through {path})"


def auto_pick(device_type: str) -> str:
    """What ``backend="auto"`` resolves to for tensors on ``device_type`` (HYPERLOSS_BACKEND included)."""
    try:
        return backends.resolve("auto", torch.device(device_type))
    except (ValueError, TypeError) as error:  # e.g. HYPERLOSS_BACKEND names an unknown or unusable backend
        return f"error: {error}"


def summary() -> list[str]:
    """The report, one string per line."""
    lines = [
        f"hyperloss {hyperloss.__version__} ({os.path.dirname(hyperloss.__file__)})",
        f"Python    {platform.python_version()} ({platform.python_implementation()}, {sys.platform})",
        f"torch     {torch.__version__} (CUDA {torch.version.cuda or 'none'})",
        f"triton    {_version('triton', ['triton', 'pytorch-triton', 'pytorch-triton-rocm'])}",
        f"jax       {_jax_line()}",
        f"CPU       {cpu_line()}",
    ]
    lines += [f"{'CUDA' if i == 0 else '':<10}{line}" for i, line in enumerate(cuda_lines())]

    lines += ["", "backends (hyperloss.backends()):"]
    rows = hyperloss.backends()
    width = max(len(b.name) for b in rows)
    for b in rows:
        state = "available  " if b.available else "unavailable"
        lines.append(f"  {b.name:<{width}}  {state}  {b.description if b.available else b.reason}")

    env = os.environ.get("HYPERLOSS_BACKEND")
    lines += ["", 'backend="auto" picks' + (" (with HYPERLOSS_BACKEND):" if env else ":")]
    lines.append(f"  CPU tensors   {auto_pick('cpu')}")
    cuda = auto_pick("cuda") if torch.cuda.is_available() else "(no CUDA device)"
    lines.append(f"  CUDA tensors  {cuda}")
    if torch.cuda.is_available():
        from .backends import native

        lines.append(f'backend="cuda" uniformity kernels (16-bit operands): {native.cuda_uniform_kernels()}')
    if env is None:
        lines.append("HYPERLOSS_BACKEND is not set")
    elif not env:
        lines.append('HYPERLOSS_BACKEND is set but empty (the same as "auto")')
    else:
        lines.append(f'HYPERLOSS_BACKEND={env!r} (overrides backend="auto")')
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Prints ``summary()``; returns the exit status (0)."""
    parser = argparse.ArgumentParser(prog="python -m hyperloss", description=__doc__.split("\n\n")[1])
    parser.parse_args(argv)
    print("\n".join(summary()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
