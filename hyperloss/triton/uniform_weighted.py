"""Uniformity with per-row weights on the GPU: lse = log sum over pairs w_u w_v exp(-t ||u - v||^2) and its
gradients for x, the queue and both weights, with no N x N buffer.

The rows are those of ``uniform`` (``_prepare``: x' = (x - c) 2^-E, t' = t 4^E, c_t = t' log2 e). The columns'
weights enter the sweeps in the compute dtype as log2-weights b_j = log2(s w_j) <= 0 (-inf for weight 0), s a power
of two that brings the largest weight of x and the queue to [0.5, 1), and, for the deficits, as values v_j = s' w_j,
s' the same for each set alone; a row's own weight is applied afterwards, in float64. A float32 log2-weight of
magnitude L carries ~L 2^-24 of relative error (weights 2^-1000 below the largest: ~4e-5); float64 ones keep every
digit. With y_ij = -c_t d_ij <= 0 the unweighted score in log2 units, two sweeps over (row block, column block) tiles:

    stats:  m_i = max_j (y_ij + b_j),  and per column set (the rows' own, the other)
              r_i = sum_j 2^(y_ij + b_j - m_i)    (online, as in flash attention: rescaled when m_i grows)
              u_i = sum_j v_j (2^y_ij - 1)         (the deficits, reference 0; an expm1 series near 0)
    acc:    acc_i = sum_j 2^(y_ij + b_j - m_i) x'_j with the final m_i (nothing to rescale), per chunk of D columns
            (a grid over row blocks and D chunks: any D, the accumulator in registers).

Then in float64 on the device (no synchronization), per row and column set, the weighted sum
S = sum_j s w_j 2^y_ij = 2^m_i r_i, or (C_i + u_i) s / s' (C_i = sum_j v_j, running sums) where its terms are near 1
on average (u_i > -C_i / 2): there the loss, log(S / W) near 0, keeps its digits, as in ``uniform``. With h = 2
where the sweep took every j != i of the rows' own set (each pair seen from both rows), 1 where only j > i:

    L2 = log2 sum_i w_i (S_self_i / h + S_other_i) / s,   lse = L2 ln 2
    d lse / d x_i = 2t 2^E 2^(log2 w_i + m_i - L2) / s (acc_i - R_i x'_i),   R_i = r_self_i + r_other_i
    d lse / d w_i = 2^(log2(S_self_i + S_other_i) - L2) / s  (full rows: h = 1)

and the queue's gradients from the same sweeps with the queue as rows and x as the other set.

Against the unweighted kernels: a score is formed as -c_t d in the compute dtype (there, from d - d_min): a t' d
beyond float32's range (t' > ~1e37 for unit-scale rows) underflows to 0 there; and a pair costs two Gram products,
two exp2 and a deficit besides the E.X product (the unweighted lean sweep: one Gram, one exp2). Compiled for sm_90
(bfloat16, D = 128): 44 and 32 SASS instructions per pair in the two loops, against ~6 in the lean sweep.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .._common import as_scalar_tensor, power_of_two_scale, row_weights
from .._precision import resolve_precision
from .._validation import compute_dtype
from ._prepare import padded, prepare
from ._runtime import INTERPRET, check_interpretable, exp2
from .uniform import (
    _ROW_PAD,
    _SELF_ALL,
    _SELF_NONE,
    _SELF_UPPER,
    _gram,
    _load_rows,
    _operand_dtype,
    _scaled_t,
    _split,
    _weighted_rows,
    _write_row_gradients,
    host_constants,
)

# The rows stay in registers up to this padded D (a split: half); above, D is swept in _CHUNK_D columns. Small
# under the interpreter, so that the tests reach both paths.
_MAX_REGISTER_D = 32 if INTERPRET else 128
_CHUNK_D = 16 if INTERPRET else 64
# float16's p operand: terms scaled by 2^14 into its range (as the unweighted sweeps do).
_P_SCALE = {torch.float16: 16384.0}
# Scores within this much of 0 (log2 units) take their deficit 2^y - 1 from a series for expm1.
_NEAR_ZERO = tl.constexpr(1.0 / 16)
_LN2 = tl.constexpr(math.log(2.0))
_GRAD_ROWS = 16 if INTERPRET else 32
_GRAD_COLS = 64 if INTERPRET else 128


@triton.jit
def _tile(ptr, first, D, offs, d_mask, EVEN_D: tl.constexpr):
    """Rows from ``first`` of a (padded rows x D) matrix at the 32-bit offsets ``offs`` (row r, column k: r D + k)
    from one 64-bit base per tile; no bounds but D's (none when EVEN_D)."""
    base = ptr + tl.cast(first, tl.int64) * D
    if EVEN_D:
        v = tl.load(base + offs)
    else:
        v = tl.load(base + offs, mask=d_mask, other=0.0)
    return v


@triton.jit
def _scores(
    xi,
    xi_lo,
    n_i,
    rows_ptr,
    rows_lo_ptr,
    row0,
    cols_ptr,
    cols_lo_ptr,
    norms_ptr,
    j0,
    c,
    D,
    ONE_CHUNK: tl.constexpr,
    EVEN_D: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    SPLIT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """(y, x'_j, its low part) of the column block from j0: y_ij = -c_t d_ij, d = max(n_i + n_j - 2 x'_i.x'_j, 0)
    (compute dtype; the padding's +inf norms give -inf), the Gram product with the rows in registers (xi; the
    columns returned for the E.X product), or over D in chunks (rows reloaded; nothing returned but y)."""
    offs_d = tl.arange(0, BLOCK_D)
    col_offs = tl.arange(0, BLOCK_N)[:, None] * D + offs_d[None, :]
    g = tl.zeros([BLOCK_M, BLOCK_N], n_i.dtype)
    if ONE_CHUNK:
        d_mask = (offs_d < D)[None, :]
        xj = _tile(cols_ptr, j0, D, col_offs, d_mask, EVEN_D)
        xj_lo = _tile(cols_lo_ptr, j0, D, col_offs, d_mask, EVEN_D) if SPLIT else xj
        g = _gram(xi, xi_lo, tl.trans(xj), tl.trans(xj_lo), g, INPUT_PRECISION, SPLIT)
    else:
        row_offs = tl.arange(0, BLOCK_M)[:, None] * D + offs_d[None, :]
        for d0 in range(0, D, BLOCK_D):
            d_mask = (d0 + offs_d < D)[None, :]
            a = _tile(rows_ptr + d0, row0, D, row_offs, d_mask, False)
            a_lo = _tile(rows_lo_ptr + d0, row0, D, row_offs, d_mask, False) if SPLIT else a
            b = _tile(cols_ptr + d0, j0, D, col_offs, d_mask, False)
            b_lo = _tile(cols_lo_ptr + d0, j0, D, col_offs, d_mask, False) if SPLIT else b
            g = _gram(a, a_lo, tl.trans(b), tl.trans(b_lo), g, INPUT_PRECISION, SPLIT)
        xj = g
        xj_lo = g
    n_j = tl.load(norms_ptr + j0 + tl.arange(0, BLOCK_N)).to(n_i.dtype)
    d = tl.maximum(n_i[:, None] + n_j[None, :] - 2.0 * g, 0.0)
    return -c * d, xj, xj_lo


@triton.jit
def _pairs(offs_m, offs_n, PAIR_MASK: tl.constexpr):
    """Which (i, j) of a tile are pairs: (PAIR_MASK 1) j > i or (2) j != i; 0: every one (the padding's columns
    need no mask: their scores are -inf, their weights 0)."""
    valid = (offs_n >= 0)[None, :] & (offs_m >= 0)[:, None]
    if PAIR_MASK == 1:
        valid = valid & (offs_n[None, :] > offs_m[:, None])
    elif PAIR_MASK == 2:
        valid = valid & (offs_n[None, :] != offs_m[:, None])
    return valid


@triton.jit
def _diagonal_blocks(pid, n_rows, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """[first, end): the column blocks of the rows' own set that hold some j = i of row block ``pid``."""
    row0 = pid * BLOCK_M
    first = row0 // BLOCK_N * BLOCK_N
    end = tl.minimum((row0 + BLOCK_M + BLOCK_N - 1) // BLOCK_N * BLOCK_N, n_rows)
    return first, end


@triton.jit
def _stats_tile(
    m,
    r_a,
    u_a,
    r_b,
    xi,
    xi_lo,
    n_i,
    rows_ptr,
    rows_lo_ptr,
    offs_m,
    cols_ptr,
    cols_lo_ptr,
    norms_ptr,
    log2w_ptr,
    w_ptr,
    j0,
    c,
    D,
    PAIR_MASK: tl.constexpr,
    ONE_CHUNK: tl.constexpr,
    EVEN_D: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    SPLIT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """One column block of set a: m_i <- max(m_i, max_j y_ij + b_j), r_a <- r_a 2^(m_old - m_new) + sum_j
    2^(y_ij + b_j - m_new), u_a += sum_j v_j (2^y_ij - 1); r_b (the other set's sum) rescaled alike."""
    offs_n = j0 + tl.arange(0, BLOCK_N)
    y, _, _ = _scores(
        xi, xi_lo, n_i, rows_ptr, rows_lo_ptr, tl.program_id(0) * BLOCK_M, cols_ptr, cols_lo_ptr, norms_ptr, j0, c,
        D, ONE_CHUNK, EVEN_D, INPUT_PRECISION, SPLIT, BLOCK_M, BLOCK_N, BLOCK_D,
    )  # fmt: skip
    b = tl.load(log2w_ptr + offs_n).to(y.dtype)  # padded with -inf
    v = tl.load(w_ptr + offs_n).to(y.dtype)  # padded with 0
    yw = y + b[None, :]
    if PAIR_MASK != 0:
        valid = _pairs(offs_m, offs_n, PAIR_MASK)
        yw = tl.where(valid, yw, float("-inf"))
    m_new = tl.maximum(m, tl.max(yw, axis=1))
    m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # no term yet: nothing to rescale
    rescale = exp2((m - m_ref).to(tl.float64))
    p = exp2(yw - m_ref[:, None])
    r_a = r_a * rescale + tl.sum(p, axis=1).to(tl.float64)
    r_b = r_b * rescale
    # 2^y - 1 = expm1(a), a = y ln 2: a series near 0, where 2^y - 1 would keep only exp2's rounding of 2^y.
    # (|a| <= ln 2 / 16: the series' remainder is below 3e-8 of it.)
    a = y * _LN2
    series = a * (1.0 + a * (0.5 + a * (1.0 / 6 + a * (1.0 / 24))))
    deficit = v[None, :] * tl.where(y > -_NEAR_ZERO, series, exp2(y) - 1.0)
    if PAIR_MASK != 0:
        deficit = tl.where(valid, deficit, 0.0)
    u_a += tl.sum(deficit, axis=1).to(tl.float64)
    return m_new, r_a, u_a, r_b


@triton.jit
def _weighted_stats_kernel(
    rows_ptr,
    rows_lo_ptr,
    rows_norms_ptr,
    rows_log2w_ptr,
    rows_w_ptr,
    n_rows,
    other_ptr,
    other_lo_ptr,
    other_norms_ptr,
    other_log2w_ptr,
    other_w_ptr,
    n_other,
    consts_ptr,
    info_ptr,
    m_ptr,
    sums_ptr,
    D,
    SELF_MODE: tl.constexpr,
    HAS_OTHER: tl.constexpr,
    ONE_CHUNK: tl.constexpr,
    EVEN_D: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    SPLIT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Per row: m (compute dtype) and sums (float64, 4 x n_rows: r_self, u_self, r_other, u_other), see above.
    SELF_MODE: the rows' own set not at all (0), j > i (1), every j != i (2). Rows, norms and column weights padded
    to a multiple of BLOCK_M and BLOCK_N (zero rows, +inf norms, log2-weights -inf, weights 0)."""
    ty = m_ptr.dtype.element_ty
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < n_rows
    offs_m64 = offs_m.to(tl.int64)
    c, _, _ = _scaled_t(consts_ptr, info_ptr, ty)
    n_i = tl.load(rows_norms_ptr + offs_m).to(ty)
    offs_d = tl.arange(0, BLOCK_D)
    if ONE_CHUNK:
        xi = _load_rows(rows_ptr, offs_m64, mask_m, offs_d, D)
        xi_lo = _load_rows(rows_lo_ptr, offs_m64, mask_m, offs_d, D) if SPLIT else xi
    else:  # reloaded chunk by chunk: placeholders
        xi = tl.zeros([1, 1], ty)
        xi_lo = xi
    m = tl.full([BLOCK_M], float("-inf"), ty)
    r_self = tl.zeros([BLOCK_M], tl.float64)
    u_self = tl.zeros([BLOCK_M], tl.float64)
    r_other = tl.zeros([BLOCK_M], tl.float64)
    u_other = tl.zeros([BLOCK_M], tl.float64)
    if SELF_MODE != 0:
        # The column blocks holding some j = i take the pair mask; the others none (separate loops: one tile
        # body live at a time, no branch in the loop).
        diag_first, diag_end = _diagonal_blocks(pid, n_rows, BLOCK_M, BLOCK_N)
        for j0 in range(diag_first, diag_end, BLOCK_N):
            m, r_self, u_self, r_other = _stats_tile(
                m, r_self, u_self, r_other, xi, xi_lo, n_i, rows_ptr, rows_lo_ptr, offs_m, rows_ptr, rows_lo_ptr,
                rows_norms_ptr, rows_log2w_ptr, rows_w_ptr, j0, c, D, SELF_MODE, ONE_CHUNK, EVEN_D, INPUT_PRECISION,
                SPLIT, BLOCK_M, BLOCK_N, BLOCK_D,
            )  # fmt: skip
        if SELF_MODE == 2:  # the blocks before the diagonal (SELF_MODE 1: none of them holds a j > i)
            for j0 in range(0, diag_first, BLOCK_N):
                m, r_self, u_self, r_other = _stats_tile(
                    m, r_self, u_self, r_other, xi, xi_lo, n_i, rows_ptr, rows_lo_ptr, offs_m, rows_ptr,
                    rows_lo_ptr, rows_norms_ptr, rows_log2w_ptr, rows_w_ptr, j0, c, D, 0, ONE_CHUNK, EVEN_D,
                    INPUT_PRECISION, SPLIT, BLOCK_M, BLOCK_N, BLOCK_D,
                )  # fmt: skip
        for j0 in range(diag_end, n_rows, BLOCK_N):
            m, r_self, u_self, r_other = _stats_tile(
                m, r_self, u_self, r_other, xi, xi_lo, n_i, rows_ptr, rows_lo_ptr, offs_m, rows_ptr, rows_lo_ptr,
                rows_norms_ptr, rows_log2w_ptr, rows_w_ptr, j0, c, D, 0, ONE_CHUNK, EVEN_D, INPUT_PRECISION, SPLIT,
                BLOCK_M, BLOCK_N, BLOCK_D,
            )  # fmt: skip
    if HAS_OTHER:
        for j0 in range(0, n_other, BLOCK_N):
            m, r_other, u_other, r_self = _stats_tile(
                m, r_other, u_other, r_self, xi, xi_lo, n_i, rows_ptr, rows_lo_ptr, offs_m, other_ptr, other_lo_ptr,
                other_norms_ptr, other_log2w_ptr, other_w_ptr, j0, c, D, 0, ONE_CHUNK, EVEN_D, INPUT_PRECISION,
                SPLIT, BLOCK_M, BLOCK_N, BLOCK_D,
            )  # fmt: skip
    tl.store(m_ptr + offs_m, m, mask=mask_m)
    tl.store(sums_ptr + offs_m, r_self, mask=mask_m)
    tl.store(sums_ptr + n_rows + offs_m, u_self, mask=mask_m)
    tl.store(sums_ptr + 2 * n_rows + offs_m, r_other, mask=mask_m)
    tl.store(sums_ptr + 3 * n_rows + offs_m, u_other, mask=mask_m)


@triton.jit
def _acc_tile(
    acc,
    m_ref,
    xi,
    xi_lo,
    n_i,
    rows_ptr,
    rows_lo_ptr,
    offs_m,
    cols_ptr,
    cols_lo_ptr,
    norms_ptr,
    log2w_ptr,
    j0,
    c,
    D,
    out0,
    PAIR_MASK: tl.constexpr,
    P_SCALE: tl.constexpr,
    ONE_CHUNK: tl.constexpr,
    EVEN_D: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    SPLIT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """acc_i += sum_j P_SCALE 2^(y_ij + b_j - m_i) x'_j over one column block, columns [out0, out0 + BLOCK_D)."""
    offs_n = j0 + tl.arange(0, BLOCK_N)
    y, xj, xj_lo = _scores(
        xi, xi_lo, n_i, rows_ptr, rows_lo_ptr, tl.program_id(0) * BLOCK_M, cols_ptr, cols_lo_ptr, norms_ptr, j0, c,
        D, ONE_CHUNK, EVEN_D, INPUT_PRECISION, SPLIT, BLOCK_M, BLOCK_N, BLOCK_D,
    )  # fmt: skip
    b = tl.load(log2w_ptr + offs_n).to(y.dtype)
    yw = y + b[None, :]
    if PAIR_MASK != 0:
        yw = tl.where(_pairs(offs_m, offs_n, PAIR_MASK), yw, float("-inf"))
    p = exp2(yw - m_ref[:, None])
    if P_SCALE != 1.0:
        p = p * P_SCALE
    if not ONE_CHUNK:  # this program's columns of x'_j (with ONE_CHUNK: all of them, the Gram's operand)
        offs_d = tl.arange(0, BLOCK_D)
        col_offs = tl.arange(0, BLOCK_N)[:, None] * D + offs_d[None, :]
        d_mask = (out0 + offs_d < D)[None, :]
        xj = _tile(cols_ptr + out0, j0, D, col_offs, d_mask, False)
        xj_lo = _tile(cols_lo_ptr + out0, j0, D, col_offs, d_mask, False) if SPLIT else xj
    return _weighted_rows(p, xj, xj_lo, acc, INPUT_PRECISION, SPLIT)


@triton.jit
def _weighted_acc_kernel(
    rows_ptr,
    rows_lo_ptr,
    rows_norms_ptr,
    rows_log2w_ptr,
    n_rows,
    other_ptr,
    other_lo_ptr,
    other_norms_ptr,
    other_log2w_ptr,
    n_other,
    consts_ptr,
    info_ptr,
    m_ptr,
    acc_ptr,
    D,
    SELF_MODE: tl.constexpr,
    HAS_OTHER: tl.constexpr,
    P_SCALE: tl.constexpr,
    ONE_CHUNK: tl.constexpr,
    EVEN_D: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    SPLIT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Program (i, k): acc (compute dtype, n_rows x D) of row block i, columns [k BLOCK_D, (k + 1) BLOCK_D), with
    the final m of ``_weighted_stats_kernel``. SELF_MODE 2 or 0 (the gradient needs every pair of a row)."""
    ty = acc_ptr.dtype.element_ty
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < n_rows
    offs_m64 = offs_m.to(tl.int64)
    out0 = tl.program_id(1) * BLOCK_D
    offs_out = out0 + tl.arange(0, BLOCK_D)
    c, _, _ = _scaled_t(consts_ptr, info_ptr, ty)
    n_i = tl.load(rows_norms_ptr + offs_m).to(ty)
    m = tl.load(m_ptr + offs_m, mask=mask_m, other=float("-inf"))
    m_ref = tl.where(m == float("-inf"), 0.0, m)
    if ONE_CHUNK:
        xi = _load_rows(rows_ptr, offs_m64, mask_m, offs_out, D)
        xi_lo = _load_rows(rows_lo_ptr, offs_m64, mask_m, offs_out, D) if SPLIT else xi
    else:
        xi = tl.zeros([1, 1], ty)
        xi_lo = xi
    acc = tl.zeros([BLOCK_M, BLOCK_D], ty)
    if SELF_MODE != 0:
        diag_first, diag_end = _diagonal_blocks(pid, n_rows, BLOCK_M, BLOCK_N)
        for j0 in range(diag_first, diag_end, BLOCK_N):
            acc = _acc_tile(
                acc, m_ref, xi, xi_lo, n_i, rows_ptr, rows_lo_ptr, offs_m, rows_ptr, rows_lo_ptr, rows_norms_ptr,
                rows_log2w_ptr, j0, c, D, out0, 2, P_SCALE, ONE_CHUNK, EVEN_D, INPUT_PRECISION, SPLIT, BLOCK_M, BLOCK_N,
                BLOCK_D,
            )  # fmt: skip
        for j0 in range(0, diag_first, BLOCK_N):
            acc = _acc_tile(
                acc, m_ref, xi, xi_lo, n_i, rows_ptr, rows_lo_ptr, offs_m, rows_ptr, rows_lo_ptr, rows_norms_ptr,
                rows_log2w_ptr, j0, c, D, out0, 0, P_SCALE, ONE_CHUNK, EVEN_D, INPUT_PRECISION, SPLIT, BLOCK_M, BLOCK_N,
                BLOCK_D,
            )  # fmt: skip
        for j0 in range(diag_end, n_rows, BLOCK_N):
            acc = _acc_tile(
                acc, m_ref, xi, xi_lo, n_i, rows_ptr, rows_lo_ptr, offs_m, rows_ptr, rows_lo_ptr, rows_norms_ptr,
                rows_log2w_ptr, j0, c, D, out0, 0, P_SCALE, ONE_CHUNK, EVEN_D, INPUT_PRECISION, SPLIT, BLOCK_M, BLOCK_N,
                BLOCK_D,
            )  # fmt: skip
    if HAS_OTHER:
        for j0 in range(0, n_other, BLOCK_N):
            acc = _acc_tile(
                acc, m_ref, xi, xi_lo, n_i, rows_ptr, rows_lo_ptr, offs_m, other_ptr, other_lo_ptr, other_norms_ptr,
                other_log2w_ptr, j0, c, D, out0, 0, P_SCALE, ONE_CHUNK, EVEN_D, INPUT_PRECISION, SPLIT, BLOCK_M,
                BLOCK_N, BLOCK_D,
            )  # fmt: skip
    if P_SCALE != 1.0:
        acc = acc * (1.0 / P_SCALE)
    tl.store(acc_ptr + offs_m64[:, None] * D + offs_out[None, :], acc, mask=mask_m[:, None] & (offs_out < D)[None, :])


@triton.jit
def _weighted_grad_kernel(
    v_ptr, v_lo_ptr, acc_ptr, sums_ptr, log2_coef_ptr, n_rows, D, info_ptr, SPLIT: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """In place in acc: d lse / d v_i = 2^(log2_coef_i + E) (acc_i - R_i v'_i), R_i = r_self_i + r_other_i."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    mask_r = rows < n_rows
    log2_coef = tl.load(log2_coef_ptr + rows, mask=mask_r, other=float("-inf"))
    _write_row_gradients(
        v_ptr, v_lo_ptr, acc_ptr, acc_ptr, sums_ptr, n_rows, rows, mask_r, log2_coef, tl.load(info_ptr).to(tl.int64),
        tl.load(info_ptr + 1) != 0, D, SPLIT, BLOCK_C,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# Host side


def _blocks(dtype: torch.dtype, split: bool) -> triton.Config:
    """One block configuration (not tuned). Compiled for sm_90, neither sweep spills registers with these at
    D = 128 (16-bit operands: 44 and 32 SASS instructions per pair in the statistics and accumulator loops) nor with
    a split at D = 64 and 128 (its three dots per product: 32-column blocks); float64's dots hold more registers."""
    if INTERPRET:
        return triton.Config({"BLOCK_M": 16, "BLOCK_N": 16})
    if dtype == torch.float64:
        return triton.Config({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=4, num_stages=2)
    return triton.Config({"BLOCK_M": 64, "BLOCK_N": 32 if split else 64}, num_warps=8, num_stages=2)


class _Columns:
    """One set of rows as the kernels take it: x' (and its low part), norms, and the column weights in the compute
    dtype (float32, float64 for float64 inputs), padded with -inf and 0 to the rows' padding: log2(s w) with the
    scale s common to both sets (the scores of both sets share a row's maximum and its accumulator), and the values
    s' w for the deficits with this set's own scale s' (its largest in [0.5, 1): a set far lighter than the other
    keeps its digits there, where s w could be subnormal)."""

    def __init__(self, rows, rows_lo, norms, weights: torch.Tensor, log2_scale: torch.Tensor, dtype: torch.dtype):
        self.rows, self.lo, self.norms = rows, rows_lo, norms
        n = rows.shape[0]
        n_pad = padded(n, _ROW_PAD)
        log2_w = weights.log2()
        self.log2w = torch.full((n_pad,), -math.inf, dtype=dtype, device=rows.device)
        self.log2w[:n] = log2_w + log2_scale  # log2(s w), float64: no product that underflows
        own_scale = power_of_two_scale(weights)  # s'
        # log2(s / s'): what turns a sum of the values into the common scale.
        self.log2_shift = log2_scale - own_scale.log2()
        self.w = torch.zeros(n_pad, dtype=dtype, device=rows.device)
        self.w[:n] = torch.exp2(log2_w + own_scale.log2())
        # The values in float64 for the running sums C (S = C + u near 0): from the compute dtype's values C would
        # carry their rounding (2^-24 relative in float32), which the loss log(S / W) near 0 cannot afford (W is exact).
        self.w64 = weights.to(torch.float64) * own_scale
        self.n = n

    def total(self) -> torch.Tensor:
        """The sum of the values s' w (float64)."""
        return self.w64.sum()

    def partner_sums(self, upper: bool) -> torch.Tensor:
        """Per row, as a column set of its own, the sum of the others' values s' w_j (float64): j > i with
        ``upper``, else j != i. Running sums of nonnegative terms: total - w_i would lose every digit of a row's
        partners where its own weight dominates them."""
        values = self.w64
        zero = values.new_zeros(1)
        after = torch.cat([values.flip(0).cumsum(0).flip(0)[1:], zero])
        return after if upper else torch.cat([zero, values.cumsum(0)[:-1]]) + after

    def args(self, with_values: bool = True) -> tuple:
        lo = self.rows if self.lo is None else self.lo  # never read without a split
        return (self.rows, lo, self.norms, self.log2w, *((self.w,) if with_values else ()), self.n)


def _launch_constants(d: int, self_mode: int, has_other: bool, precision: str) -> dict[str, object]:
    split = _split(precision)
    width = max(16, triton.next_power_of_2(d))  # tl.dot needs K >= 16
    one_chunk = width <= (_MAX_REGISTER_D // 2 if split else _MAX_REGISTER_D)
    return {
        "SELF_MODE": self_mode,
        "HAS_OTHER": has_other,
        "ONE_CHUNK": one_chunk,
        "EVEN_D": one_chunk and d == width,
        "INPUT_PRECISION": "ieee",  # as in ``uniform``: tf32 runs on a float16 copy
        "SPLIT": split,
        "BLOCK_D": width if one_chunk else _CHUNK_D,
    }


def _sweep(
    rows: _Columns, other: _Columns | None, consts, info, dtype, self_mode: int, need_acc: bool, precision: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(m, sums, acc or None) of the rows against their own set (``self_mode``) and ``other``."""
    n, d = rows.rows.shape
    config = _blocks(dtype, rows.lo is not None)
    constants = _launch_constants(d, self_mode, other is not None, precision)
    other_args = (other or rows).args()
    m = torch.empty(n, dtype=dtype, device=rows.rows.device)
    sums = torch.empty((4, n), dtype=torch.float64, device=rows.rows.device)
    grid = (triton.cdiv(n, config.kwargs["BLOCK_M"]),)
    wrap_triton(_weighted_stats_kernel)[grid](
        *rows.args(), *other_args, consts, info, m, sums, d, **constants, **config.kwargs,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )  # fmt: skip
    if not need_acc:
        return m, sums, None
    acc = torch.empty((n, d), dtype=dtype, device=rows.rows.device)
    grid = (grid[0], triton.cdiv(d, constants["BLOCK_D"]))
    wrap_triton(_weighted_acc_kernel)[grid](
        *rows.args(False), *(other or rows).args(False), consts, info, m, acc, d,
        P_SCALE=_P_SCALE.get(rows.rows.dtype, 1.0), **constants, **config.kwargs, num_warps=config.num_warps,
        num_stages=config.num_stages,
    )  # fmt: skip
    return m, sums, acc


def _log2_set_sum(m: torch.Tensor, r: torch.Tensor, u: torch.Tensor, count: torch.Tensor, cols: _Columns):
    """log2 of a row's sum over one column set ``cols`` of s w_j 2^y_ij (float64): from the deficits,
    log2(C + u) + log2(s / s'), where the terms are near 1 on average (u > -C/2, so no more than a bit cancels) and
    C is far above the compute dtype's subnormal range (values there keep few digits), else m + log2 r (-inf for no
    term)."""
    far = m.to(torch.float64) + r.log2()
    near = (count + u).log2() + cols.log2_shift
    usable = (u > -0.5 * count) & (count > torch.finfo(m.dtype).tiny * 2.0**26)
    return torch.where(usable, near, far)


@triton_op("hyperloss::triton_uniform_lse_weighted", mutates_args=())
def triton_uniform_lse_weighted(
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
    precision: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The op behind ``uniform_lse_weighted``: absent gradients are returned as empty tensors."""
    dtype = compute_dtype(x.dtype)
    n, k = x.shape[0], 0 if queue is None else queue.shape[0]
    device = x.device
    consts = host_constants(t, n, k, intra_batch, device)
    prep = prepare(x, queue, _operand_dtype(x.dtype, precision), row_pad=_ROW_PAD, split=_split(precision))
    w = row_weights(weights, n, device)
    qw = None if queue is None else row_weights(queue_weights, k, device)
    log2_w = w.log2()
    log2_qw = None if qw is None else qw.log2()
    log2_scale = power_of_two_scale(w, qw).log2()
    # The inputs' finiteness (prepare's) and the weights': a NaN weight makes everything NaN, as a NaN row does.
    finite = torch.stack([torch.isfinite(v).all() for v in (w, qw) if v is not None]).all()
    info = torch.stack([prep.info[0], torch.where(finite, prep.info[1], 0.0)])
    xs = _Columns(prep.x, prep.x_lo, prep.x_norms, w, log2_scale, dtype)
    qs = None if queue is None else _Columns(prep.queue, prep.queue_lo, prep.queue_norms, qw, log2_scale, dtype)
    grad_queue = grad_queue and qs is not None
    grad_queue_weights = grad_queue_weights and qs is not None

    if not intra_batch:
        self_mode = _SELF_NONE
    else:  # a row's gradients need every pair it is in; the loss alone needs each pair once
        self_mode = _SELF_ALL if grad_x or grad_weights else _SELF_UPPER
    m, sums, acc = _sweep(xs, qs, consts, info, dtype, self_mode, grad_x, precision)
    if self_mode == _SELF_NONE:
        self_sum = torch.full_like(log2_w, -math.inf)
    else:
        count = xs.partner_sums(upper=self_mode == _SELF_UPPER)
        self_sum = _log2_set_sum(m, sums[0], sums[1], count, xs)
    other_sum = torch.full_like(log2_w, -math.inf)
    if qs is not None:
        other_sum = _log2_set_sum(m, sums[2], sums[3], qs.total().expand(n), qs)
    log2_h = 1.0 if self_mode == _SELF_ALL else 0.0  # each pair of x swept from both of its rows, or once
    row_sum = torch.logaddexp2(self_sum - log2_h, other_sum) - log2_scale
    l2 = torch.logsumexp((log2_w + row_sum) * math.log(2.0), 0) / math.log(2.0)
    lse = torch.where(info[1] != 0, l2 * math.log(2.0), math.nan)

    gx = gq = gw = gqw = None
    log2_2t = consts[0].log2() + 1.0
    if grad_x:
        log2_coef = log2_2t + log2_w + m.to(torch.float64) - l2 - log2_scale
        gx = _finish_grad(prep.x, prep.x_lo, acc, sums, log2_coef, info)
    if grad_weights:
        gw = torch.exp2(torch.logaddexp2(self_sum, other_sum) - log2_scale - l2)
    if grad_queue or grad_queue_weights:
        m_q, sums_q, acc_q = _sweep(qs, xs, consts, info, dtype, _SELF_NONE, grad_queue, precision)
        if grad_queue:
            log2_coef = log2_2t + log2_qw + m_q.to(torch.float64) - l2 - log2_scale
            gq = _finish_grad(prep.queue, prep.queue_lo, acc_q, sums_q, log2_coef, info)
        if grad_queue_weights:
            q_sum = _log2_set_sum(m_q, sums_q[2], sums_q[3], xs.total().expand(k), xs)
            gqw = torch.exp2(q_sum - log2_scale - l2)
    gw, gqw = (None if g is None else torch.where(info[1] != 0, g, math.nan) for g in (gw, gqw))
    # An op returns tensors: empty ones for the gradients not asked for.
    gx, gq = (x.new_empty(0, dtype=dtype) if g is None else g for g in (gx, gq))
    gw, gqw = (lse.new_empty(0) if g is None else g for g in (gw, gqw))
    return lse, gx, gq, gw, gqw


def _finish_grad(v, v_lo, acc, sums, log2_coef, info) -> torch.Tensor:
    """The gradient to the rows v' (x' or q'), written over acc."""
    n, d = v.shape
    log2_coef = log2_coef.contiguous()
    wrap_triton(_weighted_grad_kernel)[(triton.cdiv(n, _GRAD_ROWS),)](
        v, v if v_lo is None else v_lo, acc, sums, log2_coef, n, d, info,
        SPLIT=v_lo is not None, BLOCK_R=_GRAD_ROWS, BLOCK_C=_GRAD_COLS, num_warps=8,
    )  # fmt: skip
    return acc


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
    *,
    precision: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """lse = log sum over pairs w_u w_v exp(-t ||u - v||^2) and its gradients (``hyperloss.backends``' optional
    ``uniform_lse_weighted`` primitive): lse a 0-dim float64 tensor, the row gradients in the compute dtype, the
    weights' in float64, None where not asked for; NaN where any input element (weights included) is not finite.

    ``weights`` / ``queue_weights``: float64 (N,) / (K,) weights >= 0 on x's device, or None (all 1); checked by
    the caller. ``precision`` as for ``uniform_lse``; under TRITON_INTERPRET=1 bfloat16 inputs and tf32/bf16
    products raise NotImplementedError.
    """
    resolved = resolve_precision(x.dtype, precision)
    check_interpretable(x.dtype, resolved)
    lse, gx, gq, gw, gqw = torch.ops.hyperloss.triton_uniform_lse_weighted(
        x, queue, as_scalar_tensor(t), intra_batch, weights, queue_weights, grad_x, grad_queue, grad_weights,
        grad_queue_weights, resolved,
    )  # fmt: skip
    has_queue = queue is not None
    return (
        lse,
        gx if grad_x else None,
        gq if grad_queue and has_queue else None,
        gw if grad_weights else None,
        gqw if grad_queue_weights and has_queue else None,
    )
