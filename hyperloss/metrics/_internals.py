"""The one place where ``hyperloss.metrics`` reaches into the rest of hyperloss.

The backend registry and the argument checks are being reorganized; everything this package needs from them is
imported or wrapped here, so that a move changes this file only.
"""

from __future__ import annotations

from typing import Protocol

import torch

from hyperloss import _dispatch
from hyperloss._validation import SUPPORTED_DTYPES, check_bool, check_positive, compute_dtype
from hyperloss.reference import centered_and_scaled

__all__ = [
    "SUPPORTED_DTYPES",
    "Backend",
    "backend",
    "centered_and_scaled",
    "check_bool",
    "check_positive",
    "compute_dtype",
]


class Backend(Protocol):
    """The two primitives every backend provides (contract: ``hyperloss.reference.uniform_lse`` and ``align``)."""

    def uniform_lse(
        self,
        x: torch.Tensor,
        queue: torch.Tensor | None,
        t: torch.Tensor,
        intra_batch: bool,
        grad_x: bool,
        grad_queue: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]: ...

    def align(
        self, x: torch.Tensor, y: torch.Tensor, alpha: torch.Tensor, grad_x: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]: ...


def backend(name: str, device: torch.device) -> Backend:
    """The backend ``name`` ("auto" or a backend's name) for tensors on ``device``; HYPERLOSS_BACKEND overrides
    "auto" as it does for the losses. Raises ValueError for an unknown or unavailable backend."""
    # After the backend-registry refactor: hyperloss.backends.get(hyperloss.backends.resolve(name, device))
    return _dispatch.LOADED[_dispatch.resolve(name, device)]
