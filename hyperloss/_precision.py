"""How float32 inputs are multiplied on a GPU: one table and one reading of torch's setting for every backend
(Triton, the CUDA kernels through the C API, JAX).

Names: "ieee" (exact float32 products), "tf32" (TensorFloat-32 tensor cores), "bf16" (bfloat16 tensor cores), all
with float32 accumulation; torch's names "highest", "high", "medium" mean the same three. Other input dtypes use
their own products ("native": float16/bfloat16 tensor cores, exact float64).
"""

from __future__ import annotations

import torch

PRECISIONS = {"highest": "ieee", "high": "tf32", "medium": "bf16", "ieee": "ieee", "tf32": "tf32", "bf16": "bf16"}
# What a dot of each input dtype ends up using (the names above after resolution; "native": the dtype's own).
OPERAND_PRECISIONS = ("ieee", "tf32", "bf16", "native")
# The C API's hl_precision codes.
HL_PRECISION = {"ieee": 0, "tf32": 1, "bf16": 2, "native": 0}


def _read_torch_fp32_precision() -> str:
    """torch's float32 matmul setting as one of our names, never raising.

    torch >= 2.9 has a second API, ``torch.backends.cuda.matmul.fp32_precision`` ("ieee", "tf32", or "none" to
    inherit); once it is set to "tf32", ``torch.get_float32_matmul_precision()`` raises. The new setting wins when
    it says something; the legacy "medium" (which the new API reads as "tf32") still allows bfloat16.
    """
    try:
        legacy = torch.get_float32_matmul_precision()
    except RuntimeError:
        legacy = None
    try:
        new = torch.backends.cuda.matmul.fp32_precision
    except (AttributeError, RuntimeError):
        new = "none"
    if new == "ieee":
        return "ieee"
    if new == "tf32":
        return "bf16" if legacy == "medium" else "tf32"
    return PRECISIONS.get(legacy, "ieee")


@torch.compiler.assume_constant_result
def _torch_fp32_precision() -> str:
    # Read once per trace under torch.compile (dynamo cannot trace these getters).
    return _read_torch_fp32_precision()


def check_precision(precision: object) -> str | None:
    """Checks that ``precision`` is None or a name of the table; returns it."""
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision must be None or one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}")
    return precision


def resolve_precision(dtype: torch.dtype, precision: str | None) -> str:
    """The operand precision for ``dtype`` inputs: "ieee", "tf32" or "bf16" for float32 (``precision``, or torch's
    float32 matmul setting when None); "native" for the other dtypes (their own dot, exact for float64)."""
    check_precision(precision)
    if dtype != torch.float32:
        return "native"
    return PRECISIONS[precision] if precision is not None else _torch_fp32_precision()


# jax_default_matmul_precision values (its Precision levels and dot algorithm presets) in our names. Unset,
# "default" and "fastest" mean JAX's default, which computes float32 dots with TF32 on recent NVIDIA GPUs.
_JAX_SETTINGS = {
    "float32": "ieee",
    "highest": "ieee",
    "F32_F32_F32": "ieee",
    "tensorfloat32": "tf32",
    "high": "tf32",
    "TF32_TF32_F32": "tf32",
    "bfloat16": "bf16",
    "BF16_BF16_F32": "bf16",
}


def resolve_jax_precision(dtype: str, precision: str | None) -> str:
    """``resolve_precision`` for JAX arrays (``dtype`` a name such as "float32"): None follows JAX's
    ``jax_default_matmul_precision`` as its own dots do."""
    check_precision(precision)
    if dtype != "float32":
        return "native"
    if precision is not None:
        return PRECISIONS[precision]
    import jax  # only JAX callers get here

    return _JAX_SETTINGS.get(str(jax.config.jax_default_matmul_precision), "tf32")
