"""The "chunked" backend (old name "reference"): pure PyTorch in row blocks, on any device.

Memory-light (O(N * block) extra, no N x N matrix), with the analytic gradients computed in the same call, so no
graph over the pairs is kept. The fallback where no kernel runs, and a second implementation of the kernels'
numerics (centering, scores relative to each block's closest pair, float64 sums) in plain torch.
"""

from __future__ import annotations

import math

import torch

from .._common import (
    log_num_pairs,
    poison_nonfinite,
    power_of_two_scale,
    row_weights,
    sampled_center,
    split_align_gradient,
)
from .._validation import compute_dtype

# Scores held at once: block_rows * columns elements (64 MB in float32).
_BLOCK_ELEMENTS = 1 << 24


def _row_blocks(n: int, columns: int, elements: int = _BLOCK_ELEMENTS):
    block = max(1, min(n, elements // max(columns, 1)))
    for start in range(0, n, block):
        yield start, min(n, start + block)


def centered_and_scaled(
    x: torch.Tensor, queue: torch.Tensor | None, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """x' = (x - c) 2^-E and the queue likewise, in ``dtype``, with c the center of all their rows
    (``hyperloss._common.sampled_center``) and E an integer (a 0-dim tensor) that brings the largest |x'|
    near 1.

    Distances do not move under a translation, and a power of two scales them exactly; afterwards the Gram form
    ||u||^2 + ||v||^2 - 2 u.v cancels only on the spread of the rows, not on their common offset, and no squared norm
    overflows. Computed in float64 (after a first power-of-two scale, so that centering cannot overflow); detached:
    the backends differentiate analytically.

    Args:
        x: (N, D) rows.
        queue: optional (K, D) rows; c is the center of the rows of x and the queue together.
        dtype: the dtype of the returned rows.

    Returns:
        (x', queue' or None, E): the centered, scaled rows in ``dtype``, and E as a 0-dim float64 tensor.
    """
    rows = x.detach() if queue is None else torch.cat([x.detach(), queue.detach()])
    wide = rows.to(torch.float64)
    first = torch.frexp(wide.abs().amax()).exponent
    wide = torch.ldexp(wide, -first)
    wide = wide - torch.ldexp(sampled_center(x, queue), -first)
    second = torch.frexp(wide.abs().amax()).exponent
    scaled = torch.ldexp(wide, -second).to(dtype)
    exponent = (first + second).to(torch.float64)
    n = x.shape[0]
    return scaled[:n], (None if queue is None else scaled[n:]), exponent


def _excess_arg(sq_dists: torch.Tensor, t_scaled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores relative to the block's largest: (d_min, -t' (d - d_min)), with absent pairs at d = +inf (-inf).

    The exponent is formed from d - d_min, never from t' d (which may be far outside the compute dtype); t' itself
    may round to inf there, and the closest pairs still get exactly 0, absent pairs -inf.
    """
    d_min = sq_dists.amin()
    excess = torch.where(torch.isinf(sq_dists), math.inf, sq_dists - d_min)  # never inf - inf
    arg = torch.where(excess == 0, 0.0, -(t_scaled.to(sq_dists.dtype) * excess))
    return d_min, torch.where(torch.isinf(excess), -math.inf, arg)


def _sum_exp(arg: torch.Tensor) -> torch.Tensor:
    """sum exp(arg) over the finite entries, in float64. Where most terms are near 1 (small t: the loss is near 0)
    it is taken as count + sum expm1(arg), which keeps the digits a plain sum of rounded exps loses."""
    present = torch.isfinite(arg)
    count = present.sum(dtype=torch.float64)
    plain = arg.exp().sum(dtype=torch.float64)
    near_one = count + torch.where(present, arg.expm1(), 0.0).sum(dtype=torch.float64)
    return torch.where(2 * plain < count, plain, near_one)


# Above this many columns float32 Gram products are taken in float64: a float32 dot product of millions of terms
# loses digits the loss needs.
_MAX_FLOAT32_DEPTH = 4096


def _gram(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.dtype == torch.float32 and a.shape[1] > _MAX_FLOAT32_DEPTH:
        return (a.double() @ b.double().T).float()
    return a @ b.T


def _block_sq_dists(x, norms, start, stop, queue, q_norms, intra_batch):
    """Squared distances of rows [start, stop) to x[start:] (+inf where j <= i) and to the queue, Gram form."""
    xb, nb = x[start:stop], norms[start:stop]
    intra = cross = None
    if intra_batch:
        intra = (nb[:, None] + norms[None, start:] - 2 * _gram(xb, x[start:])).clamp_min(0)
        rows = torch.arange(stop - start, device=x.device)[:, None]
        cols = torch.arange(x.shape[0] - start, device=x.device)[None, :]
        intra = intra.masked_fill(cols <= rows, float("inf"))
    if queue is not None:
        cross = (nb[:, None] + q_norms[None, :] - 2 * _gram(xb, queue)).clamp_min(0)
    return intra, cross


def _shift(d_min: torch.Tensor, t_scaled: torch.Tensor) -> torch.Tensor:
    """-t' d_min in float64 (0 at d_min = 0 even where t' is inf)."""
    d_min = d_min.to(torch.float64)
    return torch.where(d_min == 0, 0.0, -(t_scaled * d_min))


def uniform_lse(
    x: torch.Tensor,
    queue: torch.Tensor | None,
    t: torch.Tensor,
    intra_batch: bool,
    grad_x: bool,
    grad_queue: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """lse = log sum over pairs exp(-t ||.||^2) (a 0-dim float64 tensor), and d lse / dx, d lse / d queue (in the
    compute dtype) when asked for. ``t`` is a 0-dim float64 tensor.

    Two sweeps over row blocks of centered, scaled rows x' = (x - c) 2^-E (log-sum-exp, then the weights
    exp(s - lse)); with t' = t 4^E the gradient of pair (i, j) with weight w is -2t' w (x'_i - x'_j) in x'
    coordinates, 2^-E times that in x's.

    Args:
        x: (N, D) features (checked by the caller).
        queue: optional (K, D) features of x's dtype and device.
        t: temperature, a 0-dim float64 tensor.
        intra_batch: include the i < j pairs of x.
        grad_x: also compute d lse / dx.
        grad_queue: also compute d lse / d queue (ignored without a queue).

    Returns:
        (lse, grad_x or None, grad_queue or None): lse a 0-dim float64 tensor, the gradients in the compute dtype
        (float64 for float64 inputs, else float32). NaN where any input element is not finite.
    """
    dtype = compute_dtype(x.dtype)
    xs, qs, exponent = centered_and_scaled(x, queue, dtype)
    exponent = exponent.to(x.device)
    t = t.to(device=x.device, dtype=torch.float64)
    t_scaled = torch.ldexp(t, 2 * exponent)
    norms = xs.pow(2).sum(1, dtype=torch.float64).to(dtype)
    q_norms = None if qs is None else qs.pow(2).sum(1, dtype=torch.float64).to(dtype)
    columns = (x.shape[0] if intra_batch else 0) + (0 if qs is None else qs.shape[0])

    block_lse, block_max = [], []
    for start, stop in _row_blocks(x.shape[0], columns):
        for d in _block_sq_dists(xs, norms, start, stop, qs, q_norms, intra_batch):
            if d is None or not d.numel():
                continue
            d_min, arg = _excess_arg(d, t_scaled)
            block_max.append(torch.where(torch.isinf(d_min), -math.inf, _shift(d_min, t_scaled)))
            block_lse.append(block_max[-1] + _sum_exp(arg).log())
    lse = torch.logsumexp(torch.stack(block_lse), dim=0)
    k = 0 if qs is None else qs.shape[0]
    # log mean exp(s) <= max s: clamp the rounding of the sums to that bound.
    lse = torch.minimum(lse, torch.stack(block_max).amax() + log_num_pairs(x.shape[0], k, intra_batch, x.device))

    gx = torch.zeros_like(xs) if grad_x else None
    gq = torch.zeros_like(qs) if grad_queue and qs is not None else None
    if gx is not None or gq is not None:
        for start, stop in _row_blocks(x.shape[0], columns):
            xb = xs[start:stop]
            intra, cross = _block_sq_dists(xs, norms, start, stop, qs, q_norms, intra_batch)
            for d, other in ((intra, xs[start:]), (cross, qs)):
                if d is None or not d.numel():
                    continue
                d_min, arg = _excess_arg(d, t_scaled)
                w = arg.exp_().mul_((_shift(d_min, t_scaled) - lse).exp().to(dtype))
                other_grad = gq if other is qs else (None if gx is None else gx[start:])
                _add_pair_gradients(w, xb, other, None if gx is None else gx[start:stop], other_grad)
        gx, gq = _finish_gradients(gx, gq, t, exponent, dtype)
    lse, (gx, gq) = poison_nonfinite((x,) if queue is None else (x, queue), lse, (gx, gq))
    return lse, gx, gq


def _add_pair_gradients(w, xb, other, row_grad, other_grad) -> None:
    """The sums of the pair gradients in x' coordinates, without the factor -2t': sum_j w_ij (x'_i - x'_j) into the
    block's rows and sum_i w_ij (x'_j - x'_i) into the other side's, where wanted (None: not)."""
    if row_grad is not None:
        row_grad += w.sum(1)[:, None] * xb - w @ other
    if other_grad is not None:
        other_grad += w.sum(0)[:, None] * other - w.T @ xb


def _finish_gradients(gx, gq, t, exponent, dtype):
    """The factor -2t 2^E last, in float64: it may be beyond float32 where the sums are 0 (identical rows)."""
    coef = -2 * torch.ldexp(t, exponent)
    return (None if g is None else torch.where(g == 0, 0.0, g.double() * coef).to(dtype) for g in (gx, gq))


def _relative_scores(sq_dists: torch.Tensor, t_scaled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(-t' d_min, -t' (d - d_min)) in float64, absent pairs (d = +inf) at -inf: the unweighted scores relative to
    the block's largest, formed from d - d_min as in ``_excess_arg`` but in float64, where log-weights are added."""
    d_min = sq_dists.amin()
    excess = torch.where(torch.isinf(sq_dists), math.inf, sq_dists - d_min).double()
    relative = torch.where(excess == 0, 0.0, -(t_scaled * excess))
    shift = torch.where(torch.isinf(d_min), -math.inf, _shift(d_min, t_scaled))
    return shift, relative


def uniform_lse_weighted(
    x: torch.Tensor,
    queue: torch.Tensor | None,
    t: torch.Tensor,
    intra_batch: bool,
    weights: torch.Tensor | None,
    queue_weights: torch.Tensor | None,
    grad_x: bool,
    grad_queue: bool,
    grad_weights: bool,
    grad_queue_weights: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """lse = log sum over pairs w_u w_v exp(-t ||u - v||^2) and its gradients for x, the queue and the weights.

    The weights are scaled by a power of two c (exact; the largest in [0.5, 1)) and enter as log-weights
    b = log(c w) <= 0: the scores s_uv = -t' d_uv + b_u + b_v, each block's sums taken relative to its largest
    weighted score (never to -t' d_min, whose pair may weigh 0: then every weighted term could underflow), in
    float64. lse = log sum exp(s) - 2 log c. With P_uv = exp(s_uv - lse) the pair shares, the x gradient is the
    unweighted one with P as the pair weights (a zero-weight row gets 0), and d lse / dw_u = r_u / S with
    r_u = sum over u's partners v of w_v exp(-t d_uv): taken as exp(-t' d_uv + b_v - lse'), the row's own
    log-weight left out, so that rows of weight 0 get theirs too.

    Args:
        x, queue, t, intra_batch, grad_x, grad_queue: as for ``uniform_lse``.
        weights: (N,) weights of x's rows, >= 0, on x's device, or None (all 1).
        queue_weights: (K,) weights of the queue's rows, or None (all 1).
        grad_weights, grad_queue_weights: also compute d lse / d weights, d lse / d queue_weights.

    Returns:
        (lse, grad_x, grad_queue, grad_weights, grad_queue_weights): lse a 0-dim float64 tensor, the row
        gradients in the compute dtype, the weight gradients in float64, None where not asked for. NaN where any
        input element (weights included) is not finite.
    """
    dtype = compute_dtype(x.dtype)
    xs, qs, exponent = centered_and_scaled(x, queue, dtype)
    exponent = exponent.to(x.device)
    t = t.to(device=x.device, dtype=torch.float64)
    t_scaled = torch.ldexp(t, 2 * exponent)
    n, k = x.shape[0], 0 if qs is None else qs.shape[0]
    w = row_weights(weights, n, x.device)
    qw = None if qs is None else row_weights(queue_weights, k, x.device)
    scale = power_of_two_scale(w, qw)
    # log w + log scale, not log(w * scale): a weight far below the largest (1e-300 beside 1e300) would underflow.
    bias = w.log() + scale.log()
    q_bias = None if qw is None else qw.log() + scale.log()
    norms = xs.pow(2).sum(1, dtype=torch.float64).to(dtype)
    q_norms = None if qs is None else qs.pow(2).sum(1, dtype=torch.float64).to(dtype)
    columns = (n if intra_batch else 0) + k
    elements = _BLOCK_ELEMENTS // 4  # several float64 blocks of scores at once

    def scores(start, stop):
        """(shift, relative unweighted scores, row log-weights, column log-weights, other rows) of each part."""
        for d, col_bias, other in zip(
            _block_sq_dists(xs, norms, start, stop, qs, q_norms, intra_batch),
            (bias[start:], q_bias),
            (xs[start:], qs),
            strict=True,
        ):
            if d is not None and d.numel():
                yield (*_relative_scores(d, t_scaled), bias[start:stop, None], col_bias[None, :], other)

    block_lse = []
    for start, stop in _row_blocks(n, columns, elements):
        for shift, relative, row_b, col_b, _ in scores(start, stop):
            s = relative + row_b + col_b
            top = s.amax()
            total = (s - torch.where(torch.isinf(top), 0.0, top)).exp().sum()
            block_lse.append(shift + top + total.log())
    lse = torch.logsumexp(torch.stack(block_lse), dim=0)

    gx = torch.zeros_like(xs) if grad_x else None
    gq = torch.zeros_like(qs) if grad_queue and qs is not None else None
    gw = torch.zeros_like(w) if grad_weights else None
    gqw = torch.zeros_like(qw) if grad_queue_weights and qw is not None else None
    if any(g is not None for g in (gx, gq, gw, gqw)):
        log_scale = scale.log()
        for start, stop in _row_blocks(n, columns, elements):
            for shift, relative, row_b, col_b, other in scores(start, stop):
                relative = relative + (shift - lse)
                cross = other is qs
                if gx is not None or gq is not None:
                    share = (relative + row_b + col_b).exp().to(dtype)
                    other_grad = gq if cross else (None if gx is None else gx[start:])
                    _add_pair_gradients(
                        share, xs[start:stop], other, None if gx is None else gx[start:stop], other_grad
                    )
                # d lse/dw of the caller's weights = scale * (that of the scaled ones): log scale inside the exp,
                # which may overflow alone where the product is in range (weights 1e300 and 1e-300 side by side).
                if gw is not None:
                    gw[start:stop] += (relative + col_b + log_scale).exp().sum(1)
                other_w = gqw if cross else (None if gw is None else gw[start:])
                if other_w is not None:
                    other_w += (relative + row_b + log_scale).exp().sum(0)
        gx, gq = _finish_gradients(gx, gq, t, exponent, dtype)
    inputs = (x,) if queue is None else (x, queue)
    inputs += tuple(v for v in (weights, queue_weights) if v is not None)
    lse, grads = poison_nonfinite(inputs, lse - 2 * scale.log(), (gx, gq, gw, gqw))
    return (lse, *grads)


def align(
    x: torch.Tensor, y: torch.Tensor, alpha: torch.Tensor, grad_x: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Alignment loss mean_i d_i^(alpha/2), d_i = ||x_i - y_i||^2, and its gradient alpha/N d_i^(alpha/2-1)(x_i-y_i).
    ``alpha`` is a 0-dim float64 tensor.

    A zero distance has a zero gradient for every alpha (no square root, no 0 * inf).

    Args:
        x, y: (N, D) positive-pair features (checked by the caller).
        alpha: exponent, a 0-dim float64 tensor.
        grad_x: also compute d loss / dx (d loss / dy is its negative).

    Returns:
        (loss, grad_x or None): the 0-dim loss and the (N, D) gradient, in the compute dtype (float64 for float64
        inputs, else float32).
    """
    dtype = compute_dtype(x.dtype)
    alpha = alpha.to(device=x.device, dtype=torch.float64)
    # Float64 differences, in blocks of rows (bounded memory): a float32 square overflows for differences beyond
    # ~1.8e19 and underflows below ~1e-23, where the distance and the gradient are representable; and at alpha < 1
    # the coefficient d^(alpha/2-1) of rows 1e-30 apart (~1e44) overflows float32 while its product with x - y does
    # not.
    n = x.shape[0]
    rows_per_block = max(1, _BLOCK_ELEMENTS // 4 // max(x.shape[1], 1))
    terms = torch.empty(n, dtype=torch.float64, device=x.device)
    grad = torch.empty(x.shape, dtype=dtype, device=x.device) if grad_x else None
    for first in range(0, n, rows_per_block):
        rows = slice(first, min(first + rows_per_block, n))
        diff = x[rows].to(torch.float64) - y[rows].to(torch.float64)
        d2 = diff.pow(2).sum(1)
        terms[rows] = d2.pow(alpha / 2)
        if grad is not None:
            safe = torch.where(d2 > 0, d2, 1.0)
            coef = torch.where(d2 > 0, safe.pow(alpha / 2 - 1) * (alpha / n), 0.0)
            grad[rows] = coef[:, None] * diff
    return terms.mean().to(dtype), grad


class ChunkedBackend:
    """``hyperloss.backends.Backend`` over ``uniform_lse`` and ``align`` above."""

    name = "chunked"
    description = "pure PyTorch in row blocks (no N x N matrix), any device; alias 'reference'"
    devices = ("*",)

    def available(self) -> tuple[bool, str]:
        return True, ""

    def runs_on(self, device_type: str) -> bool:
        return True

    def auto_rank(self, device_type: str) -> int | None:
        return 100  # the fallback: wherever nothing faster runs

    def uniform_lse(self, x, queue, t, intra_batch, grad_x, grad_queue, precision=None):
        # Float32 products follow torch's own matmul setting here; ``precision`` is for the fused kernels.
        return uniform_lse(x, queue, t, intra_batch, grad_x, grad_queue)

    def uniform_lse_weighted(
        self,
        x,
        queue,
        t,
        intra_batch,
        weights,
        queue_weights,
        grad_x,
        grad_queue,
        grad_weights,
        grad_queue_weights,
        precision=None,
    ):
        return uniform_lse_weighted(
            x, queue, t, intra_batch, weights, queue_weights, grad_x, grad_queue, grad_weights, grad_queue_weights
        )

    def align(self, x, y, alpha, grad_x, grad_y=False):
        return split_align_gradient(*align(x, y, alpha, grad_x or grad_y), grad_x, grad_y)


CHUNKED = ChunkedBackend()
