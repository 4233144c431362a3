"""Thin ``nn.Module`` wrappers over ``hyperloss.functional``."""

from __future__ import annotations

import torch
from torch import nn

from . import functional as F
from ._contract import check_bool
from ._precision import check_precision
from ._validation import check_positive, check_weight
from .backends import check_name as check_backend_name


class AlignLoss(nn.Module):
    """``align_loss(x, y, alpha)`` as a module.

    Args:
        alpha: exponent > 0 (the paper uses 2); checked here, at construction.
        backend: "auto" (HYPERLOSS_BACKEND overrides it) or one of ``hyperloss.backends()``; whether it runs on the
            inputs' device is checked per call.
    """

    def __init__(self, alpha: float = 2.0, *, backend: str = "auto") -> None:
        super().__init__()
        self.alpha = float(check_positive("alpha", alpha))
        self.backend = check_backend_name(backend)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The alignment loss of the positive pairs (x_i, y_i).

        Args:
            x, y: features, shape (N, D), same dtype and device (see ``hyperloss.align_loss``).

        Returns:
            A 0-dim tensor: float64 for float64 inputs, float32 otherwise.
        """
        return F.align_loss(x, y, self.alpha, backend=self.backend)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, backend={self.backend!r}"


class UniformLoss(nn.Module):
    """``uniform_loss(x, t, queue=..., intra_batch=...)`` as a module.

    Args:
        t: temperature > 0 (the paper uses 2); checked here, at construction.
        intra_batch: include the pairs x_i, x_j with i < j. False needs a queue in every call (without one it
            leaves no pairs: ValueError).
        backend: "auto" (HYPERLOSS_BACKEND overrides it) or one of ``hyperloss.backends()``; whether it runs on the
            inputs' device is checked per call.
        precision: products of float32 inputs in the GPU kernels (see ``hyperloss.uniform_loss``).
    """

    def __init__(
        self, t: float = 2.0, *, intra_batch: bool = True, backend: str = "auto", precision: str | None = None
    ) -> None:
        super().__init__()
        self.t = float(check_positive("t", t))
        self.intra_batch = check_bool("intra_batch", intra_batch)
        self.backend = check_backend_name(backend)
        self.precision = check_precision(precision)

    def forward(self, x: torch.Tensor, queue: torch.Tensor | None = None) -> torch.Tensor:
        """The uniformity loss of x's rows (and of their pairs with the queue, if any).

        Args:
            x: features, shape (N, D) (see ``hyperloss.uniform_loss``).
            queue: optional (K, D) features of x's dtype and device, e.g. a MoCo memory bank: adds every
                (x_i, queue_k) pair.

        Returns:
            A 0-dim tensor: float64 for float64 inputs, float32 otherwise.
        """
        return F.uniform_loss(
            x, self.t, queue=queue, intra_batch=self.intra_batch, backend=self.backend, precision=self.precision
        )

    def extra_repr(self) -> str:
        return f"t={self.t}, intra_batch={self.intra_batch}, backend={self.backend!r}, precision={self.precision!r}"


class AlignUniformLoss(nn.Module):
    """The paper's recipe: ``align_weight * align(x, y) + uniform_weight * (uniform(x) + uniform(y)) / 2``.

    Args:
        align_weight: weight of the alignment term: any finite number (0 switches the term off).
        uniform_weight: weight of the uniformity term: any finite number (0 switches the term off).
        alpha: exponent of the alignment loss, > 0 (the paper uses 2).
        t: temperature of the uniformity loss, > 0 (the paper uses 2).
        backend: "auto" (HYPERLOSS_BACKEND overrides it) or one of ``hyperloss.backends()``, for all three losses.
        precision: products of float32 inputs in the GPU kernels (see ``hyperloss.uniform_loss``).

    Every argument is checked here, at construction.
    """

    def __init__(
        self,
        align_weight: float = 1.0,
        uniform_weight: float = 1.0,
        alpha: float = 2.0,
        t: float = 2.0,
        *,
        backend: str = "auto",
        precision: str | None = None,
    ) -> None:
        super().__init__()
        self.align_weight = float(check_weight("align_weight", align_weight))
        self.uniform_weight = float(check_weight("uniform_weight", uniform_weight))
        self.alpha = float(check_positive("alpha", alpha))
        self.t = float(check_positive("t", t))
        self.backend = check_backend_name(backend)
        self.precision = check_precision(precision)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The weighted sum of the alignment of (x_i, y_i) and the mean uniformity of x and of y.

        Args:
            x, y: features of two views of the same N inputs, shape (N, D), same dtype and device; usually
                L2-normalized.

        Returns:
            A 0-dim tensor: float64 for float64 inputs, float32 otherwise.
        """
        align = F.align_loss(x, y, self.alpha, backend=self.backend)
        options = {"backend": self.backend, "precision": self.precision}
        uniform = (F.uniform_loss(x, self.t, **options) + F.uniform_loss(y, self.t, **options)) / 2
        return self.align_weight * align + self.uniform_weight * uniform

    def extra_repr(self) -> str:
        return (
            f"align_weight={self.align_weight}, uniform_weight={self.uniform_weight}, alpha={self.alpha}, "
            f"t={self.t}, backend={self.backend!r}, precision={self.precision!r}"
        )
