"""What the Triton kernels share: interpreter detection, autotuning setup, and small launch helpers."""

from __future__ import annotations

import inspect
import os

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

# Triton reads TRITON_INTERPRET when a kernel is decorated, so this must be read at import time too.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# HYPERLOSS_TRITON_AUTOTUNE=0: one fixed block configuration, no tuning (quick test runs, compute-sanitizer).
AUTOTUNE = os.environ.get("HYPERLOSS_TRITON_AUTOTUNE", "1") != "0"


def maybe_autotune(kernel, configs: list[triton.Config], key: list[str], interpret_config: triton.Config):
    """``kernel`` autotuned over ``configs`` (the first one alone when HYPERLOSS_TRITON_AUTOTUNE=0).

    Under the interpreter it gets ``interpret_config`` alone: tuning there would time numpy, not a GPU. One config
    is never benchmarked. Tuning results are cached per key in the process, and on disk where Triton can.
    """
    if INTERPRET:
        configs = [interpret_config]
    elif not AUTOTUNE:
        configs = configs[:1]
    kwargs = {"cache_results": True} if "cache_results" in inspect.signature(triton.autotune).parameters else {}
    return triton.autotune(configs=configs, key=key, **kwargs)(kernel)


def size_bucket(n: int) -> int:
    """A coarse size class for autotuning keys: tune once per power-of-two range of rows, 1024 and fewer together.

    Keying on the exact row count would re-tune for every batch size; not keying on it at all would keep the
    blocks tuned on a small first call (a test) for a large one (training).
    """
    return max(n - 1, 1023).bit_length()


def scalar(value: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A kernel constant as a one-element tensor: Triton passes Python floats as float32, too coarse for float64
    results. ``torch.full`` (not ``torch.tensor``) so that torch.compile traces it as an ordinary op."""
    return torch.full((1,), value, dtype=dtype, device=device)


# On a GPU, float64 exp2/log2 go through libdevice explicitly: Triton's own lowering is only tuned (and only
# certain) for float32. The interpreter has no libdevice and computes in numpy anyway.
_FP64_LIBDEVICE = tl.constexpr(not INTERPRET)


@triton.jit
def exp2(x):
    """2^x, exact to the dtype for float64 on a GPU (libdevice), the fast approximation for float32."""
    # Nested static ifs, each with an else: both branches resolve at compile time.
    if _FP64_LIBDEVICE:
        if x.dtype == tl.float64:
            y = libdevice.exp2(x)
        else:
            y = tl.exp2(x)
    else:
        y = tl.exp2(x)
    return y


@triton.jit
def log2(x):
    """log2(x), like ``exp2``."""
    # Nested static ifs, each with an else: both branches resolve at compile time.
    if _FP64_LIBDEVICE:
        if x.dtype == tl.float64:
            y = libdevice.log2(x)
        else:
            y = tl.log2(x)
    else:
        y = tl.log2(x)
    return y
