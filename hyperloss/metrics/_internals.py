"""The one place where ``hyperloss.metrics`` reaches into the rest of hyperloss (the backend registry, the
argument checks, the centering of the rows), so that a move there changes this file only."""

from __future__ import annotations

import torch

from hyperloss import backends
from hyperloss._contract import check_bool
from hyperloss._validation import SUPPORTED_DTYPES, check_positive, compute_dtype
from hyperloss.backends import Backend
from hyperloss.backends.chunked import centered_and_scaled

__all__ = [
    "SUPPORTED_DTYPES",
    "Backend",
    "backend",
    "centered_and_scaled",
    "check_bool",
    "check_positive",
    "compute_dtype",
]


def backend(name: str, device: torch.device) -> Backend:
    """The backend ``name`` ("auto" or a backend's name) for tensors on ``device``; HYPERLOSS_BACKEND overrides
    "auto" as it does for the losses. Raises ValueError for an unknown or unavailable backend."""
    return backends.get(backends.resolve(name, device))
