"""The "cpu" backend: the native C++ kernels of csrc/cpu, reached through the torch ops of hyperloss._C.

This module loads the extension (recording why when it cannot), registers the ops' fake implementations for
torch.compile, and exposes the backend primitives with the same signatures as ``hyperloss.reference``.
"""

from __future__ import annotations

import torch

try:
    from . import _C  # noqa: F401  (registers torch.ops.hyperloss.*)

    LOAD_ERROR: str | None = None
except ImportError as error:  # the package still works through the Triton and reference backends
    LOAD_ERROR = (
        f"the C++ extension hyperloss._C is not built or failed to load ({error}); "
        "build it with `pip install --no-build-isolation -e .` (or `make build`)"
    )


def available() -> tuple[bool, str]:
    return (LOAD_ERROR is None, LOAD_ERROR or "")


if LOAD_ERROR is None:

    @torch.library.register_fake("hyperloss::uniform_lse")
    def _uniform_lse_fake(x, queue, t, intra_batch, grad_x, grad_queue):
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        gx = x.new_empty(x.shape if grad_x else (0,), dtype=dtype)
        gq = x.new_empty(queue.shape if grad_queue and queue is not None else (0,), dtype=dtype)
        return x.new_empty((), dtype=dtype), gx, gq

    @torch.library.register_fake("hyperloss::align")
    def _align_fake(x, y, alpha, grad_x):
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        return x.new_empty((), dtype=dtype), x.new_empty(x.shape if grad_x else (0,), dtype=dtype)


def uniform_lse(
    x: torch.Tensor, queue: torch.Tensor | None, t: float, intra_batch: bool, grad_x: bool, grad_queue: bool
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """See ``hyperloss.reference.uniform_lse``: same contract, native one-pass kernel."""
    lse, gx, gq = torch.ops.hyperloss.uniform_lse(x, queue, t, intra_batch, grad_x, grad_queue)
    return lse, (gx if grad_x else None), (gq if grad_queue and queue is not None else None)


def align(x: torch.Tensor, y: torch.Tensor, alpha: float, grad_x: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """See ``hyperloss.reference.align``: same contract, native kernel."""
    loss, gx = torch.ops.hyperloss.align(x, y, alpha, grad_x)
    return loss, (gx if grad_x else None)
