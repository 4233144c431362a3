"""Input checks shared by every entry point: they run before any work and raise clear ValueError/TypeError.

They are written to trace under ``torch.compile(dynamic=True)``: values are compared (a guard that holds for every
valid value), never converted with ``float()`` or ``math.isfinite`` (which would specialize or fail on a symbolic
t or alpha).
"""

from __future__ import annotations

import math
import numbers
import sys

import torch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_DTYPE_NAMES = "float16, bfloat16, float32, float64"


def check_features(name: str, x: object, min_rows: int = 1) -> torch.Tensor:
    """Checks that ``x`` is a 2-D tensor of a supported float dtype with at least ``min_rows`` rows and one column."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} must be a floating-point tensor ({_DTYPE_NAMES}), got {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {tuple(x.shape)}")
    if x.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} row(s), got shape {tuple(x.shape)}")
    if x.shape[1] < 1:
        raise ValueError(f"{name} needs at least one feature column (D >= 1), got shape {tuple(x.shape)}")
    return x


def check_same_kind(name: str, other: torch.Tensor, x: torch.Tensor) -> None:
    """Checks that ``other`` lives on the same device and has the same dtype as ``x``."""
    if other.device != x.device:
        raise ValueError(f"{name} is on {other.device} but x is on {x.device}; put both on one device")
    if other.dtype != x.dtype:
        raise TypeError(f"{name} has dtype {other.dtype} but x has {x.dtype}; cast one of them")


def _got(value: object) -> str:
    """ ", got <value>" for an error message; nothing under torch.compile, where a traced number cannot be formatted."""
    return "" if torch.compiler.is_compiling() else f", got {value!r}"


def check_positive(name: str, value: object) -> float:
    """Checks that ``value`` is a real number, finite as a float64 and > 0; returns it (a Python int stays one)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if isinstance(value, int) and value > sys.float_info.max:  # an exact int may be beyond any float
        raise ValueError(f"{name} must be finite and > 0, got an integer of {len(str(value))} digits (above 1.8e308)")
    if not (value > 0 and value < math.inf):  # also false for NaN
        raise ValueError(f"{name} must be finite and > 0{_got(value)}")
    return value


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def check_uniform_args(
    x: object, t: object, queue: object, intra_batch: object, *, x_name: str = "x", min_rows: int | None = None
) -> float:
    """Checks the arguments of a uniformity loss; returns t. ``min_rows`` defaults to what leaves at least one pair
    on its own (2 rows without a queue, 1 with one)."""
    check_bool("intra_batch", intra_batch)
    if queue is None and not intra_batch:
        raise ValueError("intra_batch=False leaves no pairs without a queue")
    if min_rows is None:
        min_rows = 2 if queue is None else 1
    check_features(x_name, x, min_rows=min_rows)
    if queue is not None:
        check_features("queue", queue)
        check_same_kind("queue", queue, x)
        if queue.shape[1] != x.shape[1]:
            raise ValueError(f"queue has {queue.shape[1]} features per row but {x_name} has {x.shape[1]}")
    return check_positive("t", t)


def check_align_args(
    x: object, y: object, alpha: object, *, names: tuple[str, str] = ("x", "y"), min_rows: int = 1
) -> float:
    """Checks the arguments of an alignment loss; returns alpha."""
    check_features(names[0], x, min_rows=min_rows)
    check_features(names[1], y, min_rows=min_rows)
    check_same_kind(names[1], y, x)
    if x.shape != y.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    return check_positive("alpha", alpha)


def check_weight(name: str, value: object) -> float:
    """A loss weight: any finite real number (0 switches a term off; negative weights are allowed)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not (-sys.float_info.max <= value <= sys.float_info.max):  # also false for NaN
        raise ValueError(f"{name} must be finite{_got(value)}")
    return value


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 is computed in float64; every other float dtype in float32 (also the result's dtype)."""
    return torch.float64 if dtype == torch.float64 else torch.float32
