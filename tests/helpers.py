"""Shared test helpers: which backends run here, float64 references, and tolerances per dtype."""

from __future__ import annotations

import math
import os

import torch

import hyperloss
from hyperloss import reference

# Backends that run on CPU tensors in this process. The Triton kernels have their own module (test_triton.py),
# run under TRITON_INTERPRET=1.
CPU_BACKENDS = [b.name for b in hyperloss.backends() if b.available and b.name in ("cpu", "reference")]

EPS = {torch.float64: torch.finfo(torch.float64).eps, torch.float32: torch.finfo(torch.float32).eps}


def native_extension_expected() -> bool:
    return os.environ.get("HYPERLOSS_NO_EXTENSION", "0") != "1"


def features(n: int, d: int, *, seed: int, dtype=torch.float64, scale: float = 1.0, normalize: bool = True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    if normalize:
        x = torch.nn.functional.normalize(x, dim=1)
    return (x * scale).to(dtype)


def uniform_reference(x, t, queue=None, intra_batch=True):
    """Value and gradients in float64, distances by direct differences: the paper's formula where it keeps its
    precision, else the stable log-sum-exp (the paper's code returns -inf, or loses digits to subnormal numbers,
    below exp(-708))."""
    x64 = x.detach().double().requires_grad_()
    q64 = None if queue is None else queue.detach().double().requires_grad_()
    if q64 is None:
        value = reference.paper_uniform_loss(x64, t)
    else:
        value = reference.paper_uniform_loss_with_queue(x64, q64, t, intra_batch)
    # Below log(smallest normal) the paper's exp terms are subnormal (or 0): few or no significant digits left.
    if not value > math.log(torch.finfo(torch.float64).tiny) + 1:
        value = reference.dense_uniform_loss(x64, t, queue=q64, intra_batch=intra_batch)
    inputs = [x64] if q64 is None else [x64, q64]
    grads = torch.autograd.grad(value, inputs)
    return value.detach(), grads


def _all_rows(*tensors: torch.Tensor) -> torch.Tensor:
    return torch.cat([v.detach().double().reshape(-1, v.shape[-1]) for v in tensors])


def max_centered_sq_norm(*tensors: torch.Tensor) -> float:
    """max ||v - c||^2 over the rows of every tensor, c their mean: the scale of the squared distances that the
    backends' Gram form works on after centering (the loss is translation invariant)."""
    rows = _all_rows(*tensors)
    return float((rows - rows.mean(0)).pow(2).sum(1).max())


def score_error_budget(dtype, t: float, *tensors: torch.Tensor) -> float:
    """Absolute error of a score -t ||u - v||^2 computed through the Gram matrix of centered rows in ``dtype``: it
    scales with t * the largest centered squared norm (cancellation in n_u + n_v - 2 u.v), not with the score."""
    return 64 * EPS[dtype] * t * max_centered_sq_norm(*tensors)


def uniform_grad_scale(x, t: float, queue=None, intra_batch: bool = True) -> float:
    """The size of the largest term in any gradient entry, 2t * max_i (sum_j w_ij) * max |x_i - x_j|, with w the
    pair weights exp(s - lse) (float64, direct differences).

    A gradient entry is a sum of such terms; where they cancel (a row whose nearest neighbours are its duplicates)
    the entry is far smaller than its terms, and its rounding error is still measured against them.
    """
    x64 = x.detach().double()
    rows = [x64] if queue is None else [x64, queue.detach().double()]
    scores = []
    if intra_batch:
        n = x64.shape[0]
        mask = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
        intra = reference.direct_sq_dists(x64, x64).mul(-t).masked_fill(~mask, -math.inf)
        scores.append(intra)
    if queue is not None:
        scores.append(reference.direct_sq_dists(x64, rows[1]).mul(-t))
    lse = torch.logsumexp(torch.cat([s.flatten() for s in scores]), dim=0)
    mass = torch.zeros(sum(r.shape[0] for r in rows), dtype=torch.float64)
    n = x64.shape[0]
    if intra_batch:
        w = (scores[0] - lse).exp()
        mass[:n] += w.sum(1) + w.sum(0)
    if queue is not None:
        w = (scores[-1] - lse).exp()
        mass[:n] += w.sum(1)
        mass[n:] += w.sum(0)
    all_rows = torch.cat(rows)
    spread = float((all_rows.amax(0) - all_rows.amin(0)).max())
    return 2 * t * float(mass.max()) * spread


def assert_close_scaled(got: torch.Tensor, want: torch.Tensor, rel: float, what: str, floor: float = 1e-3) -> None:
    """max |got - want| <= rel * max(max |want|, floor): gradients compared on the scale of their largest entry, or
    of ``floor`` (an all-zero gradient is compared in absolute terms; see ``uniform_grad_scale`` for a floor with
    meaning)."""
    got, want = got.detach().double(), want.detach().double()
    scale = max(float(want.abs().max()), floor)
    err = float((got - want).abs().max())
    assert err <= rel * scale, f"{what}: max error {err:.3g} > {rel:.3g} * {scale:.3g}"
