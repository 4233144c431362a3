"""The Triton kernels compile for an H100 (sm_90) on a machine with no GPU, so CI catches type and lowering
errors that the CPU interpreter cannot (tensor-core dots, bf16/fp16 casts, libdevice calls)."""

from __future__ import annotations

import pytest

triton = pytest.importorskip("triton", reason="triton is not installed")
try:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
except ImportError as error:  # pragma: no cover - the ahead-of-time API moved
    pytest.skip(f"this Triton has no ahead-of-time compile API ({error})", allow_module_level=True)

import importlib  # noqa: E402

# hyperloss.triton re-exports the functions `align` and `uniform_lse`, which hide the submodules of those names.
uniform = importlib.import_module("hyperloss.triton.uniform")
align_module = importlib.import_module("hyperloss.triton.align")

H100 = GPUTarget("cuda", 90, 32)


def _compile(kernel, types: dict[str, str], constants: dict[str, object], num_warps: int = 4) -> None:
    signature = {name: "constexpr" if name in constants else types[name] for name in kernel.arg_names}
    source = ASTSource(kernel, signature, constants)
    compiled = triton.compile(source, target=H100, options={"num_warps": num_warps, "num_stages": 2})
    assert compiled.asm["cubin"], "no machine code produced"


@pytest.mark.parametrize(
    ("elem", "acc", "cast_bf16", "precision", "self_mode", "need_acc"),
    [
        ("fp32", "fp32", False, "tf32", 2, True),  # fp32 inputs on tf32 tensor cores, loss and gradient
        ("fp32", "fp32", True, "ieee", 0, True),  # fp32 inputs cast to bf16, queue-only pairs
        ("bf16", "fp32", False, "ieee", 1, False),  # bf16 inputs, forward only (j > i)
        ("fp16", "fp32", False, "ieee", 2, True),
        ("fp64", "fp64", False, "ieee", 2, True),  # float64: exact products, libdevice exp2/log2
    ],
)
def test_uniformity_kernel_compiles_for_sm90(elem, acc, cast_bf16, precision, self_mode, need_acc):
    kernel = uniform._uniform_rows_kernel
    types = {name: "i32" for name in kernel.arg_names}
    types.update({name: f"*{elem}" for name in ("rows_ptr", "other_ptr")})
    pointers = ("a_rows_ptr", "a_other_ptr", "two_c_ptr", "m_ptr", "r_self_ptr", "r_other_ptr", "acc_ptr")
    types.update({name: f"*{acc}" for name in pointers})
    types.update(stride_rn="i64", stride_on="i64")
    constants = dict(
        stride_rd=1,
        stride_od=1,
        SELF_MODE=self_mode,
        HAS_OTHER=self_mode != 1,
        NEED_ACC=need_acc,
        ONE_CHUNK=True,
        CAST_BF16=cast_bf16,
        INPUT_PRECISION=precision,
        BLOCK_M=64,
        BLOCK_N=64,
        BLOCK_D=128,
    )
    _compile(kernel, types, constants)


@pytest.mark.parametrize(("elem", "alpha_is_2"), [("fp32", True), ("bf16", False), ("fp64", False)])
def test_alignment_kernel_compiles_for_sm90(elem, alpha_is_2):
    kernel = align_module._align_kernel
    acc = "fp64" if elem == "fp64" else "fp32"
    types = {name: "i32" for name in kernel.arg_names}
    types.update(x_ptr=f"*{elem}", y_ptr=f"*{elem}")
    types.update({name: f"*{acc}" for name in ("half_alpha_ptr", "grad_scale_ptr", "terms_ptr", "gx_ptr")})
    constants = dict(ALPHA_IS_2=alpha_is_2, NEED_GRAD=True, ONE_CHUNK=True, BLOCK_M=32, BLOCK_D=128)
    _compile(kernel, types, constants)
