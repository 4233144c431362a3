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

Two sweeps share that output (float32 compute: 16-bit and float32 inputs, rows up to 256 wide in registers): the
lean one (``_uniform_lean_kernel``) replaces the running reference by a fixed one, R = 0 (float16: p scaled by 2^14
into its range), so that a pair costs one FMA, one ex2 and a row sum besides the two dots; the rows it cannot
resolve that way (every term underflowing, or every term within 1/16 of 1, where the loss needs the deficits'
series) it flags, and this kernel (``_uniform_rows_kernel`` with CHECK_FLAGS) recomputes only the row blocks holding
a flagged row. float64 inputs and wider rows take this kernel alone.

Exact float32 products ("ieee", torch's "highest") never feed float32 operands to the dots (FMA loops, which
spill): x' is stored as two float16 parts, x' = hi + lo (``_prepare``: scaled so that lo stays in float16's normal
range), and every dot of the sweeps runs on 16-bit tensor cores with float32 accumulation:
    x'_i.x'_j = lo_i.hi_j + hi_i.lo_j + hi_i.hi_j            (``_gram``; lo_i.lo_j, ~2^-22 of it, left out)
    p.x'_j = fp16(p - fp16(p)).hi_j + fp16(p).lo_j + fp16(p).hi_j  (``_weighted_rows``)
each into the one accumulator; the parts carry ~22 bits, the products float32-level accuracy (~1e-7 relative on
the loss and gradients in the tests, against 1e-4 for one float16 copy). With two parts per element the rows stay in
registers up to D = 128 (above, D is swept in chunks).

Limit: a distance below the rounding of the Gram form (~ eps ||x'||^2, x' the centered rows) is not resolved, e.g.
two equal rows may come out at a tiny positive distance; at a very large t (t' d of such a rounding >> 1) such a
pair then weighs ~0 instead of 1. The loss is still finite and within that score error, never NaN.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .._common import as_scalar_tensor, num_pairs
from .._precision import resolve_precision
from .._validation import compute_dtype
from . import _runtime
from ._prepare import padded as _padded
from ._prepare import prepare
from ._runtime import INTERPRET, check_interpretable, exp2, log2, maybe_autotune, mul_pow2, size_bucket

# How the rows' own set is swept (SELF_MODE): not at all, j > i (loss only), or every j != i (with gradient).
_SELF_NONE, _SELF_UPPER, _SELF_ALL = 0, 1, 2

# The accumulator acc_i (BLOCK_M x D) stays in registers up to this padded D; above it lives in the output buffer
# and D is swept in CHUNK_D columns (slower, but any D works), and the dot products are summed in float64 every
# FOLD_D columns. Small under the interpreter so that the tests reach both paths with small D. A split (two float16
# parts per element, see _gram) halves it: at D = 256 its extra dots spill at every tile size tried.
_MAX_REGISTER_D = 32 if INTERPRET else 256
_CHUNK_D = 16 if INTERPRET else 64
_FOLD_D = 32 if INTERPRET else 256

# The running reference's p <= 1 is scaled by 2^14 before its float16 split (float16's range for its small terms).
_P_SPLIT_SCALE = tl.constexpr(16384.0)

# A column block whose row sums miss at most this much of their count (every term p > 1 - 1/32) takes its deficit
# sum (p - 1) from an expm1 series.
_NEAR_ONE = tl.constexpr(1.0 / 32)

# Few rows and a large other set (N = 256 rows against a 65536-row queue: 2-4 row blocks on a GPU of 132 SMs):
# the other set's columns are split into S segments of SEGMENT_COLS columns (a compile-time power of two times
# _SEGMENT_ALIGN, a multiple of every BLOCK_N: the lean sweep and its fallback split the columns alike, and the
# running-reference sweep's loop has a fixed trip count, which a run-time bound would cost in spilled registers),
# one program per (row block, segment), each writing the partial dref, sums and acc of its columns to its own slot;
# _merge_segments_kernel adds them up (relative to the smallest dref) before the finish.
_SEGMENT_ALIGN = 128
# S is chosen to give the sweep _SEGMENT_PROGRAMS_PER_SM programs per SM (the device's SM count, 132 under the
# interpreter; tests set _SEGMENT_TARGET, the programs wanted, to reach the split with small inputs), counted at
# the largest BLOCK_M, with at least _SEGMENT_MIN_COLS columns per segment and at most _SEGMENT_BYTES of partial
# accumulators.
_SEGMENT_PROGRAMS_PER_SM = 2
_SEGMENT_TARGET: int | None = None
_SEGMENT_ROWS = 16 if INTERPRET else 128
_SEGMENT_MIN_COLS = 128 if INTERPRET else 1024
_SEGMENT_BYTES = 1 << 25

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
def _gram(a, a_lo, b, b_lo, acc, INPUT_PRECISION: tl.constexpr, SPLIT: tl.constexpr):
    """acc + a.b (acc's dtype). SPLIT: a + a_lo and b + b_lo, float16 parts (``_prepare``), as
    a_lo.b + a.b_lo + a.b (a_lo.b_lo, ~2^-22 of a.b, left out): three tensor-core dots into the one accumulator,
    the small terms first."""
    if SPLIT:
        acc = tl.dot(a_lo, b, acc, out_dtype=tl.float32)
        acc = tl.dot(a, b_lo, acc, out_dtype=tl.float32)
        acc = tl.dot(a, b, acc, out_dtype=tl.float32)
    else:
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION, out_dtype=acc.dtype)
    return acc


@triton.jit
def _weighted_rows(p, x, x_lo, acc, INPUT_PRECISION: tl.constexpr, SPLIT: tl.constexpr):
    """acc + p.x (p float32). SPLIT: x + x_lo (float16 parts) and p = hi + lo, hi = fp16(p), lo = fp16(p - hi)
    (p - hi exact in float32), as lo.x + hi.x_lo + hi.x: three tensor-core dots into acc, no second accumulator.
    lo's rounding costs at most 2^-25 absolute per pair (float16's subnormal step), against terms up to 2^14 (the
    kernels scale p there)."""
    if SPLIT:
        hi = p.to(tl.float16)
        acc = tl.dot((p - hi.to(tl.float32)).to(tl.float16), x, acc, out_dtype=tl.float32)
        acc = tl.dot(hi, x_lo, acc, out_dtype=tl.float32)
        acc = tl.dot(hi, x, acc, out_dtype=tl.float32)
    else:
        acc = tl.dot(p.to(x.dtype), x, acc, input_precision=INPUT_PRECISION, out_dtype=acc.dtype)
    return acc


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
def _segment_columns(n_other, SEGMENT_COLS: tl.constexpr):
    """(segment, start, stop): the columns [start, stop) of the other set this program sweeps: with SEGMENT_COLS,
    segment s = program_id(1), columns [s SEGMENT_COLS, (s + 1) SEGMENT_COLS) (the last one short), else all of
    them, (0, 0, n_other)."""
    if SEGMENT_COLS > 0:
        seg = tl.program_id(1)
        start = seg * SEGMENT_COLS
        stop = tl.maximum(tl.minimum(start + SEGMENT_COLS, n_other), start)
    else:
        seg = 0
        start = 0
        stop = n_other
    return seg, start, stop


@triton.jit
def _segment_slot(dref_ptr, sums_ptr, acc_ptr, flags_ptr, seg, n_rows, D):
    """The outputs of segment ``seg``: dref (S x n_rows), sums (S x 4 x n_rows), acc (S x n_rows x D), flags (S x
    n_rows)."""
    slot = seg.to(tl.int64) * n_rows
    return dref_ptr + slot, sums_ptr + 4 * slot, acc_ptr + slot * D, flags_ptr + slot


@triton.jit
def _tile_step(
    dref,
    r_add,
    u_add,
    r_keep,
    u_keep,
    acc,
    xi,
    xi_lo,
    a_i,
    a_i64,
    rows_ptr,
    rows_lo_ptr,
    offs_m,
    mask_m,
    cols_ptr,
    cols_lo_ptr,
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
    SPLIT: tl.constexpr,
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
        xj_lo = _load_rows(cols_lo_ptr, offs_n64, mask_n, offs_d, D) if SPLIT else xj
        g = _gram(xi, xi_lo, tl.trans(xj), tl.trans(xj_lo), tl.zeros([BLOCK_M, BLOCK_N], ty), INPUT_PRECISION, SPLIT)
        d = (a_i[:, None] + a_j64.to(ty)[None, :]) - 2.0 * g
    else:
        # Long rows: the products of FOLD_D columns at a time are added up in float64.
        g64 = tl.zeros([BLOCK_M, BLOCK_N], tl.float64)
        for f0 in range(0, D, FOLD_D):
            g = tl.zeros([BLOCK_M, BLOCK_N], ty)
            for d0 in range(f0, tl.minimum(f0 + FOLD_D, D), BLOCK_D):
                xi_c = _load_rows(rows_ptr, offs_m64, mask_m, d0 + offs_d, D)
                xj_c = _load_rows(cols_ptr, offs_n64, mask_n, d0 + offs_d, D)
                if SPLIT:
                    xi_lo_c = _load_rows(rows_lo_ptr, offs_m64, mask_m, d0 + offs_d, D)
                    xj_lo_c = _load_rows(cols_lo_ptr, offs_n64, mask_n, d0 + offs_d, D)
                else:
                    xi_lo_c = xi_c
                    xj_lo_c = xj_c
                g = _gram(xi_c, xi_lo_c, tl.trans(xj_c), tl.trans(xj_lo_c), g, INPUT_PRECISION, SPLIT)
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
        if SPLIT:
            p = p * _P_SPLIT_SCALE  # acc is kept times 2^14, undone where it is stored for the last time
        if ONE_CHUNK:
            acc = _weighted_rows(p, xj, xj_lo, acc, INPUT_PRECISION, SPLIT)
        else:
            for d0 in range(0, D, BLOCK_D):
                cols = d0 + offs_d
                xj_c = _load_rows(cols_ptr, offs_n64, mask_n, cols, D)
                xj_lo_c = _load_rows(cols_lo_ptr, offs_n64, mask_n, cols, D) if SPLIT else xj_c
                ptrs = acc_ptr + offs_m64[:, None] * D + cols[None, :]
                amask = mask_m[:, None] & (cols[None, :] < D)
                acc_c = tl.load(ptrs, mask=amask, other=0.0)
                acc_c = _weighted_rows(p, xj_c, xj_lo_c, acc_c * a_ty[:, None], INPUT_PRECISION, SPLIT)
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
    rows_lo_ptr,
    a_rows_ptr,
    n_rows,
    other_ptr,
    other_lo_ptr,
    a_other_ptr,
    n_other,
    consts_ptr,
    info_ptr,
    dref_ptr,
    sums_ptr,
    acc_ptr,
    flags_ptr,
    D,
    size_bucket,  # autotuning key only
    SELF_MODE: tl.constexpr,
    HAS_OTHER: tl.constexpr,
    NEED_ACC: tl.constexpr,
    ONE_CHUNK: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    SPLIT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    FOLD_D: tl.constexpr,
    CHECK_FLAGS: tl.constexpr = False,
    SEGMENT_COLS: tl.constexpr = 0,
):
    """Per row i of this program's block: dref_i = min_j d_ij; in sums (float64, 4 x n_rows) r and u of the rows'
    own set, then of the other set; and (NEED_ACC) acc_i = sum_j p_ij col_j over both sets.

    rows/other: contiguous x' rows (operand dtype; SPLIT: float16 high parts, rows_lo/other_lo the low parts,
    see ``_gram``); a_*: their squared norms (float64); consts: float64 [t, t log2 e,
    ...]; info: float64 [E, ...] (see ``_prepare``); dref_ptr and acc_ptr have the compute dtype. CHECK_FLAGS: only
    the row blocks with a nonzero flag (int32 per row) are computed, the others keep what the lean sweep wrote.
    SEGMENT_COLS: as in _uniform_lean_kernel, program (i, s) sweeps column segment s into slot s of the outputs
    (and reads slot s of the flags).
    """
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < n_rows
    if SEGMENT_COLS > 0:
        flags_ptr += tl.program_id(1).to(tl.int64) * n_rows
    if CHECK_FLAGS:
        # After the lean sweep: only the blocks holding a row it could not resolve (see _uniform_lean_kernel).
        if tl.max(tl.load(flags_ptr + offs_m, mask=mask_m, other=0), axis=0) != 0:
            _rows_body(
                rows_ptr, rows_lo_ptr, a_rows_ptr, n_rows, other_ptr, other_lo_ptr, a_other_ptr, n_other, consts_ptr,
                info_ptr, dref_ptr, sums_ptr, acc_ptr, D, pid, offs_m, mask_m,
                SELF_MODE, HAS_OTHER, NEED_ACC, ONE_CHUNK, INPUT_PRECISION, SPLIT, BLOCK_M, BLOCK_N, BLOCK_D, FOLD_D,
                SEGMENT_COLS,
            )  # fmt: skip
    else:
        _rows_body(
            rows_ptr, rows_lo_ptr, a_rows_ptr, n_rows, other_ptr, other_lo_ptr, a_other_ptr, n_other, consts_ptr,
            info_ptr, dref_ptr, sums_ptr, acc_ptr, D, pid, offs_m, mask_m,
            SELF_MODE, HAS_OTHER, NEED_ACC, ONE_CHUNK, INPUT_PRECISION, SPLIT, BLOCK_M, BLOCK_N, BLOCK_D, FOLD_D,
            SEGMENT_COLS,
        )  # fmt: skip


@triton.jit
def _rows_body(
    rows_ptr,
    rows_lo_ptr,
    a_rows_ptr,
    n_rows,
    other_ptr,
    other_lo_ptr,
    a_other_ptr,
    n_other,
    consts_ptr,
    info_ptr,
    dref_ptr,
    sums_ptr,
    acc_ptr,
    D,
    pid,
    offs_m,
    mask_m,
    SELF_MODE: tl.constexpr,
    HAS_OTHER: tl.constexpr,
    NEED_ACC: tl.constexpr,
    ONE_CHUNK: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    SPLIT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    FOLD_D: tl.constexpr,
    SEGMENT_COLS: tl.constexpr,
):
    ty = dref_ptr.dtype.element_ty
    if SEGMENT_COLS > 0 and not ONE_CHUNK:  # acc lives in memory during the sweep (else: offset where it is stored)
        acc_ptr += tl.program_id(1).to(tl.int64) * n_rows * D
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
        xi_lo = _load_rows(rows_lo_ptr, offs_m64, mask_m, offs_d, D) if SPLIT else xi
        acc = tl.zeros([BLOCK_M, BLOCK_D], ty)
    else:
        # Rows are reloaded chunk by chunk and acc lives in acc_ptr: these are placeholders.
        xi = tl.zeros([1, 1], ty)
        xi_lo = xi
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
        if SEGMENT_COLS > 0:  # the rows' own set: in the first segment only
            if tl.program_id(1) != 0:
                start = n_rows
        for j0 in range(start, n_rows, BLOCK_N):
            dref, r_self, u_self, r_other, u_other, acc = _tile_step(
                dref, r_self, u_self, r_other, u_other, acc, xi, xi_lo, a_i, a_i64, rows_ptr, rows_lo_ptr,
                offs_m, mask_m, rows_ptr, rows_lo_ptr, a_rows_ptr, j0, n_rows, acc_ptr, c, c64, tn, D,
                SELF_MODE, NEED_ACC, ONE_CHUNK, INPUT_PRECISION, SPLIT, BLOCK_M, BLOCK_N, BLOCK_D, FOLD_D,
            )  # fmt: skip
    if HAS_OTHER:
        if SEGMENT_COLS > 0:
            # A fixed trip count (the columns past n_other are masked: they add nothing).
            col_start = tl.program_id(1) * SEGMENT_COLS
            col_stop = col_start + SEGMENT_COLS
        else:
            col_start = 0
            col_stop = n_other
        for j0 in range(col_start, col_stop, BLOCK_N):
            dref, r_other, u_other, r_self, u_self, acc = _tile_step(
                dref, r_other, u_other, r_self, u_self, acc, xi, xi_lo, a_i, a_i64, rows_ptr, rows_lo_ptr,
                offs_m, mask_m, other_ptr, other_lo_ptr, a_other_ptr, j0, n_other, acc_ptr, c, c64, tn, D,
                0, NEED_ACC, ONE_CHUNK, INPUT_PRECISION, SPLIT, BLOCK_M, BLOCK_N, BLOCK_D, FOLD_D,
            )  # fmt: skip

    if SEGMENT_COLS > 0:  # this segment's slot of the outputs, offset here: no live pointer during the sweep
        slot = tl.program_id(1).to(tl.int64) * n_rows
        dref_ptr += slot
        sums_ptr += 4 * slot
        if ONE_CHUNK:
            acc_ptr += slot * D
    tl.store(dref_ptr + offs_m, dref, mask=mask_m)
    tl.store(sums_ptr + offs_m, r_self, mask=mask_m)
    tl.store(sums_ptr + n_rows + offs_m, u_self, mask=mask_m)
    tl.store(sums_ptr + 2 * n_rows + offs_m, r_other, mask=mask_m)
    tl.store(sums_ptr + 3 * n_rows + offs_m, u_other, mask=mask_m)
    if NEED_ACC and ONE_CHUNK:
        if SPLIT:
            acc = acc * (1.0 / _P_SPLIT_SCALE)
        amask = mask_m[:, None] & (offs_d[None, :] < D)
        tl.store(acc_ptr + offs_m64[:, None] * D + offs_d[None, :], acc, amask)
    if NEED_ACC and not ONE_CHUNK and SPLIT:
        tl.debug_barrier()
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + offs_d
            amask = mask_m[:, None] & (cols[None, :] < D)
            ptrs = acc_ptr + offs_m64[:, None] * D + cols[None, :]
            tl.store(ptrs, tl.load(ptrs, mask=amask, other=0.0) * (1.0 / _P_SPLIT_SCALE), mask=amask)


# A split's chunked sweep (D above the register limit): 32-column blocks, the only tiles tried that do not spill
# (bench/results/kernels-sm90.md); the first alone where the columns are split into segments (the second spills).
_SPLIT_CHUNKED_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bm, bn, w, s in [(64, 32, 4, 3), (64, 32, 4, 2)]
]


def rows_configs(one_chunk: bool, split: bool, segmented: bool = False) -> list[triton.Config]:
    """The configurations the running-reference kernel is autotuned over (where it runs alone)."""
    if split and not one_chunk:
        return _SPLIT_CHUNKED_CONFIGS[:1] if segmented else _SPLIT_CHUNKED_CONFIGS
    return _CONFIGS


def _prune_rows(configs, named_args, **kwargs):
    return rows_configs(kwargs.get("ONE_CHUNK", True), kwargs.get("SPLIT", False), kwargs.get("SEGMENT_COLS", 0) > 0)


# The autotuning keys: the size class and every compile-time argument but the blocks.
_ROWS_KEY = ["size_bucket", "SELF_MODE", "HAS_OTHER", "NEED_ACC", "ONE_CHUNK", "INPUT_PRECISION", "SPLIT", "BLOCK_D"]
_rows_kernel = maybe_autotune(
    _uniform_rows_kernel,
    _CONFIGS + _SPLIT_CHUNKED_CONFIGS,
    key=[*_ROWS_KEY, "SEGMENT_COLS"],
    interpret_config=triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}),
    prune=_prune_rows,
)


# ---------------------------------------------------------------------------------------------------------------
# The lean sweep: a fixed exponent shift instead of the running reference, for float32 compute (16-bit and float32
# inputs) with the rows in registers. p_ij = 2^(SHIFT - c d_ij) = 2^(c (R - d_ij)) with the fixed reference
# R = SHIFT / c: no row minimum, no rescale, no clamp of d (p <= 2^SHIFT already; a d rounded below 0 only rounds p),
# and per pair  y = 2c g_ij + b_i  with the Gram tile started from -||x'_j||^2 / 2 (g_ij = x'_i.x'_j - ||x'_j||^2 / 2,
# -inf on the padding rows, so that absent columns give p = 0 without a select) and b_i = SHIFT - c ||x'_i||^2:
# one FMA, p = ex2(y), a row sum and, for the gradient, the second dot. The diagonal
# mask only runs in the diagonal tiles (unrolled, outside the loops); the rows are padded to a multiple of
# _ROW_PAD, so no load in a loop has a mask.
# A row the fixed shift cannot resolve is flagged and recomputed by _uniform_rows_kernel (the running reference,
# exact near-one deficits): all its terms below 2^-100 (2^-6 on average for float16, whose p operand has a narrow
# range), or on average within 1/16 of 2^SHIFT (a loss near 0, which needs the deficits' series), or c too large.

# float16's p operand: terms up to 2^14 keep its range for the small ones (bfloat16/float32 have float32's).
_LEAN_SHIFT = {torch.float16: 14}
# Rows (and columns) of x' and the queue are padded to this multiple (the largest BLOCK_M / BLOCK_N).
_ROW_PAD = 128
_FAST_EXP2 = tl.constexpr(not INTERPRET)


@triton.jit
def _exp2_ftz(y):
    """2^y for float32 y: one MUFU.EX2 on a GPU (subnormal results flush to 0, which the flags allow for)."""
    if _FAST_EXP2:
        p = tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=f,f", [y], dtype=tl.float32, is_pure=True, pack=1)
    else:
        p = tl.exp2(y)
    return p


@triton.jit
def _lean_tile(
    acc,
    r,
    xi,
    xi_lo,
    b_i,
    offs_m,
    cols_ptr,
    cols_lo_ptr,
    colb_ptr,
    j0,
    tile_offs,
    d_mask,
    two_c,
    D,
    MASK: tl.constexpr,
    NEED_ACC: tl.constexpr,
    EVEN_D: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    SPLIT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """One column block [j0, j0 + BLOCK_N) (padded: no bounds): r_i += sum_j p_ij, acc_i += sum_j p_ij x'_j.
    MASK: 0 every pair, 1 j > i, 2 j != i (the diagonal tiles only)."""
    tile_start = tl.cast(j0, tl.int64) * D
    if EVEN_D:
        xj = tl.load(cols_ptr + tile_start + tile_offs)
    else:
        xj = tl.load(cols_ptr + tile_start + tile_offs, mask=d_mask, other=0.0)
    xj_lo = xj
    if SPLIT:
        if EVEN_D:
            xj_lo = tl.load(cols_lo_ptr + tile_start + tile_offs)
        else:
            xj_lo = tl.load(cols_lo_ptr + tile_start + tile_offs, mask=d_mask, other=0.0)
    # The Gram tile starts from -||x'_j||^2 / 2 (no add per pair): g = x'_i.x'_j - ||x'_j||^2 / 2.
    colb = tl.broadcast_to(tl.load(colb_ptr + j0 + tl.arange(0, BLOCK_N))[None, :], [BLOCK_M, BLOCK_N])
    g = _gram(xi, xi_lo, tl.trans(xj), tl.trans(xj_lo), colb, INPUT_PRECISION, SPLIT)
    y = g * two_c + b_i[:, None]  # = SHIFT - c (||x'_i||^2 + ||x'_j||^2 - 2 x'_i.x'_j) = c (R - d_ij)
    if MASK == 1:
        y = tl.where(j0 + tl.arange(0, BLOCK_N)[None, :] > offs_m[:, None], y, float("-inf"))
    elif MASK == 2:
        y = tl.where(j0 + tl.arange(0, BLOCK_N)[None, :] != offs_m[:, None], y, float("-inf"))
    p = _exp2_ftz(y)
    r += tl.sum(p, axis=1).to(tl.float64)
    if NEED_ACC:
        acc = _weighted_rows(p, xj, xj_lo, acc, INPUT_PRECISION, SPLIT)
    return acc, r


@triton.jit
def _lean_self(
    acc,
    r_self,
    xi,
    xi_lo,
    b_i,
    offs_m,
    row0,
    n_rows,
    rows_ptr,
    rows_lo_ptr,
    rowb_ptr,
    tile_offs,
    d_mask,
    two_c,
    D,
    seg,
    SELF_MODE: tl.constexpr,
    NEED_ACC: tl.constexpr,
    EVEN_D: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    SPLIT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SEGMENT_COLS: tl.constexpr,
):
    """The lean sweep over the rows' own set (SELF_MODE 1: j > i, 2: j != i): the diagonal blocks unrolled with
    their mask, every other block without one. SEGMENT_COLS: in segment 0 only, by loops of no trip elsewhere (a
    branch around the sweep, merging acc, spills at D = 256); the diagonal blocks then loop too."""
    DIAG: tl.constexpr = (BLOCK_M + BLOCK_N - 1) // BLOCK_N  # column blocks holding j = i
    n_tiles = tl.cdiv(n_rows, BLOCK_N)
    diag_first = row0 // BLOCK_N
    if SEGMENT_COLS > 0:
        for k in range(0, tl.where(seg == 0, DIAG, 0)):
            acc, r_self = _lean_tile(
                acc, r_self, xi, xi_lo, b_i, offs_m, rows_ptr, rows_lo_ptr, rowb_ptr, (diag_first + k) * BLOCK_N,
                tile_offs, d_mask, two_c, D, SELF_MODE, NEED_ACC, EVEN_D, INPUT_PRECISION, SPLIT, BLOCK_M, BLOCK_N,
            )  # fmt: skip
    else:
        for k in tl.static_range(DIAG):  # padded beyond n_rows: such a block adds nothing
            acc, r_self = _lean_tile(
                acc, r_self, xi, xi_lo, b_i, offs_m, rows_ptr, rows_lo_ptr, rowb_ptr, (diag_first + k) * BLOCK_N,
                tile_offs, d_mask, two_c, D, SELF_MODE, NEED_ACC, EVEN_D, INPUT_PRECISION, SPLIT, BLOCK_M, BLOCK_N,
            )  # fmt: skip
    if SELF_MODE == 1:
        stop = n_tiles
        if SEGMENT_COLS > 0:
            stop = tl.where(seg == 0, stop, 0)
        for t in range(diag_first + DIAG, stop):
            acc, r_self = _lean_tile(
                acc, r_self, xi, xi_lo, b_i, offs_m, rows_ptr, rows_lo_ptr, rowb_ptr, t * BLOCK_N, tile_offs,
                d_mask, two_c, D, 0, NEED_ACC, EVEN_D, INPUT_PRECISION, SPLIT, BLOCK_M, BLOCK_N,
            )  # fmt: skip
    else:
        n_diag = tl.minimum(n_tiles - diag_first, DIAG)
        n_rest = n_tiles - n_diag
        if SEGMENT_COLS > 0:
            n_rest = tl.where(seg == 0, n_rest, 0)
        for k in range(0, n_rest):  # every other block, skipping the diagonal ones
            t = k + n_diag * (k >= diag_first).to(tl.int32)
            acc, r_self = _lean_tile(
                acc, r_self, xi, xi_lo, b_i, offs_m, rows_ptr, rows_lo_ptr, rowb_ptr, t * BLOCK_N, tile_offs,
                d_mask, two_c, D, 0, NEED_ACC, EVEN_D, INPUT_PRECISION, SPLIT, BLOCK_M, BLOCK_N,
            )  # fmt: skip
    return acc, r_self


@triton.jit(do_not_specialize=["size_bucket"])
def _uniform_lean_kernel(
    rows_ptr,
    rows_lo_ptr,
    rowb_ptr,
    n_rows,
    other_ptr,
    other_lo_ptr,
    otherb_ptr,
    n_other,
    consts_ptr,
    info_ptr,
    dref_ptr,
    sums_ptr,
    acc_ptr,
    flags_ptr,
    D,
    size_bucket,  # autotuning key only
    SELF_MODE: tl.constexpr,
    HAS_OTHER: tl.constexpr,
    NEED_ACC: tl.constexpr,
    EVEN_D: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    SPLIT: tl.constexpr,
    SHIFT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SEGMENT_COLS: tl.constexpr = 0,
):
    """What _uniform_rows_kernel computes (dref = R, sums, acc), with the fixed shift; flags_ptr (int32 per row)
    gets 1 where the row must be recomputed. rows/other: x' padded to _ROW_PAD rows (zeros; SPLIT: float16
    high parts, rows_lo/other_lo the low parts); rowb/otherb: float32 -||x'||^2 / 2, -inf on the padding.
    SEGMENT_COLS > 0: program (i, s) of a grid (row blocks, S) sweeps segment s of the other set's columns (and, for
    s = 0, the rows' own set) and writes slot s of dref (S x n_rows), sums (S x 4 x n_rows), acc (S x n_rows x D)
    and flags (S x n_rows); see _segment_columns."""
    if EVEN_D:
        # The same value, known at compile time: every row offset (tile_offs, the tile starts, the stores) is then
        # a constant or a shift, not a register per load. Measured on sm_90 (Triton 3.9, the 172 lean compilations
        # of bench/results/kernels-sm90.md): the queue's bf16 sweep at D = 256 went from 255 registers and 12 bytes
        # of spill to 216 and none; fewer registers in 155 (up to -20%), more in 7 (none near the limit); hot-loop
        # instructions -7% to +2%.
        D = BLOCK_D
    pid = tl.program_id(0)
    row0 = pid * BLOCK_M
    offs_m = row0 + tl.arange(0, BLOCK_M)
    mask_m = offs_m < n_rows
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = (offs_d < D)[None, :]
    c, c64, _ = _scaled_t(consts_ptr, info_ptr, tl.float32)
    two_c = 2.0 * tl.minimum(c, 1e30)  # never inf (inf * 0 is NaN); a c that large is flagged below
    xi_offs = offs_m.to(tl.int64)[:, None] * D + offs_d[None, :]
    if EVEN_D:
        xi = tl.load(rows_ptr + xi_offs)
    else:
        xi = tl.load(rows_ptr + xi_offs, mask=d_mask, other=0.0)
    xi_lo = xi
    if SPLIT:
        if EVEN_D:
            xi_lo = tl.load(rows_lo_ptr + xi_offs)
        else:
            xi_lo = tl.load(rows_lo_ptr + xi_offs, mask=d_mask, other=0.0)
    b_i = tl.load(rowb_ptr + offs_m) * two_c + SHIFT
    # Offsets of a column block's elements from its first row: 32-bit, the same for every block.
    tile_offs = tl.arange(0, BLOCK_N)[:, None] * D + offs_d[None, :]
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    r_self = tl.zeros([BLOCK_M], tl.float64)
    r_other = tl.zeros([BLOCK_M], tl.float64)
    seg, col_start, col_stop = _segment_columns(n_other, SEGMENT_COLS)
    if SELF_MODE != 0:
        acc, r_self = _lean_self(
            acc, r_self, xi, xi_lo, b_i, offs_m, row0, n_rows, rows_ptr, rows_lo_ptr, rowb_ptr, tile_offs, d_mask,
            two_c, D, seg, SELF_MODE, NEED_ACC, EVEN_D, INPUT_PRECISION, SPLIT, BLOCK_M, BLOCK_N, SEGMENT_COLS,
        )  # fmt: skip
    if HAS_OTHER:
        for t in range(col_start // BLOCK_N, tl.cdiv(col_stop, BLOCK_N)):
            acc, r_other = _lean_tile(
                acc, r_other, xi, xi_lo, b_i, offs_m, other_ptr, other_lo_ptr, otherb_ptr, t * BLOCK_N, tile_offs,
                d_mask, two_c, D, 0, NEED_ACC, EVEN_D, INPUT_PRECISION, SPLIT, BLOCK_M, BLOCK_N,
            )  # fmt: skip

    # Pair counts per row and set; u = r - count, so that both forms of _row_totals give r.
    if SELF_MODE == 1:
        count_self = ((n_rows - 1) - offs_m).to(tl.float64)
    elif SELF_MODE == 2:
        count_self = tl.zeros([BLOCK_M], tl.float64) + (n_rows - 1)
    else:
        count_self = tl.zeros([BLOCK_M], tl.float64)
    if SEGMENT_COLS > 0:
        count_self = tl.where(seg == 0, count_self, 0.0)
    if HAS_OTHER:
        count_other = tl.zeros([BLOCK_M], tl.float64) + (col_stop - col_start)
    else:
        count_other = tl.zeros([BLOCK_M], tl.float64)
    count = count_self + count_other
    r = r_self + r_other
    top = tl.exp2(tl.full([BLOCK_M], SHIFT, tl.float64))  # 2^SHIFT, exact
    if SHIFT > 0:
        low = r < count * (top * 0.015625)  # float16: terms below 2^-6 of the range on average
    else:
        low = r < 7.888609052210118e-31  # 2^-100
    near = (count * top - r) <= count * (top * 0.0625)
    flag = (low | near | ((count * 0 + c64) > 1e30)) & (count > 0)
    if SEGMENT_COLS > 0:  # this segment's slot of the outputs (offset here: no live pointer during the sweep)
        dref_ptr, sums_ptr, acc_ptr, flags_ptr = _segment_slot(dref_ptr, sums_ptr, acc_ptr, flags_ptr, seg, n_rows, D)
    tl.store(flags_ptr + offs_m, flag.to(tl.int32), mask=mask_m)
    # Stored relative to the reference 0 (a lower bound of every d, as the finish's clamp needs): sums and acc
    # times 2^-SHIFT, exactly.
    r_self = r_self / top
    r_other = r_other / top
    tl.store(dref_ptr + offs_m, tl.zeros([BLOCK_M], tl.float32), mask=mask_m)
    tl.store(sums_ptr + offs_m, r_self, mask=mask_m)
    tl.store(sums_ptr + n_rows + offs_m, r_self - count_self, mask=mask_m)
    tl.store(sums_ptr + 2 * n_rows + offs_m, r_other, mask=mask_m)
    tl.store(sums_ptr + 3 * n_rows + offs_m, r_other - count_other, mask=mask_m)
    if NEED_ACC:
        if SHIFT > 0:
            acc = acc * (1.0 / (1 << SHIFT))  # SHIFT: an integer-valued float
        store_offs = offs_m.to(tl.int64)[:, None] * D + offs_d[None, :]
        tl.store(acc_ptr + store_offs, acc, mask=mask_m[:, None] & d_mask)


@triton.jit
def _bias_kernel(norms_ptr, n, out_ptr, BLOCK: tl.constexpr):
    """out = -||x'||^2 / 2 in float32 (-inf on the padding rows, whose norm is +inf)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    a = tl.load(norms_ptr + offs, mask=mask, other=0.0)
    tl.store(out_ptr + offs, (a * -0.5).to(tl.float32), mask=mask)


# Lean configurations (BLOCK_M, BLOCK_N, warps, stages); the first is also the untuned one.
_LEAN_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bm, bn, w, s in [
        (64, 128, 4, 3),
        (64, 128, 4, 2),
        (128, 128, 8, 2),
        (128, 128, 8, 3),
        (64, 128, 8, 2),
        (64, 64, 4, 3),
        (128, 64, 8, 2),
        (64, 64, 8, 3),
        (64, 64, 4, 2),
    ]
]


def _blocks(config: triton.Config) -> tuple[int, int, int, int]:
    return config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"], config.num_warps, config.num_stages


def prune_configs(
    configs: list[triton.Config], d: int, operand_bytes: int = 2, split: bool = False
) -> list[triton.Config]:
    """The lean configurations worth timing for rows of width ``d`` (padded to a power of two) and operands of
    ``operand_bytes`` (``split``: p in two float16 parts, see ``_weighted_rows``): those whose accumulator, Gram tile
    and p operand fit ~160 registers per thread (more spills), with 128-column tiles where any fits (they spread the
    per-tile work over twice the pairs)."""
    block_d = max(16, triton.next_power_of_2(d))
    per_pair = 1 + (2 if split else 1) * operand_bytes / 4  # the Gram tile (float32) and p as an operand
    fitting = []
    for config in configs:
        bm, bn = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"]
        if bm * block_d + bm * bn * per_pair <= 160 * 32 * config.num_warps:
            fitting.append(config)
    # 16 rows per warp where possible (wgmma's 64-row tiles per group of 4 warps): with fewer, the groups share rows
    # and split the columns, which duplicates p across them and converts the accumulator's layout between the dots.
    aligned = [c for c in fitting if c.kwargs["BLOCK_M"] >= 16 * c.num_warps] or fitting
    wide = [c for c in aligned if c.kwargs["BLOCK_N"] == 128] or aligned
    # At least 64 pairs per thread where possible: fewer leave the per-tile work (loads, barriers, the row sums'
    # shuffles) to fewer pairs, e.g. 14.3 instead of 6.9 SASS instructions per pair at D = 128.
    full = [c for c in wide if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] >= 64 * 32 * c.num_warps]
    return full or wide or configs[:1]


def _prune_lean(configs, named_args, **kwargs):
    return prune_configs(configs, named_args["D"], named_args["rows_ptr"].element_size(), kwargs.get("SPLIT", False))


_LEAN_KEY = ["size_bucket", "SELF_MODE", "HAS_OTHER", "NEED_ACC", "EVEN_D", "INPUT_PRECISION", "SPLIT", "SHIFT"]
_lean_kernel = maybe_autotune(
    _uniform_lean_kernel,
    _LEAN_CONFIGS,
    key=[*_LEAN_KEY, "BLOCK_D", "SEGMENT_COLS"],
    interpret_config=triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}),
    prune=_prune_lean,
)


# ---------------------------------------------------------------------------------------------------------------
# Precision


def _split(precision: str) -> bool:
    """Whether x' is stored and multiplied as two float16 parts (``_prepare``, ``_gram``, ``_weighted_rows``): for
    exact float32 products ("ieee" is only ever float32 inputs' resolution)."""
    return precision == "ieee"


def _operand_dtype(dtype: torch.dtype, precision: str) -> torch.dtype:
    """The dtype x' is stored in and multiplied as: the input's (float16/bfloat16/float64), or for float32 inputs
    float16 (ieee: two parts, see ``_split``; tf32) or bfloat16 (bf16).

    tf32 products round their operands to 10 mantissa bits, as float16 does; x' (centered, its largest element
    scaled by a power of two into [0.5, 1)) fits float16's range, so a float16 copy gives the same products on
    16-bit tensor cores, whose operands need no transposition through registers (tf32 wgmma takes K-major operands
    only) and half the bytes."""
    if dtype == torch.float32 and precision == "bf16":
        return torch.bfloat16
    if dtype == torch.float32 and precision in ("tf32", "ieee"):
        return torch.float16
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
def _segment_weight(dref_ptr, slot, rows, mask, dmin, tc, e2):
    """a_s = 2^(-t' (dref_s - dmin) log2 e) <= 1 (float64) of one segment's slot; 0 where it has no pair (dref_s
    infinite; dmin is finite wherever dref_s is)."""
    dref = tl.load(dref_ptr + slot + rows, mask=mask, other=float("inf"))
    none = dref == float("inf")
    w = _log2_weight(tl.where(none, 0.0, dref), tl.where(none, 0.0, dmin), tc, e2)
    return tl.where(none, 0.0, exp2(w))


@triton.jit
def _merge_segments_kernel(
    dref_ptr,
    sums_ptr,
    acc_ptr,
    dref_out_ptr,
    sums_out_ptr,
    n_rows,
    n_segments,
    D,
    consts_ptr,
    info_ptr,
    NEED_ACC: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """The segments' partial results (slot s of dref, sums, acc: see _segment_slot) merged in float64, relative to
    the smallest reference d_i = min_s dref_s, each slot rescaled as a closer pair rescales the sums in the sweep:
    with a_s = 2^(-t' (dref_s - d_i) log2 e),
        r = sum_s a_s r_s,   u = sum_s (u_s + (a_s - 1) r_s),   acc = sum_s a_s acc_s.
    Program (i, c): rows block i, and column block c of acc (in place, into slot 0); d_i and the sums (into
    dref_out, sums_out) by the programs with c = 0."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    mask = rows < n_rows
    tc = tl.load(consts_ptr + 1)
    e2 = 2 * tl.load(info_ptr).to(tl.int64)
    dmin = tl.full([BLOCK_R], float("inf"), tl.float64)
    for s in range(0, n_segments):
        slot = tl.cast(s, tl.int64) * n_rows
        dmin = tl.minimum(dmin, tl.load(dref_ptr + slot + rows, mask=mask, other=float("inf")).to(tl.float64))
    if tl.program_id(1) == 0:
        r_self = tl.zeros([BLOCK_R], tl.float64)
        u_self = tl.zeros([BLOCK_R], tl.float64)
        r_other = tl.zeros([BLOCK_R], tl.float64)
        u_other = tl.zeros([BLOCK_R], tl.float64)
        for s in range(0, n_segments):
            slot = tl.cast(s, tl.int64) * n_rows
            a = _segment_weight(dref_ptr, slot, rows, mask, dmin, tc, e2)
            sums = sums_ptr + 4 * slot + rows
            r = tl.load(sums, mask=mask, other=0.0)
            u_self += tl.load(sums + n_rows, mask=mask, other=0.0) + (a - 1.0) * r
            r_self += a * r
            r = tl.load(sums + 2 * n_rows, mask=mask, other=0.0)
            u_other += tl.load(sums + 3 * n_rows, mask=mask, other=0.0) + (a - 1.0) * r
            r_other += a * r
        tl.store(dref_out_ptr + rows, dmin.to(dref_out_ptr.dtype.element_ty), mask=mask)
        tl.store(sums_out_ptr + rows, r_self, mask=mask)
        tl.store(sums_out_ptr + n_rows + rows, u_self, mask=mask)
        tl.store(sums_out_ptr + 2 * n_rows + rows, r_other, mask=mask)
        tl.store(sums_out_ptr + 3 * n_rows + rows, u_other, mask=mask)
    if NEED_ACC:
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        amask = mask[:, None] & (cols[None, :] < D)
        offs = rows.to(tl.int64)[:, None] * D + cols[None, :]
        total = tl.zeros([BLOCK_R, BLOCK_C], tl.float64)
        for s in range(0, n_segments):
            slot = tl.cast(s, tl.int64) * n_rows
            a = _segment_weight(dref_ptr, slot, rows, mask, dmin, tc, e2)
            total += a[:, None] * tl.load(acc_ptr + slot * D + offs, mask=amask, other=0.0).to(tl.float64)
        tl.store(acc_ptr + offs, total.to(acc_ptr.dtype.element_ty), mask=amask)


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
    v_lo_ptr,
    acc_ptr,
    dref_ptr,
    sums_ptr,
    n_rows,
    D,
    consts_ptr,
    info_ptr,
    comb_ptr,
    SPLIT: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
    INTO_V: tl.constexpr = False,
):
    """In place in acc: d lse / d v_i = -2t 2^E 2^(w_i - L2) (R_i v'_i - acc_i) (SPLIT: v' = v + v_lo); NaN where
    an input is not finite (info[1]). INTO_V: in place in v instead, rounded once (from float64) to v's dtype, the
    inputs' for 16-bit inputs: their gradient then needs no float32 copy after the sweep.

    The row factor is applied as a mantissa and exact powers of two, from float64 logs: it may lie far outside the
    compute dtype (t above its range) where the gradient does not (R_i v'_i - acc_i is then 0 or tiny)."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    mask_r = rows < n_rows
    e = tl.load(info_ptr).to(tl.int64)
    finite = tl.load(info_ptr + 1) != 0
    dref = tl.load(dref_ptr + rows, mask=mask_r, other=float("inf"))
    log2_coef = _log2_weight(dref, tl.load(comb_ptr + 1), tl.load(consts_ptr + 1), 2 * e) - tl.load(comb_ptr)
    log2_coef = log2_coef + (log2(tl.load(consts_ptr)) + 1.0)  # * 2t
    if INTO_V:  # each element is read before it is written, by the same program
        out_ptr = v_ptr
    else:
        out_ptr = acc_ptr
    _write_row_gradients(
        v_ptr, v_lo_ptr, acc_ptr, out_ptr, sums_ptr, n_rows, rows, mask_r, log2_coef, e, finite, D, SPLIT, BLOCK_C
    )


@triton.jit
def _write_row_gradients(
    v_ptr, v_lo_ptr, acc_ptr, out_ptr, sums_ptr, n_rows, rows, mask_r, log2_coef, e, finite, D, SPLIT: tl.constexpr,
    BLOCK_C: tl.constexpr,
):  # fmt: skip
    """out_i = 2^(log2_coef_i + e) (acc_i - R_i v'_i) (SPLIT: v' = v + v_lo; R_i = r_self_i + r_other_i from the
    sweep's sums), rounded once from float64 to out's dtype; 0 where log2_coef is -inf, NaN everywhere unless
    ``finite``. The factor is applied as a mantissa and exact powers of two: it may lie far outside the compute dtype
    where the gradient does not."""
    rows64 = rows.to(tl.int64)
    weight = tl.load(sums_ptr + rows, mask=mask_r, other=0.0) + tl.load(
        sums_ptr + 2 * n_rows + rows, mask=mask_r, other=0.0
    )
    present = log2_coef > float("-inf")  # else no weight on this row's pairs: its gradient is 0
    # Beyond +-3000 the gradient over- or underflows every dtype.
    log2_coef = tl.minimum(tl.maximum(tl.where(present, log2_coef, 0.0), -3000.0), 3000.0)
    k = tl.floor(log2_coef)
    mantissa = tl.where(present, exp2(log2_coef - k), 0.0)
    k = k.to(tl.int64) + e
    ty = out_ptr.dtype.element_ty
    for c0 in range(0, D, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        mask = mask_r[:, None] & (cols[None, :] < D)
        offs = rows64[:, None] * D + cols[None, :]
        v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(tl.float64)
        if SPLIT:
            v += tl.load(v_lo_ptr + offs, mask=mask, other=0.0).to(tl.float64)
        acc = tl.load(acc_ptr + offs, mask=mask, other=0.0).to(tl.float64)
        g = mul_pow2((acc - weight[:, None] * v) * mantissa[:, None], k[:, None])
        g = tl.where(finite, g, float("nan"))
        tl.store(out_ptr + offs, g.to(ty), mask=mask)


_FINISH_ROWS = 64 if INTERPRET else 1024
_GRAD_ROWS = 16 if INTERPRET else 32
_GRAD_COLS = 64 if INTERPRET else 128
# Small blocks: the merge has only the few rows of a segmented sweep to spread over the GPU.
_MERGE_ROWS = 16
_MERGE_COLS = 16 if INTERPRET else 32
MERGE_WARPS = 4


# ---------------------------------------------------------------------------------------------------------------
# Host side


def launch_constants(
    d: int, self_mode: int, has_other: bool, need_acc: bool, precision: str, segment_cols: int = 0
) -> dict[str, object]:
    """The row kernel's compile-time arguments (all but the block configuration) for rows of width ``d``: what
    ``_sweep`` passes, and what ``hyperloss.triton.inspect`` compiles. ``segment_cols``: the other set's columns
    split across programs in segments of that many (``_segments``), 0 for none."""
    one_chunk = _in_registers(d, _split(precision))
    return {
        "SELF_MODE": self_mode,
        "HAS_OTHER": has_other,
        "NEED_ACC": need_acc,
        "ONE_CHUNK": one_chunk,
        "INPUT_PRECISION": "ieee",  # tf32 runs on a float16 copy (_operand_dtype): no float32 operand is rounded
        "SPLIT": _split(precision),
        "BLOCK_D": max(16, triton.next_power_of_2(d)) if one_chunk else _CHUNK_D,  # tl.dot needs K >= 16
        "FOLD_D": _FOLD_D,
        "SEGMENT_COLS": segment_cols,
    }


def lean_launch_constants(
    d: int,
    self_mode: int,
    has_other: bool,
    need_acc: bool,
    precision: str,
    operand: torch.dtype,
    segment_cols: int = 0,
) -> dict[str, object]:
    """The lean kernel's compile-time arguments (all but the block configuration)."""
    constants = launch_constants(d, self_mode, has_other, need_acc, precision, segment_cols)
    return {
        "SELF_MODE": self_mode,
        "HAS_OTHER": has_other,
        "NEED_ACC": need_acc,
        "EVEN_D": d == constants["BLOCK_D"],
        "INPUT_PRECISION": constants["INPUT_PRECISION"],
        "SPLIT": constants["SPLIT"],
        "SHIFT": _LEAN_SHIFT.get(operand, 0),
        "BLOCK_D": constants["BLOCK_D"],
        "SEGMENT_COLS": segment_cols,
    }


# Pointer arguments of the row kernels that are not float64: "operand" (x' dtype), "compute", or a Triton type.
POINTER_TYPES = {
    "rows_ptr": "operand",
    "rows_lo_ptr": "operand",
    "other_ptr": "operand",
    "other_lo_ptr": "operand",
    "dref_ptr": "compute",
    "acc_ptr": "compute",
    "rowb_ptr": "fp32",
    "otherb_ptr": "fp32",
    "flags_ptr": "i32",
    "dref_out_ptr": "compute",
}


def _sweep(
    rows: torch.Tensor,
    rows_lo: torch.Tensor | None,
    a_rows: torch.Tensor,
    other: torch.Tensor | None,
    other_lo: torch.Tensor | None,
    a_other: torch.Tensor | None,
    consts: torch.Tensor,
    info: torch.Tensor,
    dtype: torch.dtype,
    self_mode: int,
    need_acc: bool,
    precision: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Launches the row kernel: per row dref (compute dtype), sums (4 x rows, float64: r_self, u_self, r_other,
    u_other) and, when ``need_acc``, acc (rows x D, compute dtype). ``rows_lo``/``other_lo``: the low float16 parts
    of a split (``_prepare``), else None. With few rows and a large other set, over a grid of (row blocks, S column
    segments) whose partial results _merge_segments_kernel adds up (``_segments``)."""
    n, d = rows.shape
    has_other = other is not None
    segments, segment_cols = _segments(n, other.shape[0] if has_other else 0, d, dtype, need_acc, rows.device)
    # One slot per segment; slot 0 is the result.
    dref = torch.empty((segments, n), dtype=dtype, device=rows.device)
    sums = torch.empty((segments, 4, n), dtype=torch.float64, device=rows.device)
    acc = torch.empty((segments, n, d), dtype=dtype, device=rows.device) if need_acc else None
    if not has_other:  # never read (HAS_OTHER is false); any tensor will do as the pointer
        other, other_lo, a_other = rows, rows_lo, a_rows
    if rows_lo is None:  # never read (SPLIT is false)
        rows_lo, other_lo = rows, other
    kwargs = launch_constants(d, self_mode, has_other, need_acc, precision, segment_cols)
    acc_arg = dref if acc is None else acc

    def grid(meta):
        return (triton.cdiv(n, meta["BLOCK_M"]), segments)

    if not _lean(dtype, d, rows_lo is not rows):
        wrap_triton(_rows_kernel)[grid](
            rows, rows_lo, a_rows, n, other, other_lo, a_other, other.shape[0], consts, info, dref, sums, acc_arg, dref,
            d, size_bucket(n), **kwargs,
        )  # fmt: skip
    else:
        # The lean sweep, then the rows it flags again with the running reference (a program per block of rows
        # and segment that returns at once where none is flagged).
        rows_b = _bias(a_rows)
        other_b = _bias(a_other) if has_other else rows_b
        flags = torch.empty((segments, n), dtype=torch.int32, device=rows.device)
        constants = lean_launch_constants(d, self_mode, has_other, need_acc, precision, rows.dtype, segment_cols)
        _tune_on_prefix(rows, rows_lo, rows_b, other, other_lo, other_b, consts, info, dtype, constants)
        wrap_triton(_lean_kernel)[grid](
            rows, rows_lo, rows_b, n, other, other_lo, other_b, other.shape[0], consts, info, dref, sums, acc_arg,
            flags, d, size_bucket(n), **constants,
        )  # fmt: skip
        fallback = _FALLBACK_INTERPRET if INTERPRET else _fallback_config(d, rows_lo is not rows, segments > 1)
        wrap_triton(_uniform_rows_kernel)[(triton.cdiv(n, fallback.kwargs["BLOCK_M"]), segments)](
            rows, rows_lo, a_rows, n, other, other_lo, a_other, other.shape[0], consts, info, dref, sums, acc_arg,
            flags, d, size_bucket(n), CHECK_FLAGS=True, **kwargs, **fallback.kwargs, num_warps=fallback.num_warps,
            num_stages=fallback.num_stages,
        )  # fmt: skip
    if segments == 1:
        return dref[0], sums[0], (None if acc is None else acc[0])
    dref_out = torch.empty(n, dtype=dtype, device=rows.device)
    sums_out = torch.empty((4, n), dtype=torch.float64, device=rows.device)
    col_blocks = triton.cdiv(d, _MERGE_COLS) if need_acc else 1
    wrap_triton(_merge_segments_kernel)[(triton.cdiv(n, _MERGE_ROWS), col_blocks)](
        dref, sums, acc_arg, dref_out, sums_out, n, segments, d, consts, info,
        NEED_ACC=need_acc, BLOCK_R=_MERGE_ROWS, BLOCK_C=_MERGE_COLS, num_warps=MERGE_WARPS,
    )  # fmt: skip
    return dref_out, sums_out, (None if acc is None else acc[0])


def _segments(
    n: int | torch.SymInt, k: int | torch.SymInt, d: int, dtype: torch.dtype, need_acc: bool, device: torch.device
) -> tuple[int, int]:
    """(S, columns per segment): how the sweep of ``n`` rows against an other set of ``k`` splits its columns. (1, 0)
    where the row blocks alone fill the GPU (``_SEGMENT_PROGRAMS_PER_SM`` programs per SM at the largest BLOCK_M),
    else segments of a power of two times _SEGMENT_ALIGN columns (few compiled variants), at least _SEGMENT_MIN_COLS,
    the longest that give the GPU enough programs, with at most _SEGMENT_BYTES of partial accumulators (S x n x D).
    Symbolic sizes (torch.compile with dynamic shapes) get (1, 0): choosing would specialize the graph on them."""
    if not (isinstance(n, int) and isinstance(k, int)) or k == 0:
        return 1, 0
    target = _SEGMENT_TARGET or _SEGMENT_PROGRAMS_PER_SM * _sm_count(device)
    row_blocks = triton.cdiv(n, _SEGMENT_ROWS)
    if row_blocks >= target:
        return 1, 0
    # The longest power-of-two segments that still make the target (at most twice as many as needed).
    per_segment = triton.cdiv(triton.cdiv(k, _SEGMENT_ALIGN), triton.cdiv(target, row_blocks))
    cols = max(_SEGMENT_MIN_COLS, _SEGMENT_ALIGN << (per_segment.bit_length() - 1))
    if need_acc:
        while triton.cdiv(k, cols) * n * d * dtype.itemsize > _SEGMENT_BYTES and cols < k:
            cols *= 2
    segments = triton.cdiv(k, cols)
    return (segments, cols) if segments > 1 else (1, 0)


def _sm_count(device: torch.device) -> int:
    """The device's streaming multiprocessors: 132 (an H100/H200) under the interpreter, and while torch.compile
    traces (no device query in a graph)."""
    if INTERPRET or device.type != "cuda" or torch.compiler.is_compiling():
        return 132
    return _device_sm_count(torch.cuda.current_device() if device.index is None else device.index)


@functools.cache
def _device_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


_TUNED: set[tuple] = set()


def _tune_on_prefix(rows, rows_lo, rows_b, other, other_lo, other_b, consts, info, dtype, constants) -> None:
    """Above 2^MAX_BUCKET rows the autotuning key stops growing (``size_bucket``): the first call with such a key
    tunes on the first 2^MAX_BUCKET rows (and queue rows), where timing each configuration takes 1/64 of a 2^20-row
    sweep, and the full sweep then finds the result in the cache. Once per key and process (Triton's own cache
    keeps it on disk); not under torch.compile, where the launches are traced, nor without tuning."""
    prefix = 1 << _runtime.MAX_BUCKET
    n, d = rows.shape
    if n <= prefix or INTERPRET or not _runtime.AUTOTUNE or torch.compiler.is_compiling():
        return
    key = (rows.dtype, d, other is not rows, tuple(sorted(constants.items())))
    if key in _TUNED:
        return
    _TUNED.add(key)
    rows, rows_lo = rows[:prefix], rows_lo[:prefix]
    other, other_lo = other[: min(other.shape[0], prefix)], other_lo[: min(other.shape[0], prefix)]
    scratch_sums = torch.empty((4, prefix), dtype=torch.float64, device=rows.device)
    scratch_dref = torch.empty(prefix, dtype=dtype, device=rows.device)
    scratch_acc = torch.empty((prefix, d), dtype=dtype, device=rows.device) if constants["NEED_ACC"] else scratch_dref
    scratch_flags = torch.empty(prefix, dtype=torch.int32, device=rows.device)
    wrap_triton(_lean_kernel)[lambda meta: (triton.cdiv(prefix, meta["BLOCK_M"]),)](
        rows, rows_lo, rows_b, prefix, other, other_lo, other_b, other.shape[0], consts, info, scratch_dref,
        scratch_sums, scratch_acc, scratch_flags, d, size_bucket(prefix), **constants,
    )  # fmt: skip


def _in_registers(d: int, split: bool) -> bool:
    """Whether rows of width ``d`` (and the accumulator) stay in registers (else D is swept in chunks)."""
    return triton.next_power_of_2(d) <= (_MAX_REGISTER_D // 2 if split else _MAX_REGISTER_D)


def _lean(dtype: torch.dtype, d: int, split: bool) -> bool:
    """Whether the lean sweep runs: float32 compute (16-bit and float32 inputs) with the rows in registers."""
    return dtype == torch.float32 and _in_registers(d, split)


def _bias(norms: torch.Tensor) -> torch.Tensor:
    """-||x'||^2 / 2 (float32) over the padded rows behind ``norms`` (see ``_prepare``)."""
    n = _padded(norms.shape[0], _ROW_PAD)
    out = torch.empty(n, dtype=torch.float32, device=norms.device)
    wrap_triton(_bias_kernel)[(triton.cdiv(n, _BIAS_BLOCK),)](norms, n, out, BLOCK=_BIAS_BLOCK)
    return out


_BIAS_BLOCK = 64 if INTERPRET else 1024
_FALLBACK_INTERPRET = triton.Config({"BLOCK_M": 16, "BLOCK_N": 16})


def _fallback_config(d: int, split: bool = False, segmented: bool = False) -> triton.Config:
    """The running-reference kernel's one configuration where it only recomputes flagged rows (untuned: tuning it
    would time programs that return at once); narrower column blocks for a split's extra dots (no spills), and for a
    sweep whose columns are split into segments at 64 < D <= 128 (x's sweep with a queue spilled 56 bytes there
    with 64-column blocks, compiled for any row count: sm_90, Triton 3.9)."""
    block_d = triton.next_power_of_2(d)
    if split:
        return triton.Config({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=2)
    if block_d <= 64 or (block_d <= 128 and not segmented):
        return triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=2)
    if block_d <= 128:
        return triton.Config({"BLOCK_M": 128, "BLOCK_N": 32}, num_warps=8, num_stages=2)
    return triton.Config({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=8, num_stages=2)


def _finish_grad(v, v_lo, acc, dref, sums, consts, info, comb, into_v: bool = False) -> torch.Tensor:
    """The gradient to the rows v' (x' or q'), written over acc, or with ``into_v`` over v' itself (v's dtype)."""
    n, d = v.shape
    wrap_triton(_grad_kernel)[(triton.cdiv(n, _GRAD_ROWS),)](
        v, v if v_lo is None else v_lo, acc, dref, sums, n, d, consts, info, comb,
        SPLIT=v_lo is not None, BLOCK_R=_GRAD_ROWS, BLOCK_C=_GRAD_COLS, INTO_V=into_v, num_warps=8,
    )  # fmt: skip
    return v if into_v else acc


def host_constants(
    t: torch.Tensor, n: int | torch.SymInt, k: int | torch.SymInt, intra_batch: bool, device: torch.device
) -> torch.Tensor:
    """The kernels' float64 constants [t, t log2 e, ln 2, |P|] on ``device``: made on t's device (the CPU) and
    copied in one go, without waiting for the GPU (the source is staged at once)."""
    t = t.to(dtype=torch.float64)
    return torch.stack(
        [
            t,
            t * math.log2(math.e),
            torch.full((), math.log(2.0), dtype=torch.float64, device=t.device),
            torch.full((), num_pairs(n, k, intra_batch), dtype=torch.float64, device=t.device),
        ]
    ).to(device, non_blocking=True)


@triton_op("hyperloss::triton_uniform_lse", mutates_args=())
def triton_uniform_lse(
    x: torch.Tensor,
    queue: torch.Tensor | None,
    t: torch.Tensor,
    intra_batch: bool,
    grad_x: bool,
    grad_queue: bool,
    precision: str,
    input_dtype: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The op behind ``uniform_lse``: absent gradients are returned as empty tensors (an op returns tensors)."""
    dtype = compute_dtype(x.dtype)
    n = x.shape[0]
    k = 0 if queue is None else queue.shape[0]
    consts = host_constants(t, n, k, intra_batch, x.device)
    prep = prepare(x, queue, _operand_dtype(x.dtype, precision), row_pad=_ROW_PAD, split=_split(precision))
    grad_queue = grad_queue and queue is not None

    if not intra_batch:
        self_mode = _SELF_NONE
    else:
        # The gradient of row i needs every pair it is in; the loss alone needs each pair once.
        self_mode = _SELF_ALL if grad_x else _SELF_UPPER
    dref, sums, acc = _sweep(
        prep.x, prep.x_lo, prep.x_norms, prep.queue, prep.queue_lo, prep.queue_norms, consts, prep.info, dtype,
        self_mode, grad_x, precision,
    )  # fmt: skip
    lse = torch.empty((), dtype=torch.float64, device=x.device)
    comb = torch.empty(2, dtype=torch.float64, device=x.device)
    wrap_triton(_combine_kernel)[(1,)](
        dref, sums, n, k, consts, prep.info, lse, comb, SELF_MODE=self_mode, BLOCK=_FINISH_ROWS, num_warps=8
    )
    if grad_queue:
        # The queue's gradient: the same sweep with the queue as rows and x as the other set (the N x K pairs),
        # before either gradient is finished (with input_dtype they overwrite x' and q').
        dref_q, sums_q, acc_q = _sweep(
            prep.queue, prep.queue_lo, prep.queue_norms, prep.x, prep.x_lo, prep.x_norms, consts, prep.info, dtype,
            _SELF_NONE, True, precision,
        )  # fmt: skip
    # 16-bit inputs, asked for gradients in their dtype: written over x' and q' (their own copies, in the inputs'
    # dtype, no longer needed), so that no float32 N x D gradient is left after the sweep (only acc, freed here).
    into_v = input_dtype and x.dtype != dtype
    absent = x.dtype if into_v else dtype  # two tensors: an op's outputs may not alias
    gx = _finish_grad(prep.x, prep.x_lo, acc, dref, sums, consts, prep.info, comb, into_v) if grad_x else None
    gq = None
    if grad_queue:
        gq = _finish_grad(prep.queue, prep.queue_lo, acc_q, dref_q, sums_q, consts, prep.info, comb, into_v)
    return lse, x.new_empty(0, dtype=absent) if gx is None else gx, x.new_empty(0, dtype=absent) if gq is None else gq


def uniform_lse(
    x: torch.Tensor,
    queue: torch.Tensor | None,
    t: torch.Tensor | float,
    intra_batch: bool,
    grad_x: bool,
    grad_queue: bool,
    *,
    precision: str | None = None,
    input_dtype: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """See ``hyperloss.backends.Backend.uniform_lse``: same contract (``t`` a 0-dim float64 tensor; a number is accepted
    too), fused Triton kernel.

    ``precision`` sets how float32 inputs are multiplied: "ieee" (exact fp32), "tf32" or "bf16" (tensor cores,
    fp32 accumulation), or torch's names "highest" / "high" / "medium"; None follows torch's float32 matmul setting
    (``torch.backends.cuda.matmul.fp32_precision`` or ``torch.get_float32_matmul_precision()``). Other dtypes ignore
    it: float16/bfloat16 use their own tensor-core products with fp32 accumulation, float64 is exact.
    Under TRITON_INTERPRET=1, bfloat16 inputs and tf32/bf16 products raise NotImplementedError (numpy has neither).

    ``input_dtype``: the gradients in x's dtype instead of the compute dtype (float16/bfloat16 inputs: rounded once,
    written over the kernels' own 16-bit copy of the rows; no float32 N x D gradient). The backend exposes it as
    ``input_dtype_gradients`` for the autograd glue, which returns that dtype anyway.
    """
    resolved = resolve_precision(x.dtype, precision)
    check_interpretable(x.dtype, resolved)
    lse, gx, gq = torch.ops.hyperloss.triton_uniform_lse(
        x, queue, as_scalar_tensor(t), intra_batch, grad_x, grad_queue, resolved, input_dtype
    )
    return lse, (gx if grad_x else None), (gq if grad_queue and queue is not None else None)
