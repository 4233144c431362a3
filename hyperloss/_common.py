"""Small pieces of math shared by the backends and the autograd glue."""

from __future__ import annotations

import math

import torch


def num_pairs(n: int, k: int, intra_batch: bool) -> int:
    """|P|: the i<j pairs within n rows (when ``intra_batch``) plus the n*k cross pairs with a k-row queue."""
    return (n * (n - 1) // 2 if intra_batch else 0) + n * k


def log_num_pairs(n: int, k: int, intra_batch: bool) -> float:
    return math.log(num_pairs(n, k, intra_batch))


def poison_nonfinite(
    inputs: tuple[torch.Tensor, ...], lse: torch.Tensor, grads: tuple[torch.Tensor | None, ...]
) -> tuple[torch.Tensor, tuple[torch.Tensor | None, ...]]:
    """Makes the result NaN when any input element is NaN or Inf, as the native kernels do, without a host sync.

    An infinite coordinate can make some pair distances infinite and others NaN, so the plain formula may return a
    finite value, -inf or NaN depending on the data; one rule (NaN) is easier to rely on.
    """
    finite = torch.stack([torch.isfinite(t).all() for t in inputs]).all()
    nan = lse.new_full((), float("nan"))
    lse = torch.where(finite, lse, nan)
    grads = tuple(None if g is None else torch.where(finite, g, nan) for g in grads)
    return lse, grads
