"""The tile schedule (row blocks, the pairs of blocks, their split over ranks) and the pure-torch score tiles used
where the kernels have no entry point yet (per-row weights, per-sample scores).

Math of a score tile. Rows a_i (block A) and b_j (block B) are centered on the sampled midhinge of A and B together
and scaled by 2^-E (``centered_and_scaled``), so the Gram form ||a'||^2 + ||b'||^2 - 2 a'.b' cancels only on the
spread of the two blocks, never on a common offset; with t' = t 4^E the score is s_ij = -t ||a_i - b_j||^2 = -t' d'_ij.
Log-sum-exps are taken per row as m + log sum exp(s - m), with m the row's largest score, exp in the compute dtype
and the sum in float64.
"""

from __future__ import annotations

import itertools
import math

import torch

from ._internals import centered_and_scaled

# Above this many columns float32 Gram products are taken in float64 (as the reference backend does): a float32 dot
# product of millions of terms loses the digits the scores need.
_MAX_FLOAT32_DEPTH = 4096


def blocks(n: int, rows: int) -> list[tuple[int, int]]:
    """[start, stop) ranges of ``rows`` rows (the last one shorter) covering [0, n)."""
    return [(start, min(n, start + rows)) for start in range(0, n, rows)]


def block_pairs(count: int) -> list[tuple[int, int]]:
    """The pairs of blocks (a, b), a <= b, in row-major order: block a is read once for its whole run."""
    return [(a, b) for a in range(count) for b in range(a, count)]


def pairs_in(spans: list[tuple[int, int]], a: int, b: int) -> int:
    """Row pairs (i < j) in the tile of blocks a and b."""
    rows_a = spans[a][1] - spans[a][0]
    return rows_a * (rows_a - 1) // 2 if a == b else rows_a * (spans[b][1] - spans[b][0])


def balanced_ranges(costs: list[int], world: int) -> list[tuple[int, int]]:
    """Consecutive index ranges of ``costs``, one per rank, each with about 1/world of the total cost (a rank's
    share ends at the item that brings it past its target; some shares may be empty)."""
    total = sum(costs)
    bounds, item, done = [0], 0, 0
    for r in range(1, world):
        target = total * r / world
        while item < len(costs) and done + costs[item] <= target:
            done += costs[item]
            item += 1
        bounds.append(item)
    bounds.append(len(costs))
    return list(itertools.pairwise(bounds))


def _gram(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.dtype == torch.float32 and a.shape[1] > _MAX_FLOAT32_DEPTH:
        return (a.double() @ b.double().T).float()
    return a @ b.T


def score_tile(a: torch.Tensor, b: torch.Tensor | None, t: float, dtype: torch.dtype) -> torch.Tensor:
    """s_ij = -t ||a_i - b_j||^2 for the rows of ``a`` against those of ``b`` (``a`` against itself when ``b`` is
    None), in ``dtype`` (float64 where a score is beyond ``dtype``'s range). Rows must be finite."""
    a_scaled, b_scaled, exponent = centered_and_scaled(a, b, dtype)
    if b_scaled is None:
        b_scaled = a_scaled
    t_scaled = math.ldexp(t, 2 * int(exponent))
    a_norms = a_scaled.pow(2).sum(1, dtype=torch.float64).to(dtype)
    b_norms = a_norms if b is None else b_scaled.pow(2).sum(1, dtype=torch.float64).to(dtype)
    sq = _gram(a_scaled, b_scaled).mul_(-2).add_(a_norms[:, None]).add_(b_norms[None, :]).clamp_min_(0)
    if b is None:
        sq.fill_diagonal_(0)  # exactly 0, whatever the rounding of the norms
    if dtype != torch.float64 and t_scaled * float(sq.max()) >= torch.finfo(dtype).max / 2:
        sq = sq.double()  # scores beyond dtype's range (huge t or features): -inf would lose them
    return sq.mul_(-t_scaled)


def row_lse(scores: torch.Tensor, column_log_weights: torch.Tensor | None = None) -> torch.Tensor:
    """log sum_j exp(s_ij + lw_j) per row i, in float64 (-inf for a row of -inf scores; NaN stays NaN). The
    scores are not modified."""
    shifted = scores.clone() if column_log_weights is None else scores + column_log_weights.to(scores.dtype)[None]
    top = shifted.amax(1)
    top = torch.where(top == -math.inf, 0.0, top)  # an all -inf row: exp(-inf - 0) = 0, log 0 = -inf
    sums = shifted.sub_(top[:, None]).exp_().sum(1, dtype=torch.float64)
    return top.double() + sums.log()


def mask_not_above_diagonal(scores: torch.Tensor) -> torch.Tensor:
    """-inf at j <= i: the i < j pairs of a block with itself."""
    below = torch.ones(scores.shape, dtype=torch.bool, device=scores.device).tril_()
    return scores.masked_fill_(below, -math.inf)
