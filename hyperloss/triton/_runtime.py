"""What the Triton kernels share: interpreter detection and checks, autotuning setup, and device math: exp2/log2
exact to the dtype for float64, exact powers of two and binary exponents of float64 values."""

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


def check_interpretable(dtype: torch.dtype, precision: str = "native") -> None:
    """Raises under TRITON_INTERPRET=1 where the interpreter would compute something else than asked: it runs
    kernels in numpy, which has no bfloat16 (loads and casts return garbage) and no tf32 products. A no-op on a GPU.
    """
    if not INTERPRET:
        return
    if dtype == torch.bfloat16 or precision in ("bf16", "tf32"):
        what = "bfloat16 inputs" if dtype == torch.bfloat16 else f"{precision} products of float32 inputs"
        raise NotImplementedError(
            f"the Triton interpreter (TRITON_INTERPRET=1) cannot emulate {what}: it would return wrong numbers. "
            "Run the triton backend on a CUDA device, pass precision='ieee' (float32 inputs), or use another backend "
            "('cpu', 'reference')."
        )


def maybe_autotune(kernel, configs: list[triton.Config], key: list[str], interpret_config: triton.Config, prune=None):
    """``kernel`` autotuned over ``configs`` (the first one alone when HYPERLOSS_TRITON_AUTOTUNE=0), after
    ``prune(configs, named_args, **kwargs)`` where given.

    Under the interpreter it gets ``interpret_config`` alone: tuning there would time numpy, not a GPU. One config
    is never benchmarked. Tuning results are cached per key in the process, and on disk (Triton's cache directory)
    where Triton can.
    """
    if INTERPRET:
        configs, prune = [interpret_config], None
    elif not AUTOTUNE:
        configs, prune = configs[:1], None
    kwargs = {"cache_results": True} if "cache_results" in inspect.signature(triton.autotune).parameters else {}
    if prune is not None:
        kwargs["prune_configs_by"] = {"early_config_prune": prune}
    return triton.autotune(configs=configs, key=key, **kwargs)(kernel)


# Above this many rows the blocks tuned at it are reused: the best blocks no longer change with N there, and tuning
# at 2^20 rows would time seconds of work per configuration.
MAX_BUCKET = 17


def size_bucket(n: int | torch.SymInt) -> int | torch.SymInt:
    """A coarse size class for autotuning keys: tune once per power-of-two range of rows, 1024 and fewer together,
    2^17 and more together.

    Keying on the exact row count would re-tune for every batch size; not keying on it at all would keep the
    blocks tuned on a small first call (a test) for a large one (training). A symbolic size (torch.compile with
    dynamic shapes) gets the same number as a sum of comparisons, which traces without a guard: bit_length would
    specialize the graph on the exact batch size.
    """
    if isinstance(n, int):
        return min(max(n - 1, 1023).bit_length(), MAX_BUCKET)
    bucket = 10
    for k in range(10, MAX_BUCKET):
        bucket = bucket + torch.sym_ite(n - 1 >= 2**k, 1, 0)
    return bucket


# ---------------------------------------------------------------------------------------------------------------
# Device math

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


# Scalars and per-row values are scaled by exact powers of two on the device, built from their bits: a power of two
# times a float64 is exact wherever the result is a normal number, unlike exp2 or pow, which need not be exact.


@triton.jit
def pow2(e):
    """2^e as float64, exactly, for integer e (any integer dtype), clamped to the normal range [-1022, 1023]."""
    e = tl.minimum(tl.maximum(e.to(tl.int64), -1022), 1023)
    return ((e + 1023) << 52).to(tl.float64, bitcast=True)


@triton.jit
def mul_pow2(v, e):
    """v * 2^e (v float64, e integer up to +-3000): three factors of one sign, applied in turn, so the product is
    exact where it is a normal number and over- or underflows only where the result does."""
    e = tl.minimum(tl.maximum(e.to(tl.int64), -3000), 3000)
    first = tl.minimum(tl.maximum(e, -1000), 1000)
    e = e - first
    second = tl.minimum(tl.maximum(e, -1000), 1000)
    return v * pow2(first) * pow2(second) * pow2(e - second)


@triton.jit
def frexp_exponent(v):
    """e (int64) with |v| 2^-e in [0.5, 1) for a finite float64 v != 0 (subnormals too); 0 for v = 0."""
    a = tl.abs(v)
    subnormal = a < 2.2250738585072014e-308
    a = tl.where(subnormal, a * 18446744073709551616.0, a)  # * 2^64: normal
    biased = (a.to(tl.int64, bitcast=True) >> 52) & 2047
    e = biased - 1022 - tl.where(subnormal, 64, 0).to(tl.int64)
    return tl.where(v == 0, 0, e)
