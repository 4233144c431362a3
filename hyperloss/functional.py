"""The public losses: input checks, backend choice, and the autograd glue every backend shares.

Each backend computes the loss and, in the same call, its analytic gradient when one is needed; the backward
pass only scales that gradient by the incoming one. Second derivatives are not supported and raise.
"""

from __future__ import annotations

import torch

from . import backends
from ._common import (
    as_scalar_tensor,
    log_mean_from_lse,
    normalized_rows,
    pair_weight_log_sum,
    scale_saved_grad,
    temperature_gradient,
)
from ._contract import check_bool
from ._precision import check_precision
from ._validation import check_align_args, check_uniform_args, check_uniform_weights, compute_dtype


def _log_mean(lse: torch.Tensor, x: torch.Tensor, queue: torch.Tensor | None, intra_batch: bool) -> torch.Tensor:
    """The loss from a backend's lse, in x's compute dtype."""
    k = 0 if queue is None else queue.shape[0]
    return log_mean_from_lse(lse, x.shape[0], k, intra_batch, compute_dtype(x.dtype))


def _uniform_lse(name, x, queue, t_scalar, intra_batch, grad_x, grad_queue, precision, input_dtype):
    """The backend's uniform_lse; with ``input_dtype``, asking for the gradients in the inputs' dtype where the
    backend can write them so (its ``input_dtype_gradients``): the backward pass returns that dtype anyway
    (``scale_saved_grad``), and 16-bit inputs then keep no float32 N x D gradient."""
    backend = backends.get(name)
    # bfloat16 only: a float16 gradient would be rounded before the backward pass scales it, and under AMP's loss
    # scaling its small entries (below 6e-5, typical at N = 65536) would lose digits to float16's subnormals, or
    # vanish, where scaling first keeps them; bfloat16 has float32's range.
    if input_dtype and x.dtype == torch.bfloat16 and getattr(backend, "input_dtype_gradients", False):
        return backend.uniform_lse(x, queue, t_scalar, intra_batch, grad_x, grad_queue, precision, input_dtype=True)
    return backend.uniform_lse(x, queue, t_scalar, intra_batch, grad_x, grad_queue, precision)


class _UniformLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, queue, t, t_scalar, intra_batch, backend, precision):
        # Applied only where a graph is built (see uniform_loss): needs_input_grad says True under no_grad too.
        # t is the caller's tensor where it may need a gradient (else None); t_scalar is what the kernels read.
        grad_t = t is not None and ctx.needs_input_grad[2]
        grad_x = ctx.needs_input_grad[0] or grad_t  # d lse/dt is formed from the rows' gradients
        grad_queue = queue is not None and (ctx.needs_input_grad[1] or grad_t)
        # d lse/dt is formed from the row gradients in the compute dtype; without it they may come in x's dtype.
        lse, gx, gq = _uniform_lse(backend, x, queue, t_scalar, intra_batch, grad_x, grad_queue, precision, not grad_t)
        _save_gradients(ctx, x, queue, t, t_scalar, gx, gq, grad_t)
        return _log_mean(lse, x, queue, intra_batch)

    @staticmethod
    def backward(ctx, grad_output):
        return *_scaled_gradients(ctx, grad_output), None, None, None, None


def _save_gradients(ctx, x, queue, t, t_scalar, gx, gq, grad_t, *weight_grads) -> None:
    """Saves what the backward pass scales: d loss/dx, d queue (where wanted), dt (formed here from the row
    gradients, see temperature_gradient; it holds with weights too) and the weights' gradients, if any."""
    # dt in t's own shape: a one-element t of shape (1,) or (1, 1) gets a gradient of that shape.
    dt = temperature_gradient(x, queue, gx, gq, t_scalar).reshape(t.shape) if grad_t else None
    keep_x, keep_q = ctx.needs_input_grad[0], queue is not None and ctx.needs_input_grad[1]
    ctx.save_for_backward(gx if keep_x else None, gq if keep_q else None, dt, *weight_grads)
    ctx.dtypes = (x.dtype, None if queue is None else queue.dtype, None if t is None else t.dtype)


def _scaled_gradients(ctx, grad_output) -> tuple[torch.Tensor | None, ...]:
    gx, gq, dt = ctx.saved_tensors[:3]
    x_dtype, q_dtype, t_dtype = ctx.dtypes[:3]
    grad_x, grad_q = scale_saved_grad(grad_output, gx, x_dtype), scale_saved_grad(grad_output, gq, q_dtype)
    return grad_x, grad_q, scale_saved_grad(grad_output.double(), dt, t_dtype)


def _weighted_loss(x, queue, t_scalar, intra_batch, weights, queue_weights, backend, precision, grads):
    """The loss with per-row weights, log(S / W), and the gradients of ``grads`` (x, queue, weights, queue
    weights; flags): S = sum_pairs w_u w_v exp(-t d_uv) from the backend (as lse = log S, with its gradients),
    W = sum_pairs w_u w_v and d log W/dw in closed form (``pair_weight_log_sum``): d loss/dw = d lse/dw - d log W/dw.
    """
    w64, qw64 = (None if v is None else v.detach().to(torch.float64) for v in (weights, queue_weights))
    lse, gx, gq, gw, gqw = backends.get(backend).uniform_lse_weighted(
        x, queue, t_scalar, intra_batch, w64, qw64, *grads, precision
    )
    k = 0 if queue is None else queue.shape[0]
    log_w, d_log_w, d_log_qw = pair_weight_log_sum(w64, qw64, x.shape[0], k, intra_batch, x.device)
    # log of a weighted mean of numbers <= 1 is <= 0: the bound clamps the sums' rounding, as without weights.
    loss = (lse.to(torch.float64) - log_w).clamp_max(0.0).to(compute_dtype(x.dtype))
    return loss, gx, gq, (None if gw is None else gw - d_log_w), (None if gqw is None else gqw - d_log_qw)


class _WeightedUniformLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, queue, t, weights, queue_weights, t_scalar, intra_batch, backend, precision):
        grad_t = t is not None and ctx.needs_input_grad[2]
        grads = (
            ctx.needs_input_grad[0] or grad_t,
            queue is not None and (ctx.needs_input_grad[1] or grad_t),
            weights is not None and ctx.needs_input_grad[3],
            queue_weights is not None and ctx.needs_input_grad[4],
        )
        loss, gx, gq, gw, gqw = _weighted_loss(
            x, queue, t_scalar, intra_batch, weights, queue_weights, backend, precision, grads
        )
        _save_gradients(ctx, x, queue, t, t_scalar, gx, gq, grad_t, gw, gqw)
        ctx.dtypes += tuple(None if v is None else v.dtype for v in (weights, queue_weights))
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        wide = grad_output.double()
        grad_w, grad_qw = (
            scale_saved_grad(wide, g, d) for g, d in zip(ctx.saved_tensors[3:], ctx.dtypes[3:], strict=True)
        )
        return *_scaled_gradients(ctx, grad_output), grad_w, grad_qw, None, None, None, None


class _AlignLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, alpha, backend):
        # Both gradients from the one pass that reads x and y (no -grad_x pass afterwards).
        loss, gx, gy = backends.get(backend).align(x, y, alpha, ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        ctx.save_for_backward(gx, gy)
        ctx.dtype = x.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        gx, gy = ctx.saved_tensors
        return scale_saved_grad(grad_output, gx, ctx.dtype), scale_saved_grad(grad_output, gy, ctx.dtype), None, None


def align_loss(
    x: torch.Tensor, y: torch.Tensor, alpha: float = 2.0, *, normalize: bool = False, backend: str = "auto"
) -> torch.Tensor:
    """Alignment loss of Wang & Isola (2020): ``mean_i ||x_i - y_i||_2 ** alpha``.

    Args:
        x, y: positive-pair features, shape (N, D), same dtype and device; float16, bfloat16, float32 or float64
            (float16 and bfloat16 are computed in float32). Rows are usually L2-normalized.
        alpha: exponent > 0 (the paper uses 2).
        normalize: L2-normalize the rows of x and y first, with its gradient (one more pass over the rows).
        backend: "auto" (the best kernel for the device; the environment variable HYPERLOSS_BACKEND overrides it),
            or one of ``hyperloss.backends()``.

    Returns:
        A 0-dim tensor: float64 for float64 inputs, float32 otherwise. Equal rows get a zero gradient for every
        alpha (no square root is taken).
    """
    alpha = check_align_args(x, y, alpha)
    check_bool("normalize", normalize)
    name = backends.resolve(backend, x.device)
    if normalize:
        x, y = normalized_rows(x, y)
    if not (torch.is_grad_enabled() and (x.requires_grad or y.requires_grad)):  # no graph to build: skip autograd
        return backends.get(name).align(x, y, as_scalar_tensor(alpha), False, False)[0]
    return _AlignLoss.apply(x, y, as_scalar_tensor(alpha), name)


def uniform_loss(
    x: torch.Tensor,
    t: float | torch.Tensor = 2.0,
    *,
    queue: torch.Tensor | None = None,
    intra_batch: bool = True,
    weights: torch.Tensor | None = None,
    queue_weights: torch.Tensor | None = None,
    normalize: bool = False,
    backend: str = "auto",
    precision: str | None = None,
) -> torch.Tensor:
    """Uniformity loss of Wang & Isola (2020): ``log mean_{pairs} exp(-t ||u - v||_2^2)``, without an N x N matrix.

    With per-row weights (e.g. item frequencies, as in DirectAU) it is the weighted mean over the same pairs,
    ``log( sum_{pairs} w_u w_v exp(-t ||u - v||^2) / sum_{pairs} w_u w_v )``, still without an N x N matrix.

    Args:
        x: features, shape (N, D); float16, bfloat16, float32 or float64 (float16 and bfloat16 are computed in
            float32).
        t: temperature > 0 (the paper uses 2): a number finite as a float64, or a one-element floating tensor. A
            tensor that requires grad gets d loss/dt (a trainable temperature) from the same kernel call, at the
            cost of one pass over the rows.
        queue: optional (K, D) features, e.g. a MoCo memory bank, same dtype and device as x; it may or may not
            require grad. With a queue the pairs are every (x_i, queue_k).
        intra_batch: include the pairs x_i, x_j with i < j (always true without a queue).
        weights: optional (N,) weights of x's rows, a floating tensor on x's device (any float dtype; it may
            require grad: d loss/dw comes from the same kernel call). Finite and >= 0, with some pair of two
            positive weights. None: every weight 1. The loss does not change when every weight (queue ones too)
            is scaled by one factor. A row of weight 0 takes no part in the loss (its x gradient is 0) but gets
            its weight's gradient.
        queue_weights: optional (K,) weights of the queue's rows, as ``weights`` (needs a queue).
        normalize: L2-normalize the rows of x (and of the queue) first, with its gradient, as lightly's
            HypersphereLoss does (one more pass over the rows).
        backend: "auto" (HYPERLOSS_BACKEND overrides it) or one of ``hyperloss.backends()``. With weights only the
            backends that support them run ("cpu", "triton" and "chunked"; ``hyperloss.backends.supports_weights``):
            "auto" takes the best-ranked of them on x's device ("cpu" on the CPU, "triton" on a GPU),
            and HYPERLOSS_BACKEND applies where it names one of them; another one named explicitly raises
            NotImplementedError.
        precision: how the fused GPU kernels multiply float32 inputs: "highest"/"ieee" (exact), "high"/"tf32",
            "medium"/"bf16" (tensor cores, float32 accumulation); None follows torch's float32 matmul setting
            (``torch.backends.cuda.matmul.fp32_precision``, else ``torch.get_float32_matmul_precision()``). Other
            dtypes, the CPU kernels and the chunked backend ignore it.

    Returns:
        A 0-dim tensor (float64 for float64 inputs, float32 otherwise). Equal to the paper's
        ``torch.pdist(x).pow(2).mul(-t).exp().mean().log()`` where that is finite, and the exact finite
        log-mean-exp where the paper's code underflows to -inf. Invariant to translating every row (and the queue)
        by one vector. NaN if any input element (weights included) is NaN or infinite.

    Raises:
        ValueError, TypeError: for invalid arguments, before any work. The weights' values (finite, >= 0, a
            positive pair weight sum) are read in eager mode only, in one device sync on a GPU; under
            torch.compile they are not read, and invalid weights give a NaN loss.
        NotImplementedError: weights with a backend that does not support them, named explicitly.
    """
    t = check_uniform_args(x, t, queue, intra_batch)
    check_uniform_weights(x, queue, weights, queue_weights, intra_batch)
    check_bool("normalize", normalize)
    check_precision(precision)
    weighted = weights is not None or queue_weights is not None
    name = backends.resolve(backend, x.device, weighted=weighted)
    if normalize:
        x, queue = normalized_rows(x, queue)
    t_scalar = as_scalar_tensor(t)
    # Under torch.compile a tensor t is not read (check_temperature): an invalid one gives NaN here, alike on every
    # backend (the native kernels would refuse it with an error, the formula would give a number).
    t_valid = None
    if isinstance(t, torch.Tensor) and torch.compiler.is_compiling():
        t_valid = torch.isfinite(t_scalar) & (t_scalar > 0)
        t_scalar = torch.where(t_valid, t_scalar, 1.0)
    trainable_t = isinstance(t, torch.Tensor) and t.requires_grad
    t_graph = t if trainable_t else None
    graph = torch.is_grad_enabled() and any(
        v is not None and v.requires_grad for v in (x, queue, t_graph, weights, queue_weights)
    )
    if weighted and not graph:  # no graph to build: skip autograd
        no_grads = (False, False, False, False)
        loss = _weighted_loss(x, queue, t_scalar, intra_batch, weights, queue_weights, name, precision, no_grads)[0]
    elif weighted:
        loss = _WeightedUniformLoss.apply(
            x, queue, t_graph, weights, queue_weights, t_scalar, intra_batch, name, precision
        )
    elif not graph:
        lse, _, _ = backends.get(name).uniform_lse(x, queue, t_scalar, intra_batch, False, False, precision)
        loss = _log_mean(lse, x, queue, intra_batch)
    else:
        loss = _UniformLoss.apply(x, queue, t_graph, t_scalar, intra_batch, name, precision)
    return loss if t_valid is None else torch.where(t_valid.to(loss.device), loss, float("nan"))
