"""JAX bindings: ``align_loss`` and ``uniform_loss`` for JAX arrays, through XLA's FFI.

The same kernels as the torch "cpu" and "cuda" backends (csrc/cpu, csrc/cuda, via csrc/jax/ffi.cpp), called with
``jax.ffi.ffi_call`` and differentiated with ``jax.custom_vjp``: the forward pass of a gradient computation gets
the analytic gradient from the same kernel call, the backward pass only scales it. Works under ``jax.jit``.
Semantics match ``hyperloss.align_loss`` / ``hyperloss.uniform_loss`` (float16/bfloat16 are computed in float32;
float64 needs ``jax_enable_x64``).

The uniformity handlers return the loss itself, lse - log|P| formed in float64 in C++ (and never above 0): near 0
the loss is far smaller than log|P|, and subtracting here in float32 would keep none of its digits.

The FFI library ``hyperloss/_jax_ffi*.so`` is built by setup.py when jax is installed at build time; its CPU
handlers always, its CUDA handlers where the build has CUDA (a CUDA build of torch and a toolkit).
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ._validation import check_positive

__all__ = ["align_loss", "uniform_loss"]


def _register_targets() -> None:
    libraries = sorted(Path(__file__).parent.glob("_jax_ffi*.so"))
    if not libraries:
        raise ImportError(
            "hyperloss._jax_ffi is not built: install jax first, then rebuild with "
            "`pip install --no-build-isolation -e .` (setup.py builds it only where jax is importable)"
        )
    library = ctypes.cdll.LoadLibrary(str(libraries[0]))
    for target, symbol in (("hyperloss_uniform_loss", "HyperlossUniformLoss"), ("hyperloss_align", "HyperlossAlign")):
        handler = getattr(library, symbol, None)
        if handler is None:  # a library built from older sources (its uniformity handler returned lse)
            raise ImportError(
                f"{libraries[0].name} has no {symbol} handler: it was built from older sources; rebuild it with "
                "`pip install --no-build-isolation -e .`"
            )
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(handler), platform="cpu")
        on_gpu = getattr(library, symbol + "Cuda", None)  # only in a build with CUDA
        if on_gpu is not None:
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(on_gpu), platform="CUDA")


_register_targets()


def _compute_dtype(dtype) -> jnp.dtype:
    return jnp.float64 if dtype == jnp.float64 else jnp.float32


# Input dtypes: float16 and bfloat16 are computed in float32. Not float8 (jnp.issubdtype calls those floating too)
# or any other.
_SUPPORTED_DTYPES = tuple(np.dtype(d) for d in (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64))
_DTYPE_NAMES = "float16, bfloat16, float32, float64"


def _type_name(x) -> str:
    cls = type(x)
    return cls.__name__ if cls.__module__ == "builtins" else f"{cls.__module__.split('.')[0]}.{cls.__qualname__}"


def _check_features(name: str, x, min_rows: int = 1, *, torch_api: str) -> None:
    # jax.Array covers tracers under jit/grad/vmap too.
    if not isinstance(x, jax.Array | np.ndarray):
        hint = ""
        if type(x).__module__.split(".")[0] == "torch":
            hint = f" — use {torch_api} for torch tensors"
        raise TypeError(f"{name} must be a JAX array (or NumPy array); got {_type_name(x)}{hint}")
    if x.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"{name} must be a floating-point array ({_DTYPE_NAMES}); got dtype {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {tuple(x.shape)}")
    if x.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} row(s), got shape {tuple(x.shape)}")
    if x.shape[1] < 1:
        raise ValueError(f"{name} needs at least one feature column (D >= 1), got shape {tuple(x.shape)}")


# Products of float32 inputs on the GPU (hl_precision), by torch's names: exact, tf32, bf16.
_PRECISION = {"highest": 0, "high": 1, "medium": 2}


def _uniform_call(x, queue, t: float, intra_batch: bool, precision: int, with_grad: bool):
    n, d = x.shape
    shapes = (
        jax.ShapeDtypeStruct((), x.dtype),
        jax.ShapeDtypeStruct((n, d) if with_grad else (0,), x.dtype),
        jax.ShapeDtypeStruct(queue.shape if with_grad else (0,), x.dtype),
    )
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
    precision: str = "highest",
) -> jax.Array:
    """Uniformity loss ``log mean_{pairs} exp(-t ||u - v||^2)`` of JAX arrays (see ``hyperloss.uniform_loss``).

    Args:
        x: (N, D) array (JAX or NumPy): float16, bfloat16, float32 or float64 (16-bit dtypes are computed in float32).
        t: temperature > 0 (a Python number: it is static under jit).
        queue: optional (K, D) array of x's dtype: adds every (x_i, queue_k) pair.
        intra_batch: include the i < j pairs of x (False needs a queue).
        precision: products of float32 inputs on a GPU: "highest" (exact), "high" (tf32), "medium" (bf16).

    Returns:
        A 0-dim array, float64 for float64 inputs and float32 otherwise; differentiable with respect to x and the
        queue (``jax.custom_vjp``).

    Raises:
        TypeError: for a non-array input (a torch tensor, say), an unsupported dtype, a queue of another dtype,
            a non-bool intra_batch or a non-number t.
        ValueError: for a wrong shape, too few rows, t not finite or <= 0, or an unknown precision.
    """
    if not isinstance(intra_batch, bool):
        raise TypeError(f"intra_batch must be a bool, got {type(intra_batch).__name__}")
    if queue is None and not intra_batch:
        raise ValueError("intra_batch=False leaves no pairs without a queue")
    _check_features("x", x, min_rows=2 if queue is None else 1, torch_api="hyperloss.uniform_loss")
    dtype = _compute_dtype(x.dtype)
    if queue is None:
        queue = jnp.zeros((0, x.shape[1]), dtype)
    else:
        _check_features("queue", queue, torch_api="hyperloss.uniform_loss")
        if queue.dtype != x.dtype:
            raise TypeError(f"queue has dtype {queue.dtype} but x has {x.dtype}")
        if queue.shape[1] != x.shape[1]:
            raise ValueError(f"queue has {queue.shape[1]} features per row but x has {x.shape[1]}")
    t = check_positive("t", t)
    if precision not in _PRECISION:
        raise ValueError(f"precision must be one of {sorted(_PRECISION)}, got {precision!r}")
    return _uniform(x.astype(dtype), queue.astype(dtype), t, intra_batch, _PRECISION[precision])


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
    _check_features("x", x, torch_api="hyperloss.align_loss")
    _check_features("y", y, torch_api="hyperloss.align_loss")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.dtype != y.dtype:
        raise TypeError(f"y has dtype {y.dtype} but x has {x.dtype}")
    alpha = check_positive("alpha", alpha)
    dtype = _compute_dtype(x.dtype)
    return _align(x.astype(dtype), y.astype(dtype), alpha)
