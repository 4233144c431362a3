"""JAX bindings: ``align_loss`` and ``uniform_loss`` for JAX arrays, through XLA's FFI.

The same kernels as the torch "cpu" and "cuda" backends (csrc/cpu, csrc/cuda, via csrc/jax/ffi.cpp), called with
``jax.ffi.ffi_call`` and differentiated with ``jax.custom_vjp``: the forward pass of a gradient computation gets
the analytic gradient from the same kernel call, the backward pass only scales it. Works under ``jax.jit``.
Semantics match ``hyperloss.align_loss`` / ``hyperloss.uniform_loss`` (float16/bfloat16 are computed in float32;
float64 needs ``jax_enable_x64``).

The uniformity handlers return the loss itself, lse - log|P| formed in float64 in C++ (and never above 0): near 0
the loss is far smaller than log|P|, and subtracting here in float32 would keep none of its digits.

Two ways into the kernels, the same results:
- XLA FFI handlers (``hyperloss/libhyperloss_jax.so``, CPU and, where the library has CUDA, GPU): built when jax
  is installed at build time (``pip install --no-build-isolation .`` in an environment with jax; `make build`);
- otherwise ``jax.pure_callback`` into the C library's CPU kernels (a plain ``pip install ".[jax]"`` builds without
  jax's headers): CPU arrays only, one host round trip per call. ``KERNEL_PATH`` says which one is in use.

With per-row weights (``uniform_loss(weights=, queue_weights=)``) the loss always takes the host path, on the CPU
only: ``jax.pure_callback`` into the torch frontend's own weighted loss on its "cpu" backend
(``hl_uniform_lse_weighted_cpu``), which forms log(S / W) and the weights' gradients in float64 with the one
implementation of the pair weight sum W (``hyperloss._common.pair_weight_log_sum``); an FFI handler would need a
second one in C++, and float32 outputs could not carry W's digits back (the loss near 0 would lose them). There
is no weighted CUDA kernel: weights with arrays on a GPU raise NotImplementedError; under ``jax.jit`` (where arrays
have no device yet) the host path runs wherever the computation is placed (on a GPU: a copy to the host and back).
"""

from __future__ import annotations

import ctypes
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import torch

from . import _contract, _lib
from ._common import as_scalar_tensor
from ._precision import HL_PRECISION, check_precision, resolve_jax_precision
from .functional import _weighted_loss

__all__ = ["align_loss", "uniform_loss"]


def _register_targets() -> str:
    """Registers the FFI handlers and returns "ffi", or returns "callback" where the FFI library is not built."""
    libraries = _lib.candidates("libhyperloss_jax.so")
    if not libraries:
        if _lib.LOAD_ERROR is not None:
            raise ImportError(f"hyperloss.jax needs the C library: {_lib.LOAD_ERROR}")
        return "callback"
    library = ctypes.cdll.LoadLibrary(str(libraries[0]))
    for target, symbol in (("hyperloss_uniform_loss", "HyperlossUniformLoss"), ("hyperloss_align", "HyperlossAlign")):
        handler = getattr(library, symbol, None)
        if handler is None:  # a library built from older sources (its uniformity handler returned lse)
            raise ImportError(
                f"{libraries[0].name} has no {symbol} handler: it was built from older sources; rebuild it"
            )
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(handler), platform="cpu")
        on_gpu = getattr(library, symbol + "Cuda", None)  # only in a build with CUDA
        if on_gpu is not None:
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(on_gpu), platform="CUDA")
    return "ffi"


KERNEL_PATH = _register_targets()


def _host_matrix(a: np.ndarray) -> _lib.Matrix:
    return (
        _lib.Matrix(a.ctypes.data, a.shape[0], a.shape[1], a.shape[1], 1) if a.shape[0] else _lib.no_matrix(a.shape[1])
    )


def _host_uniform(x, queue, *, t: float, intra_batch: bool, with_grad: bool):
    """The FFI handler's contract on the host: (loss = min(lse - log|P|, 0) in double, grad_x, grad_queue)."""
    x, queue = np.ascontiguousarray(x), np.ascontiguousarray(queue)
    code = _lib.FLOAT64 if x.dtype == np.float64 else _lib.FLOAT32
    gx = np.empty(x.shape if with_grad else (0,), x.dtype)
    gq = np.empty(queue.shape if with_grad else (0,), x.dtype)
    lse = ctypes.c_double()
    _lib.check(
        _lib.lib.hl_uniform_lse_cpu(
            code, _host_matrix(x), _host_matrix(queue), t, intra_batch, 0, ctypes.byref(lse),
            gx.ctypes.data if gx.size else None, gq.ctypes.data if gq.size and queue.shape[0] else None,
        ),
        "uniform_lse",
    )  # fmt: skip
    pairs = _contract.num_pairs(x.shape[0], queue.shape[0], intra_batch)
    loss = min(lse.value - math.log(pairs), 0.0) if not math.isnan(lse.value) else lse.value
    return np.asarray(loss, x.dtype), gx, gq


def _host_align(x, y, *, alpha: float, with_grad: bool):
    x, y = np.ascontiguousarray(x), np.ascontiguousarray(y)
    code = _lib.FLOAT64 if x.dtype == np.float64 else _lib.FLOAT32
    gx = np.empty(x.shape if with_grad else (0,), x.dtype)
    loss = ctypes.c_double()
    grad_x = gx.ctypes.data if gx.size else None
    _lib.check(
        _lib.lib.hl_align_cpu(code, _host_matrix(x), _host_matrix(y), alpha, 0, ctypes.byref(loss), grad_x, None),
        "align",
    )
    return np.asarray(loss.value, x.dtype), gx


def _type_name(x) -> str:
    cls = type(x)
    return cls.__name__ if cls.__module__ == "builtins" else f"{cls.__module__.split('.')[0]}.{cls.__qualname__}"


def _spec(name: str, x, *, torch_api: str) -> tuple[tuple[int, ...], str]:
    """(shape, dtype name) of a JAX or NumPy array, for the shared rules of ``hyperloss._contract``."""
    # jax.Array covers tracers under jit/grad/vmap too.
    if not isinstance(x, jax.Array | np.ndarray):
        hint = ""
        if type(x).__module__.split(".")[0] == "torch":
            hint = f" — use {torch_api} for torch tensors"
        raise TypeError(f"{name} must be a JAX array (or NumPy array); got {_type_name(x)}{hint}")
    return tuple(x.shape), np.dtype(x.dtype).name


def _compute_dtype(dtype) -> jnp.dtype:
    return jnp.dtype(_contract.compute_dtype_name(np.dtype(dtype).name))


def _uniform_call(x, queue, t: float, intra_batch: bool, precision: int, with_grad: bool):
    n, d = x.shape
    shapes = (
        jax.ShapeDtypeStruct((), x.dtype),
        jax.ShapeDtypeStruct((n, d) if with_grad else (0,), x.dtype),
        jax.ShapeDtypeStruct(queue.shape if with_grad else (0,), x.dtype),
    )
    if KERNEL_PATH == "callback":
        host = functools.partial(_host_uniform, t=t, intra_batch=intra_batch, with_grad=with_grad)
        return jax.pure_callback(host, shapes, x, queue, vmap_method="sequential")
    call = jax.ffi.ffi_call("hyperloss_uniform_loss", shapes, vmap_method="sequential")
    return call(
        x,
        queue,
        t=np.float64(t),
        intra_batch=np.bool_(intra_batch),
        with_grad=np.bool_(with_grad),
        precision=np.int64(precision),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _uniform(x, queue, t: float, intra_batch: bool, precision: int):
    loss, _, _ = _uniform_call(x, queue, t, intra_batch, precision, False)
    return loss


def _uniform_fwd(x, queue, t, intra_batch, precision):
    loss, gx, gq = _uniform_call(x, queue, t, intra_batch, precision, True)
    return loss, (gx, gq)


def _uniform_bwd(t, intra_batch, precision, residuals, g):
    gx, gq = residuals
    return g * gx, g * gq


_uniform.defvjp(_uniform_fwd, _uniform_bwd)


def _host_uniform_weighted(x, queue, weights, queue_weights, *, t: float, intra_batch: bool, grads: tuple[bool, ...]):
    """The weighted loss on the host by the torch frontend's implementation on its "cpu" backend: (loss, grad_x,
    grad_queue, grad_weights, grad_queue_weights), each gradient of its input's dtype, with zero elements where
    ``grads`` (x, queue, weights, queue weights) does not ask for it. A queue with zero rows, and weights with zero
    entries, are absent (x has at least one row)."""
    arrays = [np.ascontiguousarray(a) for a in (x, queue, weights, queue_weights)]
    # torch takes only writable arrays (JAX's are read-only): a copy, O(N D) next to the O(N^2 D) pairs.
    arrays = [a if a.flags.writeable else a.copy() for a in arrays]
    tensors = [torch.from_numpy(a) if a.shape[0] else None for a in arrays]
    loss, *gradients = _weighted_loss(
        tensors[0], tensors[1], as_scalar_tensor(t), intra_batch, *tensors[2:], "cpu", None, grads
    )
    return np.asarray(loss.item(), arrays[0].dtype), *(
        np.zeros((0,), a.dtype) if g is None else g.numpy().astype(a.dtype, copy=False)
        for g, a in zip(gradients, arrays, strict=True)
    )


def _weighted_call(x, queue, weights, queue_weights, t: float, intra_batch: bool, grads: tuple[bool, ...]):
    inputs = (x, queue, weights, queue_weights)
    shapes = (
        jax.ShapeDtypeStruct((), x.dtype),
        *(jax.ShapeDtypeStruct(a.shape if g else (0,), a.dtype) for a, g in zip(inputs, grads, strict=True)),
    )
    host = functools.partial(_host_uniform_weighted, t=t, intra_batch=intra_batch, grads=grads)
    return jax.pure_callback(host, shapes, *inputs, vmap_method="sequential")


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _uniform_weighted(x, queue, weights, queue_weights, t: float, intra_batch: bool):
    return _weighted_call(x, queue, weights, queue_weights, t, intra_batch, (False,) * 4)[0]


def _uniform_weighted_fwd(x, queue, weights, queue_weights, t, intra_batch):
    # Symbolic zeros: each argument says whether it is differentiated, so that only those gradients are computed
    # (the weights' cost a pass of their own); absent (zero-size) arguments have none.
    inputs = (x, queue, weights, queue_weights)
    grads = tuple(bool(a.perturbed and a.value.size) for a in inputs)
    loss, *gradients = _weighted_call(*(a.value for a in inputs), t, intra_batch, grads)
    return loss, tuple(g if wanted else None for g, wanted in zip(gradients, grads, strict=True))


def _uniform_weighted_bwd(t, intra_batch, residuals, g):
    return tuple(None if r is None else g.astype(r.dtype) * r for r in residuals)


_uniform_weighted.defvjp(_uniform_weighted_fwd, _uniform_weighted_bwd, symbolic_zeros=True)


def _platform(x) -> str | None:
    """The platform of a concrete array's device; None for a NumPy array or under a trace (no device yet)."""
    if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer):
        return next(iter(x.devices())).platform
    return None


def _check_weights(x, queue, weights, queue_weights, intra_batch: bool) -> None:
    """The weights' shapes and dtypes (``hyperloss._contract``), and, where they are concrete (not traced), their
    values: finite, >= 0, some pair of two positive weights (traced ones are not read: invalid ones give NaN)."""
    api = "hyperloss.uniform_loss"
    if queue_weights is not None and queue is None:
        raise ValueError("queue_weights needs a queue")
    k = 0 if queue is None else queue.shape[0]
    for name, w, rows, rows_name in (
        ("weights", weights, x.shape[0], "x"),
        ("queue_weights", queue_weights, k, "queue"),
    ):
        if w is not None:
            _contract.check_row_weights(name, *_spec(name, w, torch_api=api), rows, rows_name)
    given = {n: w for n, w in (("weights", weights), ("queue_weights", queue_weights)) if w is not None}
    if any(isinstance(w, jax.core.Tracer) for w in given.values()):
        return
    values = {n: np.asarray(w, np.float64) for n, w in given.items()}
    for name, w in values.items():
        _contract.check_row_weight_values(
            name, bool(np.isfinite(w).all()), bool((w >= 0).all()), True, intra_batch, k > 0
        )
    positive_x = int((values["weights"] > 0).sum()) if weights is not None else x.shape[0]
    positive_q = bool((values["queue_weights"] > 0).any()) if queue_weights is not None else k > 0
    pair_sum_positive = bool(_contract.has_positive_pair(positive_x, positive_q, intra_batch))
    _contract.check_row_weight_values("weights", True, True, pair_sum_positive, intra_batch, k > 0)


def _align_call(x, y, alpha: float, with_grad: bool):
    shapes = (jax.ShapeDtypeStruct((), x.dtype), jax.ShapeDtypeStruct(x.shape if with_grad else (0,), x.dtype))
    if KERNEL_PATH == "callback":
        host = functools.partial(_host_align, alpha=alpha, with_grad=with_grad)
        return jax.pure_callback(host, shapes, x, y, vmap_method="sequential")
    call = jax.ffi.ffi_call("hyperloss_align", shapes, vmap_method="sequential")
    return call(x, y, alpha=np.float64(alpha), with_grad=np.bool_(with_grad))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _align(x, y, alpha: float):
    return _align_call(x, y, alpha, False)[0]


def _align_fwd(x, y, alpha):
    loss, gx = _align_call(x, y, alpha, True)
    return loss, gx


def _align_bwd(alpha, gx, g):
    return g * gx, -g * gx


_align.defvjp(_align_fwd, _align_bwd)


def uniform_loss(
    x: jax.Array | np.ndarray,
    t: float = 2.0,
    *,
    queue: jax.Array | np.ndarray | None = None,
    intra_batch: bool = True,
    weights: jax.Array | np.ndarray | None = None,
    queue_weights: jax.Array | np.ndarray | None = None,
    precision: str | None = None,
) -> jax.Array:
    """Uniformity loss ``log mean_{pairs} exp(-t ||u - v||^2)`` of JAX arrays (see ``hyperloss.uniform_loss``).

    Args:
        x: (N, D) array (JAX or NumPy): float16, bfloat16, float32 or float64 (16-bit dtypes are computed in float32).
        t: temperature > 0: a Python number (static under jit), or a one-element array (traced, differentiable:
            ``jax.grad`` with respect to t works; the rows are then scaled by sqrt(t), which rounds them once).
        queue: optional (K, D) array of x's dtype: adds every (x_i, queue_k) pair.
        intra_batch: include the i < j pairs of x (False needs a queue).
        weights: optional (N,) floating array of x's rows' weights: the loss is then the weighted mean over the
            pairs, log( sum_pairs w_u w_v exp(-t ||u - v||^2) / sum_pairs w_u w_v ), as in
            ``hyperloss.uniform_loss`` (finite, >= 0, some pair of two positive weights; checked where the values
            are concrete, outside jit; invalid traced ones give NaN). Differentiable. Computed on the host (see
            the module docstring): arrays on a GPU raise NotImplementedError.
        queue_weights: optional (K,) weights of the queue's rows, as ``weights`` (needs a queue).
        precision: products of float32 inputs on a GPU: "highest"/"ieee" (exact), "high"/"tf32", "medium"/"bf16";
            None follows JAX's ``jax_default_matmul_precision`` (``hyperloss._precision.resolve_jax_precision``).

    Returns:
        A 0-dim array, float64 for float64 inputs and float32 otherwise; differentiable with respect to x, the
        queue and the weights (``jax.custom_vjp``).

    Raises:
        TypeError: for a non-array input (a torch tensor, say), an unsupported dtype, a queue of another dtype,
            a non-bool intra_batch or a non-number t.
        ValueError: for a wrong shape, too few rows, t not finite or <= 0, an unknown precision, or invalid
            concrete weights.
        NotImplementedError: weights with arrays on a device other than the CPU (no weighted CUDA kernel).
    """
    api = "hyperloss.uniform_loss"
    x_spec = _spec("x", x, torch_api=api)
    _contract.check_uniform(x_spec, None if queue is None else _spec("queue", queue, torch_api=api), intra_batch)
    code = HL_PRECISION[resolve_jax_precision(x_spec[1], check_precision(precision))]
    weighted = weights is not None or queue_weights is not None
    if weighted:
        _check_weights(x, queue, weights, queue_weights, intra_batch)
        # Concrete arrays on another device are refused rather than copied to the host and back on every call;
        # under jit (no device yet) the host callback runs wherever the computation is placed.
        platform = _platform(x)
        if platform not in (None, "cpu"):
            raise NotImplementedError(
                f"hyperloss.jax.uniform_loss: per-row weights run on the CPU only (there is no weighted kernel for "
                f"{platform}); put the arrays on the CPU (jax.device_put(x, jax.devices('cpu')[0])) or drop the "
                "weights"
            )
    dtype = _compute_dtype(x.dtype)
    x = x.astype(dtype)
    queue = jnp.zeros((0, x.shape[1]), dtype) if queue is None else queue.astype(dtype)
    if weighted:  # absent weights as zero-size arrays (the host path's convention)
        weights, queue_weights = (
            jnp.zeros((0,), dtype) if w is None else jnp.asarray(w).astype(_compute_dtype(w.dtype))
            for w in (weights, queue_weights)
        )

    def loss(x, queue, t: float) -> jax.Array:
        if weighted:
            return _uniform_weighted(x, queue, weights, queue_weights, t, intra_batch)
        return _uniform(x, queue, t, intra_batch, code)

    if isinstance(t, jax.Array | np.ndarray):
        # A traced (differentiable) t cannot be the kernels' static attribute: the loss depends on the rows and t
        # only through t ||u - v||^2, so the rows are scaled by sqrt(t) and the kernels run at t = 1; JAX
        # differentiates the scaling. Its value is not checked (under jit it is unknown): t <= 0 gives NaN.
        if t.size != 1 or not jnp.issubdtype(t.dtype, jnp.floating):
            raise TypeError(f"t must be a number or a one-element floating array, got {t.dtype} of shape {t.shape}")
        scale = jnp.sqrt(jnp.reshape(t, ()).astype(dtype))
        return loss(x * scale, queue * scale, 1.0)
    return loss(x, queue, _contract.check_positive("t", t))


def align_loss(x: jax.Array | np.ndarray, y: jax.Array | np.ndarray, alpha: float = 2.0) -> jax.Array:
    """Alignment loss ``mean_i ||x_i - y_i||^alpha`` of JAX arrays (see ``hyperloss.align_loss``).

    Args:
        x, y: positive-pair features, (N, D) arrays (JAX or NumPy) of one dtype: float16, bfloat16, float32 or
            float64 (16-bit dtypes are computed in float32).
        alpha: exponent > 0 (a Python number: it is static under jit).

    Returns:
        A 0-dim array, float64 for float64 inputs and float32 otherwise; differentiable with respect to x and y
        (``jax.custom_vjp``).

    Raises:
        TypeError: for a non-array input, an unsupported dtype, differing dtypes or a non-number alpha.
        ValueError: for a wrong or mismatched shape, or alpha not finite or <= 0.
    """
    api = "hyperloss.align_loss"
    _contract.check_align(_spec("x", x, torch_api=api), _spec("y", y, torch_api=api))
    alpha = _contract.check_positive("alpha", alpha)
    dtype = _compute_dtype(x.dtype)
    return _align(x.astype(dtype), y.astype(dtype), alpha)
