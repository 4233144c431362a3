"""The ops' contract, written once for every frontend (torch, JAX) and the fakes: which inputs are valid, in what
dtype they are computed, how many pairs there are, and what non-finite inputs give.

Framework-neutral: the rules take shapes (tuples whose entries may be torch.SymInt under torch.compile), dtype
names ("float32", "bfloat16", ...: what ``str(torch_dtype)`` and ``numpy.dtype(jax_dtype).name`` both spell) and
Python numbers. Each frontend checks only what is its own (is this a tensor of this framework, on which device)
and calls these. The C API checks the same rules again for its own callers (csrc/args.h).

Numbers are compared, never converted with ``float()`` or ``math.isfinite``, so the checks trace under
``torch.compile(dynamic=True)`` with symbolic sizes, t and alpha.

The NaN rule: if any input element is NaN or infinite, the loss and every gradient are NaN (an infinite
coordinate makes some distances infinite and others NaN, so the plain formula's answer would depend on the data).
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Sequence

# Input dtypes; 16-bit ones are computed in float32. Not float8 and the like (numpy and torch call them floating).
SUPPORTED_DTYPES = ("float16", "bfloat16", "float32", "float64")


def dtype_name(dtype: object) -> str:
    """ "float32" for torch.float32 or numpy.dtype("float32") (what a JAX or NumPy array's ``dtype`` is)."""
    return str(dtype).removeprefix("torch.")


def compute_dtype_name(dtype: str) -> str:
    """The dtype an op computes in and returns: float64 for float64 inputs, float32 for every other one."""
    return "float64" if dtype == "float64" else "float32"


def num_pairs(n: int, k: int, intra_batch: bool) -> int:
    """|P|: the i<j pairs within n rows (when ``intra_batch``) plus the n*k cross pairs with a k-row queue."""
    return (n * (n - 1) // 2 if intra_batch else 0) + n * k


def _got(value: object, tracing: bool) -> str:
    """ ", got <value>" for an error message; nothing while tracing, where a symbolic number cannot be formatted."""
    return "" if tracing else f", got {value!r}"


def check_features(name: str, shape: Sequence[int], dtype: str, min_rows: int = 1) -> None:
    """A (N, D) array of a supported dtype with at least ``min_rows`` rows and one column."""
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} must be a floating-point array ({', '.join(SUPPORTED_DTYPES)}), got {dtype}")
    if len(shape) != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {tuple(shape)}")
    if shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} row(s), got shape {tuple(shape)}")
    if shape[1] < 1:
        raise ValueError(f"{name} needs at least one feature column (D >= 1), got shape {tuple(shape)}")


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        kind = type(value)
        qualified = kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
        raise TypeError(f"{name} must be a bool (True or False), got {qualified}")
    return value


def check_real(name: str, value: object) -> None:
    """A real number (bool is not one), or a symbolic one under torch.compile (torch.SymFloat is numbers.Real)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")


def check_positive(name: str, value: object, tracing: bool = False) -> float:
    """A real number, finite as a float64 and > 0; returned as given (a Python int stays one)."""
    check_real(name, value)
    if isinstance(value, int) and value > sys.float_info.max:  # an exact int may be beyond any float
        raise ValueError(f"{name} must be finite and > 0, got an integer of {len(str(value))} digits (above 1.8e308)")
    if not (value > 0 and value < math.inf):  # also false for NaN
        raise ValueError(f"{name} must be finite and > 0{_got(value, tracing)}")
    return value


def check_weight(name: str, value: object, tracing: bool = False) -> float:
    """A loss weight: any finite real number (0 switches a term off; negative weights are allowed)."""
    check_real(name, value)
    if not (-sys.float_info.max <= value <= sys.float_info.max):  # also false for NaN
        raise ValueError(f"{name} must be finite{_got(value, tracing)}")
    return value


def check_uniform(
    x: tuple[Sequence[int], str],
    queue: tuple[Sequence[int], str] | None,
    intra_batch: object,
    *,
    x_name: str = "x",
    min_rows: int | None = None,
) -> None:
    """The arrays of a uniformity loss, each as (shape, dtype name). ``min_rows`` defaults to what leaves at least
    one pair on its own: 2 rows without a queue, 1 with one."""
    check_bool("intra_batch", intra_batch)
    if queue is None and not intra_batch:
        raise ValueError("intra_batch=False leaves no pairs without a queue")
    if min_rows is None:
        min_rows = 2 if queue is None else 1
    check_features(x_name, *x, min_rows=min_rows)
    if queue is not None:
        check_features("queue", *queue)
        if queue[1] != x[1]:
            raise TypeError(f"queue has dtype {queue[1]} but {x_name} has {x[1]}; cast one of them")
        if queue[0][1] != x[0][1]:
            raise ValueError(f"queue has {queue[0][1]} features per row but {x_name} has {x[0][1]}")


def check_row_weights(name: str, shape: Sequence[int], dtype: str, rows: int, rows_name: str) -> None:
    """Per-row weights of a uniformity loss: a 1-D floating array with one entry per row of ``rows_name``."""
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} must be a floating-point array ({', '.join(SUPPORTED_DTYPES)}), got {dtype}")
    if len(shape) != 1 or shape[0] != rows:
        raise ValueError(
            f"{name} must have shape ({rows},): one weight per row of {rows_name}, got shape {tuple(shape)}"
        )


def has_positive_pair(positive_x, positive_queue, intra_batch: bool):
    """Whether some pair has two positive weights: two positive rows of x (with intra-batch pairs), or one positive
    row of x and one of the queue. From the count of positive weights in x and whether the queue has one: Python
    numbers give a bool, tensors a tensor (no host read)."""
    return ((positive_x >= 2) & intra_batch) | ((positive_x >= 1) & positive_queue)


def check_row_weight_values(
    name: str, finite: bool, nonnegative: bool, pair_sum_positive: bool, intra_batch: bool, queue: bool
) -> None:
    """The values of per-row weights (as read by the frontend): finite, >= 0, and some pair of positive weight.

    Args:
        name: what to call the weights in the message ("weights", "queue_weights", or both).
        finite, nonnegative: whether every entry is finite, and >= 0.
        pair_sum_positive: whether the sum over the pairs of w_u w_v is > 0.
        intra_batch, queue: which pairs exist (for the message).
    """
    if not finite:
        raise ValueError(f"{name} must be finite (got NaN or inf entries)")
    if not nonnegative:
        raise ValueError(f"{name} must be >= 0 (got negative entries)")
    if not pair_sum_positive:
        partners = " and ".join(p for p, on in (("another row of x", intra_batch), ("a row of the queue", queue)) if on)
        raise ValueError(
            "the pair weights sum to 0: no pair has two positive weights (a row of positive weight needs a partner "
            f"of positive weight: {partners}); the weighted mean over the pairs is undefined"
        )


def check_align(
    x: tuple[Sequence[int], str],
    y: tuple[Sequence[int], str],
    *,
    names: tuple[str, str] = ("x", "y"),
    min_rows: int = 1,
) -> None:
    """The arrays of an alignment loss, each as (shape, dtype name): one shape, one dtype."""
    check_features(names[0], *x, min_rows=min_rows)
    check_features(names[1], *y, min_rows=min_rows)
    if y[1] != x[1]:
        raise TypeError(f"{names[1]} has dtype {y[1]} but {names[0]} has {x[1]}; cast one of them")
    if tuple(x[0]) != tuple(y[0]):
        raise ValueError(f"{names[0]} and {names[1]} must have the same shape, got {tuple(x[0])} and {tuple(y[0])}")
