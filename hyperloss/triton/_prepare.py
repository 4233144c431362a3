"""The rows the uniformity kernel works on: centered, scaled by a power of two, in the dtype of the dot operands.

x' = (x - c) 2^-E and q' = (q - c) 2^-E (x and the queue together): distances do not move under a translation and a
power of two scales them exactly (t' = t 4^E), so afterwards the Gram form ||u||^2 + ||v||^2 - 2 u.v cancels only
on the spread of the rows, not on a common offset, and no squared norm over- or underflows. E = first + second:
2^-first brings the largest |x| to [0.5, 1) (so that nothing below overflows, float64 inputs near 1e308 included),
2^-second the largest centered magnitude.

The center c: per column, the midhinge (Q1 + Q3) / 2 of a sample of the rows of x and the queue together
(``hyperloss._common.sampled_center``: up to 1023 rows, one small sort), so that outliers cannot move it away from
the other rows.
- float32 / float64 inputs: x' rounded once from (x - c) 2^-E computed in float64.
- float16 / bfloat16 inputs, whose dot operands stay 16-bit (tensor cores, exact products): c rounded to the input
  dtype, where every value of the column lies within a factor 2 of it (then x - c is exact by Sterbenz's lemma, and
  so is x'), else 0 (then the column's values are at most twice its range: no large offset to remove). float16
  inputs are only ever scaled up (their products cannot overflow float32; scaling down would make small values
  subnormal); a float16 copy of float32 inputs (tf32) is scaled either way.

Exact float32 products ("ieee") of float32 inputs run on float16 tensor cores: x' is stored as two float16 parts,
hi = fp16(x') and lo = fp16(x' - hi), with x' scaled 2^SPLIT_HEADROOM higher (its largest element in [2^11, 2^12),
E lowered to match) so that lo, |lo| <= 1, stays in float16's normal range down to residuals of 2^-14: the parts
carry x' to 2^-22 of each element and 2^-36 of the largest. The kernels multiply hi.hi + hi.lo + lo.hi (``uniform``);
the norms are those of hi + lo.

Memory: one copy of x and of the queue in the operand dtype (two float16 parts for "ieee") and their squared norms
(float64, one per row); no float64 copy of the rows. Work: a min/max per column (torch.aminmax), the scale (one
small program), the sampled quartiles (a gather and a sort of at most 1023 rows), the center and second scale (one
small program), and one pass that writes x' and the norms. Every scale is a tensor on the device:
no value goes to the host (nothing to synchronize, one torch.compile graph for every input).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from .._common import sampled_center
from ._runtime import INTERPRET, frexp_exponent, pow2

_STAT_COLS = 16 if INTERPRET else 64
_PREP_ROWS = 16 if INTERPRET else 32
_PREP_COLS = 64 if INTERPRET else 128
# Float64 element-wise work: 8 warps keep it to ~16 values per thread (no register spills).
_WARPS = 8
_INF = tl.constexpr(float("inf"))
SPLIT_HEADROOM = 12  # x' 2^12 < 4096: hi and its products stay far from float16's and float32's limits


@triton.jit
def _column_bounds(bounds_ptr, D, cols, mask_c, NUM_PARTS: tl.constexpr):
    """Per column: min and max over all rows of x and the queue, float64 (bounds_ptr: [lo, hi] per part, D each)."""
    lo = tl.load(bounds_ptr + cols, mask=mask_c, other=0.0).to(tl.float64)
    hi = tl.load(bounds_ptr + D + cols, mask=mask_c, other=0.0).to(tl.float64)
    if NUM_PARTS == 2:
        lo = tl.minimum(lo, tl.load(bounds_ptr + 2 * D + cols, mask=mask_c, other=0.0).to(tl.float64))
        hi = tl.maximum(hi, tl.load(bounds_ptr + 3 * D + cols, mask=mask_c, other=0.0).to(tl.float64))
    return lo, hi


@triton.jit
def _scale_factors(exponent):
    """2^-exponent as two float64 factors (each a normal number even where 2^-exponent is not)."""
    half = (-exponent) >> 1
    return pow2(half), pow2(-exponent - half)


@triton.jit
def _first_kernel(
    bounds_ptr, D, scales_ptr, info_ptr, NUM_PARTS: tl.constexpr, SCALE_DOWN: tl.constexpr, BLOCK_C: tl.constexpr
):
    """One program: first, which brings the largest |x| to [0.5, 1) (never down unless SCALE_DOWN), as info[0]
    (float64) and as two factors in scales[0:2]; info[1] = 1 if every element is finite, else 0 (min and max
    propagate NaN)."""
    big = tl.zeros([BLOCK_C], tl.float64)
    bad = tl.zeros([BLOCK_C], tl.int32)
    for c0 in range(0, D, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        mask_c = cols < D
        for k in tl.static_range(2 * NUM_PARTS):  # each part's min and max (a min or max of two may drop a NaN)
            m = tl.abs(tl.load(bounds_ptr + k * D + cols, mask=mask_c, other=0.0).to(tl.float64))
            finite = (m == m) & (m < _INF)
            bad = tl.maximum(bad, tl.where(finite, 0, 1))
            big = tl.maximum(big, tl.where(finite, m, 0.0))  # NaN and inf: no scale (the result is NaN anyway)
    first = frexp_exponent(tl.max(big, axis=0))
    if not SCALE_DOWN:
        first = tl.minimum(first, 0)
    s1, s2 = _scale_factors(first)
    tl.store(scales_ptr, s1)
    tl.store(scales_ptr + 1, s2)
    tl.store(info_ptr, first.to(tl.float64))
    tl.store(info_ptr + 1, tl.where(tl.max(bad, axis=0) == 0, 1.0, 0.0).to(tl.float64))


@triton.jit
def _stats_kernel(
    bounds_ptr,
    sampled_ptr,
    D,
    center_ptr,
    scales_ptr,
    info_ptr,
    NUM_PARTS: tl.constexpr,
    SCALE_DOWN: tl.constexpr,
    STERBENZ: tl.constexpr,
    HEADROOM: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """One program, after _first_kernel: the center c (float64, D, in units of 2^first), 2^-second as two factors
    in scales[2:4], and info[0] = E = first + second (float64); the largest centered magnitude ends in
    [2^(HEADROOM - 1), 2^HEADROOM)."""
    first = tl.load(info_ptr).to(tl.int64)
    s1 = tl.load(scales_ptr)
    s2 = tl.load(scales_ptr + 1)
    spread = tl.zeros([BLOCK_C], tl.float64)
    for c0 in range(0, D, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        mask_c = cols < D
        lo, hi = _column_bounds(bounds_ptr, D, cols, mask_c, NUM_PARTS)
        lo_s = lo * s1 * s2
        hi_s = hi * s1 * s2
        sampled = tl.load(sampled_ptr + cols, mask=mask_c, other=0.0)  # float64, in the input's units
        center = sampled * s1 * s2
        if STERBENZ:
            # The center rounded to the input dtype (it lies within the column's range); used where every value of
            # the column is within a factor 2 of it, so that x - c is exact in the input dtype.
            rounded = sampled.to(bounds_ptr.dtype.element_ty).to(tl.float64)
            within_2x = ((lo > 0) & (hi <= 2.0 * lo)) | ((hi < 0) & (lo >= 2.0 * hi))
            center = tl.where(within_2x, rounded * s1 * s2, 0.0)
        tl.store(center_ptr + cols, center, mask=mask_c)
        dev = tl.maximum(tl.abs(hi_s - center), tl.abs(center - lo_s))
        spread = tl.maximum(spread, tl.where(mask_c & (dev < _INF), dev, 0.0))
    second = frexp_exponent(tl.max(spread, axis=0))
    if not SCALE_DOWN:
        second = tl.minimum(second, 0)
    second = second - HEADROOM
    s3, s4 = _scale_factors(second)
    tl.store(scales_ptr + 2, s3)
    tl.store(scales_ptr + 3, s4)
    tl.store(info_ptr, (first + second).to(tl.float64))


@triton.jit
def _center_kernel(
    src_ptr,
    stride_n,
    stride_d,
    n_rows,
    D,
    scales_ptr,
    center_ptr,
    out_ptr,
    lo_ptr,
    norms_ptr,
    SPLIT: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """out = ((x 2^-first) - c) 2^-second in out's dtype (contiguous), rounded once from float64; with SPLIT also
    lo = that - out in lo's dtype (out + lo: the stored rows). norms = the squared norms of the stored rows, summed
    in float64."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    mask_r = rows < n_rows
    rows64 = rows.to(tl.int64)
    s1 = tl.load(scales_ptr)
    s2 = tl.load(scales_ptr + 1)
    s3 = tl.load(scales_ptr + 2)
    s4 = tl.load(scales_ptr + 3)
    out_ty = out_ptr.dtype.element_ty
    norms = tl.zeros([BLOCK_R], tl.float64)
    for c0 in range(0, D, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        mask_c = cols < D
        mask = mask_r[:, None] & mask_c[None, :]
        src = src_ptr + rows64[:, None] * stride_n + cols.to(tl.int64)[None, :] * stride_d
        v = tl.load(src, mask=mask, other=0.0)
        center = tl.load(center_ptr + cols, mask=mask_c, other=0.0)
        exact = (v.to(tl.float64) * s1 * s2 - center[None, :]) * s3 * s4
        w = exact.to(out_ty)
        offs = rows64[:, None] * D + cols[None, :]
        tl.store(out_ptr + offs, w, mask=mask)
        w64 = w.to(tl.float64)
        if SPLIT:
            lo = (exact - w64).to(lo_ptr.dtype.element_ty)  # exact - w64: exact in float64
            tl.store(lo_ptr + offs, lo, mask=mask)
            w64 = w64 + lo.to(tl.float64)
        w64 = tl.where(mask, w64, 0.0)
        norms += tl.sum(w64 * w64, axis=1)
    tl.store(norms_ptr + rows, norms, mask=mask_r)


class Prepared(NamedTuple):
    x: torch.Tensor  # x' (N x D, contiguous, operand dtype); with a split, its high part
    queue: torch.Tensor | None  # q' (K x D) or None
    x_norms: torch.Tensor  # ||x'_i||^2, float64
    queue_norms: torch.Tensor | None
    info: torch.Tensor  # float64 [E (integer-valued), 1.0 if every input element is finite else 0.0]
    x_lo: torch.Tensor | None = None  # with a split: the low parts (see above), else None
    queue_lo: torch.Tensor | None = None


def padded(n: int | torch.SymInt, row_pad: int) -> int | torch.SymInt:
    """n rounded up to a multiple of ``row_pad``, at least one (no guard on n under torch.compile)."""
    return (torch.sym_max(n, 1) + row_pad - 1) // row_pad * row_pad


def _centered(v, scales, center, dtype, row_pad, split):
    """x' (with ``split``: its two parts) and its squared norms, each padded to a multiple of ``row_pad`` rows
    (zeros, norms +inf) and returned as views of the first n rows: kernels that sweep whole blocks of rows read the
    padding without bounds checks."""
    n, d = v.shape
    n_pad = padded(n, row_pad)
    parts = torch.empty((2 if split else 1, n_pad, d), dtype=dtype, device=v.device)
    norms = torch.empty(n_pad, dtype=torch.float64, device=v.device)
    parts[:, n:].zero_()  # possibly empty
    norms[n:].fill_(float("inf"))
    wrap_triton(_center_kernel)[(triton.cdiv(n, _PREP_ROWS),)](
        v, v.stride(0), v.stride(1), n, d, scales, center, parts[0], parts[-1], norms,
        SPLIT=split, BLOCK_R=_PREP_ROWS, BLOCK_C=_PREP_COLS, num_warps=_WARPS,
    )  # fmt: skip
    return parts[0, :n], (parts[1, :n] if split else None), norms[:n]


def prepare(
    x: torch.Tensor, queue: torch.Tensor | None, operand_dtype: torch.dtype, row_pad: int = 1, split: bool = False
) -> Prepared:
    """x' and q' in ``operand_dtype`` with their squared norms, E, and whether the inputs are finite; x', q' and
    their norms are views of buffers padded to a multiple of ``row_pad`` rows (zero rows of norm +inf). ``split``:
    x' and q' as two float16 parts each, hi + lo (see above)."""
    parts = [x] if queue is None else [x, queue]
    d = x.shape[1]
    flags = {
        "NUM_PARTS": len(parts),
        "SCALE_DOWN": x.dtype != torch.float16,  # float16 inputs are never scaled down (see above)
    }
    bounds = torch.stack([b for v in parts for b in torch.aminmax(v, dim=0)])  # (2 * parts) x D, input dtype
    scales = torch.empty(4, dtype=torch.float64, device=x.device)
    info = torch.empty(2, dtype=torch.float64, device=x.device)
    wrap_triton(_first_kernel)[(1,)](bounds, d, scales, info, BLOCK_C=_STAT_COLS, **flags)
    sampled = sampled_center(x, queue)
    center = torch.empty(d, dtype=torch.float64, device=x.device)
    wrap_triton(_stats_kernel)[(1,)](
        bounds, sampled, d, center, scales, info,
        STERBENZ=x.dtype in (torch.float16, torch.bfloat16), HEADROOM=SPLIT_HEADROOM if split else 0,
        BLOCK_C=_STAT_COLS, **flags,
    )  # fmt: skip
    xs, xs_lo, x_norms = _centered(x, scales, center, operand_dtype, row_pad, split)
    qs = qs_lo = q_norms = None
    if queue is not None:
        qs, qs_lo, q_norms = _centered(queue, scales, center, operand_dtype, row_pad, split)
    return Prepared(xs, qs, x_norms, q_norms, info, xs_lo, qs_lo)
