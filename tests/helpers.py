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
    """Value and gradients in float64: the paper's formula where it keeps its precision, else the stable
    log-sum-exp (the paper's code returns -inf, or loses digits to subnormal numbers, below exp(-708))."""
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


def score_error_budget(dtype, t: float, *tensors: torch.Tensor) -> float:
    """Absolute error of a score -t ||u - v||^2 computed through the Gram matrix in ``dtype``: it scales with
    t * the largest squared norm (cancellation in n_u + n_v - 2 u.v), not with the score itself."""
    max_sq_norm = max(float(x.detach().double().pow(2).sum(1).max()) for x in tensors)
    return 64 * EPS[dtype] * t * max(max_sq_norm, 1.0)


def assert_close_scaled(got: torch.Tensor, want: torch.Tensor, rel: float, what: str) -> None:
    """max |got - want| <= rel * max(max |want|, 1e-3): gradients compared on the scale of their largest entry."""
    got, want = got.detach().double(), want.detach().double()
    scale = max(float(want.abs().max()), 1e-3)  # an all-zero gradient is compared in absolute terms
    err = float((got - want).abs().max())
    assert err <= rel * scale, f"{what}: max error {err:.3g} > {rel:.3g} * {scale:.3g}"
