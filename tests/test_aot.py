"""The Triton kernels compiled ahead of time for libhyperloss (tools/triton_aot.py, issue #13), checked without a GPU.

- The default kernel set (``--list``, nothing compiled) covers every sweep hl_uniform_lse_cuda runs for each operand
  dtype and block width 16..256, plus the fallback, combine and gradient kernels; each kernel's argument list is
  its own (``arg_names`` less the constexprs), and csrc/cuda/uniform.cu names a value of the right type for every
  argument of every kernel (the C side binds by name: aot.h).
- Padding rows with zero columns (what the C side does for D below a block width) gives the Triton backend's numbers.
- One compilation (bfloat16 gradient sweep, D = 128) as the CMake option HYPERLOSS_TRITON_AOT runs the generator:
  its sm_90 cubin has no register spills, runs its dots on wgmma (HGMMA), keeps the hot loop within issue #12's
  8 SASS instructions per pair and within 1.25x of the JIT Triton kernel's count (the inspection tool: issue #13);
  the generated C compiles on its own (no CUDA header needed).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("TRITON_INTERPRET=1: no ahead-of-time compilation; run this module without it", allow_module_level=True)
pytest.importorskip("triton", reason="triton is not installed")

from hyperloss.triton import inspect as kernels
from hyperloss.triton import uniform

ROOT = Path(__file__).resolve().parents[1]
GENERATOR = ROOT / "tools/triton_aot.py"
CONFIG = "128,128,8,2"  # the inspection tool's best for bf16, D = 128 (bench/results/kernels-sm90.md); no search
WIDTHS = (16, 32, 64, 128, 256)
# The sweeps the C API runs (SELF_MODE, HAS_OTHER, NEED_ACC): x over x and the queue with and without a gradient
# (every j != i with it, j > i without), x over the queue alone, and the queue over x for its gradient.
SWEEPS = {(2, 0, 1), (1, 0, 0), (2, 1, 1), (1, 1, 0), (0, 1, 1), (0, 1, 0)}
ANY = -1


def _run_generator(*args: str) -> str:
    return subprocess.run(
        [sys.executable, str(GENERATOR), *args], check=True, capture_output=True, text=True, timeout=600
    ).stdout


@pytest.fixture(scope="module")
def listed() -> list[dict]:
    return json.loads(_run_generator("--list"))


def test_default_set_covers_every_call(listed):
    keys = {(k["function"], k["key"]["dtype"], k["key"]["self_mode"], k["key"]["has_other"], k["key"]["need_acc"],
             k["key"]["block_d"], k["key"]["segment_cols"]) for k in listed}  # fmt: skip
    assert len(keys) == len(listed), "two kernels with one key"
    for dtype in (2, 3):  # float16, bfloat16 (hl_dtype)
        assert ("_grad_kernel", dtype, ANY, ANY, ANY, ANY, ANY) in keys
        for width in WIDTHS:
            for sweep in SWEEPS:
                # Every sweep whole; those with a queue also split into segments of 1024 and 4096 columns.
                for cols in (0, 1024, 4096) if sweep[1] else (0,):
                    for function in ("_uniform_lean_kernel", "_uniform_rows_kernel"):
                        assert (function, dtype, *sweep, width, cols) in keys, (function, dtype, width, sweep, cols)
    for self_mode in (0, 1, 2):
        assert ("_combine_kernel", ANY, self_mode, ANY, ANY, ANY, ANY) in keys
    for need_acc in (0, 1):
        assert ("_merge_segments_kernel", ANY, ANY, ANY, need_acc, ANY, ANY) in keys


def test_split_rule_is_the_triton_backends():
    """The C side's split of few rows against many columns (csrc/cuda/uniform.cu aot::split_columns, every length
    compiled), as ctest triton_aot checks it on kSplitRule, is uniform._segments' on a 132-SM GPU (float32
    accumulators as wide as the block width)."""
    import torch

    source = (ROOT / "csrc/cuda/aot/check_aot.cpp").read_text()
    table = source[source.index("kSplitRule[][6] = {") : source.index("};", source.index("kSplitRule[][6] = {"))]
    rows = [tuple(int(v) for v in row.split(",")) for row in re.findall(r"\{(\d+(?:, \d+){5})\}", table)]
    assert len(rows) >= 10
    for n, k, width, need_acc, segments, cols in rows:
        got = uniform._segments(n, k, width, torch.float32, bool(need_acc), torch.device("cpu"))
        assert got == (segments, cols), (n, k, width, need_acc)


def test_arguments_are_the_kernels(listed):
    for k in listed:
        function = getattr(uniform, k["function"])
        constexprs = {p.name for p in function.params if p.is_constexpr}
        assert [name for name, _ in k["args"]] == [a for a in function.arg_names if a not in constexprs], k["name"]
        for name, ty in k["args"]:
            assert ty in ("i32", "*fp32", "*fp64", "*i32", "*bf16", "*fp16"), (k["name"], name, ty)


def test_c_side_names_every_argument(listed):
    """csrc/cuda/uniform.cu gives each argument by name (ptr("name", type, value) / i32("name", value)); every
    kernel argument must be there with the kernel's type ("op": the operand dtype of the call)."""
    source = (ROOT / "csrc/cuda/uniform.cu").read_text()
    given = dict(re.findall(r'\bptr\("(\w+)", (op|"\*\w+")', source))
    given.update((name, '"i32"') for name in re.findall(r'\bi32\("(\w+)"', source))
    operand = {2: "*fp16", 3: "*bf16"}
    for k in listed:
        for name, ty in k["args"]:
            assert name in given, f"{k['name']}: uniform.cu gives no value for {name}"
            want = given[name].strip('"')
            assert (operand[k["key"]["dtype"]] if want == "op" else want) == ty, (k["name"], name, ty, want)


# The C side pads rows to the block width with zero columns instead of running EVEN_D = 0 kernels; the Triton
# kernels load absent columns as zeros, so both give the same numbers. Checked here on the Triton backend itself,
# float16 under the interpreter (a subprocess: the interpreter is chosen when Python starts), every gradient.
PADDING_CHECK = """
import torch
from hyperloss.triton.uniform import uniform_lse
torch.manual_seed(0)
x, q = torch.randn(40, 20, dtype=torch.float16), torch.randn(24, 20, dtype=torch.float16)
t = torch.tensor(2.0, dtype=torch.float64)
a = uniform_lse(x, q, t, True, True, True)
b = uniform_lse(*(torch.nn.functional.pad(v, (0, 12)) for v in (x, q)), t, True, True, True)
assert float(a[0]) == float(b[0]), (float(a[0]), float(b[0]))
for g, h in zip(a[1:], b[1:]):
    assert torch.equal(g, h[:, :20]) and not h[:, 20:].any()
"""


def test_zero_columns_change_nothing():
    env = {
        **os.environ,
        "TRITON_INTERPRET": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    subprocess.run([sys.executable, "-c", PADDING_CHECK], check=True, env=env, timeout=300)


if not (os.access(kernels._tool("cuobjdump"), os.X_OK) or shutil.which("cuobjdump")):
    pytest.skip("cuobjdump is not shipped with this Triton", allow_module_level=True)


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("aot")
    _run_generator("--out", str(out), "--dtype", "bf16", "--variant", "grad", "--kind", "lean", "--d", "128",
                   "--config", CONFIG, "--jobs", "1")  # fmt: skip
    return out


def test_cubin_has_no_spills_and_uses_wgmma(generated):
    (kernel,) = json.loads((generated / "manifest.json").read_text())["kernels"]
    metrics = kernel["metrics"]
    assert (generated / f"{kernel['name']}.cubin").stat().st_size == kernel["cubin_bytes"]
    assert metrics["spill_bytes"] == 0, metrics
    assert metrics["local_loads"] == 0, metrics
    assert metrics["hgmma"] > 0 and metrics["loop_dots"] > 0, metrics  # wgmma in the hot loop
    assert metrics["per_pair"] <= 8.0, metrics


def test_cubin_runs_as_few_instructions_per_pair_as_the_triton_kernel(generated):
    """Issue #13: the C API's kernel within 1.25x of the Triton backend's SASS instructions per pair in the hot loop,
    by the inspection tool (hyperloss.triton.inspect: the JIT kernel as the Triton backend compiles it)."""
    (kernel,) = json.loads((generated / "manifest.json").read_text())["kernels"]
    block_m, block_n, warps, stages = map(int, CONFIG.split(","))
    jit = kernels.inspect_case(kernels.Case("lean", "grad", "bf16", 128, block_m, block_n, warps, stages))
    assert kernel["metrics"]["per_pair"] <= 1.25 * jit.per_pair, (kernel["metrics"], jit)


def test_table_lists_the_kernels_arguments(generated):
    (kernel,) = json.loads((generated / "manifest.json").read_text())["kernels"]
    source = (generated / "hl_aot_kernels.c").read_text()
    names = ", ".join(f'"{name}"' for name, _ in kernel["args"])
    assert names in source
    assert f"#define HL_AOT_ROW_PAD {uniform._ROW_PAD}" in (generated / "hl_aot_kernels.h").read_text()


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_generated_c_compiles(generated, tmp_path):
    subprocess.run(
        ["cc", "-std=c99", "-Wall", "-Werror", "-c", str(generated / "hl_aot_kernels.c"),
         f"-I{ROOT / 'csrc/cuda/aot'}", "-o", str(tmp_path / "kernels.o")],
        check=True, timeout=120,
    )  # fmt: skip
