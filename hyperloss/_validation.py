"""The torch frontend of the ops' contract (``hyperloss._contract``): what only torch can check (is it a tensor,
on which device), then the shared rules on shapes and dtype names. They run before any work and raise clear
ValueError/TypeError, and trace under ``torch.compile(dynamic=True)``.
"""

from __future__ import annotations

import torch

from . import _contract

SUPPORTED_DTYPES = tuple(getattr(torch, name) for name in _contract.SUPPORTED_DTYPES)
# The contract's compute-dtype rule as a table of torch dtypes (a dict lookup costs nothing and traces).
_COMPUTE_DTYPE = {d: getattr(torch, _contract.compute_dtype_name(_contract.dtype_name(d))) for d in SUPPORTED_DTYPES}


def _tensor(name: str, x: object) -> tuple[tuple[int, ...], str]:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return tuple(x.shape), _contract.dtype_name(x.dtype)


def _same_device(name: str, other: torch.Tensor, x: torch.Tensor, x_name: str = "x") -> None:
    if other.device != x.device:
        raise ValueError(f"{name} is on {other.device} but {x_name} is on {x.device}; put both on one device")


def check_features(name: str, x: object, min_rows: int = 1) -> torch.Tensor:
    """Checks that ``x`` is a 2-D tensor of a supported float dtype with at least ``min_rows`` rows and one column."""
    _contract.check_features(name, *_tensor(name, x), min_rows=min_rows)
    return x


def check_positive(name: str, value: object) -> float:
    """Checks that ``value`` is a real number, finite as a float64 and > 0; returns it (a Python int stays one)."""
    return _contract.check_positive(name, value, torch.compiler.is_compiling())


def check_weight(name: str, value: object) -> float:
    """A loss weight: any finite real number (0 switches a term off; negative weights are allowed)."""
    return _contract.check_weight(name, value, torch.compiler.is_compiling())


def check_temperature(t: object) -> float | torch.Tensor:
    """t: a real number, or a one-element floating tensor (trainable when it requires grad), finite and > 0.

    A tensor's value is checked in eager mode only (reading it there costs a device sync on a GPU); under
    torch.compile it is not read, and a t <= 0 or non-finite gives a NaN loss there.
    """
    if not isinstance(t, torch.Tensor):
        return check_positive("t", t)
    if not t.is_floating_point() or t.numel() != 1:
        raise TypeError(
            f"t must be a real number or a one-element floating tensor, got {t.dtype} of shape {tuple(t.shape)}"
        )
    if not torch.compiler.is_compiling():
        check_positive("t", float(t.detach()))
    return t


def check_uniform_args(
    x: object, t: object, queue: object, intra_batch: object, *, x_name: str = "x", min_rows: int | None = None
) -> float | torch.Tensor:
    """Checks the arguments of a uniformity loss; returns t."""
    x_spec = _tensor(x_name, x)
    q_spec = None if queue is None else _tensor("queue", queue)
    if queue is not None:
        _same_device("queue", queue, x, x_name)
    _contract.check_uniform(x_spec, q_spec, intra_batch, x_name=x_name, min_rows=min_rows)
    return check_temperature(t)


def check_uniform_weights(
    x: torch.Tensor,
    queue: torch.Tensor | None,
    weights: object,
    queue_weights: object,
    intra_batch: bool,
) -> None:
    """Checks per-row weights of a uniformity loss (x, the queue and intra_batch checked already): each None or a
    1-D floating tensor with one entry per row, on x's device; finite, >= 0, and with a positive pair weight sum
    (some pair of two positive weights).

    The values are read in eager mode only: one device sync on a GPU (all of them in one read). Under
    torch.compile they are not read, and invalid weights give a NaN loss there (negative ones: a ValueError from
    the cpu kernel).
    """
    n, k = x.shape[0], 0 if queue is None else queue.shape[0]
    if queue_weights is not None and queue is None:
        raise ValueError("queue_weights needs a queue")
    given = []
    for name, w, rows, rows_name in (("weights", weights, n, "x"), ("queue_weights", queue_weights, k, "queue")):
        if w is None:
            continue
        _contract.check_row_weights(name, *_tensor(name, w), rows, rows_name)
        _same_device(name, w, x)
        given.append((name, w))
    if not given or torch.compiler.is_compiling():
        return
    flags = []
    for _, w in given:
        flags += [torch.isfinite(w).all(), (w >= 0).all()]
    positive_x = (weights > 0).sum() if weights is not None else torch.tensor(n, device=x.device)
    positive_q = (queue_weights > 0).any() if queue_weights is not None else torch.tensor(k > 0, device=x.device)
    flags.append(_contract.has_positive_pair(positive_x, positive_q, intra_batch))
    read = torch.stack(flags).tolist()  # the one read (device sync)
    for index, (name, _) in enumerate(given):
        _contract.check_row_weight_values(name, read[2 * index], read[2 * index + 1], True, intra_batch, k > 0)
    _contract.check_row_weight_values("weights", True, True, read[-1], intra_batch, k > 0)


def check_align_args(
    x: object, y: object, alpha: object, *, names: tuple[str, str] = ("x", "y"), min_rows: int = 1
) -> float:
    """Checks the arguments of an alignment loss; returns alpha."""
    x_spec, y_spec = _tensor(names[0], x), _tensor(names[1], y)
    _same_device(names[1], y, x, names[0])
    _contract.check_align(x_spec, y_spec, names=names, min_rows=min_rows)
    return check_positive("alpha", alpha)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype an op computes in and returns for ``dtype`` inputs (``hyperloss._contract.compute_dtype_name``)."""
    return _COMPUTE_DTYPE.get(dtype, torch.float32)
