"""The public losses: input checks, backend choice, and the autograd glue every backend shares.

Each backend computes the loss and, in the same call, its analytic gradient when one is needed; the backward
pass only scales that gradient by the incoming one. Second derivatives are not supported and raise.
"""

from __future__ import annotations

import torch

from . import backends
from ._common import as_scalar_tensor, log_mean_from_lse, scale_saved_grad
from ._precision import check_precision
from ._validation import check_align_args, check_uniform_args, compute_dtype


def _log_mean(lse: torch.Tensor, x: torch.Tensor, queue: torch.Tensor | None, intra_batch: bool) -> torch.Tensor:
    """The loss from a backend's lse, in x's compute dtype."""
    k = 0 if queue is None else queue.shape[0]
    return log_mean_from_lse(lse, x.shape[0], k, intra_batch, compute_dtype(x.dtype))


class _UniformLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, queue, t, intra_batch, backend, precision):
        # Applied only where a graph is built (see uniform_loss): needs_input_grad says True under no_grad too.
        grad_x = ctx.needs_input_grad[0]
        grad_queue = queue is not None and ctx.needs_input_grad[1]
        lse, gx, gq = backends.get(backend).uniform_lse(x, queue, t, intra_batch, grad_x, grad_queue, precision)
        ctx.save_for_backward(gx, gq)
        ctx.dtypes = (x.dtype, None if queue is None else queue.dtype)
        return _log_mean(lse, x, queue, intra_batch)

    @staticmethod
    def backward(ctx, grad_output):
        gx, gq = ctx.saved_tensors
        x_dtype, q_dtype = ctx.dtypes
        grad_x, grad_q = scale_saved_grad(grad_output, gx, x_dtype), scale_saved_grad(grad_output, gq, q_dtype)
        return grad_x, grad_q, None, None, None, None


class _AlignLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, alpha, backend):
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        loss, gx = backends.get(backend).align(x, y, alpha, need_grad)
        ctx.save_for_backward(gx)
        ctx.dtype = x.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        (gx,) = ctx.saved_tensors
        grad_x = scale_saved_grad(grad_output, gx, ctx.dtype)  # y has x's dtype; its gradient is the opposite
        grad_y = -grad_x if ctx.needs_input_grad[1] else None
        return (grad_x if ctx.needs_input_grad[0] else None), grad_y, None, None


def align_loss(x: torch.Tensor, y: torch.Tensor, alpha: float = 2.0, *, backend: str = "auto") -> torch.Tensor:
    """Alignment loss of Wang & Isola (2020): ``mean_i ||x_i - y_i||_2 ** alpha``.

    Args:
        x, y: positive-pair features, shape (N, D), same dtype and device; float16, bfloat16, float32 or float64
            (float16 and bfloat16 are computed in float32). Rows are usually L2-normalized.
        alpha: exponent > 0 (the paper uses 2).
        backend: "auto" (the best kernel for the device; the environment variable HYPERLOSS_BACKEND overrides it),
            or one of ``hyperloss.backends()``.

    Returns:
        A 0-dim tensor: float64 for float64 inputs, float32 otherwise. Equal rows get a zero gradient for every
        alpha (no square root is taken).
    """
    alpha = check_align_args(x, y, alpha)
    name = backends.resolve(backend, x.device)
    if not (torch.is_grad_enabled() and (x.requires_grad or y.requires_grad)):  # no graph to build: skip autograd
        return backends.get(name).align(x, y, as_scalar_tensor(alpha), False)[0]
    return _AlignLoss.apply(x, y, as_scalar_tensor(alpha), name)


def uniform_loss(
    x: torch.Tensor,
    t: float = 2.0,
    *,
    queue: torch.Tensor | None = None,
    intra_batch: bool = True,
    backend: str = "auto",
    precision: str | None = None,
) -> torch.Tensor:
    """Uniformity loss of Wang & Isola (2020): ``log mean_{pairs} exp(-t ||u - v||_2^2)``, without an N x N matrix.

    Args:
        x: features, shape (N, D); float16, bfloat16, float32 or float64 (float16 and bfloat16 are computed in
            float32).
        t: temperature > 0 (the paper uses 2); any value finite as a float64.
        queue: optional (K, D) features, e.g. a MoCo memory bank, same dtype and device as x; it may or may not
            require grad. With a queue the pairs are every (x_i, queue_k).
        intra_batch: include the pairs x_i, x_j with i < j (always true without a queue).
        backend: "auto" (HYPERLOSS_BACKEND overrides it) or one of ``hyperloss.backends()``.
        precision: how the fused GPU kernels multiply float32 inputs: "highest"/"ieee" (exact), "high"/"tf32",
            "medium"/"bf16" (tensor cores, float32 accumulation); None follows torch's float32 matmul setting
            (``torch.backends.cuda.matmul.fp32_precision``, else ``torch.get_float32_matmul_precision()``). Other
            dtypes, the CPU kernels and the chunked backend ignore it.

    Returns:
        A 0-dim tensor (float64 for float64 inputs, float32 otherwise). Equal to the paper's
        ``torch.pdist(x).pow(2).mul(-t).exp().mean().log()`` where that is finite, and the exact finite
        log-mean-exp where the paper's code underflows to -inf. Invariant to translating every row (and the queue)
        by one vector. NaN if any input element is NaN or infinite.
    """
    t = check_uniform_args(x, t, queue, intra_batch)
    check_precision(precision)
    name = backends.resolve(backend, x.device)
    if not (torch.is_grad_enabled() and (x.requires_grad or (queue is not None and queue.requires_grad))):
        lse, _, _ = backends.get(name).uniform_lse(x, queue, as_scalar_tensor(t), intra_batch, False, False, precision)
        return _log_mean(lse, x, queue, intra_batch)
    return _UniformLoss.apply(x, queue, as_scalar_tensor(t), intra_batch, name, precision)
