"""The backends: every implementation of the ops, one registry, and the choice of one per call.

A backend is an object with the ``Backend`` protocol below: its name, whether it can run in this process (and
why not), which tensor devices it runs on, its rank for ``backend="auto"``, and the two primitives that
``hyperloss.functional`` and ``hyperloss.distributed`` call. The shipped ones are registered here, statically:

- ``cpu``, ``cuda``: the C++ and CUDA kernels of libhyperloss as torch ops (``native.py``);
- ``triton``: the Triton kernels of ``hyperloss/triton`` (``triton.py`` adapts them);
- ``chunked`` (alias ``reference``): pure PyTorch in row blocks, any device (``chunked.py``).

``register()`` adds another one (see README.md in this folder: how to add a backend, how to add an op).
Calling the module, ``hyperloss.backends()``, lists them with their availability.
"""

from __future__ import annotations

import functools
import os
import sys
import types
from typing import NamedTuple, Protocol, runtime_checkable

import torch

from . import chunked, native
from . import triton as triton_adapter


@runtime_checkable
class Backend(Protocol):
    """What every backend provides. The primitives get checked arguments (``hyperloss._contract``) on tensors of a
    device the backend runs on, and compute the value and, in the same call, the analytic gradients asked for.

    Attributes:
        name: what ``backend=`` takes.
        description: one line for ``hyperloss.backends()``.
        devices: the tensor device types it runs on, for display ("*": any).
    """

    name: str
    description: str
    devices: tuple[str, ...]

    def available(self) -> tuple[bool, str]:
        """(True, "") if it can run in this process, else (False, why not). Asked once per process."""
        ...

    def runs_on(self, device_type: str) -> bool:
        """Whether it takes tensors of this device type ("cpu", "cuda", ...)."""
        ...

    def auto_rank(self, device_type: str) -> int | None:
        """Its rank for ``backend="auto"`` on this device type (the lowest available one wins), or None: only by
        name."""
        ...

    def uniform_lse(
        self,
        x: torch.Tensor,
        queue: torch.Tensor | None,
        t: torch.Tensor,
        intra_batch: bool,
        grad_x: bool,
        grad_queue: bool,
        precision: str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """lse = log sum over the pairs of exp(-t ||u - v||^2) as a 0-dim float64 tensor, and d lse / dx and
        d lse / d queue (compute dtype, x's device) where asked for, else None. ``t`` is a 0-dim float64 CPU tensor
        (read at run time: one compiled graph for every value). ``precision`` picks the products of float32
        inputs on a GPU (``hyperloss._precision``; None: torch's setting). NaN if any input is not finite."""
        ...

    def align(
        self, x: torch.Tensor, y: torch.Tensor, alpha: torch.Tensor, grad_x: bool, grad_y: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """mean_i ||x_i - y_i||^alpha (0-dim, compute dtype) and its gradients for x and for y where asked for
        (else None; the one for y is the other's negative). ``alpha`` is a 0-dim float64 CPU tensor."""
        ...

    # Optional (not part of the checked protocol, so that backends written before it keep registering): the
    # per-row weighted uniformity primitive, which ``supports_weights`` looks for,
    #   uniform_lse_weighted(x, queue, t, intra_batch, weights, queue_weights, grad_x, grad_queue, grad_weights,
    #                        grad_queue_weights, precision=None) -> (lse, grad_x, grad_queue, grad_w, grad_qw)
    # with lse = log sum over the pairs of w_u w_v exp(-t ||u - v||^2) and the weights' gradients in float64
    # (see README.md in this folder).


class BackendStatus(NamedTuple):
    """One row of ``hyperloss.backends()``.

    Attributes:
        name: what ``backend=`` takes ("triton", "cuda", "cpu", "chunked", ...).
        available: whether it can run in this process.
        devices: the tensor device types it runs on ("*": any).
        description: what it is.
        reason: why it is unavailable ("" when available).
    """

    name: str
    available: bool
    devices: tuple[str, ...]
    description: str
    reason: str


_REGISTRY: dict[str, Backend] = {}
ALIASES = {"reference": "chunked"}  # old names that still work


def register(backend: Backend, *, replace: bool = False) -> Backend:
    """Adds a backend to the registry, where ``backend=`` (and "auto", by its ``auto_rank``) finds it.

    Args:
        backend: an object with the ``Backend`` protocol.
        replace: allow replacing a registered backend of the same name.

    Returns:
        ``backend`` (so that it can be used as a decorator on a class instance's factory).
    """
    if not isinstance(backend, Backend):
        raise TypeError(f"{backend!r} does not have the Backend protocol (hyperloss.backends.Backend)")
    if not isinstance(backend.name, str) or not backend.name or backend.name == "auto" or backend.name in ALIASES:
        raise ValueError(f"a backend needs a name other than 'auto' and the aliases, got {backend.name!r}")
    if backend.name in _REGISTRY and not replace:
        raise ValueError(f"a backend named {backend.name!r} is registered already (pass replace=True)")
    _REGISTRY[backend.name] = backend
    _forget_choices()
    return backend


def unregister(name: str) -> None:
    """Removes a backend from the registry (mostly for tests)."""
    del _REGISTRY[name]
    _forget_choices()


def _forget_choices() -> None:
    availability.cache_clear()
    _choose.cache_clear()
    _choose_weighted.cache_clear()


def get(name: str) -> Backend:
    """The registered backend called ``name`` (or an alias of it)."""
    return _REGISTRY[ALIASES.get(name, name)]


def names() -> list[str]:
    """The registered backends' names, in registration order."""
    return list(_REGISTRY)


@functools.cache
def availability(name: str) -> tuple[bool, str]:
    """(available, why not) of a registered backend, asked once per process."""
    return get(name).available()


def status() -> list[BackendStatus]:
    """Every backend, whether it can run here, and if not, why (what ``hyperloss.backends()`` returns)."""
    rows = []
    for backend in _REGISTRY.values():
        ok, reason = availability(backend.name)
        rows.append(BackendStatus(backend.name, ok, backend.devices, backend.description, reason))
    return rows


def usable(device_type: str) -> list[str]:
    """The backends that run on tensors of ``device_type`` here, best "auto" choice first (then by name only)."""
    found = [b for b in _REGISTRY.values() if availability(b.name)[0] and b.runs_on(device_type)]
    by_rank = sorted((b for b in found if b.auto_rank(device_type) is not None), key=lambda b: b.auto_rank(device_type))
    return [b.name for b in by_rank] + [b.name for b in found if b.auto_rank(device_type) is None]


def check_name(backend: object, source: str = "backend") -> str:
    """Checks that ``backend`` is "auto" or a registered name or alias (whether it runs here is decided per call)."""
    if not isinstance(backend, str):
        raise TypeError(f"{source} must be a string, got {type(backend).__name__}")
    if backend != "auto" and ALIASES.get(backend, backend) not in _REGISTRY:
        known = ", ".join(map(repr, ["auto", *_REGISTRY, *ALIASES]))
        raise ValueError(f"unknown {source} {backend!r}; known: {known}")
    return backend


@functools.cache
def _choose(requested: str, device_type: str) -> str:
    if requested == "auto":
        ranked = [n for n in usable(device_type) if get(n).auto_rank(device_type) is not None]
        if not ranked:
            raise ValueError(f"no backend runs on {device_type} tensors here: {status()}")
        return ranked[0]
    name = ALIASES.get(requested, requested)
    ok, reason = availability(name)
    here = ", ".join(usable(device_type)) or "none"
    if not ok:
        raise ValueError(f"backend {requested!r} is not available: {reason}. Available for {device_type}: {here}")
    if not get(name).runs_on(device_type):
        raise ValueError(
            f"backend {requested!r} does not run on {device_type} tensors. Available for {device_type}: {here}"
        )
    return name


def supports_weights(name: str) -> bool:
    """Whether the registered backend ``name`` has the per-row weighted primitive ``uniform_lse_weighted``."""
    return callable(getattr(get(name), "uniform_lse_weighted", None))


@functools.cache
def _choose_weighted(requested: str, device_type: str) -> str:
    if requested == "auto":
        ranked = [n for n in usable(device_type) if get(n).auto_rank(device_type) is not None and supports_weights(n)]
        if not ranked:
            raise ValueError(f"no backend with per-row weights runs on {device_type} tensors here: {status()}")
        return ranked[0]
    name = _choose(requested, device_type)
    if not supports_weights(name):
        able = ", ".join(n for n in names() if supports_weights(n))
        raise NotImplementedError(
            f"backend {requested!r} does not support per-row weights (weights=, queue_weights=); backends that do: "
            f"{able} (backend='auto' picks one of them)"
        )
    return name


@torch.compiler.assume_constant_result
def _resolve(backend: str, device_type: str, weighted: bool) -> str:
    if backend == "auto":
        backend = check_name(os.environ.get("HYPERLOSS_BACKEND", "auto") or "auto", "HYPERLOSS_BACKEND")
        if weighted and backend != "auto" and not supports_weights(ALIASES.get(backend, backend)):
            backend = "auto"  # the override names a backend without weights: "auto" picks one that has them
    return _choose_weighted(backend, device_type) if weighted else _choose(backend, device_type)


def resolve(backend: str, device: torch.device | str, *, weighted: bool = False) -> str:
    """The registered name of the backend that runs ``backend`` ("auto", a name or an alias) on ``device``.

    "auto" takes the environment variable HYPERLOSS_BACKEND when set, else the available backend of the lowest
    ``auto_rank`` for the device. With ``weighted`` (a loss with per-row weights) only backends that
    ``supports_weights`` count: "auto" (and HYPERLOSS_BACKEND naming one without them) takes the best-ranked of
    those. Under torch.compile this runs once at trace time and its answer is baked into the graph.

    Raises:
        ValueError: for an unknown name, or a backend that is unavailable or does not run on that device.
        NotImplementedError: with ``weighted``, for a backend named explicitly that has no weighted primitive.
    """
    return _resolve(check_name(backend), torch.device(device).type, weighted)


for _backend in (triton_adapter.TRITON, native.CUDA, native.CPU, chunked.CHUNKED):
    register(_backend)


class _CallableModule(types.ModuleType):
    """``hyperloss.backends()`` was a function before the registry became this package: calling the module keeps
    that working."""

    def __call__(self) -> list[BackendStatus]:
        """Lists every backend, whether it can run here, and if not, why (``status()``)."""
        return status()


sys.modules[__name__].__class__ = _CallableModule

__all__ = [
    "ALIASES",
    "Backend",
    "BackendStatus",
    "availability",
    "check_name",
    "get",
    "names",
    "register",
    "resolve",
    "status",
    "supports_weights",
    "unregister",
    "usable",
]
