"""Pure-PyTorch definitions of every op: the paper's code, the float64 math definition, and the chunked backend.

- ``paper_align_loss`` / ``paper_uniform_loss``: the paper's two functions exactly as its code writes them
  (Wang & Isola 2020), plus ``paper_uniform_loss_with_queue`` in the same style for the queue form. They
  materialize every pair and return -inf when every exp underflows.
- ``dense_align_loss`` / ``dense_uniform_loss``: numerically stable dense versions (a log-sum-exp over the pair
  scores, autograd through torch). In float64 they are the one math definition every backend is tested against.
- ``uniform_lse`` / ``align``: the "reference" backend. Memory-light (O(N * block) extra, no N x N matrix) with
  analytic gradients computed in the same call, so no graph over the pairs is kept. It runs on any device.
"""

from __future__ import annotations

import torch

from ._common import log_num_pairs, poison_nonfinite
from ._validation import compute_dtype

# ----------------------------------------------------------------------------------------------------------------
# The paper's code


def paper_align_loss(x: torch.Tensor, y: torch.Tensor, alpha: float = 2) -> torch.Tensor:
    """The paper's alignment loss: ``(x - y).norm(p=2, dim=1).pow(alpha).mean()``."""
    return (x - y).norm(p=2, dim=1).pow(alpha).mean()


def paper_uniform_loss(x: torch.Tensor, t: float = 2) -> torch.Tensor:
    """The paper's uniformity loss: ``torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log()``."""
    return torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log()


def paper_uniform_loss_with_queue(
    x: torch.Tensor, queue: torch.Tensor, t: float = 2, intra_batch: bool = True
) -> torch.Tensor:
    """The queue form in the paper's style: every (x_i, q_k) distance, plus the i<j ones when ``intra_batch``."""
    sq_dists = torch.cdist(x, queue, p=2).pow(2).flatten()
    if intra_batch:
        sq_dists = torch.cat([torch.pdist(x, p=2).pow(2), sq_dists])
    return sq_dists.mul(-t).exp().mean().log()


# ----------------------------------------------------------------------------------------------------------------
# Stable dense versions: the math definition


def dense_align_loss(x: torch.Tensor, y: torch.Tensor, alpha: float = 2) -> torch.Tensor:
    """mean_i (||x_i - y_i||^2)^(alpha/2), with no square root (finite gradients for equal rows when alpha >= 2)."""
    return (x - y).pow(2).sum(dim=1).pow(alpha / 2).mean()


def _sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """||a_i - b_j||^2 through the Gram matrix, clamped at 0."""
    return (a.pow(2).sum(1)[:, None] + b.pow(2).sum(1)[None, :] - 2 * a @ b.T).clamp_min(0)


def dense_uniform_loss(
    x: torch.Tensor, t: float = 2, *, queue: torch.Tensor | None = None, intra_batch: bool = True
) -> torch.Tensor:
    """log mean over the pair set of exp(-t ||.||^2), as a log-sum-exp: finite where the paper's code gives -inf.

    Materializes the N x N (and N x K) scores: for small inputs and tests only.
    """
    scores = []
    if intra_batch:
        n = x.shape[0]
        upper = torch.triu_indices(n, n, offset=1, device=x.device)
        scores.append(_sq_dists(x, x)[upper[0], upper[1]].mul(-t))
    if queue is not None:
        scores.append(_sq_dists(x, queue).flatten().mul(-t))
    k = 0 if queue is None else queue.shape[0]
    return torch.logsumexp(torch.cat(scores), dim=0) - log_num_pairs(x.shape[0], k, intra_batch)


# ----------------------------------------------------------------------------------------------------------------
# The chunked "reference" backend

# Scores held at once: block_rows * columns elements (64 MB in float32).
_BLOCK_ELEMENTS = 1 << 24


def _row_blocks(n: int, columns: int):
    block = max(1, min(n, _BLOCK_ELEMENTS // max(columns, 1)))
    for start in range(0, n, block):
        yield start, min(n, start + block)


def _block_scores(x, norms, start, stop, queue, q_norms, t, intra_batch):
    """Scores of rows [start, stop) against x[start:] (j > i kept, others -inf) and against the queue."""
    xb, nb = x[start:stop], norms[start:stop]
    intra = cross = None
    if intra_batch:
        intra = (nb[:, None] + norms[None, start:] - 2 * xb @ x[start:].T).clamp_min(0).mul(-t)
        rows = torch.arange(stop - start, device=x.device)[:, None]
        cols = torch.arange(x.shape[0] - start, device=x.device)[None, :]
        intra = intra.masked_fill(cols <= rows, float("-inf"))
    if queue is not None:
        cross = (nb[:, None] + q_norms[None, :] - 2 * xb @ queue.T).clamp_min(0).mul(-t)
    return intra, cross


def uniform_lse(
    x: torch.Tensor,
    queue: torch.Tensor | None,
    t: float,
    intra_batch: bool,
    grad_x: bool,
    grad_queue: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """lse = log sum over pairs exp(-t ||.||^2), and d lse / dx, d lse / d queue when asked for.

    Two sweeps over row blocks (log-sum-exp, then the weights exp(s - lse)); the gradient of pair (i, j) with
    weight w is -2t w (x_i - x_j) on row i and the opposite on row j.
    """
    dtype = compute_dtype(x.dtype)
    x = x.to(dtype)
    queue = None if queue is None else queue.to(dtype)
    norms = x.pow(2).sum(1)
    q_norms = None if queue is None else queue.pow(2).sum(1)
    columns = (x.shape[0] if intra_batch else 0) + (0 if queue is None else queue.shape[0])

    block_lse = []
    for start, stop in _row_blocks(x.shape[0], columns):
        for s in _block_scores(x, norms, start, stop, queue, q_norms, t, intra_batch):
            if s is not None and s.numel():
                block_lse.append(torch.logsumexp(s.flatten(), dim=0))
    lse = torch.logsumexp(torch.stack(block_lse), dim=0)

    gx = torch.zeros_like(x) if grad_x else None
    gq = torch.zeros_like(queue) if grad_queue and queue is not None else None
    if gx is not None or gq is not None:
        for start, stop in _row_blocks(x.shape[0], columns):
            xb = x[start:stop]
            intra, cross = _block_scores(x, norms, start, stop, queue, q_norms, t, intra_batch)
            for s, other in ((intra, x[start:]), (cross, queue)):
                if s is None:
                    continue
                w = torch.exp(s - lse).mul_(-2 * t)
                if gx is not None:
                    gx[start:stop] += w.sum(1)[:, None] * xb - w @ other
                if other is queue:
                    other_grad = gq
                else:
                    other_grad = None if gx is None else gx[start:]
                if other_grad is not None:
                    other_grad += w.sum(0)[:, None] * other - w.T @ xb
    lse, (gx, gq) = poison_nonfinite((x,) if queue is None else (x, queue), lse, (gx, gq))
    return lse, gx, gq


def align(x: torch.Tensor, y: torch.Tensor, alpha: float, grad_x: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Alignment loss mean_i d_i^(alpha/2), d_i = ||x_i - y_i||^2, and its gradient alpha/N d_i^(alpha/2-1)(x_i-y_i).

    A zero distance has a zero gradient for every alpha (no square root, no 0 * inf).
    """
    dtype = compute_dtype(x.dtype)
    diff = x.to(dtype) - y.to(dtype)
    d2 = diff.pow(2).sum(1)
    loss = d2.pow(alpha / 2).mean()
    if not grad_x:
        return loss, None
    if alpha == 2:
        coef = torch.full_like(d2, 2.0 / x.shape[0])
    else:
        safe = torch.where(d2 > 0, d2, torch.ones_like(d2))
        coef = torch.where(d2 > 0, safe.pow(alpha / 2 - 1), torch.zeros_like(d2)) * (alpha / x.shape[0])
    return loss, coef[:, None] * diff
