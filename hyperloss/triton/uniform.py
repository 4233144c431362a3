"""Uniformity on the GPU: lse = log sum over pairs exp(-t ||u - v||^2) and its gradients, with no N x N buffer.

The rows are first centered and scaled by a power of two (``_prepare``): x' = (x - c) 2^-E, and with t' = t 4^E
every score is s = -t' d, d = ||x'_i - x'_j||^2 = max(n_i + n_j - 2 x'_i.x'_j, 0). The Gram form then cancels only
on the rows' spread, never on a common offset, and no norm over- or underflows.

One kernel, launched once for the loss and the gradient to x, and once more with the roles swapped for the
gradient to the queue. Each program owns BLOCK_M "rows" and sweeps the column blocks of up to two "column sets":
the rows themselves (the i<j pairs within x) and another set (the queue; or x when the rows are the queue). Like
flash attention it keeps per row a running reference, here the smallest distance dref_i so far, and sums of
p_ij = exp(-t' (d_ij - dref_i)) <= 1. The exponent is formed from d - dref, never from t' d: any finite t works
(t' d may lie far outside the compute dtype; t' itself is clamped to it, which only flushes terms that are 0 at the
true t' anyway). Per row and column set the kernel keeps, in float64,
    r_i = sum_j p_ij                  (the plain sum)
    u_i = sum_j (p_ij - 1) = r_i - #j  (the deficit: all there is of the loss where every p is near 1)
and, for the gradient, acc_i = sum_j p_ij x'_j (compute dtype). A closer pair rescales them by
a = exp(-t' (dref - dref_new)), in float64: r <- a r, u <- u + (a - 1) r. A column block whose terms are all within
1/32 of 1 takes its deficit from a series for expm1 instead of p - 1, which would carry exp2's rounding of p (a few
ulps of 1 on a GPU): losses near 0 keep their digits (t = 1e-6: -2e-6 to 1e-7 relative in float32).

Two small kernels finish in float64 (base 2 inside), relative to the smallest distance dmin over all rows:
    P_i = r_self_i / h + r_other_i, or count_i + u_self_i / h + u_other_i where the deficit is the smaller sum
    L = logsumexp_i(-t' (dref_i - dmin) + log P_i) <= log |P|,    lse = L - t' dmin
    d lse / d x_i = -2t 2^E exp(-t' (dref_i - dmin) - L) (R_i x'_i - acc_i),  R_i = r_self_i + r_other_i
where h = 2 when every column j != i of the rows' own set was swept (each unordered pair is then seen from both
of its rows), h = 1 when only j > i was (loss only). t' d and 2^E are applied as exact powers of two, the gradient's
row factor as a mantissa and powers of two: over- or underflow only where the result itself does. Everything stays
on the device (no synchronization) and t is read at run time (one compiled graph for every t).

Limit: a distance below the rounding of the Gram form (~ eps ||x'||^2, x' the centered rows) is not resolved, e.g.
two equal rows may come out at a tiny positive distance; at a very large t (t' d of such a rounding >> 1) such a
pair then weighs ~0 instead of 1. The loss is still finite and within that score error, never NaN.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .._common import as_scalar_tensor, num_pairs
from .._precision import resolve_precision
from .._validation import compute_dtype
from ._prepare import prepare
from ._runtime import INTERPRET, check_interpretable, exp2, log2, maybe_autotune, mul_pow2, size_bucket

# How the rows' own set is swept (SELF_MODE): not at all, j > i (loss only), or every j != i (with gradient).
_SELF_NONE, _SELF_UPPER, _SELF_ALL = 0, 1, 2

# The accumulator acc_i (BLOCK_M x D) stays in registers up to this padded D; above it lives in the output buffer
# and D is swept in CHUNK_D columns (slower, but any D works), and the dot products are summed in float64 every
# FOLD_D columns. Small under the interpreter so that the tests reach both paths with small D.
_MAX_REGISTER_D = 32 if INTERPRET else 256
_CHUNK_D = 16 if INTERPRET else 64
_FOLD_D = 32 if INTERPRET else 256

# A column block whose row sums miss at most this much of their count (every term p > 1 - 1/32) takes its deficit
# sum (p - 1) from an expm1 series.
_NEAR_ONE = tl.constexpr(1.0 / 32)

# float32 operand precision per torch name (and our own names for precision=).
# The first config is also the one used untuned (HYPERLOSS_TRITON_AUTOTUNE=0): moderate registers for any D.
_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bm, bn, w, s in [
        (64, 64, 4, 3),
        (128, 64, 8, 2),
        (128, 64, 4, 3),
        (128, 128, 8, 2),
        (128, 32, 4, 3),
        (64, 128, 4, 2),
    ]
]


@triton.jit
def _load_rows(ptr, offs_r64, mask_r, offs_d, D):
    """Rows offs_r, columns offs_d of a contiguous (rows x D) matrix, zeros outside it."""
    mask = mask_r[:, None] & (offs_d[None, :] < D)
    return tl.load(ptr + offs_r64[:, None] * D + offs_d.to(tl.int64)[None, :], mask=mask, other=0.0)


@triton.jit
def _pair_counts(offs_m, j0, n_cols, PAIR_MASK: tl.constexpr, BLOCK_N: tl.constexpr):
    """Per row, how many pairs the column block [j0, j0 + BLOCK_N) holds (no per-pair work)."""
    stop = tl.minimum(j0 + BLOCK_N, n_cols)
    if PAIR_MASK == 1:
        count = stop - tl.maximum(offs_m + 1, j0)
    elif PAIR_MASK == 2:
        count = (stop - j0) - ((offs_m >= j0) & (offs_m < stop)).to(tl.int32)
    else:
        count = tl.zeros_like(offs_m) + (stop - j0)
    return tl.maximum(count, 0)


@triton.jit
def _tile_step(
    dref,
    r_add,
    u_add,
    r_keep,
    u_keep,
    acc,
    xi,
    a_i,
    a_i64,
    rows_ptr,
    offs_m,
    mask_m,
    cols_ptr,
    a_cols_ptr,
    j0,
    n_cols,
    acc_ptr,
    c,
    c64,
    tn,
    D,
    PAIR_MASK: tl.constexpr,
    NEED_ACC: tl.constexpr,
    ONE_CHUNK: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    FOLD_D: tl.constexpr,
):
    """One column block: d_ij, the new reference dref_i, then p_ij = 2^(c (dref_i - d_ij)) (c = t' log2 e) into the
    sums of its column set (r_add, u_add); the other set's sums (r_keep, u_keep) are only rescaled."""
    ty = a_i.dtype
    offs_m64 = offs_m.to(tl.int64)
    offs_n = j0 + tl.arange(0, BLOCK_N)
    mask_n = offs_n < n_cols
    offs_n64 = offs_n.to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    # Absent columns get an infinite norm, hence d = inf and p = 0, without a select per pair.
    a_j64 = tl.load(a_cols_ptr + offs_n, mask=mask_n, other=float("inf"))
    if ONE_CHUNK:
        xj = _load_rows(cols_ptr, offs_n64, mask_n, offs_d, D)
        g = tl.dot(xi, tl.trans(xj), input_precision=INPUT_PRECISION, out_dtype=ty)
        d = (a_i[:, None] + a_j64.to(ty)[None, :]) - 2.0 * g
    else:
        # Long rows: the products of FOLD_D columns at a time are added up in float64.
        g64 = tl.zeros([BLOCK_M, BLOCK_N], tl.float64)
        for f0 in range(0, D, FOLD_D):
            g = tl.zeros([BLOCK_M, BLOCK_N], ty)
            for d0 in range(f0, tl.minimum(f0 + FOLD_D, D), BLOCK_D):
                xi_c = _load_rows(rows_ptr, offs_m64, mask_m, d0 + offs_d, D)
                xj_c = _load_rows(cols_ptr, offs_n64, mask_n, d0 + offs_d, D)
                g = tl.dot(xi_c, tl.trans(xj_c), g, input_precision=INPUT_PRECISION, out_dtype=ty)
            g64 += g.to(tl.float64)
        d = ((a_i64[:, None] + a_j64[None, :]) - 2.0 * g64).to(ty)
    d = tl.maximum(d, 0.0)
    if PAIR_MASK == 1:
        d = tl.where(offs_n[None, :] > offs_m[:, None], d, float("inf"))
    elif PAIR_MASK == 2:
        d = tl.where(offs_n[None, :] != offs_m[:, None], d, float("inf"))

    # Per row: the new reference, and the float64 rescale a of the sums so far (0 before the row's first pair),
    # skipped (one scalar branch) in the blocks where no row found a closer pair, which after the first few is most.
    dref_new = tl.minimum(dref, tl.min(d, axis=1))
    no_pair = dref_new == float("inf")
    ref = tl.where(no_pair, 0.0, dref_new)
    a = tl.full([BLOCK_M], 1.0, tl.float64)
    if tl.max(tl.where(dref_new < dref, 1, 0), axis=0) > 0:
        a = exp2(-(c64 * tl.where(no_pair, 0.0, dref.to(tl.float64) - ref.to(tl.float64))))
        u_add = u_add + (a - 1.0) * r_add
        r_add = r_add * a
        u_keep = u_keep + (a - 1.0) * r_keep
        r_keep = r_keep * a
        if NEED_ACC:
            if ONE_CHUNK:
                acc = acc * a.to(ty)[:, None]

    y = c * (ref[:, None] - d)  # <= 0, -inf for absent pairs; never t' * d
    p = exp2(y)
    s = tl.sum(p, axis=1)
    count = _pair_counts(offs_m, j0, n_cols, PAIR_MASK, BLOCK_N).to(ty)
    deficit = s.to(tl.float64) - count.to(tl.float64)
    # One test per block (a scalar branch, no per-pair select outside it): is every p > 1 - 1/32? Then the
    # deficit is summed from a series for expm1(z) = p - 1, z = -t' (d - dref) in (-0.04, 0]: exact where p - 1
    # would carry exp2's rounding of p (a few ulps of 1, on a GPU), which is all there is of the loss near 0.
    near = tl.max(tl.where(mask_m, count - s, 0.0), axis=0) <= _NEAR_ONE
    if near:
        z = tn * (ref[:, None] - d)
        if ty == tl.float64:
            # Exact integer divisors (no rounded coefficients); the first omitted term is below 2^-58 of z.
            e = z * (
                1.0
                + z / 2 * (1.0 + z / 3 * (1.0 + z / 4 * (1.0 + z / 5 * (1.0 + z / 6 * (1.0 + z / 7 * (1.0 + z / 8))))))
            )
        else:
            e = z * (1.0 + z * (0.5 + z * (0.16666666666666666 + z * 0.041666666666666664)))  # omits z^5/120 < 2^-26 z
        deficit = tl.sum(tl.where(y > -1.0, e, 0.0), axis=1).to(tl.float64)
    r_add += s.to(tl.float64)
    u_add += deficit

    if NEED_ACC:
        a_ty = a.to(ty)
        if ONE_CHUNK:
            acc = tl.dot(p.to(xj.dtype), xj, acc, input_precision=INPUT_PRECISION, out_dtype=ty)
        else:
            for d0 in range(0, D, BLOCK_D):
                cols = d0 + offs_d
                xj_c = _load_rows(cols_ptr, offs_n64, mask_n, cols, D)
                ptrs = acc_ptr + offs_m64[:, None] * D + cols[None, :]
                amask = mask_m[:, None] & (cols[None, :] < D)
                acc_c = tl.load(ptrs, mask=amask, other=0.0)
                acc_c = tl.dot(
                    p.to(xj_c.dtype), xj_c, acc_c * a_ty[:, None], input_precision=INPUT_PRECISION, out_dtype=ty
                )
                tl.store(ptrs, acc_c, mask=amask)
            # The next block reads these rows back, possibly from other threads of the program.
            tl.debug_barrier()
    return dref_new, r_add, u_add, r_keep, u_keep, acc


@triton.jit
def _scaled_t(consts_ptr, info_ptr, ty: tl.constexpr):
    """(c, c64, tn): c = t' log2 e and tn = t' (t' = t 4^E) in the compute dtype ty, clamped to its positive normal
    range (a clamp only flushes terms that are 0 at the true t' anyway, and keeps c * 0 and c * inf from NaN), and
    c64 = c in float64 (clamped to float64's range)."""
    e2 = 2 * tl.load(info_ptr).to(tl.int64)
    t_scaled = mul_pow2(tl.load(consts_ptr), e2)
    c64 = tl.minimum(tl.maximum(mul_pow2(tl.load(consts_ptr + 1), e2), 2.2250738585072014e-308), 1.7976931348623157e308)
    if ty == tl.float64:
        c = c64
        tn = tl.minimum(tl.maximum(t_scaled, 2.2250738585072014e-308), 1.7976931348623157e308)
    else:
        c = tl.minimum(tl.maximum(c64, 1.1754943508222875e-38), 3.4028234663852886e38).to(ty)
        tn = tl.minimum(tl.maximum(t_scaled, 1.1754943508222875e-38), 3.4028234663852886e38).to(ty)
    return c, c64, tn


@triton.jit
def _uniform_rows_kernel(
    rows_ptr,
    a_rows_ptr,
    n_rows,
    other_ptr,
    a_other_ptr,
    n_other,
    consts_ptr,
    info_ptr,
    dref_ptr,
    sums_ptr,
    acc_ptr,
    D,
    size_bucket,  # autotuning key only
    SELF_MODE: tl.constexpr,
    HAS_OTHER: tl.constexpr,
    NEED_ACC: tl.constexpr,
    ONE_CHUNK: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    FOLD_D: tl.constexpr,
):
    """Per row i of this program's block: dref_i = min_j d_ij; in sums (float64, 4 x n_rows) r and u of the rows'
    own set, then of the other set; and (NEED_ACC) acc_i = sum_j p_ij col_j over both sets.

    rows/other: contiguous x' rows (operand dtype); a_*: their squared norms (float64); consts: float64 [t, t log2 e,
    ...]; info: float64 [E, ...] (see ``_prepare``); dref_ptr and acc_ptr have the compute dtype.
    """
    ty = dref_ptr.dtype.element_ty
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < n_rows
    offs_m64 = offs_m.to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    c, c64, tn = _scaled_t(consts_ptr, info_ptr, ty)
    a_i64 = tl.load(a_rows_ptr + offs_m, mask=mask_m, other=0.0)
    a_i = a_i64.to(ty)
    dref = tl.full([BLOCK_M], float("inf"), ty)
    r_self = tl.zeros([BLOCK_M], tl.float64)
    u_self = tl.zeros([BLOCK_M], tl.float64)
    r_other = tl.zeros([BLOCK_M], tl.float64)
    u_other = tl.zeros([BLOCK_M], tl.float64)
    if ONE_CHUNK:
        xi = _load_rows(rows_ptr, offs_m64, mask_m, offs_d, D)
        acc = tl.zeros([BLOCK_M, BLOCK_D], ty)
    else:
        # Rows are reloaded chunk by chunk and acc lives in acc_ptr: these two are placeholders.
        xi = tl.zeros([1, 1], ty)
        acc = tl.zeros([1, 1], ty)
        if NEED_ACC:
            for d0 in range(0, D, BLOCK_D):
                cols = d0 + offs_d
                amask = mask_m[:, None] & (cols[None, :] < D)
                tl.store(acc_ptr + offs_m64[:, None] * D + cols[None, :], tl.zeros([BLOCK_M, BLOCK_D], ty), amask)
            tl.debug_barrier()

    if SELF_MODE != 0:
        if SELF_MODE == 1:
            start = (pid * BLOCK_M) // BLOCK_N * BLOCK_N  # first block holding a j > i
        else:
            start = 0
        for j0 in range(start, n_rows, BLOCK_N):
            dref, r_self, u_self, r_other, u_other, acc = _tile_step(
                dref, r_self, u_self, r_other, u_other, acc, xi, a_i, a_i64,
                rows_ptr, offs_m, mask_m, rows_ptr, a_rows_ptr, j0, n_rows, acc_ptr, c, c64, tn, D,
                SELF_MODE, NEED_ACC, ONE_CHUNK, INPUT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_D, FOLD_D,
            )  # fmt: skip
    if HAS_OTHER:
        for j0 in range(0, n_other, BLOCK_N):
            dref, r_other, u_other, r_self, u_self, acc = _tile_step(
                dref, r_other, u_other, r_self, u_self, acc, xi, a_i, a_i64,
                rows_ptr, offs_m, mask_m, other_ptr, a_other_ptr, j0, n_other, acc_ptr, c, c64, tn, D,
                0, NEED_ACC, ONE_CHUNK, INPUT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_D, FOLD_D,
            )  # fmt: skip

    tl.store(dref_ptr + offs_m, dref, mask=mask_m)
    tl.store(sums_ptr + offs_m, r_self, mask=mask_m)
    tl.store(sums_ptr + n_rows + offs_m, u_self, mask=mask_m)
    tl.store(sums_ptr + 2 * n_rows + offs_m, r_other, mask=mask_m)
    tl.store(sums_ptr + 3 * n_rows + offs_m, u_other, mask=mask_m)
    if NEED_ACC and ONE_CHUNK:
        amask = mask_m[:, None] & (offs_d[None, :] < D)
        tl.store(acc_ptr + offs_m64[:, None] * D + offs_d[None, :], acc, amask)


_rows_kernel = maybe_autotune(
    _uniform_rows_kernel,
    _CONFIGS,
    key=["size_bucket", "SELF_MODE", "HAS_OTHER", "NEED_ACC", "ONE_CHUNK", "INPUT_PRECISION", "BLOCK_D"],
    interpret_config=triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}),
)


# ---------------------------------------------------------------------------------------------------------------
# Precision


def _operand_dtype(dtype: torch.dtype, precision: str) -> torch.dtype:
    """The dtype x' is stored in and multiplied as: the input's (float16/bfloat16/float64), or for float32 inputs
    float32 (ieee, tf32) or bfloat16 (bf16)."""
    if dtype == torch.float32 and precision == "bf16":
        return torch.bfloat16
    return dtype


# ---------------------------------------------------------------------------------------------------------------
# The finish: lse, and the gradients (small kernels: no value leaves the device, few launches)


@triton.jit
def _row_totals(sums_ptr, offs, mask, n_rows, n_other, SELF_MODE: tl.constexpr):
    """Per row: P_i = r_self_i / h + r_other_i, in whichever of its forms (plain sum, or count plus deficit) lost
    less to rounding; and R_i = r_self_i + r_other_i, the weight of the row's own term in its gradient."""
    r_self = tl.load(sums_ptr + offs, mask=mask, other=0.0)
    u_self = tl.load(sums_ptr + n_rows + offs, mask=mask, other=0.0)
    r_other = tl.load(sums_ptr + 2 * n_rows + offs, mask=mask, other=0.0)
    u_other = tl.load(sums_ptr + 3 * n_rows + offs, mask=mask, other=0.0)
    if SELF_MODE == 1:
        count = ((n_rows - 1) - offs).to(tl.float64)
    elif SELF_MODE == 2:
        count = tl.zeros_like(r_self) + (n_rows - 1)
    else:
        count = tl.zeros_like(r_self)
    h = 0.5 if SELF_MODE == 2 else 1.0
    plain = h * r_self + r_other
    deficit = h * u_self + u_other
    total = tl.where(plain <= -deficit, plain, (h * count + n_other) + deficit)
    return total, r_self + r_other


@triton.jit
def _log2_weight(dref, dmin, tc, e2):
    """-t' (dref_i - dmin) log2 e in float64 (t' d is formed by exact powers of two: never a spurious overflow);
    -inf for rows without pairs (dref = inf)."""
    return -mul_pow2(tc * (dref.to(tl.float64) - dmin), e2)


@triton.jit
def _combine_kernel(
    dref_ptr,
    sums_ptr,
    n_rows,
    n_other,
    consts_ptr,
    info_ptr,
    lse_ptr,
    comb_ptr,
    SELF_MODE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One program, float64, base 2: dmin = min_i dref_i, then
        L2 = log2 sum_i 2^(w_i) P_i,  w_i = -t' (dref_i - dmin) log2 e   (<= log2 |P|: log-mean-exp <= max score)
        lse = (L2 - t' dmin log2 e) ln 2  (NaN when an input is not finite)
    and comb = [L2, dmin] for the gradients. consts: float64 [t, t log2 e, ln 2, |P|]."""
    tc = tl.load(consts_ptr + 1)
    ln2 = tl.load(consts_ptr + 2)
    e2 = 2 * tl.load(info_ptr).to(tl.int64)
    dmin = tl.full([BLOCK], float("inf"), tl.float64)
    for r0 in range(0, n_rows, BLOCK):
        offs = r0 + tl.arange(0, BLOCK)
        dmin = tl.minimum(dmin, tl.load(dref_ptr + offs, mask=offs < n_rows, other=float("inf")).to(tl.float64))
    dmin = tl.min(dmin, axis=0)
    m = tl.full([BLOCK], float("-inf"), tl.float64)
    s = tl.zeros([BLOCK], tl.float64)
    for r0 in range(0, n_rows, BLOCK):
        offs = r0 + tl.arange(0, BLOCK)
        mask = offs < n_rows
        dref = tl.load(dref_ptr + offs, mask=mask, other=float("inf"))
        total, _ = _row_totals(sums_ptr, offs, mask, n_rows, n_other, SELF_MODE)
        has_pairs = total > 0
        w = tl.where(has_pairs, _log2_weight(dref, dmin, tc, e2) + log2(tl.where(has_pairs, total, 1.0)), float("-inf"))
        m_new = tl.maximum(m, w)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * exp2(m - m_safe) + exp2(w - m_safe)
        m = m_new
    m_all = tl.max(m, axis=0)
    m_all_safe = tl.where(m_all == float("-inf"), 0.0, m_all)
    l2 = m_all_safe + log2(tl.sum(s * exp2(m - m_all_safe), axis=0))
    l2 = tl.minimum(l2, log2(tl.load(consts_ptr + 3)))
    lse = (l2 - mul_pow2(tc * dmin, e2)) * ln2
    lse = tl.where(tl.load(info_ptr + 1) != 0, lse, float("nan"))
    tl.store(lse_ptr, lse)
    tl.store(comb_ptr, l2)
    tl.store(comb_ptr + 1, dmin)


@triton.jit
def _grad_kernel(
    v_ptr,
    acc_ptr,
    dref_ptr,
    sums_ptr,
    n_rows,
    D,
    consts_ptr,
    info_ptr,
    comb_ptr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """In place in acc: d lse / d v_i = -2t 2^E 2^(w_i - L2) (R_i v'_i - acc_i).

    The row factor is applied as a mantissa and exact powers of two, from float64 logs: it may lie far outside the
    compute dtype (t above its range) where the gradient does not (R_i v'_i - acc_i is then 0 or tiny)."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    mask_r = rows < n_rows
    rows64 = rows.to(tl.int64)
    e = tl.load(info_ptr).to(tl.int64)
    finite = tl.load(info_ptr + 1) != 0
    dref = tl.load(dref_ptr + rows, mask=mask_r, other=float("inf"))
    weight = tl.load(sums_ptr + rows, mask=mask_r, other=0.0) + tl.load(
        sums_ptr + 2 * n_rows + rows, mask=mask_r, other=0.0
    )
    log2_coef = _log2_weight(dref, tl.load(comb_ptr + 1), tl.load(consts_ptr + 1), 2 * e) - tl.load(comb_ptr)
    log2_coef = log2_coef + (log2(tl.load(consts_ptr)) + 1.0)  # * 2t
    present = log2_coef > float("-inf")  # else no weight on this row's pairs: its gradient is 0
    # Beyond +-3000 the gradient over- or underflows every dtype.
    log2_coef = tl.minimum(tl.maximum(tl.where(present, log2_coef, 0.0), -3000.0), 3000.0)
    k = tl.floor(log2_coef)
    mantissa = tl.where(present, exp2(log2_coef - k), 0.0)
    k = k.to(tl.int64) + e
    ty = acc_ptr.dtype.element_ty
    for c0 in range(0, D, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        mask = mask_r[:, None] & (cols[None, :] < D)
        offs = rows64[:, None] * D + cols[None, :]
        v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(tl.float64)
        acc = tl.load(acc_ptr + offs, mask=mask, other=0.0).to(tl.float64)
        g = mul_pow2((acc - weight[:, None] * v) * mantissa[:, None], k[:, None])
        g = tl.where(finite, g, float("nan"))
        tl.store(acc_ptr + offs, g.to(ty), mask=mask)


_FINISH_ROWS = 64 if INTERPRET else 1024
_GRAD_ROWS = 16 if INTERPRET else 32
_GRAD_COLS = 64 if INTERPRET else 128


# ---------------------------------------------------------------------------------------------------------------
# Host side


def _sweep(
    rows: torch.Tensor,
    a_rows: torch.Tensor,
    other: torch.Tensor | None,
    a_other: torch.Tensor | None,
    consts: torch.Tensor,
    info: torch.Tensor,
    dtype: torch.dtype,
    self_mode: int,
    need_acc: bool,
    precision: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Launches the row kernel: per row dref (compute dtype), sums (4 x rows, float64: r_self, u_self, r_other,
    u_other) and, when ``need_acc``, acc (rows x D, compute dtype)."""
    n, d = rows.shape
    dref = torch.empty(n, dtype=dtype, device=rows.device)
    sums = torch.empty((4, n), dtype=torch.float64, device=rows.device)
    acc = torch.empty((n, d), dtype=dtype, device=rows.device) if need_acc else None
    one_chunk = triton.next_power_of_2(d) <= _MAX_REGISTER_D
    has_other = other is not None
    if not has_other:  # never read (HAS_OTHER is false); any tensor will do as the pointer
        other, a_other = rows, a_rows
    kwargs = {
        "SELF_MODE": self_mode,
        "HAS_OTHER": has_other,
        "NEED_ACC": need_acc,
        "ONE_CHUNK": one_chunk,
        "INPUT_PRECISION": "tf32" if precision == "tf32" else "ieee",
        "BLOCK_D": max(16, triton.next_power_of_2(d)) if one_chunk else _CHUNK_D,  # tl.dot needs K >= 16
        "FOLD_D": _FOLD_D,
    }

    def grid(meta):
        return (triton.cdiv(n, meta["BLOCK_M"]),)

    wrap_triton(_rows_kernel)[grid](
        rows, a_rows, n, other, a_other, other.shape[0], consts, info, dref, sums, dref if acc is None else acc,
        d, size_bucket(n),
        **kwargs,
    )  # fmt: skip
    return dref, sums, acc


def _finish_grad(v, acc, dref, sums, consts, info, comb) -> torch.Tensor:
    n, d = v.shape
    wrap_triton(_grad_kernel)[(triton.cdiv(n, _GRAD_ROWS),)](
        v, acc, dref, sums, n, d, consts, info, comb, BLOCK_R=_GRAD_ROWS, BLOCK_C=_GRAD_COLS, num_warps=8
    )
    return acc


@triton_op("hyperloss::triton_uniform_lse", mutates_args=())
def triton_uniform_lse(
    x: torch.Tensor,
    queue: torch.Tensor | None,
    t: torch.Tensor,
    intra_batch: bool,
    grad_x: bool,
    grad_queue: bool,
    precision: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The op behind ``uniform_lse``: absent gradients are returned as empty tensors (an op returns tensors)."""
    dtype = compute_dtype(x.dtype)
    n = x.shape[0]
    k = 0 if queue is None else queue.shape[0]
    # Host constants, made on t's device (the CPU) and copied in one go, without waiting for the GPU (the source is
    # staged at once): [t, t log2 e, ln 2, |P|].
    t = t.to(dtype=torch.float64)
    consts = torch.stack(
        [
            t,
            t * math.log2(math.e),
            torch.full((), math.log(2.0), dtype=torch.float64, device=t.device),
            torch.full((), num_pairs(n, k, intra_batch), dtype=torch.float64, device=t.device),
        ]
    ).to(x.device, non_blocking=True)
    prep = prepare(x, queue, _operand_dtype(x.dtype, precision))
    grad_queue = grad_queue and queue is not None

    if not intra_batch:
        self_mode = _SELF_NONE
    else:
        # The gradient of row i needs every pair it is in; the loss alone needs each pair once.
        self_mode = _SELF_ALL if grad_x else _SELF_UPPER
    dref, sums, acc = _sweep(
        prep.x, prep.x_norms, prep.queue, prep.queue_norms, consts, prep.info, dtype, self_mode, grad_x, precision
    )
    lse = torch.empty((), dtype=torch.float64, device=x.device)
    comb = torch.empty(2, dtype=torch.float64, device=x.device)
    wrap_triton(_combine_kernel)[(1,)](
        dref, sums, n, k, consts, prep.info, lse, comb, SELF_MODE=self_mode, BLOCK=_FINISH_ROWS, num_warps=8
    )
    gx = _finish_grad(prep.x, acc, dref, sums, consts, prep.info, comb) if grad_x else x.new_empty(0, dtype=dtype)
    if grad_queue:
        # The queue's gradient: the same sweep with the queue as rows and x as the other set (the N x K pairs).
        dref_q, sums_q, acc_q = _sweep(
            prep.queue, prep.queue_norms, prep.x, prep.x_norms, consts, prep.info, dtype, _SELF_NONE, True, precision
        )
        gq = _finish_grad(prep.queue, acc_q, dref_q, sums_q, consts, prep.info, comb)
    else:
        gq = x.new_empty(0, dtype=dtype)
    return lse, gx, gq


def uniform_lse(
    x: torch.Tensor,
    queue: torch.Tensor | None,
    t: torch.Tensor | float,
    intra_batch: bool,
    grad_x: bool,
    grad_queue: bool,
    *,
    precision: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """See ``hyperloss.reference.uniform_lse``: same contract (``t`` a 0-dim float64 tensor; a number is accepted
    too), fused Triton kernel.

    ``precision`` sets how float32 inputs are multiplied: "ieee" (exact fp32), "tf32" or "bf16" (tensor cores,
    fp32 accumulation), or torch's names "highest" / "high" / "medium"; None follows torch's float32 matmul setting
    (``torch.backends.cuda.matmul.fp32_precision`` or ``torch.get_float32_matmul_precision()``). Other dtypes ignore
    it: float16/bfloat16 use their own tensor-core products with fp32 accumulation, float64 is exact.
    Under TRITON_INTERPRET=1, bfloat16 inputs and tf32/bf16 products raise NotImplementedError (numpy has neither).
    """
    resolved = resolve_precision(x.dtype, precision)
    check_interpretable(x.dtype, resolved)
    lse, gx, gq = torch.ops.hyperloss.triton_uniform_lse(
        x, queue, as_scalar_tensor(t), intra_batch, grad_x, grad_queue, resolved
    )
    return lse, (gx if grad_x else None), (gq if grad_queue and queue is not None else None)
