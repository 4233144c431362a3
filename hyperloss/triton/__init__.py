"""The "triton" backend: fused Triton kernels (GPU; CPU under TRITON_INTERPRET=1)."""

from __future__ import annotations

import os

try:
    import triton  # noqa: F401

    _IMPORT_ERROR: str | None = None
except ImportError as error:
    _IMPORT_ERROR = f"triton is not installed ({error}); pip install triton"


def available() -> tuple[bool, str]:
    import torch

    if _IMPORT_ERROR is not None:
        return False, _IMPORT_ERROR
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        return False, "no CUDA device (set TRITON_INTERPRET=1 to run the kernels on the CPU, slowly)"
    return False, "the Triton kernels are not implemented yet"


def uniform_lse(*args, **kwargs):
    raise NotImplementedError("the Triton uniformity kernel is not implemented yet")


def align(*args, **kwargs):
    raise NotImplementedError("the Triton alignment kernel is not implemented yet")
