"""Thin ``nn.Module`` wrappers over ``hyperloss.functional``, with a trainable temperature where asked for."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from . import functional as F
from ._common import normalized_rows
from ._contract import check_bool
from ._precision import check_precision
from ._validation import check_positive, check_weight
from .backends import check_name as check_backend_name


class AlignLoss(nn.Module):
    """``align_loss(x, y, alpha)`` as a module.

    Args:
        alpha: exponent > 0 (the paper uses 2); checked here, at construction.
        normalize: L2-normalize the rows of x and y first.
        backend: "auto" (HYPERLOSS_BACKEND overrides it) or one of ``hyperloss.backends()``; whether it runs on the
            inputs' device is checked per call.
    """

    def __init__(self, alpha: float = 2.0, *, normalize: bool = False, backend: str = "auto") -> None:
        super().__init__()
        self.alpha = float(check_positive("alpha", alpha))
        self.normalize = check_bool("normalize", normalize)
        self.backend = check_backend_name(backend)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The alignment loss of the positive pairs (x_i, y_i).

        Args:
            x, y: features, shape (N, D), same dtype and device (see ``hyperloss.align_loss``).

        Returns:
            A 0-dim tensor: float64 for float64 inputs, float32 otherwise.
        """
        return F.align_loss(x, y, self.alpha, normalize=self.normalize, backend=self.backend)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, normalize={self.normalize}, backend={self.backend!r}"


class _Temperature(nn.Module):
    """t as a number, or as exp(log_t) with log_t a parameter (trainable and always > 0)."""

    def __init__(self, t: float, trainable: bool) -> None:
        super().__init__()
        t = float(check_positive("t", t))
        if check_bool("trainable_t", trainable):
            self.log_t = nn.Parameter(torch.tensor(math.log(t), dtype=torch.float64))
        else:
            self.fixed = t

    def forward(self) -> float | torch.Tensor:
        return self.log_t.exp() if hasattr(self, "log_t") else self.fixed

    @property
    def value(self) -> float:
        """t now, as a number."""
        return float(self.log_t.detach().exp()) if hasattr(self, "log_t") else self.fixed

    def extra_repr(self) -> str:
        return f"t={self.value}" + (", trainable" * hasattr(self, "log_t"))


class UniformLoss(nn.Module):
    """``uniform_loss(x, t, queue=..., intra_batch=...)`` as a module.

    Args:
        t: temperature > 0 (the paper uses 2); checked here, at construction.
        trainable_t: learn t: it becomes ``exp(log_t)`` with ``log_t`` a parameter of this module (so it stays > 0),
            starting at ``t``; its gradient comes from the same kernel call as the others.
        intra_batch: include the pairs x_i, x_j with i < j. False needs a queue in every call (without one it
            leaves no pairs: ValueError).
        normalize: L2-normalize the rows of x (and of the queue) first.
        backend: "auto" (HYPERLOSS_BACKEND overrides it) or one of ``hyperloss.backends()``; whether it runs on the
            inputs' device is checked per call.
        precision: products of float32 inputs in the GPU kernels (see ``hyperloss.uniform_loss``).
    """

    def __init__(
        self,
        t: float = 2.0,
        *,
        trainable_t: bool = False,
        intra_batch: bool = True,
        normalize: bool = False,
        backend: str = "auto",
        precision: str | None = None,
    ) -> None:
        super().__init__()
        self.temperature = _Temperature(t, trainable_t)
        self.intra_batch = check_bool("intra_batch", intra_batch)
        self.normalize = check_bool("normalize", normalize)
        self.backend = check_backend_name(backend)
        self.precision = check_precision(precision)

    @property
    def t(self) -> float:
        """The temperature's current value."""
        return self.temperature.value

    def forward(
        self,
        x: torch.Tensor,
        queue: torch.Tensor | None = None,
        *,
        weights: torch.Tensor | None = None,
        queue_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The uniformity loss of x's rows (and of their pairs with the queue, if any).

        Args:
            x: features, shape (N, D) (see ``hyperloss.uniform_loss``).
            queue: optional (K, D) features of x's dtype and device, e.g. a MoCo memory bank: adds every
                (x_i, queue_k) pair.
            weights, queue_weights: optional per-row weights, (N,) and (K,): the weighted mean over the pairs (see
                ``hyperloss.uniform_loss``).

        Returns:
            A 0-dim tensor: float64 for float64 inputs, float32 otherwise.
        """
        return F.uniform_loss(
            x,
            self.temperature(),
            queue=queue,
            weights=weights,
            queue_weights=queue_weights,
            intra_batch=self.intra_batch,
            normalize=self.normalize,
            backend=self.backend,
            precision=self.precision,
        )

    def extra_repr(self) -> str:
        return (
            f"intra_batch={self.intra_batch}, normalize={self.normalize}, backend={self.backend!r}, "
            f"precision={self.precision!r}"
        )


class AlignUniformParts(NamedTuple):
    """What ``AlignUniformLoss(return_parts=True)`` returns (for logging:
    ``{k: v.item() for k, v in parts._asdict().items()}``).

    Attributes:
        loss: the weighted sum to minimize.
        align: the alignment term, unweighted.
        uniform: the mean uniformity of x and y, unweighted.
    """

    loss: torch.Tensor
    align: torch.Tensor
    uniform: torch.Tensor


class AlignUniformLoss(nn.Module):
    """The paper's recipe: ``align_weight * align(x, y) + uniform_weight * (uniform(x) + uniform(y)) / 2``.

    Args:
        align_weight: weight of the alignment term: any finite number (0 switches the term off).
        uniform_weight: weight of the uniformity term: any finite number (0 switches the term off).
        alpha: exponent of the alignment loss, > 0 (the paper uses 2).
        t: temperature of the uniformity loss, > 0 (the paper uses 2).
        trainable_t: learn t (see ``UniformLoss``).
        normalize: L2-normalize the rows of x and y first, as lightly's ``HypersphereLoss`` does.
        return_parts: return ``AlignUniformParts(loss, align, uniform)`` instead of the loss alone.
        backend: "auto" (HYPERLOSS_BACKEND overrides it) or one of ``hyperloss.backends()``, for all three losses.
        precision: products of float32 inputs in the GPU kernels (see ``hyperloss.uniform_loss``).

    Every argument is checked here, at construction. lightly's ``HypersphereLoss(t, lam, alpha)`` is
    ``AlignUniformLoss(1, lam, alpha, t, normalize=True)`` (its default t is 1; the paper's and ours is 2).
    """

    def __init__(
        self,
        align_weight: float = 1.0,
        uniform_weight: float = 1.0,
        alpha: float = 2.0,
        t: float = 2.0,
        *,
        trainable_t: bool = False,
        normalize: bool = False,
        return_parts: bool = False,
        backend: str = "auto",
        precision: str | None = None,
    ) -> None:
        super().__init__()
        self.align_weight = float(check_weight("align_weight", align_weight))
        self.uniform_weight = float(check_weight("uniform_weight", uniform_weight))
        self.alpha = float(check_positive("alpha", alpha))
        self.temperature = _Temperature(t, trainable_t)
        self.normalize = check_bool("normalize", normalize)
        self.return_parts = check_bool("return_parts", return_parts)
        self.backend = check_backend_name(backend)
        self.precision = check_precision(precision)

    @property
    def t(self) -> float:
        """The temperature's current value."""
        return self.temperature.value

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | AlignUniformParts:
        """The weighted sum of the alignment of (x_i, y_i) and the mean uniformity of x and of y.

        Args:
            x, y: features of two views of the same N inputs, shape (N, D), same dtype and device; usually
                L2-normalized (or pass ``normalize=True``).

        Returns:
            A 0-dim tensor (float64 for float64 inputs, float32 otherwise), or with ``return_parts`` the
            ``AlignUniformParts`` (loss, align, uniform).
        """
        if self.normalize:  # once here, not once per term
            x, y = normalized_rows(x, y)
        align = F.align_loss(x, y, self.alpha, backend=self.backend)
        t, options = self.temperature(), {"backend": self.backend, "precision": self.precision}
        uniform = (F.uniform_loss(x, t, **options) + F.uniform_loss(y, t, **options)) / 2
        loss = self.align_weight * align + self.uniform_weight * uniform
        return AlignUniformParts(loss, align, uniform) if self.return_parts else loss

    def extra_repr(self) -> str:
        return (
            f"align_weight={self.align_weight}, uniform_weight={self.uniform_weight}, alpha={self.alpha}, "
            f"normalize={self.normalize}, return_parts={self.return_parts}, backend={self.backend!r}, "
            f"precision={self.precision!r}"
        )
