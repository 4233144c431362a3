"""The native CPU backend per instruction set (HYPERLOSS_CPU_ISA): the portable build's AVX2 path against its AVX-512
path (and the generic one) on the same case. Run timed:

    HYPERLOSS_BENCH_FULL=1 pytest bench/test_bench_isa.py --benchmark-only

Without timings (CI) each case runs once and is checked against the paper's code.
"""

from __future__ import annotations

import pytest

from hyperloss import native

OP = "uniform"
ISAS = ("avx512", "avx2", "generic")


@pytest.fixture(params=ISAS)
def cpu_isa(request, monkeypatch):
    monkeypatch.setenv("HYPERLOSS_CPU_ISA", request.param)
    if native.cpu_isa() != request.param:
        pytest.skip(f"this CPU (or build) has no {request.param} path")
    return request.param


def test_cpu_isa(bench_case, benchmark, cpu_isa, mode, n):
    benchmark.extra_info["cpu_isa"] = cpu_isa
    bench_case(OP, "cpu", mode, n)
