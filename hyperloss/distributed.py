"""Global-batch losses across processes on torch.distributed (NCCL on GPUs, Gloo on CPUs).

``uniform_loss`` and ``align_loss`` here take each rank's local rows and return, on every rank, the loss of the
concatenated global batch (ranks in order), exactly as the single-process functions would compute it.

How the uniformity work is split, with N global rows:
  0. one all-gather of a small float64 vector per rank: its row count and the arguments every rank must share
     (see "Checked across ranks" below);
  1. one all-gather of the features (unequal local sizes are padded to the largest);
  2. rank r takes a contiguous range of rows [a, b) chosen so every rank gets about the same number of pairs,
     and computes the pairs (i, j), i in [a, b), j > i (and the queue pairs of those rows) with the ordinary
     kernels: rows [a, b) as the batch, rows [b, N) (plus the queue) as the cross set;
  3. the partial log-sum-exps (float64) are combined through one all-gather of one number per rank;
  4. when a gradient is needed, the gradient rows (scaled to the global log-sum-exp) go back to their owners with
     one reduce-scatter (NCCL; Gloo has none, so there an all-reduce of the same buffer, keeping only the own rows).
No rank holds more than O(N * D) extra memory. All communication happens in the forward pass; the backward pass
only scales the saved gradient, so a rank that skips backward cannot hang the others. The alignment loss needs
one collective: the all-gather of step 0, which also carries each rank's sum of its terms.

Checked across ranks: before any other communication, every rank compares what each rank passed and, where they
differ, every rank raises the same ``ValueError`` naming each differing argument and its value on each rank (the
group stays usable). Compared: the feature dimension D, the dtype, the queue's rows K (or its absence),
``intra_batch``, ``t``, whether ``x_local`` and the queue require grad (which decides the gradient collectives),
and a checksum of the queue's contents; for the alignment loss D, the dtype and ``alpha``. The queue checksum
covers every bit and the row order, and is the same for the same values whatever the device, layout or thread
count (wrapping integer sums of the raw words: exact in any order), so it flags a queue that differs on any rank
(e.g. one updated with that rank's keys only) for one read of the queue, no copy, small next to the K x N pairs.
It is a checksum: a different queue goes unnoticed with a chance of about 1 in 2^31. Arguments that fail the
ordinary checks (wrong shape, t <= 0, ...) raise on their own rank only; the other ranks then see the process
group's timeout, as for a rank that fails or stalls for any other reason.

Gradient convention: the gradient with respect to each rank's local rows equals the matching rows of the
single-process gradient on the global batch. DistributedDataParallel then averages parameter gradients over the
ranks, which divides that exact gradient by the world size; multiply the loss by
``torch.distributed.get_world_size()`` before backward where the exact global-batch gradient is wanted (both
conventions are tested). Second derivatives raise a ``RuntimeError``, as in the single-process losses.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.distributed as dist

from . import backends
from ._common import (
    as_scalar_tensor,
    log_mean_from_lse,
    normalized_rows,
    num_pairs,
    scale_saved_grad,
    temperature_gradient,
)
from ._contract import check_bool
from ._precision import OPERAND_PRECISIONS, check_precision, resolve_precision
from ._validation import SUPPORTED_DTYPES, check_align_args, check_uniform_args, compute_dtype

__all__ = ["align_loss", "balanced_row_ranges", "uniform_loss"]

_NO_GROUP = "hyperloss.distributed needs an initialized torch.distributed process group"
_CHECKSUM_MODULUS = 2**31 - 1  # prime; residues and their products stay exact in int64 and float64


def _world(group) -> tuple[int, int]:
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(_NO_GROUP)
    return dist.get_world_size(group), dist.get_rank(group)


def _queue_checksum(queue: torch.Tensor) -> torch.Tensor:
    """A checksum of a (K, D) tensor's bits and row order, as a 0-dim int64 tensor in [0, 2^31 - 1) on its device.

    The same values give the same checksum on any device, memory layout or thread count: each row's raw words are
    summed in integers that wrap modulo 2^16/2^32/2^64 (exact, so the order of the additions does not matter), and
    the row sums are combined as sum_k (row_k mod p) (k + 1) mod p, p = 2^31 - 1. One read of the tensor, no copy.
    Any change of bits (also -0.0 for 0.0, or another NaN payload) or of the row order changes it except by chance.
    """
    size = queue.element_size()
    if size == 2 and queue.shape[1] % 2 == 0:  # 16-bit values in pairs: int32 sums are much faster than int16 ones
        try:
            words = queue.view(torch.int32)
        except RuntimeError:  # strides or offset not aligned to 4 bytes
            words = queue.clone(memory_format=torch.contiguous_format).view(torch.int32)
    else:
        words = queue.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[size])
    rows = words.sum(1, dtype=words.dtype).to(torch.int64).remainder_(_CHECKSUM_MODULUS)
    position = torch.arange(1, queue.shape[0] + 1, dtype=torch.int64, device=queue.device)
    return rows.mul_(position.remainder_(_CHECKSUM_MODULUS)).remainder_(_CHECKSUM_MODULUS).sum() % _CHECKSUM_MODULUS


class _Same(NamedTuple):
    """An argument every rank must pass identically, sent as one float64 in the per-call all-gather."""

    name: str
    value: float | torch.Tensor
    show: Callable[[float], str]
    unless_others_differ: bool = False  # only reported where everything before it agrees


def _show_int(value: float) -> str:
    return str(int(value))


def _show_dtype(value: float) -> str:
    return str(SUPPORTED_DTYPES[int(value)]).removeprefix("torch.")


def _show_bool(value: float) -> str:
    return str(bool(value))


def _show_precision(value: float) -> str:
    return OPERAND_PRECISIONS[int(value)]


def _show_queue_rows(value: float) -> str:
    return "no queue" if value < 0 else str(int(value))


def _show_checksum(value: float) -> str:
    return "no queue" if value < 0 else f"{int(value):#010x}"


def _ranks(ranks: list[int]) -> str:
    """[0, 1, 2, 5] -> 'ranks 0-2, 5'."""
    spans = []
    for _, run in itertools.groupby(enumerate(ranks), key=lambda pair: pair[1] - pair[0]):
        run = [r for _, r in run]
        spans.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(spans)


def _exchange(
    api: str, sent: Sequence[float | torch.Tensor], same: Sequence[_Same], device: torch.device, group
) -> list[list[float]]:
    """One all-gather of ``sent`` and the ``same`` values (a float64 vector of one length on every rank).

    Raises the same ValueError on every rank where a ``same`` value differs across ranks; otherwise returns every
    rank's ``sent`` values, in rank order.
    """
    world, _ = _world(group)
    values = [*sent, *(s.value for s in same)]
    mine = torch.tensor([0.0 if isinstance(v, torch.Tensor) else float(v) for v in values], dtype=torch.float64)
    mine = mine.to(device)  # one copy to the device, then the values already there (no host sync)
    for i, v in enumerate(values):
        if isinstance(v, torch.Tensor):
            mine[i] = v
    parts = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(parts, mine, group=group)
    table = torch.stack(parts).cpu().tolist()
    differ = []
    for column, s in enumerate(same, start=len(sent)):
        seen = [row[column] for row in table]
        if len(set(seen)) == 1 or (s.unless_others_differ and differ):
            continue
        by_value: dict[float, list[int]] = {}
        for rank, value in enumerate(seen):
            by_value.setdefault(value, []).append(rank)
        differ.append(f"{s.name}: " + "; ".join(f"{s.show(v)} on {_ranks(r)}" for v, r in by_value.items()))
    if differ:
        raise ValueError(
            f"hyperloss.distributed.{api}: every rank of the group must pass the same arguments, but "
            + " | ".join(differ)
        )
    return [row[: len(sent)] for row in table]


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

    Args:
        n: rows of the global batch (>= 0).
        k: rows of the queue (>= 0; 0 without one).
        intra_batch: whether the i < j pairs within the batch count.
        world: number of ranks (>= 1).

    Returns:
        ``world`` pairs (start, stop), in rank order: consecutive, covering [0, n), some possibly empty.

    Raises:
        ValueError: for n < 0, k < 0 or world < 1.
    """
    n, k, world = (operator.index(v) for v in (n, k, world))
    for name, value, least in (("n", n, 0), ("k", k, 0), ("world", world, 1)):
        if value < least:
            raise ValueError(f"{name} must be >= {least}, got {value}")
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
    def forward(ctx, x_local, queue, t, t_scalar, intra_batch, backend, precision, group, grad_enabled):
        world, rank = _world(group)
        # needs_input_grad says True under torch.no_grad too: the caller's grad mode decides.
        need_x = grad_enabled and ctx.needs_input_grad[0]
        need_queue = grad_enabled and queue is not None and ctx.needs_input_grad[1]
        need_t = grad_enabled and t is not None and ctx.needs_input_grad[2]
        dtype = compute_dtype(x_local.dtype)
        k = 0 if queue is None else queue.shape[0]
        same = [  # one length on every rank, queue or not
            _Same("feature dimension D", x_local.shape[1], _show_int),
            _Same("dtype", SUPPORTED_DTYPES.index(x_local.dtype), _show_dtype),
            _Same("queue rows K", -1 if queue is None else k, _show_queue_rows),
            _Same("intra_batch", intra_batch, _show_bool),
            _Same("t", float(t_scalar), repr),
            # Resolved, so that torch's float32 matmul setting is compared too.
            _Same(
                "precision",
                OPERAND_PRECISIONS.index(resolve_precision(x_local.dtype, precision)),
                _show_precision,
                unless_others_differ=True,  # follows from the dtype where those differ
            ),
            _Same("x_local requires grad", need_x, _show_bool),
            _Same("queue requires grad", need_queue, _show_bool),
            _Same("t requires grad", need_t, _show_bool),
            _Same(
                "queue contents (checksum)",
                -1 if queue is None else _queue_checksum(queue.detach()),
                _show_checksum,
                unless_others_differ=True,
            ),
        ]
        sizes = [int(row[0]) for row in _exchange("uniform_loss", [x_local.shape[0]], same, x_local.device, group)]
        n = sum(sizes)
        if num_pairs(n, k, intra_batch) == 0:
            raise ValueError(f"the global batch has no pairs (N = {n} rows, queue of {k})")
        x_all = _all_gather_rows(x_local.detach(), sizes, group)
        start, stop = balanced_row_ranges(n, k, intra_batch, world)[rank]

        # This rank's pairs: rows [start, stop) among themselves, and against the later rows and the queue.
        cross_parts = ([x_all[stop:]] if intra_batch else []) + ([queue.detach()] if queue is not None else [])
        cross = torch.cat(cross_parts) if cross_parts and sum(p.shape[0] for p in cross_parts) else None
        rows = x_all[start:stop]
        own_pairs = num_pairs(rows.shape[0], 0 if cross is None else cross.shape[0], intra_batch)
        grad_rows = need_x or need_queue or need_t
        if own_pairs:
            lse, g_rows, g_cross = backends.get(backend).uniform_lse(
                rows,
                cross,
                t_scalar,
                intra_batch and rows.shape[0] >= 2,
                grad_rows,
                grad_rows and cross is not None,
                precision,
            )
            lse = lse.to(device=x_all.device, dtype=torch.float64).reshape(())
        else:
            lse, g_rows, g_cross = torch.full((), -math.inf, dtype=torch.float64, device=x_all.device), None, None

        lses = [torch.empty((1,), dtype=torch.float64, device=x_all.device) for _ in range(world)]
        dist.all_gather(lses, lse.reshape(1), group=group)
        total = torch.logsumexp(torch.cat(lses), dim=0)  # float64
        gx = gq = dt = None
        if grad_rows:
            weight = torch.exp(lse - total).to(dtype) if own_pairs else x_all.new_zeros((), dtype=dtype)
            full = x_all.new_zeros(x_all.shape, dtype=dtype)
            if g_rows is not None:
                full[start:stop] = g_rows * weight
            later = n - stop if intra_batch else 0
            if g_cross is not None and later:
                full[stop:] += g_cross[:later] * weight
            local_gq = None
            if queue is not None:
                local_gq = (
                    g_cross[later:] * weight
                    if g_cross is not None
                    else torch.zeros(queue.shape, dtype=dtype, device=queue.device)
                )
            if need_t:  # this rank's pairs' part of d lse/dt (the relation is linear in the gradients), summed
                dt = temperature_gradient(x_all, queue, full, local_gq, t_scalar).to(x_all.device).reshape(1)
                dist.all_reduce(dt, group=group)
                dt = dt.reshape(())
            if need_x:
                gx = _reduce_scatter_rows(full, sizes, rank, group)
            if need_queue:
                gq = local_gq
                dist.all_reduce(gq, group=group)
        ctx.save_for_backward(gx, gq, dt)
        ctx.dtypes = (x_local.dtype, None if queue is None else queue.dtype, None if t is None else t.dtype)
        return log_mean_from_lse(total, n, k, intra_batch, dtype)

    @staticmethod
    def backward(ctx, grad_output):
        gx, gq, dt = ctx.saved_tensors
        x_dtype, q_dtype, t_dtype = ctx.dtypes
        grad_x = scale_saved_grad(grad_output, gx, x_dtype)
        grad_q = scale_saved_grad(grad_output, gq, q_dtype)
        grad_t = scale_saved_grad(grad_output.double(), dt, t_dtype)
        return grad_x, grad_q, grad_t, None, None, None, None, None, None


class _DistributedAlign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_local, y_local, alpha, backend, group, grad_enabled):
        need_x, need_y = (grad_enabled and ctx.needs_input_grad[i] for i in (0, 1))
        n_local = x_local.shape[0]
        dtype = compute_dtype(x_local.dtype)
        if n_local:
            loss, gx, gy = backends.get(backend).align(x_local, y_local, as_scalar_tensor(alpha), need_x, need_y)
        else:  # no rows here: a zero loss term and empty gradients
            loss = x_local.new_zeros((), dtype=dtype)
            gx, gy = (x_local.new_zeros(x_local.shape, dtype=dtype) if need else None for need in (need_x, need_y))
        same = [
            _Same("feature dimension D", x_local.shape[1], _show_int),
            _Same("dtype", SUPPORTED_DTYPES.index(x_local.dtype), _show_dtype),
            _Same("alpha", float(alpha), repr),
        ]
        # One all-gather of (sum of the local terms, local row count) and the arguments checked across ranks.
        table = _exchange("align_loss", [loss.double() * n_local, n_local], same, x_local.device, group)
        n = sum(int(row[1]) for row in table)
        if n == 0:
            raise ValueError("the global batch is empty")
        ctx.save_for_backward(*(None if g is None else g.mul_(n_local / n) for g in (gx, gy)))
        ctx.dtype = x_local.dtype
        return x_local.new_full((), math.fsum(row[0] for row in table) / n, dtype=dtype)

    @staticmethod
    def backward(ctx, grad_output):
        gx, gy = (scale_saved_grad(grad_output, g, ctx.dtype) for g in ctx.saved_tensors)
        return gx, gy, None, None, None, None


def uniform_loss(
    x_local: torch.Tensor,
    t: float | torch.Tensor = 2.0,
    *,
    queue: torch.Tensor | None = None,
    intra_batch: bool = True,
    normalize: bool = False,
    group: dist.ProcessGroup | None = None,
    backend: str = "auto",
    precision: str | None = None,
) -> torch.Tensor:
    """Uniformity loss of the global batch (every rank's ``x_local`` concatenated in rank order).

    Args:
        x_local: this rank's rows (n_r, D); ranks may hold different numbers of rows (even none).
        t, intra_batch, normalize, backend, precision: as in ``hyperloss.uniform_loss``; a t tensor that requires
            grad gets d loss/dt of the global batch, the same on every rank.
        queue: optional (K, D) features, the same tensor on every rank (a MoCo queue is); it may require grad.
        group: the process group (default: the world).

    Returns:
        The same 0-dim loss on every rank (float64 for float64 inputs, float32 otherwise). Collective: every rank
        of the group must call it.

    Raises:
        RuntimeError: without an initialized process group (before any work).
        ValueError: on every rank, where the ranks disagree on D, the dtype, the queue's presence, rows K or
            contents (a bit-exact checksum), ``intra_batch``, ``t``, the float32 precision (after torch's
            setting), or whether ``x_local``, the queue or t requires grad; the message names each such argument
            with its value on each rank. Also where the global batch has no pairs. Invalid arguments on one rank
            raise there only (the others then time out).
    """
    _world(group)
    t = check_uniform_args(x_local, t, queue, intra_batch, x_name="x_local", min_rows=0)
    check_bool("normalize", normalize)
    check_precision(precision)
    name = backends.resolve(backend, x_local.device)
    if normalize:
        x_local, queue = normalized_rows(x_local, queue)
    trainable_t = isinstance(t, torch.Tensor) and t.requires_grad
    return _DistributedUniform.apply(
        x_local,
        queue,
        t if trainable_t else None,
        as_scalar_tensor(t),
        intra_batch,
        name,
        precision,
        group,
        torch.is_grad_enabled(),
    )


def align_loss(
    x_local: torch.Tensor,
    y_local: torch.Tensor,
    alpha: float = 2.0,
    *,
    group: dist.ProcessGroup | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Alignment loss of the global batch: the mean over every rank's rows. Collective; same value on every rank.

    Args:
        x_local, y_local: this rank's positive pairs (n_r, D); ranks may hold different numbers of rows (even none).
        alpha, backend: as in ``hyperloss.align_loss``.
        group: the process group (default: the world).

    Returns:
        The same 0-dim loss on every rank: float64 for float64 inputs, float32 otherwise.

    Raises:
        RuntimeError: without an initialized process group (before any work).
        ValueError: on every rank, where the ranks disagree on D, the dtype or ``alpha`` (the message names each
            with its value on each rank), or where the global batch is empty.
    """
    _world(group)
    alpha = check_align_args(x_local, y_local, alpha, names=("x_local", "y_local"), min_rows=0)
    name = backends.resolve(backend, x_local.device)
    return _DistributedAlign.apply(x_local, y_local, alpha, name, group, torch.is_grad_enabled())
