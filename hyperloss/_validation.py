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


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 is computed in float64; every other float dtype in float32 (also the result's dtype)."""
    return torch.float64 if dtype == torch.float64 else torch.float32
