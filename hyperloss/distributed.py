"""Global-batch losses across processes on torch.distributed (NCCL on GPUs, Gloo on CPUs).

``uniform_loss`` and ``align_loss`` here take each rank's local rows and return, on every rank, the loss of the
concatenated global batch (ranks in order), exactly as the single-process functions would compute it.

How the uniformity work is split, with N global rows:
  1. one all-gather of the features (unequal local sizes are padded to the largest);
  2. rank r takes a contiguous range of rows [a, b) chosen so every rank gets about the same number of pairs,
     and computes the pairs (i, j), i in [a, b), j > i (and the queue pairs of those rows) with the ordinary
     kernels: rows [a, b) as the batch, rows [b, N) (plus the queue) as the cross set;
  3. the partial log-sum-exps are combined through one all-gather of one number per rank;
  4. when a gradient is needed, the gradient rows (scaled to the global log-sum-exp) go back to their owners with
     one reduce-scatter (NCCL; Gloo has none, so there an all-reduce of the same buffer, keeping only the own rows).
No rank holds more than O(N * D) extra memory. All communication happens in the forward pass; the backward pass
only scales the saved gradient, so a rank that skips backward cannot hang the others.

Gradient convention: the gradient with respect to each rank's local rows equals the matching rows of the
single-process gradient on the global batch. DistributedDataParallel then averages parameter gradients over the
ranks, which divides that exact gradient by the world size; multiply the loss by
``torch.distributed.get_world_size()`` before backward where the exact global-batch gradient is wanted (both
conventions are tested). A rank that fails or stalls surfaces on the others as the process group's timeout error.
"""

from __future__ import annotations

import itertools

import torch
import torch.distributed as dist

from . import _dispatch
from ._common import log_num_pairs, num_pairs
from ._validation import check_align_args, check_uniform_args, compute_dtype

__all__ = ["align_loss", "balanced_row_ranges", "uniform_loss"]


def _world(group) -> tuple[int, int]:
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("hyperloss.distributed needs an initialized torch.distributed process group")
    return dist.get_world_size(group), dist.get_rank(group)


def _gather_sizes(n_local: int, device: torch.device, group) -> list[int]:
    world, _ = _world(group)
    mine = torch.tensor([n_local], dtype=torch.int64, device=device)
    sizes = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(sizes, mine, group=group)
    return [int(s) for s in sizes]


def _all_gather_rows(x: torch.Tensor, sizes: list[int], group) -> torch.Tensor:
    """Concatenation of every rank's rows, in rank order (padded to the largest size for the collective)."""
    largest = max(sizes)
    padded = x.new_zeros((largest, x.shape[1]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous(), group=group)
    return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)])


def _reduce_scatter_rows(full: torch.Tensor, sizes: list[int], rank: int, group) -> torch.Tensor:
    """Sums ``full`` (N x D, rows in rank order) over the ranks and returns this rank's rows of the sum."""
    largest = max(sizes)
    padded = full.new_zeros((len(sizes), largest, full.shape[1]))
    start = 0
    for r, n in enumerate(sizes):
        padded[r, :n] = full[start : start + n]
        start += n
    if dist.get_backend(group) == dist.Backend.NCCL:
        mine = full.new_empty((largest, full.shape[1]))
        dist.reduce_scatter_tensor(mine, padded.view(-1, full.shape[1]), group=group)
    else:  # Gloo has no reduce-scatter
        dist.all_reduce(padded, group=group)
        mine = padded[rank]
    return mine[: sizes[rank]]


def balanced_row_ranges(n: int, k: int, intra_batch: bool, world: int) -> list[tuple[int, int]]:
    """Contiguous row ranges, one per rank, with about equal numbers of pairs.

    Row i owns its pairs (i, j > i) and (i, queue_k): (n - 1 - i) * intra_batch + k of them.
    """
    total = num_pairs(n, k, intra_batch)
    bounds, row, done = [0], 0, 0
    for r in range(1, world):
        target = total * r / world
        while row < n and done + (n - 1 - row) * intra_batch + k <= target:
            done += (n - 1 - row) * intra_batch + k
            row += 1
        bounds.append(row)
    bounds.append(n)
    return list(itertools.pairwise(bounds))


class _DistributedUniform(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_local, queue, t, intra_batch, backend, group):
        world, rank = _world(group)
        need_x = ctx.needs_input_grad[0]
        need_queue = queue is not None and ctx.needs_input_grad[1]
        dtype = compute_dtype(x_local.dtype)
        sizes = _gather_sizes(x_local.shape[0], x_local.device, group)
        n, k = sum(sizes), (0 if queue is None else queue.shape[0])
        if num_pairs(n, k, intra_batch) == 0:
            raise ValueError(f"the global batch has no pairs (N = {n} rows, queue of {k})")
        x_all = _all_gather_rows(x_local.detach(), sizes, group)
        start, stop = balanced_row_ranges(n, k, intra_batch, world)[rank]

        # This rank's pairs: rows [start, stop) among themselves, and against the later rows and the queue.
        cross_parts = ([x_all[stop:]] if intra_batch else []) + ([queue.detach()] if queue is not None else [])
        cross = torch.cat(cross_parts) if cross_parts and sum(p.shape[0] for p in cross_parts) else None
        rows = x_all[start:stop]
        own_pairs = num_pairs(rows.shape[0], 0 if cross is None else cross.shape[0], intra_batch)
        grad_rows = need_x or need_queue
        if own_pairs:
            lse, g_rows, g_cross = _dispatch.LOADED[backend].uniform_lse(
                rows, cross, t, intra_batch and rows.shape[0] >= 2, grad_rows, grad_rows and cross is not None
            )
        else:
            lse, g_rows, g_cross = x_all.new_full((), float("-inf"), dtype=dtype), None, None

        lses = [torch.empty((1,), dtype=dtype, device=x_all.device) for _ in range(world)]
        dist.all_gather(lses, lse.reshape(1).to(dtype), group=group)
        total = torch.logsumexp(torch.cat(lses), dim=0)
        gx = gq = None
        if grad_rows:
            weight = torch.exp(lse.to(dtype) - total) if own_pairs else total.new_zeros(())
            full = x_all.new_zeros(x_all.shape, dtype=dtype)
            if g_rows is not None:
                full[start:stop] = g_rows * weight
            later = n - stop if intra_batch else 0
            if g_cross is not None and later:
                full[stop:] += g_cross[:later] * weight
            if need_x:
                gx = _reduce_scatter_rows(full, sizes, rank, group)
            if need_queue:
                gq = (
                    g_cross[later:] * weight
                    if g_cross is not None
                    else torch.zeros(queue.shape, dtype=dtype, device=queue.device)
                )
                dist.all_reduce(gq, group=group)
        ctx.save_for_backward(gx, gq)
        ctx.dtypes = (x_local.dtype, None if queue is None else queue.dtype)
        return total - log_num_pairs(n, k, intra_batch)

    @staticmethod
    def backward(ctx, grad_output):
        gx, gq = ctx.saved_tensors
        x_dtype, q_dtype = ctx.dtypes
        grad_x = None if gx is None else (grad_output * gx).to(x_dtype)
        grad_q = None if gq is None else (grad_output * gq).to(q_dtype)
        return grad_x, grad_q, None, None, None, None


class _DistributedAlign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_local, y_local, alpha, backend, group):
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        n_local = x_local.shape[0]
        if n_local:
            loss, gx = _dispatch.LOADED[backend].align(x_local, y_local, alpha, need_grad)
        else:  # no rows here: a zero loss term and an empty gradient
            dtype = compute_dtype(x_local.dtype)
            loss = x_local.new_zeros((), dtype=dtype)
            gx = x_local.new_zeros(x_local.shape, dtype=dtype) if need_grad else None
        # One all-reduce of (sum of the local terms, local row count).
        totals = torch.stack([loss.double() * n_local, loss.new_full((), n_local, dtype=torch.float64)])
        dist.all_reduce(totals, group=group)
        n = int(totals[1])
        if n == 0:
            raise ValueError("the global batch is empty")
        grad = None if gx is None else gx * (n_local / n)
        ctx.save_for_backward(grad)
        ctx.dtype = x_local.dtype
        return (totals[0] / n).to(loss.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        if grad is None:
            return None, None, None, None, None
        gx = (grad_output * grad).to(ctx.dtype)
        return (gx if ctx.needs_input_grad[0] else None), (-gx if ctx.needs_input_grad[1] else None), None, None, None


def uniform_loss(
    x_local: torch.Tensor,
    t: float = 2.0,
    *,
    queue: torch.Tensor | None = None,
    intra_batch: bool = True,
    group: dist.ProcessGroup | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Uniformity loss of the global batch (every rank's ``x_local`` concatenated in rank order).

    Args:
        x_local: this rank's rows (n_r, D); ranks may hold different numbers of rows (even none).
        t, intra_batch, backend: as in ``hyperloss.uniform_loss``.
        queue: optional (K, D) features, the same tensor on every rank (a MoCo queue is); it may require grad.
        group: the process group (default: the world).

    Returns:
        The same 0-dim loss on every rank. Collective: every rank of the group must call it.
    """
    t = check_uniform_args(x_local, t, queue, intra_batch, x_name="x_local", min_rows=0)
    name = _dispatch.resolve(backend, x_local.device)
    return _DistributedUniform.apply(x_local, queue, t, intra_batch, name, group)


def align_loss(
    x_local: torch.Tensor,
    y_local: torch.Tensor,
    alpha: float = 2.0,
    *,
    group: dist.ProcessGroup | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Alignment loss of the global batch: the mean over every rank's rows. Collective; same value on every rank."""
    alpha = check_align_args(x_local, y_local, alpha, names=("x_local", "y_local"), min_rows=0)
    name = _dispatch.resolve(backend, x_local.device)
    return _DistributedAlign.apply(x_local, y_local, alpha, name, group)
