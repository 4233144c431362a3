"""Input checks shared by every entry point: they run before any work and raise clear ValueError/TypeError."""

from __future__ import annotations

import math
import numbers

import torch


def check_features(name: str, x: object, min_rows: int = 1) -> torch.Tensor:
    """Checks that ``x`` is a 2-D floating-point tensor with at least ``min_rows`` rows and one column."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype (float16, bfloat16, float32, float64), got {x.dtype}")
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


def check_positive(name: str, value: object) -> float:
    """Checks that ``value`` is a finite real number > 0 and returns it as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {value}")
    return value


def check_uniform_args(
    x: object, t: object, queue: object, intra_batch: object, *, x_name: str = "x", min_rows: int | None = None
) -> float:
    """Checks the arguments of a uniformity loss; returns t as a float. ``min_rows`` defaults to what leaves at
    least one pair on its own (2 rows without a queue, 1 with one)."""
    if not isinstance(intra_batch, bool):
        raise TypeError(f"intra_batch must be a bool, got {type(intra_batch).__name__}")
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
    """Checks the arguments of an alignment loss; returns alpha as a float."""
    check_features(names[0], x, min_rows=min_rows)
    check_features(names[1], y, min_rows=min_rows)
    check_same_kind(names[1], y, x)
    if x.shape != y.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    return check_positive("alpha", alpha)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 is computed in float64; every other float dtype in float32 (also the result's dtype)."""
    return torch.float64 if dtype == torch.float64 else torch.float32
