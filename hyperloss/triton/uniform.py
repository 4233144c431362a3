"""Uniformity on the GPU: lse = log sum over pairs exp(-t ||u - v||^2) and its gradients, with no N x N buffer.

One kernel, launched once for the loss and the gradient to x, and once more with the roles swapped for the
gradient to the queue. Each program owns BLOCK_M "rows" and sweeps the column blocks of up to two "column sets":
the rows themselves (the i<j pairs within x) and another set (the queue; or x when the rows are the queue). Like
flash attention it keeps, per row, a running max m_i of the scores and sums of 2^(s_ij - m_i), so the result is an
exact log-sum-exp even when every exp(s) underflows (t = 50), and the host finishes with
    LSE = logsumexp_i(ln2 m_i + log(r_self_i / h + r_other_i))
    d LSE / d row_i = -2t exp(ln2 m_i - LSE) (R_i row_i - acc_i),  R_i = r_self_i + r_other_i
where h = 2 when every column j != i of the rows' own set was swept (each unordered pair is then seen from both
of its rows), h = 1 when only j > i was (loss only), and acc_i = sum_j 2^(s_ij - m_i) col_j.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .._common import poison_nonfinite
from .._validation import compute_dtype
from ._runtime import INTERPRET, exp2, maybe_autotune, scalar, size_bucket

# How the rows' own set is swept (SELF_MODE): not at all, j > i (loss only), or every j != i (with gradient).
_SELF_NONE, _SELF_UPPER, _SELF_ALL = 0, 1, 2

# The accumulator acc_i (BLOCK_M x D) stays in registers up to this padded D; above it lives in the output buffer
# and D is swept in CHUNK_D columns (slower, but any D works). Small under the interpreter so that the tests
# reach both paths with small D.
_MAX_REGISTER_D = 32 if INTERPRET else 256
_CHUNK_D = 16 if INTERPRET else 64

# float32 operand precision per torch.get_float32_matmul_precision() name (and our own names for precision=).
_PRECISIONS = {"highest": "ieee", "high": "tf32", "medium": "bf16", "ieee": "ieee", "tf32": "tf32", "bf16": "bf16"}

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
def _load_block(ptr, offs_r64, mask_r, stride_r, stride_d, offs_d, D, CAST_BF16: tl.constexpr):
    """Rows offs_r, columns offs_d of a strided matrix (zeros outside it), in the dot operand dtype."""
    mask = mask_r[:, None] & (offs_d[None, :] < D)
    block = tl.load(ptr + offs_r64[:, None] * stride_r + offs_d.to(tl.int64)[None, :] * stride_d, mask=mask, other=0.0)
    if CAST_BF16:
        block = block.to(tl.bfloat16)
    return block


@triton.jit
def _tile_step(
    m_i,
    r_add,
    r_keep,
    acc,
    xi,
    a_i,
    rows_ptr,
    offs_m,
    mask_m,
    stride_rn,
    stride_rd,
    cols_ptr,
    a_cols_ptr,
    offs_n,
    n_cols,
    stride_cn,
    stride_cd,
    acc_ptr,
    two_c,
    D,
    PAIR_MASK: tl.constexpr,
    NEED_ACC: tl.constexpr,
    ONE_CHUNK: tl.constexpr,
    CAST_BF16: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """One column block: s_ij = min(2c row_i.col_j - a_i - a_j, 0) (base 2), then the online max/sum update.

    r_add gets this block's sum of 2^(s - m); r_keep (the other set's sum) is only rescaled to the new max.
    """
    acc_ty = a_i.dtype
    offs_m64 = offs_m.to(tl.int64)
    mask_n = offs_n < n_cols
    offs_n64 = offs_n.to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    if ONE_CHUNK:
        xj = _load_block(cols_ptr, offs_n64, mask_n, stride_cn, stride_cd, offs_d, D, CAST_BF16)
        g = tl.dot(xi, tl.trans(xj), input_precision=INPUT_PRECISION, out_dtype=acc_ty)
    else:
        g = tl.zeros([BLOCK_M, BLOCK_N], acc_ty)
        for d0 in range(0, D, BLOCK_D):
            xi_c = _load_block(rows_ptr, offs_m64, mask_m, stride_rn, stride_rd, d0 + offs_d, D, CAST_BF16)
            xj_c = _load_block(cols_ptr, offs_n64, mask_n, stride_cn, stride_cd, d0 + offs_d, D, CAST_BF16)
            g = tl.dot(xi_c, tl.trans(xj_c), g, input_precision=INPUT_PRECISION, out_dtype=acc_ty)

    a_j = tl.load(a_cols_ptr + offs_n, mask=mask_n, other=0.0)
    valid = mask_n[None, :]
    if PAIR_MASK == 1:
        valid = valid & (offs_n[None, :] > offs_m[:, None])
    elif PAIR_MASK == 2:
        valid = valid & (offs_n[None, :] != offs_m[:, None])
    # One FMA per pair before exp2: t and log2(e) are folded into two_c and the a's.
    s = tl.minimum(g * two_c - (a_i[:, None] + a_j[None, :]), 0.0)
    s = tl.where(valid, s, float("-inf"))

    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    # A row with no valid column yet keeps m = -inf; shift it by 0 instead so that -inf - -inf never appears.
    m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = exp2(m_i - m_shift)
    p = exp2(s - m_shift[:, None])
    r_add = r_add * alpha + tl.sum(p, axis=1)
    r_keep = r_keep * alpha

    if NEED_ACC:
        if ONE_CHUNK:
            acc = tl.dot(p.to(xj.dtype), xj, acc * alpha[:, None], input_precision=INPUT_PRECISION, out_dtype=acc_ty)
        else:
            for d0 in range(0, D, BLOCK_D):
                cols = d0 + offs_d
                xj_c = _load_block(cols_ptr, offs_n64, mask_n, stride_cn, stride_cd, cols, D, CAST_BF16)
                ptrs = acc_ptr + offs_m64[:, None] * D + cols[None, :]
                amask = mask_m[:, None] & (cols[None, :] < D)
                a = tl.load(ptrs, mask=amask, other=0.0)
                a = tl.dot(
                    p.to(xj_c.dtype), xj_c, a * alpha[:, None], input_precision=INPUT_PRECISION, out_dtype=acc_ty
                )
                tl.store(ptrs, a, mask=amask)
            # The next block reads these rows back, possibly from other threads of the program.
            tl.debug_barrier()
    return m_new, r_add, r_keep, acc


@triton.jit
def _uniform_rows_kernel(
    rows_ptr,
    a_rows_ptr,
    n_rows,
    stride_rn,
    stride_rd,
    other_ptr,
    a_other_ptr,
    n_other,
    stride_on,
    stride_od,
    two_c_ptr,
    m_ptr,
    r_self_ptr,
    r_other_ptr,
    acc_ptr,
    D,
    size_bucket,  # autotuning key only
    SELF_MODE: tl.constexpr,
    HAS_OTHER: tl.constexpr,
    NEED_ACC: tl.constexpr,
    ONE_CHUNK: tl.constexpr,
    CAST_BF16: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Per row i of this program's block: m_i = max_j s_ij (base 2), r_self_i / r_other_i = sum_j 2^(s_ij - m_i)
    over the rows' own set / the other set, and (NEED_ACC) acc_i = sum_j 2^(s_ij - m_i) col_j over both."""
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < n_rows
    offs_m64 = offs_m.to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    two_c = tl.load(two_c_ptr)
    a_i = tl.load(a_rows_ptr + offs_m, mask=mask_m, other=0.0)
    acc_ty = a_i.dtype
    m_i = tl.full([BLOCK_M], float("-inf"), acc_ty)
    r_self = tl.zeros([BLOCK_M], acc_ty)
    r_other = tl.zeros([BLOCK_M], acc_ty)
    if ONE_CHUNK:
        xi = _load_block(rows_ptr, offs_m64, mask_m, stride_rn, stride_rd, offs_d, D, CAST_BF16)
        acc = tl.zeros([BLOCK_M, BLOCK_D], acc_ty)
    else:
        # Rows are reloaded chunk by chunk and acc lives in acc_ptr: these two are placeholders.
        xi = tl.zeros([1, 1], acc_ty)
        acc = tl.zeros([1, 1], acc_ty)
        if NEED_ACC:
            for d0 in range(0, D, BLOCK_D):
                cols = d0 + offs_d
                amask = mask_m[:, None] & (cols[None, :] < D)
                tl.store(acc_ptr + offs_m64[:, None] * D + cols[None, :], tl.zeros([BLOCK_M, BLOCK_D], acc_ty), amask)
            tl.debug_barrier()

    if SELF_MODE != 0:
        if SELF_MODE == 1:
            start = (pid * BLOCK_M) // BLOCK_N * BLOCK_N  # first block holding a j > i
        else:
            start = 0
        for j0 in range(start, n_rows, BLOCK_N):
            m_i, r_self, r_other, acc = _tile_step(
                m_i, r_self, r_other, acc, xi, a_i,
                rows_ptr, offs_m, mask_m, stride_rn, stride_rd,
                rows_ptr, a_rows_ptr, j0 + tl.arange(0, BLOCK_N), n_rows, stride_rn, stride_rd,
                acc_ptr, two_c, D,
                SELF_MODE, NEED_ACC, ONE_CHUNK, CAST_BF16, INPUT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_D,
            )  # fmt: skip
    if HAS_OTHER:
        for j0 in range(0, n_other, BLOCK_N):
            m_i, r_other, r_self, acc = _tile_step(
                m_i, r_other, r_self, acc, xi, a_i,
                rows_ptr, offs_m, mask_m, stride_rn, stride_rd,
                other_ptr, a_other_ptr, j0 + tl.arange(0, BLOCK_N), n_other, stride_on, stride_od,
                acc_ptr, two_c, D,
                0, NEED_ACC, ONE_CHUNK, CAST_BF16, INPUT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_D,
            )  # fmt: skip

    tl.store(m_ptr + offs_m, m_i, mask=mask_m)
    tl.store(r_self_ptr + offs_m, r_self, mask=mask_m)
    tl.store(r_other_ptr + offs_m, r_other, mask=mask_m)
    if NEED_ACC and ONE_CHUNK:
        amask = mask_m[:, None] & (offs_d[None, :] < D)
        tl.store(acc_ptr + offs_m64[:, None] * D + offs_d[None, :], acc, amask)


_rows_kernel = maybe_autotune(
    _uniform_rows_kernel,
    _CONFIGS,
    key=["size_bucket", "SELF_MODE", "HAS_OTHER", "NEED_ACC", "ONE_CHUNK", "CAST_BF16", "INPUT_PRECISION", "BLOCK_D"],
    interpret_config=triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}),
)


@torch.compiler.assume_constant_result
def _torch_fp32_precision() -> str:
    # Read once per trace under torch.compile (dynamo cannot trace this getter).
    return torch.get_float32_matmul_precision()


def resolve_precision(dtype: torch.dtype, precision: str | None) -> str:
    """The operand precision for ``dtype`` inputs: "ieee", "tf32" or "bf16" for float32 (``precision``, or torch's
    float32 matmul precision when None); "native" for the other dtypes (their own dot, exact for float64)."""
    if precision is not None and precision not in _PRECISIONS:
        raise ValueError(f"precision must be None or one of {', '.join(map(repr, _PRECISIONS))}, got {precision!r}")
    if dtype != torch.float32:
        return "native"
    return _PRECISIONS[precision if precision is not None else _torch_fp32_precision()]


def _scaled_sq_norms(v: torch.Tensor, c: float, cast_bf16: bool, dtype: torch.dtype) -> torch.Tensor:
    """c ||v_i||^2, from the same operand values as the kernel's dot products (so a row's distance to itself is 0)."""
    if cast_bf16:
        v = v.to(torch.bfloat16)
    return v.to(dtype).pow(2).sum(1).mul_(c)


def _sweep(
    rows: torch.Tensor,
    a_rows: torch.Tensor,
    other: torch.Tensor | None,
    a_other: torch.Tensor | None,
    two_c: torch.Tensor,
    self_mode: int,
    need_acc: bool,
    precision: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Launches the row kernel: per row (m, r_self, r_other) and, when ``need_acc``, acc (rows x D)."""
    n, d = rows.shape
    dtype = a_rows.dtype
    m, r_self, r_other = (torch.empty(n, dtype=dtype, device=rows.device) for _ in range(3))
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
        "CAST_BF16": precision == "bf16",
        "INPUT_PRECISION": "tf32" if precision == "tf32" else "ieee",
        "BLOCK_D": max(16, triton.next_power_of_2(d)) if one_chunk else _CHUNK_D,  # tl.dot needs K >= 16
    }

    def grid(meta):
        return (triton.cdiv(n, meta["BLOCK_M"]),)

    wrap_triton(_rows_kernel)[grid](
        rows, a_rows, n, rows.stride(0), rows.stride(1),
        other, a_other, other.shape[0], other.stride(0), other.stride(1),
        two_c, m, r_self, r_other, m if acc is None else acc,
        d, size_bucket(n),
        **kwargs,
    )  # fmt: skip
    return m, r_self, r_other, acc


def _finish_grad(
    v: torch.Tensor, m: torch.Tensor, total: torch.Tensor, acc: torch.Tensor, lse: torch.Tensor, t: float
) -> torch.Tensor:
    """d LSE / d v_i = -2t exp(ln2 m_i - LSE) (R_i v_i - acc_i), computed in place in acc."""
    coef = torch.exp(m * math.log(2) - lse).mul_(-2 * t)
    return acc.neg_().addcmul_(total[:, None], v.to(acc.dtype)).mul_(coef[:, None])


@triton_op("hyperloss::triton_uniform_lse", mutates_args=())
def triton_uniform_lse(
    x: torch.Tensor,
    queue: torch.Tensor | None,
    t: float,
    intra_batch: bool,
    grad_x: bool,
    grad_queue: bool,
    precision: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The op behind ``uniform_lse``: absent gradients are returned as empty tensors (an op returns tensors)."""
    dtype = compute_dtype(x.dtype)
    cast_bf16 = precision == "bf16"
    c = t * math.log2(math.e)
    two_c = scalar(2 * c, dtype, x.device)
    a_x = _scaled_sq_norms(x, c, cast_bf16, dtype)
    a_q = None if queue is None else _scaled_sq_norms(queue, c, cast_bf16, dtype)
    grad_queue = grad_queue and queue is not None

    if not intra_batch:
        self_mode = _SELF_NONE
    else:
        # The gradient of row i needs every pair it is in; the loss alone needs each pair once.
        self_mode = _SELF_ALL if grad_x else _SELF_UPPER
    m, r_self, r_other, acc = _sweep(x, a_x, queue, a_q, two_c, self_mode, grad_x, precision)
    halve = 0.5 if self_mode == _SELF_ALL else 1.0
    lse = torch.logsumexp(m * math.log(2) + torch.log(r_self * halve + r_other), dim=0)

    gx = _finish_grad(x, m, r_self + r_other, acc, lse, t) if grad_x else x.new_empty(0, dtype=dtype)
    if grad_queue:
        # The queue's gradient: the same sweep with the queue as rows and x as the other set (the N x K pairs).
        mq, _, rq, accq = _sweep(queue, a_q, x, a_x, two_c, _SELF_NONE, True, precision)
        gq = _finish_grad(queue, mq, rq, accq, lse, t)
    else:
        gq = x.new_empty(0, dtype=dtype)
    inputs = (x,) if queue is None else (x, queue)
    lse, (gx, gq) = poison_nonfinite(inputs, lse, (gx, gq))
    return lse, gx, gq


def uniform_lse(
    x: torch.Tensor,
    queue: torch.Tensor | None,
    t: float,
    intra_batch: bool,
    grad_x: bool,
    grad_queue: bool,
    *,
    precision: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """See ``hyperloss.reference.uniform_lse``: same contract, fused Triton kernel.

    ``precision`` sets how float32 inputs are multiplied: "ieee" (exact fp32), "tf32" or "bf16" (tensor cores,
    fp32 accumulation), or torch's names "highest" / "high" / "medium"; None follows
    ``torch.get_float32_matmul_precision()``. Other dtypes ignore it: float16/bfloat16 use their own tensor-core
    products with fp32 accumulation, float64 is exact.
    """
    lse, gx, gq = torch.ops.hyperloss.triton_uniform_lse(
        x, queue, float(t), intra_batch, grad_x, grad_queue, resolve_precision(x.dtype, precision)
    )
    return lse, (gx if grad_x else None), (gq if grad_queue and queue is not None else None)
