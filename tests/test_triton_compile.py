"""The Triton kernels compile for an H100 (sm_90) on a machine with no GPU, so CI catches type and lowering
errors that the CPU interpreter cannot (tensor-core dots, bf16/fp16 casts, libdevice calls, float64 math)."""

from __future__ import annotations

import inspect
import os

import pytest

if os.environ.get("TRITON_INTERPRET") == "1":
    # Under the interpreter @triton.jit returns an InterpretedFunction, which has no ahead-of-time compile path.
    pytest.skip(
        "TRITON_INTERPRET=1: the kernels are interpreted functions here; run this module without it",
        allow_module_level=True,
    )

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
prepare_module = importlib.import_module("hyperloss.triton._prepare")
weighted = importlib.import_module("hyperloss.triton.uniform_weighted")

H100 = GPUTarget("cuda", 90, 32)


def _compile(kernel, types: dict[str, str], constants: dict[str, object], num_warps: int = 4) -> None:
    # Constexprs a launch leaves at their defaults are constants here too (not runtime arguments of `types`).
    defaults = {p.name: p.default for p in kernel.params if p.is_constexpr and p.default is not inspect.Parameter.empty}
    constants = {**defaults, **constants}
    signature = {name: "constexpr" if name in constants else types[name] for name in kernel.arg_names}
    source = ASTSource(kernel, signature, constants)
    compiled = triton.compile(source, target=H100, options={"num_warps": num_warps, "num_stages": 2})
    assert compiled.asm["cubin"], "no machine code produced"


@pytest.mark.parametrize(
    ("operand", "acc", "split", "self_mode", "need_acc", "one_chunk"),
    [
        ("fp16", "fp32", True, 2, True, True),  # exact fp32 products: a float16 split, loss and gradient
        ("bf16", "fp32", False, 0, True, True),  # fp32 inputs stored as bf16 (precision bf16), queue-only pairs
        ("bf16", "fp32", False, 1, False, True),  # bf16 inputs, forward only (j > i)
        ("fp16", "fp32", False, 2, True, True),
        ("fp64", "fp64", False, 2, True, True),  # float64: exact products, libdevice exp2
        ("fp16", "fp32", True, 2, True, False),  # long rows: D in chunks, float64 folds, acc in memory
        ("bf16", "fp32", False, 1, False, False),
        ("fp64", "fp64", False, 0, True, False),
    ],
)
def test_uniformity_kernel_compiles_for_sm90(operand, acc, split, self_mode, need_acc, one_chunk):
    kernel = uniform._uniform_rows_kernel
    types = {name: "i32" for name in kernel.arg_names}
    types.update({name: f"*{operand}" for name in ("rows_ptr", "rows_lo_ptr", "other_ptr", "other_lo_ptr")})
    types.update({name: "*fp64" for name in ("a_rows_ptr", "a_other_ptr", "consts_ptr", "info_ptr", "sums_ptr")})
    types.update({name: f"*{acc}" for name in ("dref_ptr", "acc_ptr")})
    types["flags_ptr"] = "*i32"
    constants = dict(
        CHECK_FLAGS=operand != "fp64" and one_chunk,  # after the lean sweep: the flagged rows only
        SELF_MODE=self_mode,
        HAS_OTHER=self_mode != 1,
        NEED_ACC=need_acc,
        ONE_CHUNK=one_chunk,
        INPUT_PRECISION="ieee",
        SPLIT=split,
        BLOCK_M=64,
        BLOCK_N=64,
        BLOCK_D=128 if one_chunk else 64,
        FOLD_D=256,
    )
    _compile(kernel, types, constants)


@pytest.mark.parametrize(
    ("operand", "split", "self_mode", "has_other", "need_acc", "shift"),
    [
        ("bf16", False, 2, False, True, 0),  # the training step's sweep
        ("bf16", False, 1, False, False, 0),  # forward only (j > i): the diagonal tile masked, then plain tiles
        ("fp16", False, 2, True, True, 14),  # float16: p shifted into its range
        ("fp16", True, 0, True, True, 14),  # the queue's sweep, exact fp32 products (a float16 split)
        ("fp16", True, 2, True, False, 14),
    ],
)
def test_lean_kernel_compiles_for_sm90(operand, split, self_mode, has_other, need_acc, shift):
    kernel = uniform._uniform_lean_kernel
    types = {name: "i32" for name in kernel.arg_names}
    types.update({name: f"*{operand}" for name in ("rows_ptr", "rows_lo_ptr", "other_ptr", "other_lo_ptr")})
    types.update({name: "*fp32" for name in ("dref_ptr", "acc_ptr", "rowb_ptr", "otherb_ptr")})
    types.update({name: "*fp64" for name in ("consts_ptr", "info_ptr", "sums_ptr")})
    types["flags_ptr"] = "*i32"
    for d in (100, 128):  # EVEN_D false and true
        constants = dict(SELF_MODE=self_mode, HAS_OTHER=has_other, NEED_ACC=need_acc, EVEN_D=d == 128,
                         INPUT_PRECISION="ieee", SPLIT=split, SHIFT=shift, BLOCK_M=64, BLOCK_N=128,
                         BLOCK_D=128)  # fmt: skip
        _compile(kernel, types, constants)


@pytest.mark.parametrize("elem", ["fp32", "bf16", "fp16", "fp64"])
def test_alignment_kernel_compiles_for_sm90(elem):
    kernel = align_module._align_kernel
    acc = "fp64" if elem == "fp64" else "fp32"
    types = {name: "i32" for name in kernel.arg_names}
    types.update(x_ptr=f"*{elem}", y_ptr=f"*{elem}", alpha_ptr="*fp64", terms_ptr="*fp64", gx_ptr=f"*{acc}")
    for one_chunk in (True, False):
        constants = dict(NEED_GRAD=True, ONE_CHUNK=one_chunk, BLOCK_M=32, BLOCK_D=128)
        _compile(kernel, types, constants)


@pytest.mark.parametrize(
    ("elem", "operand", "parts", "split"),
    [
        ("fp32", "fp16", 1, True),  # exact float32 products: two float16 parts
        ("fp32", "bf16", 2, False),
        ("fp32", "fp16", 2, False),
        ("bf16", "bf16", 2, False),
        ("fp16", "fp16", 1, False),
        ("fp64", "fp64", 2, False),
    ],
)
def test_preparation_kernels_compile_for_sm90(elem, operand, parts, split):
    """Centering and scaling: statistics, the center from the sampled quartiles, the centered copy; bfloat16/float16
    inputs round their center to the input dtype and keep it only where x - c is exact (Sterbenz), float16 is never
    scaled down."""
    flags = dict(NUM_PARTS=parts, SCALE_DOWN=elem != "fp16")
    kernel = prepare_module._first_kernel
    types = dict(bounds_ptr=f"*{elem}", D="i32", scales_ptr="*fp64", info_ptr="*fp64")
    _compile(kernel, types, dict(BLOCK_C=64, **flags))
    kernel = prepare_module._stats_kernel
    types = {name: "i32" for name in kernel.arg_names}
    types.update({name: "*fp64" for name in ("sampled_ptr", "center_ptr", "scales_ptr", "info_ptr")})
    types.update(bounds_ptr=f"*{elem}")
    _compile(kernel, types, dict(STERBENZ=elem in ("bf16", "fp16"), HEADROOM=12 if split else 0, BLOCK_C=64, **flags))
    kernel = prepare_module._center_kernel
    types = {name: "i32" for name in kernel.arg_names}
    types.update(src_ptr=f"*{elem}", scales_ptr="*fp64", center_ptr="*fp64", out_ptr=f"*{operand}")
    types.update(lo_ptr=f"*{operand}", norms_ptr="*fp64", stride_n="i64")
    _compile(kernel, types, dict(SPLIT=split, BLOCK_R=32, BLOCK_C=128))


@pytest.mark.parametrize(
    ("operand", "acc", "split"),
    [("fp16", "fp32", True), ("bf16", "fp32", False), ("fp16", "fp32", False), ("fp64", "fp64", False)],
)
def test_finishing_kernels_compile_for_sm90(operand, acc, split):
    """The float64 combine into lse (one program) and the gradient scaling (exact powers of two, libdevice)."""
    kernel = uniform._combine_kernel
    types = {name: "*fp64" for name in kernel.arg_names}
    types.update(dref_ptr=f"*{acc}", n_rows="i32", n_other="i32")
    for self_mode in (0, 1, 2):
        _compile(kernel, types, dict(SELF_MODE=self_mode, BLOCK=1024))
    kernel = uniform._grad_kernel
    types = {name: "*fp64" for name in kernel.arg_names}
    types.update(v_ptr=f"*{operand}", v_lo_ptr=f"*{operand}", acc_ptr=f"*{acc}", dref_ptr=f"*{acc}")
    types.update(n_rows="i32", D="i32")
    _compile(kernel, types, dict(SPLIT=split, BLOCK_R=32, BLOCK_C=128))


@pytest.mark.parametrize(
    ("operand", "acc", "split", "one_chunk"),
    [
        ("fp16", "fp32", True, True),  # exact fp32 products: float16 parts, p split too
        ("bf16", "fp32", False, True),
        ("fp64", "fp64", False, True),
        ("fp16", "fp32", False, False),  # long rows: the Gram over D in chunks
    ],
)
def test_weighted_kernels_compile_for_sm90(operand, acc, split, one_chunk):
    """The per-row-weight sweeps (statistics with the deficits' series, the accumulator per D chunk) and their
    gradient finish."""
    common = dict(
        INPUT_PRECISION="ieee", SPLIT=split, ONE_CHUNK=one_chunk, EVEN_D=one_chunk, BLOCK_D=128 if one_chunk else 64
    )
    for kernel in (weighted._weighted_stats_kernel, weighted._weighted_acc_kernel):
        types = {name: "i32" for name in kernel.arg_names}
        types.update({name: f"*{operand}" for name in kernel.arg_names if name.endswith(("rows_ptr", "lo_ptr"))})
        types.update(other_ptr=f"*{operand}", m_ptr=f"*{acc}", acc_ptr=f"*{acc}")
        types.update({name: "*fp64" for name in ("consts_ptr", "info_ptr", "sums_ptr")})
        types.update({name: "*fp64" for name in kernel.arg_names if name.endswith("norms_ptr")})
        types.update({name: "*fp32" for name in kernel.arg_names if name.endswith(("log2w_ptr", "_w_ptr"))})
        blocks = dict(BLOCK_M=32, BLOCK_N=32) if operand == "fp64" else dict(BLOCK_M=64, BLOCK_N=32 if split else 64)
        if kernel is weighted._weighted_acc_kernel:
            modes = ((2, True),)  # every pair of a row
            extra = dict(P_SCALE=16384.0 if operand == "fp16" else 1.0)
        else:
            modes = ((1, False), (2, True))  # loss only (j > i); every pair, a queue
            extra = {}
        for self_mode, has_other in modes:
            _compile(kernel, types, dict(SELF_MODE=self_mode, HAS_OTHER=has_other, **common, **extra, **blocks))
    kernel = weighted._weighted_grad_kernel
    types = {name: "*fp64" for name in kernel.arg_names}
    types.update(v_ptr=f"*{operand}", v_lo_ptr=f"*{operand}", acc_ptr=f"*{acc}", n_rows="i32", D="i32")
    _compile(kernel, types, dict(SPLIT=split, BLOCK_R=32, BLOCK_C=128))


def test_kernels_compile_with_sizes_of_one():
    """Triton turns an integer argument equal to 1 into a constant: one row, a one-row queue, D = 1."""
    kernel = uniform._uniform_rows_kernel
    types = {name: "i32" for name in kernel.arg_names}
    types.update({name: "*fp16" for name in ("rows_ptr", "rows_lo_ptr", "other_ptr", "other_lo_ptr")})
    types.update({name: "*fp32" for name in ("dref_ptr", "acc_ptr")})
    types.update({name: "*fp64" for name in ("a_rows_ptr", "a_other_ptr", "consts_ptr", "info_ptr", "sums_ptr")})
    types["flags_ptr"] = "*i32"
    for one_chunk in (True, False):
        constants = dict(n_rows=1, n_other=1, D=1, SELF_MODE=2, HAS_OTHER=True, NEED_ACC=True, ONE_CHUNK=one_chunk,
                         INPUT_PRECISION="ieee", SPLIT=True, BLOCK_M=64, BLOCK_N=64, BLOCK_D=16, FOLD_D=256,
                         CHECK_FLAGS=one_chunk)  # fmt: skip
        _compile(kernel, types, constants)
    kernel = uniform._uniform_lean_kernel
    types = {name: "i32" for name in kernel.arg_names}
    types.update({name: "*fp16" for name in ("rows_ptr", "rows_lo_ptr", "other_ptr", "other_lo_ptr")})
    types.update({name: "*fp32" for name in ("dref_ptr", "acc_ptr", "rowb_ptr", "otherb_ptr")})
    types.update({name: "*fp64" for name in ("consts_ptr", "info_ptr", "sums_ptr")})
    types["flags_ptr"] = "*i32"
    constants = dict(n_rows=1, n_other=1, D=1, SELF_MODE=2, HAS_OTHER=True, NEED_ACC=True, EVEN_D=False,
                     INPUT_PRECISION="ieee", SPLIT=True, SHIFT=14, BLOCK_M=64, BLOCK_N=64, BLOCK_D=16)  # fmt: skip
    _compile(kernel, types, constants)
    kernel = uniform._bias_kernel
    _compile(kernel, dict(norms_ptr="*fp64", n="i32", out_ptr="*fp32"), dict(n=1, BLOCK=1024))
    kernel = uniform._combine_kernel
    types = {name: "*fp64" for name in kernel.arg_names}
    types.update(dref_ptr="*fp32")
    _compile(kernel, types, dict(n_rows=1, n_other=1, SELF_MODE=2, BLOCK=1024))
    kernel = uniform._grad_kernel
    types = {name: "*fp64" for name in kernel.arg_names}
    types.update(v_ptr="*fp16", v_lo_ptr="*fp16", acc_ptr="*fp32", dref_ptr="*fp32")
    _compile(kernel, types, dict(n_rows=1, D=1, SPLIT=True, BLOCK_R=32, BLOCK_C=128))
    for kernel, constants in (
        (prepare_module._first_kernel, dict(D=1, NUM_PARTS=2, SCALE_DOWN=True, BLOCK_C=64)),
        (
            prepare_module._stats_kernel,
            dict(D=1, NUM_PARTS=2, SCALE_DOWN=True, STERBENZ=False, HEADROOM=12, BLOCK_C=64),
        ),
        (prepare_module._center_kernel, dict(n_rows=1, D=1, SPLIT=True, BLOCK_R=32, BLOCK_C=128)),
    ):
        types = {name: "i32" for name in kernel.arg_names}
        types.update({name: "*fp32" if name in ("src_ptr", "bounds_ptr") else "*fp64"
                      for name in kernel.arg_names if name.endswith("_ptr")})  # fmt: skip
        types.update(out_ptr="*fp16", lo_ptr="*fp16")
        _compile(kernel, types, constants)
    kernel = align_module._align_kernel
    types = {name: "i32" for name in kernel.arg_names}
    types.update(x_ptr="*fp32", y_ptr="*fp32", alpha_ptr="*fp64", terms_ptr="*fp64", gx_ptr="*fp32")
    for one_chunk in (True, False):
        _compile(kernel, types, dict(n=1, D=1, NEED_GRAD=True, ONE_CHUNK=one_chunk, BLOCK_M=32, BLOCK_D=128))
