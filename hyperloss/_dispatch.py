"""Backend registry and selection.

Every backend provides the same two primitives (see ``hyperloss.reference``):
  uniform_lse(x, queue, t, intra_batch, grad_x, grad_queue) -> (lse, d lse/dx or None, d lse/dqueue or None)
  align(x, y, alpha, grad_x) -> (loss, d loss/dx or None)
and the autograd glue in ``hyperloss.functional`` is shared by all of them.
"""

from __future__ import annotations

import functools
import importlib
import os
from dataclasses import dataclass
from types import ModuleType
from typing import NamedTuple

import torch


@dataclass(frozen=True)
class _Backend:
    name: str
    module: str  # hyperloss submodule with uniform_lse(), align() and the availability check
    device_types: tuple[str, ...]  # device types it runs on ("*" for any)
    description: str
    check: str = "available"  # the module's function returning (available, why not)

    def load(self) -> ModuleType:
        return importlib.import_module(f"hyperloss.{self.module}")


# In "auto" order of preference per device type.
_BACKENDS = {
    b.name: b
    for b in (
        _Backend("triton", "triton", ("cuda", "cpu"), "fused Triton GPU kernels (CPU only under TRITON_INTERPRET=1)"),
        _Backend(
            "cuda", "native", ("cuda",), "CUDA C++ kernels (csrc/cuda), libhyperloss built with CUDA", "available_cuda"
        ),
        _Backend(
            "cpu",
            "native",
            ("cpu",),
            "native C++ CPU kernels (csrc/cpu, OpenMP; AVX2/AVX-512 chosen at run time), libhyperloss",
            "available_cpu",
        ),
        _Backend("reference", "reference", ("*",), "chunked pure-PyTorch fallback, any device"),
    )
}
_AUTO_ORDER = {"cuda": ("triton", "cuda", "reference"), "cpu": ("cpu", "reference")}


class BackendStatus(NamedTuple):
    """One row of ``hyperloss.backends()``.

    Attributes:
        name: what ``backend=`` takes ("triton", "cuda", "cpu", "reference").
        available: whether it can run in this process.
        devices: the tensor device types it runs on ("*": any).
        description: what it is.
        reason: why it is unavailable ("" when available).
    """

    name: str
    available: bool
    devices: tuple[str, ...]
    description: str
    reason: str  # why it is unavailable ("" when available)


@functools.cache
def _availability(name: str) -> tuple[bool, str]:
    backend = _BACKENDS[name]
    if name == "reference":
        return True, ""
    try:
        module = backend.load()
    except ImportError as error:
        return False, f"import failed: {error}"
    return getattr(module, backend.check)()


def backends() -> list[BackendStatus]:
    """Lists every backend, whether it can run here, and if not, why.

    Returns:
        One ``BackendStatus`` per backend, in the order "auto" prefers them.
    """
    rows = []
    for b in _BACKENDS.values():
        ok, reason = _availability(b.name)
        rows.append(BackendStatus(b.name, ok, b.device_types, b.description, reason))
    return rows


def _runs_on(name: str, device_type: str) -> bool:
    types = _BACKENDS[name].device_types
    if name == "triton" and device_type == "cpu":
        return os.environ.get("TRITON_INTERPRET") == "1"
    return "*" in types or device_type in types


def _available_for(device_type: str) -> list[str]:
    return [n for n in _BACKENDS if _availability(n)[0] and _runs_on(n, device_type)]


def check_backend_name(backend: object, source: str = "backend") -> str:
    """Checks that ``backend`` is "auto" or a known backend name (whether it runs here is decided per call)."""
    if not isinstance(backend, str):
        raise TypeError(f"{source} must be a string, got {type(backend).__name__}")
    if backend != "auto" and backend not in _BACKENDS:
        raise ValueError(f"unknown {source} {backend!r}; known: 'auto', {', '.join(map(repr, _BACKENDS))}")
    return backend


@functools.cache
def _resolve(requested: str, device_type: str) -> str:
    if requested == "auto":
        for name in _AUTO_ORDER.get(device_type, ("reference",)):
            if _availability(name)[0] and _runs_on(name, device_type):
                return name
        return "reference"
    ok, reason = _availability(requested)
    usable = ", ".join(_available_for(device_type))
    if not ok:
        raise ValueError(f"backend {requested!r} is not available: {reason}. Available for {device_type}: {usable}")
    if not _runs_on(requested, device_type):
        raise ValueError(
            f"backend {requested!r} does not run on {device_type} tensors. Available for {device_type}: {usable}"
        )
    return requested


# Modules of the backends resolved so far. Filled outside any torch.compile trace (see resolve), so a traced
# forward only reads a dict and never imports.
LOADED: dict[str, ModuleType] = {}


@torch.compiler.assume_constant_result
def _resolve_and_load(backend: str, device_type: str) -> str:
    if backend == "auto":
        backend = check_backend_name(os.environ.get("HYPERLOSS_BACKEND", "auto") or "auto", "HYPERLOSS_BACKEND")
    name = _resolve(backend, device_type)
    LOADED[name] = _BACKENDS[name].load()
    return name


def resolve(backend: str, device: torch.device) -> str:
    """The backend to use for ``backend`` ("auto" or a name) on ``device``; HYPERLOSS_BACKEND overrides "auto".

    Under torch.compile this runs once at trace time and its answer is baked into the graph.
    """
    return _resolve_and_load(check_backend_name(backend), device.type)
