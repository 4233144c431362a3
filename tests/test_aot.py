"""The Triton lean kernel compiled ahead of time for libhyperloss (tools/triton_aot.py, issue #13), checked without
a GPU: the generator runs as the CMake option HYPERLOSS_TRITON_AOT runs it, for the bfloat16 gradient sweep at
D = 128, and its sm_90 cubin has no register spills, runs its dots on wgmma (HGMMA) and keeps the hot loop within
issue #12's 8 SASS instructions per pair; the launcher takes the kernel's own arguments, and the generated C
compiles on its own (no CUDA header needed)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("TRITON_INTERPRET=1: no ahead-of-time compilation; run this module without it", allow_module_level=True)
pytest.importorskip("triton", reason="triton is not installed")

from hyperloss.triton import inspect as kernels

if not (os.access(kernels._tool("cuobjdump"), os.X_OK) or shutil.which("cuobjdump")):
    pytest.skip("cuobjdump is not shipped with this Triton", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "128,128,8,2"  # the inspection tool's best for bf16, D = 128 (bench/results/kernels-sm90.md); no search


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("aot")
    subprocess.run(
        [sys.executable, str(ROOT / "tools/triton_aot.py"), "--out", str(out), "--dtype", "bf16", "--variant", "grad",
         "--d", "128", "--config", CONFIG],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return out


def test_cubin_has_no_spills_and_uses_wgmma(generated):
    (kernel,) = json.loads((generated / "manifest.json").read_text())["kernels"]
    metrics = kernel["metrics"]
    assert (generated / f"{kernel['name']}.cubin").stat().st_size == kernel["cubin_bytes"]
    assert metrics["spill_bytes"] == 0, metrics
    assert metrics["local_loads"] == 0, metrics
    assert metrics["hgmma"] > 0 and metrics["loop_dots"] > 0, metrics  # wgmma in the hot loop
    assert metrics["per_pair"] <= 8.0, metrics


def test_launcher_takes_the_kernels_arguments(generated):
    from hyperloss.triton import uniform

    (kernel,) = json.loads((generated / "manifest.json").read_text())["kernels"]
    lean = uniform._uniform_lean_kernel
    constexprs = set(kernel["constants"])
    assert [name for name, _ in kernel["args"]] == [a for a in lean.arg_names if a not in constexprs]
    assert kernel["num_hidden"] >= 0
    header = (generated / "hl_aot_kernels.h").read_text()
    signature = "int hl_aot_uniform_lean_kernel(const hl_aot_kernel* k, void* stream, unsigned grid_x, void* rows_ptr"
    assert signature in header


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_generated_c_compiles(generated, tmp_path):
    subprocess.run(
        ["cc", "-std=c99", "-Wall", "-Werror", "-c", str(generated / "hl_aot_kernels.c"),
         f"-I{ROOT / 'csrc/cuda/aot'}", "-o", str(tmp_path / "kernels.o")],
        check=True, timeout=120,
    )  # fmt: skip
