"""The "triton" backend: the fused Triton kernels of ``hyperloss/triton`` (GPU; CPU only under TRITON_INTERPRET=1).

The kernels package is imported when the backend is first asked whether it is available (importing Triton takes
about a second, and it may be missing), never at ``import hyperloss``.
"""

from __future__ import annotations

import os
from types import ModuleType

import torch

from .._common import split_align_gradient


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


class TritonBackend:
    """``hyperloss.backends.Backend`` over ``hyperloss.triton.uniform_lse`` and ``align``."""

    name = "triton"
    description = "fused Triton GPU kernels (CPU only under TRITON_INTERPRET=1)"
    devices = ("cuda", "cpu")
    # uniform_lse(..., input_dtype=True) returns the gradients in the inputs' dtype (written there by the kernels'
    # finish), beyond the contract's compute dtype: what the autograd glue asks for where it only scales them.
    input_dtype_gradients = True

    def __init__(self) -> None:
        self._kernels: ModuleType | None = None

    def available(self) -> tuple[bool, str]:
        try:
            from .. import triton as kernels
        except ImportError as error:
            return False, f"import failed: {error}"
        ok, reason = kernels.available()
        if ok:
            self._kernels = kernels  # so that a traced call only reads an attribute, never imports
        return ok, reason

    def runs_on(self, device_type: str) -> bool:
        return device_type == "cuda" or (device_type == "cpu" and _interpreting())

    def auto_rank(self, device_type: str) -> int | None:
        return 0 if device_type == "cuda" else None  # the interpreter is for tests: only by name on the CPU

    def uniform_lse(self, x, queue, t, intra_batch, grad_x, grad_queue, precision=None, input_dtype=False):
        return self._kernels.uniform_lse(
            x, queue, t, intra_batch, grad_x, grad_queue, precision=precision, input_dtype=input_dtype
        )

    def uniform_lse_weighted(
        self,
        x,
        queue,
        t,
        intra_batch,
        weights,
        queue_weights,
        grad_x,
        grad_queue,
        grad_weights,
        grad_queue_weights,
        precision=None,
    ):
        return self._kernels.uniform_lse_weighted(
            x, queue, t, intra_batch, weights, queue_weights, grad_x, grad_queue, grad_weights, grad_queue_weights,
            precision=precision,
        )  # fmt: skip

    def align(self, x: torch.Tensor, y: torch.Tensor, alpha: torch.Tensor, grad_x: bool, grad_y: bool = False):
        return split_align_gradient(*self._kernels.align(x, y, alpha, grad_x or grad_y), grad_x, grad_y)


TRITON = TritonBackend()
