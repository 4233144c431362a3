"""The CPU kernels' instruction sets: one portable library whose AVX2 and AVX-512 code runs only where the CPU has it.

The tile arithmetic is compiled once per instruction set (csrc/cpu/tile_*.cpp) and chosen at run time; the
environment variable HYPERLOSS_CPU_ISA may name a lower set. Speed per set is measured by the benchmark
(bench/test_bench_isa.py), not here.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys

import pytest
import torch

import hyperloss
from hyperloss import _lib
from hyperloss.backends import native
from tests.helpers import assert_close_scaled, features, uniform_reference

pytestmark = pytest.mark.skipif(_lib.LOAD_ERROR is not None, reason=f"no C library: {_lib.LOAD_ERROR}")
X86 = platform.machine().lower() in ("x86_64", "amd64")
ISAS = ("generic", "avx2", "avx512")


@pytest.fixture
def isa(request, monkeypatch):
    monkeypatch.setenv("HYPERLOSS_CPU_ISA", request.param)
    return request.param


@pytest.mark.parametrize("isa", ISAS, indirect=True)
def test_every_instruction_set_matches_float64(isa):
    chosen = native.cpu_isa()
    assert ISAS.index(chosen) <= ISAS.index(isa)  # a set the CPU lacks is never chosen
    for dtype in (torch.float32, torch.float64):
        x = features(150, 37, seed=1, dtype=dtype, device="cpu").requires_grad_()
        queue = features(70, 37, seed=2, dtype=dtype, device="cpu").requires_grad_()
        loss = hyperloss.uniform_loss(x, 2.0, queue=queue, backend="cpu")
        want, want_grads = uniform_reference(x, 2.0, queue)
        rel = 1e-10 if dtype == torch.float64 else 1e-5
        assert abs(loss.item() - want.item()) <= rel * (1 + abs(want.item())), (chosen, dtype)
        for got, w in zip(torch.autograd.grad(loss, (x, queue)), want_grads, strict=True):
            assert_close_scaled(got, w, 100 * rel, f"{chosen} {dtype} gradient")


def test_the_best_set_is_chosen_by_default():
    if "HYPERLOSS_CPU_ISA" in os.environ:
        pytest.skip("HYPERLOSS_CPU_ISA is set")
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    if not X86 or not flags:
        assert native.cpu_isa() == "generic"
        return
    has = {name: re.search(rf"\b{name}\b", flags) is not None for name in ("avx2", "fma", "avx512f", "avx512bw")}
    expected = "avx512" if has["avx512f"] and has["avx512bw"] else "avx2" if has["avx2"] and has["fma"] else "generic"
    assert native.cpu_isa() == expected


@pytest.mark.skipif(not X86 or shutil.which("objdump") is None, reason="needs x86-64 and objdump")
def test_wide_instructions_only_behind_the_dispatch():
    """objdump of the library: zmm and mask registers only in the avx512 functions, ymm only in avx2/avx512 ones, so
    the library loads and runs on any x86-64 CPU."""
    listing = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", "-C", _lib.lib._name], capture_output=True, text=True, check=True
    ).stdout
    function, offenders, seen = "", set(), {"zmm": 0, "ymm": 0}
    for line in listing.splitlines():
        if m := re.match(r"^[0-9a-f]+ <(.*)>:$", line):
            function = m[1]
            continue
        if re.search(r"%zmm|%k[1-7]\b", line):
            seen["zmm"] += 1
            if "::avx512::" not in function:
                offenders.add(function)
        elif "%ymm" in line:
            seen["ymm"] += 1
            if "::avx512::" not in function and "::avx2::" not in function:
                offenders.add(function)
    assert not offenders, sorted(offenders)[:10]
    assert seen["zmm"] and seen["ymm"], "the AVX-512 and AVX2 kernels are missing from the library"


def test_an_unknown_or_unsupported_set_falls_back():
    code = "from hyperloss.backends import native as n; print(n.cpu_isa())"
    for wanted in ("avx1024", ""):
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "HYPERLOSS_CPU_ISA": wanted},
            capture_output=True,
            text=True,
        )
        assert out.stdout.strip() in ISAS, out.stderr
