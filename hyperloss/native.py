"""The native backends: "cpu" (C++ kernels of csrc/cpu) and "cuda" (CUDA kernels of csrc/cuda, where built).

Both are reached through the torch ops of hyperloss._C (``torch.ops.hyperloss.uniform_lse`` / ``align``), which
dispatch on the device. This module loads the extension (recording why when it cannot), registers the ops' fake
implementations for torch.compile, and exposes the backend primitives with the signatures of
``hyperloss.reference``.
"""

from __future__ import annotations

import torch

from ._validation import compute_dtype

try:
    from . import _C  # noqa: F401  (registers torch.ops.hyperloss.*)

    LOAD_ERROR: str | None = None
except ImportError as error:  # the package still works through the Triton and reference backends
    LOAD_ERROR = (
        f"the C++ extension hyperloss._C is not built or failed to load ({error}); "
        "build it with `pip install --no-build-isolation -e .` (or `make build`)"
    )

# torch.get_float32_matmul_precision() -> hl_precision of the C API (float32 inputs on the GPU).
_PRECISION = {"highest": 0, "high": 1, "medium": 2}


def available_cpu() -> tuple[bool, str]:
    return (LOAD_ERROR is None, LOAD_ERROR or "")


def available_cuda() -> tuple[bool, str]:
    if LOAD_ERROR is not None:
        return False, LOAD_ERROR
    if not torch._C._dispatch_has_kernel_for_dispatch_key("hyperloss::uniform_lse", "CUDA"):
        return False, (
            "hyperloss._C was built without CUDA kernels (they need a CUDA build of torch and a CUDA toolkit "
            "at build time)"
        )
    if not torch.cuda.is_available():
        return False, "no CUDA device"
    return True, ""


if LOAD_ERROR is None:

    @torch.library.register_fake("hyperloss::uniform_lse")
    def _uniform_lse_fake(x, queue, t, intra_batch, grad_x, grad_queue, precision=0):
        dtype = compute_dtype(x.dtype)
        gx = x.new_empty(x.shape if grad_x else (0,), dtype=dtype)
        gq = x.new_empty(queue.shape if grad_queue and queue is not None else (0,), dtype=dtype)
        return x.new_empty((), dtype=torch.float64), gx, gq

    @torch.library.register_fake("hyperloss::align")
    def _align_fake(x, y, alpha, grad_x):
        dtype = compute_dtype(x.dtype)
        return x.new_empty((), dtype=dtype), x.new_empty(x.shape if grad_x else (0,), dtype=dtype)


def uniform_lse(
    x: torch.Tensor,
    queue: torch.Tensor | None,
    t: torch.Tensor,
    intra_batch: bool,
    grad_x: bool,
    grad_queue: bool,
    precision: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """See ``hyperloss.reference.uniform_lse``: same contract (t a 0-dim float64 tensor, lse in float64), native
    one-pass kernels.

    ``precision`` ("highest", "high", "medium") picks the products of float32 inputs on CUDA; None follows
    ``torch.get_float32_matmul_precision()``. The CPU kernels always compute exact float32 products.
    """
    code = 0
    if x.is_cuda:
        code = _PRECISION[precision or torch.get_float32_matmul_precision()]
    lse, gx, gq = torch.ops.hyperloss.uniform_lse(x, queue, t, intra_batch, grad_x, grad_queue, code)
    return lse, (gx if grad_x else None), (gq if grad_queue and queue is not None else None)


def align(
    x: torch.Tensor, y: torch.Tensor, alpha: torch.Tensor, grad_x: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """See ``hyperloss.reference.align``: same contract, native kernels."""
    loss, gx = torch.ops.hyperloss.align(x, y, alpha, grad_x)
    return loss, (gx if grad_x else None)
