"""Pure-PyTorch definitions of every op: the paper's code and the float64 math definition the tests use.

- ``paper_align_loss`` / ``paper_uniform_loss``: the paper's two functions exactly as its code writes them
  (Wang & Isola 2020), plus ``paper_uniform_loss_with_queue`` in the same style for the queue form. They
  materialize every pair and return -inf when every exp underflows.
- ``dense_align_loss`` / ``dense_uniform_loss``: numerically stable dense versions (a log-sum-exp over the pair
  scores, autograd through torch). In float64 they are the one math definition every backend is tested against.
The pure-PyTorch backend that runs on any device is ``hyperloss.backends.chunked`` (named "chunked"; "reference"
is its old name); its primitives ``uniform_lse`` and ``align`` stay importable from here too.
"""

from __future__ import annotations

import torch

from ._common import log_num_pairs

# ----------------------------------------------------------------------------------------------------------------
# The paper's code


def paper_align_loss(x: torch.Tensor, y: torch.Tensor, alpha: float = 2) -> torch.Tensor:
    """The paper's alignment loss: ``(x - y).norm(p=2, dim=1).pow(alpha).mean()``.

    Args:
        x, y: positive-pair features, shape (N, D).
        alpha: exponent.

    Returns:
        A 0-dim tensor of x's dtype; autograd through torch (NaN gradients for equal rows when alpha < 1).
    """
    return (x - y).norm(p=2, dim=1).pow(alpha).mean()


def paper_uniform_loss(x: torch.Tensor, t: float = 2) -> torch.Tensor:
    """The paper's uniformity loss: ``torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log()``.

    Args:
        x: features, shape (N, D), N >= 2.
        t: temperature.

    Returns:
        A 0-dim tensor of x's dtype; -inf where every exp underflows. Materializes the N (N - 1) / 2 distances.
    """
    return torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log()


def paper_uniform_loss_with_queue(
    x: torch.Tensor, queue: torch.Tensor, t: float = 2, intra_batch: bool = True
) -> torch.Tensor:
    """The queue form in the paper's style: every (x_i, q_k) distance, plus the i<j ones when ``intra_batch``.
    Distances by direct differences, as pdist takes them (cdist's default switches to the Gram form).

    Args:
        x: features, shape (N, D).
        queue: (K, D) features of x's dtype and device.
        t: temperature.
        intra_batch: include the i < j pairs of x.

    Returns:
        A 0-dim tensor of x's dtype; -inf where every exp underflows. Materializes every distance.
    """
    sq_dists = torch.cdist(x, queue, p=2, compute_mode="donot_use_mm_for_euclid_dist").pow(2).flatten()
    if intra_batch:
        sq_dists = torch.cat([torch.pdist(x, p=2).pow(2), sq_dists])
    return sq_dists.mul(-t).exp().mean().log()


# ----------------------------------------------------------------------------------------------------------------
# Stable dense versions: the math definition


def dense_align_loss(x: torch.Tensor, y: torch.Tensor, alpha: float = 2) -> torch.Tensor:
    """mean_i (||x_i - y_i||^2)^(alpha/2), with no square root (finite gradients for equal rows when alpha >= 2).

    Args:
        x, y: positive-pair features, shape (N, D).
        alpha: exponent.

    Returns:
        A 0-dim tensor of x's dtype; autograd through torch (also to higher orders).
    """
    return (x - y).pow(2).sum(dim=1).pow(alpha / 2).mean()


def direct_sq_dists(a: torch.Tensor, b: torch.Tensor, rows_per_block: int = 64) -> torch.Tensor:
    """||a_i - b_j||^2 by direct differences (never through the Gram matrix, which cancels when the rows share a
    large common component), in row blocks so that no N x N x D tensor exists at once; differentiable.

    Args:
        a: (N, D) rows.
        b: (M, D) rows of a's dtype and device.
        rows_per_block: rows of ``a`` per block (memory: rows_per_block x M x D elements at once).

    Returns:
        The (N, M) squared distances, in a's dtype.
    """
    blocks = [
        (a[start : start + rows_per_block, None, :] - b[None, :, :]).pow(2).sum(-1)
        for start in range(0, a.shape[0], rows_per_block)
    ]
    return torch.cat(blocks) if blocks else a.new_zeros((0, b.shape[0]))


def dense_uniform_loss(
    x: torch.Tensor,
    t: float = 2,
    *,
    queue: torch.Tensor | None = None,
    intra_batch: bool = True,
    weights: torch.Tensor | None = None,
    queue_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """log mean over the pair set of exp(-t ||.||^2), as a log-sum-exp over distances taken by direct differences:
    finite where the paper's code gives -inf, and exact for rows with a large common offset.

    With per-row weights, the weighted mean: log( sum_pairs w_u w_v exp(-t d_uv) / sum_pairs w_u w_v ), taken per
    kind of pair (x-x, x-queue) as m + log sum_pairs w_u w_v exp(-t d_uv - m) with m the largest score of a pair of
    positive weight, each set's weights scaled by its largest (no log of a weight: autograd gives finite weight
    gradients where a weight is 0, as long as no pair of weight 0 scores more than ~700 above m, beyond which exp
    overflows to inf and the value becomes NaN).

    Materializes the N x N (and N x K) scores: for small inputs and tests only.

    Args:
        x: features, shape (N, D).
        t: temperature.
        queue: optional (K, D) features of x's dtype and device: adds every (x_i, queue_k) pair.
        intra_batch: include the i < j pairs of x (at least one of these and the queue must give pairs).
        weights: optional (N,) weights of x's rows (>= 0; None: all 1).
        queue_weights: optional (K,) weights of the queue's rows (None: all 1).

    Returns:
        A 0-dim tensor of x's dtype; autograd through torch (also to higher orders). In float64 it is the
        definition every backend is tested against.
    """
    w = x.new_ones(x.shape[0]) if weights is None else weights.to(x.dtype)
    qw = None if queue is None else queue.new_ones(queue.shape[0])
    if queue is not None and queue_weights is not None:
        qw = queue_weights.to(x.dtype)
    # Each set's weights scaled by its own largest (the x-x and x-queue pairs then carry log factors 2 log L_x and
    # log L_x + log L_q back): no product of two weights overflows or leaves the normal range, even for sets 1e300
    # apart.
    groups = []  # (scores, pair weights, log of the factor taken out)
    largest = [None if v is None else v.detach().amax() for v in (w, qw)]
    largest = [None if v is None else torch.where(v > 0, v, 1.0) for v in largest]  # a set of weight 0: as is
    log_largest = [None if v is None else v.log() for v in largest]
    w = w / largest[0]
    qw = None if qw is None else qw / largest[1]
    if intra_batch:
        n = x.shape[0]
        upper = torch.triu_indices(n, n, offset=1, device=x.device)
        scores = direct_sq_dists(x, x)[upper[0], upper[1]].mul(-t)
        groups.append((scores, w[upper[0]] * w[upper[1]], 2 * log_largest[0]))
    if queue is not None:
        scores = direct_sq_dists(x, queue).flatten().mul(-t)
        groups.append((scores, (w[:, None] * qw[None, :]).flatten(), log_largest[0] + log_largest[1]))
    if weights is None and queue_weights is None:
        k = 0 if queue is None else queue.shape[0]
        lse = torch.logsumexp(torch.cat([g[0] for g in groups]), dim=0)
        return lse - log_num_pairs(x.shape[0], k, intra_batch, x.device).to(lse.dtype)
    # The kinds of pairs summed with factors exp(log factor - the largest) <= 1, relative to the largest score of a
    # pair of positive weight: a kind of weight 0 adds 0 (and its weights get their finite gradients).
    log_factors = torch.stack([g[2] for g in groups]).detach()
    factors = (log_factors - log_factors.amax()).exp()
    scores = torch.cat([g[0] for g in groups])
    pair_weights = torch.cat([g[1] * f for g, f in zip(groups, factors, strict=True)])
    top = torch.where(pair_weights > 0, scores, -torch.inf).amax().detach()
    return top + (pair_weights * (scores - top).exp()).sum().log() - pair_weights.sum().log()


# The chunked backend's primitives, at the path they had before the registry (``hyperloss.backends.chunked``).
from .backends.chunked import align, uniform_lse  # noqa: E402, F401
