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
"""

from __future__ import annotations

import ctypes
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from . import _contract, _lib
from ._precision import HL_PRECISION, check_precision, resolve_jax_precision

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
    precision: str | None = None,
) -> jax.Array:
    """Uniformity loss ``log mean_{pairs} exp(-t ||u - v||^2)`` of JAX arrays (see ``hyperloss.uniform_loss``).

    Args:
        x: (N, D) array (JAX or NumPy): float16, bfloat16, float32 or float64 (16-bit dtypes are computed in float32).
        t: temperature > 0: a Python number (static under jit), or a one-element array (traced, differentiable:
            ``jax.grad`` with respect to t works; the rows are then scaled by sqrt(t), which rounds them once).
        queue: optional (K, D) array of x's dtype: adds every (x_i, queue_k) pair.
        intra_batch: include the i < j pairs of x (False needs a queue).
        precision: products of float32 inputs on a GPU: "highest"/"ieee" (exact), "high"/"tf32", "medium"/"bf16";
            None follows JAX's ``jax_default_matmul_precision`` (``hyperloss._precision.resolve_jax_precision``).

    Returns:
        A 0-dim array, float64 for float64 inputs and float32 otherwise; differentiable with respect to x and the
        queue (``jax.custom_vjp``).

    Raises:
        TypeError: for a non-array input (a torch tensor, say), an unsupported dtype, a queue of another dtype,
            a non-bool intra_batch or a non-number t.
        ValueError: for a wrong shape, too few rows, t not finite or <= 0, or an unknown precision.
    """
    api = "hyperloss.uniform_loss"
    x_spec = _spec("x", x, torch_api=api)
    _contract.check_uniform(x_spec, None if queue is None else _spec("queue", queue, torch_api=api), intra_batch)
    code = HL_PRECISION[resolve_jax_precision(x_spec[1], check_precision(precision))]
    dtype = _compute_dtype(x.dtype)
    x = x.astype(dtype)
    queue = jnp.zeros((0, x.shape[1]), dtype) if queue is None else queue.astype(dtype)
    if isinstance(t, jax.Array | np.ndarray):
        # A traced (differentiable) t cannot be the kernels' static attribute: the loss depends on the rows and t
        # only through t ||u - v||^2, so the rows are scaled by sqrt(t) and the kernels run at t = 1; JAX
        # differentiates the scaling. Its value is not checked (under jit it is unknown): t <= 0 gives NaN.
        if t.size != 1 or not jnp.issubdtype(t.dtype, jnp.floating):
            raise TypeError(f"t must be a number or a one-element floating array, got {t.dtype} of shape {t.shape}")
        scale = jnp.sqrt(jnp.reshape(t, ()).astype(dtype))
        return _uniform(x * scale, queue * scale, 1.0, intra_batch, code)
    t = _contract.check_positive("t", t)
    return _uniform(x, queue, t, intra_batch, code)


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
