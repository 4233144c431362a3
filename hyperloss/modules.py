"""Thin ``nn.Module`` wrappers over ``hyperloss.functional``."""

from __future__ import annotations

import torch
from torch import nn

from . import functional as F
from ._dispatch import check_backend_name
from ._validation import check_bool, check_positive, check_weight


class AlignLoss(nn.Module):
    """``align_loss(x, y, alpha)`` as a module."""

    def __init__(self, alpha: float = 2.0, *, backend: str = "auto") -> None:
        super().__init__()
        self.alpha = float(check_positive("alpha", alpha))
        self.backend = check_backend_name(backend)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.align_loss(x, y, self.alpha, backend=self.backend)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, backend={self.backend!r}"


class UniformLoss(nn.Module):
    """``uniform_loss(x, t, queue=..., intra_batch=...)`` as a module."""

    def __init__(self, t: float = 2.0, *, intra_batch: bool = True, backend: str = "auto") -> None:
        super().__init__()
        self.t = float(check_positive("t", t))
        self.intra_batch = check_bool("intra_batch", intra_batch)
        self.backend = check_backend_name(backend)

    def forward(self, x: torch.Tensor, queue: torch.Tensor | None = None) -> torch.Tensor:
        return F.uniform_loss(x, self.t, queue=queue, intra_batch=self.intra_batch, backend=self.backend)

    def extra_repr(self) -> str:
        return f"t={self.t}, intra_batch={self.intra_batch}, backend={self.backend!r}"


class AlignUniformLoss(nn.Module):
    """The paper's recipe: ``align_weight * align(x, y) + uniform_weight * (uniform(x) + uniform(y)) / 2``."""

    def __init__(
        self,
        align_weight: float = 1.0,
        uniform_weight: float = 1.0,
        alpha: float = 2.0,
        t: float = 2.0,
        *,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.align_weight = float(check_weight("align_weight", align_weight))
        self.uniform_weight = float(check_weight("uniform_weight", uniform_weight))
        self.alpha = float(check_positive("alpha", alpha))
        self.t = float(check_positive("t", t))
        self.backend = check_backend_name(backend)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        align = F.align_loss(x, y, self.alpha, backend=self.backend)
        uniform = (
            F.uniform_loss(x, self.t, backend=self.backend) + F.uniform_loss(y, self.t, backend=self.backend)
        ) / 2
        return self.align_weight * align + self.uniform_weight * uniform

    def extra_repr(self) -> str:
        return (
            f"align_weight={self.align_weight}, uniform_weight={self.uniform_weight}, alpha={self.alpha}, "
            f"t={self.t}, backend={self.backend!r}"
        )
