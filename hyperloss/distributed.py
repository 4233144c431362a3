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
With per-row weights (``weights=``, ``queue_weights=``) the same split, and:
  - the weights are all-gathered after the features (N float64), so that every rank forms the global denominator
    W = sum_pairs w_u w_v and d log W/dw alike, in float64 (``hyperloss._common.pair_weight_log_sum``), and its own
    pairs' call gets its rows' and cross rows' weights;
  - the weights' gradients d lse/dw of every row (N + K float64) are summed with one all-reduce;
  - a rank whose pairs all weigh 0 (its partial lse is -inf: one read of it) adds nothing to the value or the row
    gradients, but its zero-weight rows that partner rows of positive weight still have weight gradients: those
    come from one more local call (``_zero_weight_partners``).
No rank holds more than O(N * D) extra memory. All communication happens in the forward pass; the backward pass
only scales the saved gradient, so a rank that skips backward cannot hang the others. The alignment loss needs
one collective: the all-gather of step 0, which also carries each rank's sum of its terms.

Checked across ranks: before any other communication, every rank compares what each rank passed and, where they
differ, every rank raises the same ``ValueError`` naming each differing argument and its value on each rank (the
group stays usable). Compared: the feature dimension D, the dtype, the queue's rows K (or its absence),
``intra_batch``, ``t``, whether ``x_local`` and the queue require grad (which decides the gradient collectives),
a checksum of the queue's contents, whether weights and queue weights are given and require grad, and a checksum
of the queue weights' values (in float64); for the alignment loss D, the dtype and ``alpha``. The weights' values
(finite, >= 0, some pair of two positive weights in the global batch) travel in the same all-gather, so invalid
weights on one rank raise the same ValueError on every rank, naming the ranks. The queue checksum
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

from . import _contract, backends
from ._common import (
    as_scalar_tensor,
    log_mean_from_lse,
    normalized_rows,
    num_pairs,
    pair_weight_log_sum,
    row_weights,
    scale_saved_grad,
    temperature_gradient,
)
from ._contract import check_bool
from ._precision import OPERAND_PRECISIONS, check_precision, resolve_precision
from ._validation import SUPPORTED_DTYPES, _same_device, _tensor, check_align_args, check_uniform_args, compute_dtype

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


def _show_given(value: float) -> str:
    return "given" if value else "none"


def _show_weights_checksum(value: float) -> str:
    return "none" if value < 0 else f"{int(value):#010x}"


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


def _weight_flags(weights: torch.Tensor | None, rows: int) -> list[float | torch.Tensor]:
    """(all finite, all >= 0, how many > 0) of per-row weights, as values for the exchange (read with it: no sync
    of its own); None stands for ``rows`` weights of 1."""
    if weights is None:
        return [1.0, 1.0, float(rows)]
    return [torch.isfinite(weights).all(), (weights >= 0).all(), (weights > 0).sum()]


# Where _weight_flags' values sit in each rank's row of the exchange: row count, then the weights', then the queue
# weights' flags.
_W_FLAGS, _QW_FLAGS = 1, 4


def _check_weight_values(table: list[list[float]], intra_batch: bool, k: int) -> None:
    """The same ValueError on every rank for weights that are not finite or negative on some rank, or a global batch
    whose pair weights sum to 0 (each rank's weights may all be 0, the global batch's may not)."""
    for name, first in (("weights", _W_FLAGS), ("queue_weights", _QW_FLAGS)):
        not_finite = [r for r, row in enumerate(table) if not row[first]]
        negative = [r for r, row in enumerate(table) if not row[first + 1]]
        try:
            _contract.check_row_weight_values(name, not not_finite, not negative, True, intra_batch, k > 0)
        except ValueError as error:
            raise ValueError(
                f"hyperloss.distributed.uniform_loss: {error} on {_ranks(not_finite or negative)}"
            ) from None
    positive_x = sum(row[_W_FLAGS + 2] for row in table)
    positive_q = table[0][_QW_FLAGS + 2] > 0  # the same on every rank (the queue weights' checksums agree)
    try:
        pair_sum_positive = bool(_contract.has_positive_pair(positive_x, positive_q, intra_batch))
        _contract.check_row_weight_values("weights", True, True, pair_sum_positive, intra_batch, k > 0)
    except ValueError as error:
        raise ValueError(f"hyperloss.distributed.uniform_loss: in the global batch, {error}") from None


def _zero_weight_partners(
    impl: backends.Backend,
    points: torch.Tensor,
    weights: torch.Tensor,
    rows: tuple[int, int],
    cross_start: int,
    intra: bool,
    t: torch.Tensor,
    precision: str | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The weights' d S / dw over a rank's pairs where every one of them weighs 0 (S_r = 0: the backend's
    d lse_r / dw = r_u / S_r is then 0 / 0, but r_u, the sum over u's partners of w_v exp(-t d_uv), is not 0 for a
    row of weight 0 partnering a row of positive weight, and the global loss's weight gradient needs it).

    With S_r = 0 the rows of positive weight are all on one side, the rows [a, b) or the cross set, and only rows of
    weight 0 on the other side (or, for intra pairs, among the rows [a, b)) partner them: one weighted call of
    those rows (weights 1) against the positive ones gives r_u / S' and log S'.

    Args:
        impl: the backend.
        points: the global batch's rows, then the queue's.
        weights: their float64 weights.
        rows: this rank's rows (a, b); its cross set is points[cross_start:].
        intra: whether the pairs among the rows [a, b) count.
        t, precision: as for the backend.

    Returns:
        (positions in ``points``, r_u / S' at them (float64), log S'), or None where no row has a partner of
        positive weight.
    """
    here = torch.arange(*rows, device=weights.device)
    cross = torch.arange(cross_start, points.shape[0], device=weights.device)
    positive_here = here[weights[here] > 0]
    if positive_here.numel():  # then every cross row weighs 0
        positive = positive_here
        zero = torch.cat([here[weights[here] == 0], cross]) if intra else cross
    else:
        positive, zero = cross[weights[cross] > 0], here
    if not positive.numel() or not zero.numel():
        return None
    lse, _, _, grad, _ = impl.uniform_lse_weighted(
        points[zero], points[positive], t, False, None, weights[positive], False, False, True, False, precision
    )
    return zero, grad, lse.to(device=weights.device, dtype=torch.float64)


class _DistributedUniform(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, x_local, queue, t, weights, queue_weights, t_scalar, intra_batch, backend, precision, group, grad_enabled
    ):
        world, rank = _world(group)
        # needs_input_grad says True under torch.no_grad too: the caller's grad mode decides.
        need_x = grad_enabled and ctx.needs_input_grad[0]
        need_queue = grad_enabled and queue is not None and ctx.needs_input_grad[1]
        need_t = grad_enabled and t is not None and ctx.needs_input_grad[2]
        need_w = grad_enabled and weights is not None and ctx.needs_input_grad[3]
        need_qw = grad_enabled and queue_weights is not None and ctx.needs_input_grad[4]
        weighted = weights is not None or queue_weights is not None
        dtype = compute_dtype(x_local.dtype)
        k = 0 if queue is None else queue.shape[0]
        same = [  # one length on every rank, queue or not, weights or not
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
            _Same("weights", weights is not None, _show_given),
            _Same("queue_weights", queue_weights is not None, _show_given),
            _Same("weights require grad", need_w, _show_bool),
            _Same("queue_weights require grad", need_qw, _show_bool),
            _Same(
                "queue contents (checksum)",
                -1 if queue is None else _queue_checksum(queue.detach()),
                _show_checksum,
                unless_others_differ=True,
            ),
            _Same(  # of the values in float64: the same weights in another float dtype are the same weights
                "queue_weights values (checksum)",
                -1 if queue_weights is None else _queue_checksum(queue_weights.detach().double()[:, None]),
                _show_weights_checksum,
                unless_others_differ=True,
            ),
        ]
        sent = [x_local.shape[0], *_weight_flags(weights, x_local.shape[0]), *_weight_flags(queue_weights, k)]
        table = _exchange("uniform_loss", sent, same, x_local.device, group)
        sizes = [int(row[0]) for row in table]
        n = sum(sizes)
        if weighted:
            _check_weight_values(table, intra_batch, k)
        if num_pairs(n, k, intra_batch) == 0:
            raise ValueError(f"the global batch has no pairs (N = {n} rows, queue of {k})")
        x_all = _all_gather_rows(x_local.detach(), sizes, group)
        start, stop = balanced_row_ranges(n, k, intra_batch, world)[rank]
        impl = backends.get(backend)

        # This rank's pairs: rows [start, stop) among themselves, and against the later rows and the queue. In the
        # weighted case every row of the batch, then of the queue, has a position in one list ("points", N + K):
        # the cross set is points[cross_start:].
        cross_parts = ([x_all[stop:]] if intra_batch else []) + ([queue.detach()] if queue is not None else [])
        cross = torch.cat(cross_parts) if cross_parts and sum(p.shape[0] for p in cross_parts) else None
        cross_start = stop if intra_batch else n
        rows = x_all[start:stop]
        intra = intra_batch and rows.shape[0] >= 2
        own_pairs = num_pairs(rows.shape[0], 0 if cross is None else cross.shape[0], intra_batch)
        grad_rows = need_x or need_queue or need_t
        need_weight_grads = need_w or need_qw
        g_rows = g_cross = gw_rows = gw_cross = None
        lse = torch.full((), -math.inf, dtype=torch.float64, device=x_all.device)
        if weighted:
            w_all = None
            if weights is not None:
                w_all = _all_gather_rows(weights.detach().double()[:, None], sizes, group)[:, 0]
            q_w = None if queue_weights is None else queue_weights.detach().double()
            log_w, d_log_w, d_log_qw = pair_weight_log_sum(w_all, q_w, n, k, intra_batch, x_all.device)
            all_w = row_weights(w_all, n, x_all.device)
            if queue is not None:
                all_w = torch.cat([all_w, row_weights(q_w, k, x_all.device)])
            if own_pairs:
                lse, g_rows, g_cross, gw_rows, gw_cross = impl.uniform_lse_weighted(
                    rows,
                    cross,
                    t_scalar,
                    intra,
                    all_w[start:stop],
                    None if cross is None else all_w[cross_start:],
                    grad_rows,
                    grad_rows and cross is not None,
                    need_weight_grads,
                    need_weight_grads and cross is not None,
                    precision,
                )
        elif own_pairs:
            lse, g_rows, g_cross = impl.uniform_lse(
                rows, cross, t_scalar, intra, grad_rows, grad_rows and cross is not None, precision
            )
        lse = lse.to(device=x_all.device, dtype=torch.float64).reshape(())
        # Weighted pairs that all weigh 0 (lse = -inf; one read of it) add nothing to the value and the row
        # gradients, whose backend outputs are then 0 / 0; the weights' gradients are taken another way.
        no_weight = weighted and own_pairs and bool(lse == -math.inf)
        if no_weight:
            g_rows = g_cross = gw_rows = gw_cross = None

        lses = [torch.empty((1,), dtype=torch.float64, device=x_all.device) for _ in range(world)]
        dist.all_gather(lses, lse.reshape(1), group=group)
        total = torch.logsumexp(torch.cat(lses), dim=0)  # float64
        share = torch.exp(lse - total)  # this rank's part of the global sum (0 for lse = -inf)
        gx = gq = dt = gw = gqw = None
        if grad_rows:
            weight = share.to(dtype)
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
        if need_weight_grads:  # d lse/dw of every point (N + K, float64): one all-reduce
            grad_w = torch.zeros(all_w.shape, dtype=torch.float64, device=x_all.device)
            if gw_rows is not None:
                grad_w[start:stop] = gw_rows * share
            if gw_cross is not None:
                grad_w[cross_start:] += gw_cross * share
            if no_weight:
                points = x_all if queue is None else torch.cat([x_all, queue.detach()])
                partners = _zero_weight_partners(
                    impl, points, all_w, (start, stop), cross_start, intra, t_scalar, precision
                )
                if partners is not None:
                    where, grad, lse_partners = partners
                    grad_w.index_add_(0, where, grad.to(torch.float64) * torch.exp(lse_partners - total))
            dist.all_reduce(grad_w, group=group)
            offset = sum(sizes[:rank])
            local = slice(offset, offset + sizes[rank])
            gw = grad_w[local] - d_log_w[local] if need_w else None
            gqw = grad_w[n:] - d_log_qw if need_qw else None
        ctx.save_for_backward(gx, gq, None if dt is None else dt.reshape(t.shape), gw, gqw)  # dt in t's shape
        ctx.dtypes = tuple(None if v is None else v.dtype for v in (x_local, queue, t, weights, queue_weights))
        if weighted:  # log(S / W), as in the single-process loss: never above 0
            return (total - log_w).clamp_max(0.0).to(dtype)
        return log_mean_from_lse(total, n, k, intra_batch, dtype)

    @staticmethod
    def backward(ctx, grad_output):
        gx, gq, dt, gw, gqw = ctx.saved_tensors
        x_dtype, q_dtype, t_dtype, w_dtype, qw_dtype = ctx.dtypes
        wide = grad_output.double()
        grad_x = scale_saved_grad(grad_output, gx, x_dtype)
        grad_q = scale_saved_grad(grad_output, gq, q_dtype)
        grad_t = scale_saved_grad(wide, dt, t_dtype)
        grad_w, grad_qw = scale_saved_grad(wide, gw, w_dtype), scale_saved_grad(wide, gqw, qw_dtype)
        return grad_x, grad_q, grad_t, grad_w, grad_qw, None, None, None, None, None, None


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


def _check_weight_shapes(
    x_local: torch.Tensor, queue: torch.Tensor | None, weights: object, queue_weights: object
) -> None:
    """The local part of the weights' checks (type, shape, device); their values are checked across the ranks."""
    if queue_weights is not None and queue is None:
        raise ValueError("queue_weights needs a queue")
    for name, w, rows, rows_name in (
        ("weights", weights, x_local.shape[0], "x_local"),
        ("queue_weights", queue_weights, 0 if queue is None else queue.shape[0], "queue"),
    ):
        if w is not None:
            _contract.check_row_weights(name, *_tensor(name, w), rows, rows_name)
            _same_device(name, w, x_local, "x_local")


def uniform_loss(
    x_local: torch.Tensor,
    t: float | torch.Tensor = 2.0,
    *,
    queue: torch.Tensor | None = None,
    intra_batch: bool = True,
    weights: torch.Tensor | None = None,
    queue_weights: torch.Tensor | None = None,
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
        weights: optional (n_r,) weights of this rank's rows, as in ``hyperloss.uniform_loss`` (the loss is the
            weighted one of the global batch); every rank passes weights or none does. A rank's weights may all be
            0 as long as the global batch has a pair of two positive weights. They may require grad (on every
            rank alike): each rank gets d loss/dw of its own rows.
        queue_weights: optional (K,) weights of the queue's rows, the same values on every rank (a checksum of
            them is compared, as for the queue).
        group: the process group (default: the world).

    Returns:
        The same 0-dim loss on every rank (float64 for float64 inputs, float32 otherwise). Collective: every rank
        of the group must call it.

    Raises:
        RuntimeError: without an initialized process group (before any work).
        ValueError: on every rank, where the ranks disagree on D, the dtype, the queue's presence, rows K or
            contents (a bit-exact checksum), ``intra_batch``, ``t``, the float32 precision (after torch's
            setting), whether weights and queue weights are given, the queue weights' values (a checksum), or
            whether ``x_local``, the queue, t, the weights or the queue weights require grad; the message names each
            such argument with its value on each rank. Also where the global batch has no pairs, where the weights
            of some rank are not finite or negative (named), or where the global batch's pair weights sum to 0.
            Other invalid arguments (shapes, t <= 0, ...) on one rank raise there only (the others then time out).
        NotImplementedError: weights with a backend named explicitly that has no weighted primitive.
    """
    _world(group)
    t = check_uniform_args(x_local, t, queue, intra_batch, x_name="x_local", min_rows=0)
    _check_weight_shapes(x_local, queue, weights, queue_weights)
    check_bool("normalize", normalize)
    check_precision(precision)
    weighted = weights is not None or queue_weights is not None
    name = backends.resolve(backend, x_local.device, weighted=weighted)
    if normalize:
        x_local, queue = normalized_rows(x_local, queue)
    trainable_t = isinstance(t, torch.Tensor) and t.requires_grad
    return _DistributedUniform.apply(
        x_local,
        queue,
        t if trainable_t else None,
        weights,
        queue_weights,
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
