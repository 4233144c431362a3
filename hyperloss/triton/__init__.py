"""The "triton" backend: fused Triton kernels (GPU; CPU under TRITON_INTERPRET=1).

``uniform.py``, ``uniform_weighted.py`` and ``align.py`` each hold one op: kernels, launcher, and its torch.library
registration (``hyperloss::triton_uniform_lse``, ``hyperloss::triton_uniform_lse_weighted``,
``hyperloss::triton_align``) so that torch.compile traces through them;
``_prepare.py`` centers and scales the rows for the uniformity kernel. Under TRITON_INTERPRET=1 (numpy) bfloat16
inputs and tf32/bf16 products raise NotImplementedError: the interpreter cannot emulate them.
"""

from __future__ import annotations

import os

try:
    import triton  # noqa: F401

    _IMPORT_ERROR: str | None = None
except ImportError as error:
    _IMPORT_ERROR = f"triton is not installed ({error}); pip install triton"


def available() -> tuple[bool, str]:
    """(True, "") when Triton imports and there is a CUDA device or TRITON_INTERPRET=1; else (False, why)."""
    import torch

    if _IMPORT_ERROR is not None:
        return False, _IMPORT_ERROR
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        return False, "no CUDA device (set TRITON_INTERPRET=1 to run the kernels on the CPU, slowly)"
    return True, ""


if _IMPORT_ERROR is None:
    from .align import align
    from .uniform import uniform_lse
    from .uniform_weighted import uniform_lse_weighted
else:

    def uniform_lse(*args, **kwargs):
        raise RuntimeError(_IMPORT_ERROR)

    def align(*args, **kwargs):
        raise RuntimeError(_IMPORT_ERROR)

    def uniform_lse_weighted(*args, **kwargs):
        raise RuntimeError(_IMPORT_ERROR)


__all__ = ["align", "available", "uniform_lse", "uniform_lse_weighted"]
