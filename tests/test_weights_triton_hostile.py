"""Weighted uniformity where the Triton kernels' near-zero path (the deficits, log2(C + u)) is easy to get wrong:
a row's partner weight C far below its own weight (C must not be a difference of sums), and a column set whose
weights, scaled by the largest weight of both sets, fall below the compute dtype's normal range. On every backend
with weights, against float64 definitions."""

from __future__ import annotations

import math

import pytest
import torch

import hyperloss
from tests.helpers import DEVICE, features
from tests.test_weights import WEIGHT_BACKENDS, check_weighted


@pytest.fixture(params=WEIGHT_BACKENDS)
def weighted_backend(request) -> str:
    return request.param


def _weights(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, device=DEVICE)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("wanted", [(), ("x", "weights")])
@pytest.mark.parametrize("small", [3e-16, 1e-12])
def test_partners_far_lighter_than_the_row(weighted_backend, dtype, wanted, small):
    """Row 0 weighs 1, its partners ~1e-16 of it: sum - w_0 (or sum - cumsum) in float64 keeps no digit of their
    weight, and a small t takes the near-zero path, where that weight is the loss's scale."""
    x = features(3, 4, seed=5, dtype=dtype)
    check_weighted(weighted_backend, x, 1e-3, weights=_weights(1.0, small, 1.3 * small), wanted=wanted)


def _log_domain_loss(x, queue, t, weights, queue_weights) -> torch.Tensor:
    """log(S / W) over the x-queue pairs only, from log-weights (no product of two weights is formed, so none
    leaves float64's normal range), distances by direct differences; differentiable in x and the queue."""
    lw, lq = weights.log(), queue_weights.log()
    d = (x[:, None, :] - queue[None, :, :]).pow(2).sum(-1)
    log_s = torch.logsumexp((lw[:, None] + lq[None, :] - t * d).flatten(), 0)
    log_w = torch.logsumexp(lw, 0) + torch.logsumexp(lq, 0)
    return log_s - log_w


@pytest.mark.parametrize("t", [1e-6, 2.0])
def test_queue_weights_beyond_float64_normal_range_of_the_largest(weighted_backend, t):
    """Queue weights 1e-320 of x's (each in range, the loss invariant to their scale): a column value s w_j that is
    subnormal keeps few digits, so the deficits' path must not be taken from it."""
    x = features(4, 6, seed=1, dtype=torch.float64).requires_grad_()
    queue = features(3, 6, seed=2, dtype=torch.float64).requires_grad_()
    weights, queue_weights = _weights(1e300, 2e300, 1.5e300, 1e300), _weights(1.3e-20, 2.9e-20, 0.7e-20)
    got = hyperloss.uniform_loss(
        x, t, queue=queue, intra_batch=False, weights=weights, queue_weights=queue_weights, backend=weighted_backend
    )
    x64, q64 = (v.detach().cpu().requires_grad_() for v in (x, queue))
    want = _log_domain_loss(x64, q64, t, weights.cpu(), queue_weights.cpu())
    assert abs(float(got) - float(want)) <= 1e-10 * (1 + abs(float(want)))
    got_grads = torch.autograd.grad(got, [x, queue])
    for g, w in zip(got_grads, torch.autograd.grad(want, [x64, q64]), strict=True):
        assert float((g.cpu() - w).abs().max()) <= 1e-8 * float(w.abs().max()) + 1e-300
    assert math.isfinite(float(got))
