"""Alignment on the GPU: mean_i d_i^(alpha/2), d_i = ||x_i - y_i||^2, and d loss / dx from one read of x and y."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .._common import as_scalar_tensor
from .._validation import compute_dtype
from ._runtime import INTERPRET, check_interpretable, exp2, log2

# Up to this padded D a program keeps its rows' x - y in registers, so x and y are read once; above it, D is swept
# in CHUNK_D columns twice (distances, then gradient). Small under the interpreter so tests reach both paths.
_MAX_ONE_CHUNK_D = 32 if INTERPRET else 8192
_CHUNK_D = 16 if INTERPRET else 1024
# Elements of x (and of y) per program: enough bytes in flight to stream at copy speed, few enough registers.
_BLOCK_ELEMENTS = 256 if INTERPRET else 4096


@triton.jit
def _diff_block(x_ptr, y_ptr, offs_m64, mask_m, stride_xn, stride_xd, stride_yn, stride_yd, cols, D, ty: tl.constexpr):
    """(x - y) on rows offs_m, columns cols, in the compute dtype ty (zeros outside the matrix)."""
    mask = mask_m[:, None] & (cols[None, :] < D)
    cols64 = cols.to(tl.int64)[None, :]
    x = tl.load(x_ptr + offs_m64[:, None] * stride_xn + cols64 * stride_xd, mask=mask, other=0.0)
    y = tl.load(y_ptr + offs_m64[:, None] * stride_yn + cols64 * stride_yd, mask=mask, other=0.0)
    return x.to(ty) - y.to(ty), mask


@triton.jit
def _align_kernel(
    x_ptr,
    y_ptr,
    stride_xn,
    stride_xd,
    stride_yn,
    stride_yd,
    alpha_ptr,
    terms_ptr,
    gx_ptr,
    n,
    D,
    NEED_GRAD: tl.constexpr,
    ONE_CHUNK: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """term_i = d_i^(alpha/2) (float64) and gx_i = (alpha/N) d_i^(alpha/2-1) (x_i - y_i), gx_i = 0 where d_i = 0.

    alpha_ptr: float64 alpha, read at run time (one compiled kernel for every alpha). The squares, d_i, the powers and
    the gradient's products are float64 (the kernel stays memory-bound): a float32 square overflows for differences
    beyond ~1.8e19 and underflows below ~1e-23, and at alpha < 1 the coefficient of rows 1e-30 apart (~1e44) overflows
    float32 while the gradient does not.
    """
    ty = gx_ptr.dtype.element_ty
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < n
    offs_m64 = offs_m.to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    if ONE_CHUNK:
        diff, mask = _diff_block(x_ptr, y_ptr, offs_m64, mask_m, stride_xn, stride_xd, stride_yn, stride_yd,
                                 offs_d, D, ty)  # fmt: skip
        wide = diff.to(tl.float64)
        d2 = tl.sum(wide * wide, axis=1)
    else:
        d2 = tl.zeros([BLOCK_M], tl.float64)
        for d0 in range(0, D, BLOCK_D):
            diff, mask = _diff_block(x_ptr, y_ptr, offs_m64, mask_m, stride_xn, stride_xd, stride_yn, stride_yd,
                                     d0 + offs_d, D, ty)  # fmt: skip
            wide = diff.to(tl.float64)
            d2 += tl.sum(wide * wide, axis=1)

    alpha = tl.load(alpha_ptr)
    half_alpha = alpha * 0.5
    grad_scale = alpha / n
    # d^(alpha/2) as 2^(alpha/2 log2 d), 0 at d = 0 (alpha > 0); d^(alpha/2-1) as term / d. A NaN d fails both
    # tests and stays NaN in term; its gradient is 0 * NaN = NaN, as in the reference.
    zero = d2 == 0
    safe = tl.where(zero, 1.0, d2)
    term = tl.where(zero, 0.0, exp2(half_alpha * log2(safe)))
    tl.store(terms_ptr + offs_m, term, mask=mask_m)

    if NEED_GRAD:
        coef = tl.where(d2 > 0, grad_scale * term / safe, 0.0)
        if ONE_CHUNK:
            tl.store(gx_ptr + offs_m64[:, None] * D + offs_d[None, :], (coef[:, None] * wide).to(ty), mask=mask)
        else:
            for d0 in range(0, D, BLOCK_D):
                cols = d0 + offs_d
                diff, mask = _diff_block(x_ptr, y_ptr, offs_m64, mask_m, stride_xn, stride_xd, stride_yn, stride_yd,
                                         cols, D, ty)  # fmt: skip
                g = coef[:, None] * diff.to(tl.float64)
                tl.store(gx_ptr + offs_m64[:, None] * D + cols[None, :], g.to(ty), mask=mask)


@triton_op("hyperloss::triton_align", mutates_args=())
def triton_align(
    x: torch.Tensor, y: torch.Tensor, alpha: torch.Tensor, grad_x: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The op behind ``align``: an absent gradient is returned as an empty tensor (an op returns tensors)."""
    n, d = x.shape
    dtype = compute_dtype(x.dtype)
    alpha = alpha.to(device=x.device, dtype=torch.float64, non_blocking=True)  # staged at once: no GPU wait
    terms = torch.empty(n, dtype=torch.float64, device=x.device)
    gx = torch.empty((n, d) if grad_x else (0,), dtype=dtype, device=x.device)
    one_chunk = triton.next_power_of_2(d) <= _MAX_ONE_CHUNK_D
    block_d = triton.next_power_of_2(d) if one_chunk else _CHUNK_D
    block_m = max(1, _BLOCK_ELEMENTS // block_d)
    wrap_triton(_align_kernel)[(triton.cdiv(n, block_m),)](
        x, y, x.stride(0), x.stride(1), y.stride(0), y.stride(1), alpha, terms, gx, n, d,
        NEED_GRAD=grad_x, ONE_CHUNK=one_chunk, BLOCK_M=block_m, BLOCK_D=block_d,
        num_warps=8 if block_m * block_d >= 4096 else 4,
    )  # fmt: skip
    return terms.mean().to(dtype), gx


def align(
    x: torch.Tensor, y: torch.Tensor, alpha: torch.Tensor | float, grad_x: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """See ``hyperloss.backends.Backend.align``: same contract (``alpha`` a 0-dim float64 tensor; a number is accepted
    too), one fused Triton kernel (loss terms and gradient). Under TRITON_INTERPRET=1 bfloat16 inputs raise
    NotImplementedError (numpy has no bfloat16)."""
    check_interpretable(x.dtype)
    loss, gx = torch.ops.hyperloss.triton_align(x, y, as_scalar_tensor(alpha), grad_x)
    return loss, (gx if grad_x else None)
