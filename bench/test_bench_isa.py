"""The native CPU backend per instruction set (HYPERLOSS_CPU_ISA): the AVX-512, AVX2 and generic paths on the same
case. Timed: ``HYPERLOSS_BENCH_FULL=1 pytest bench/test_bench_isa.py --benchmark-only``; in CI checked, untimed."""

import pytest

from hyperloss.backends import native

OP = "uniform"


@pytest.mark.parametrize("isa", ("avx512", "avx2", "generic"))
def test_cpu_isa(bench_case, benchmark, monkeypatch, isa: str, mode: str, n: int) -> None:
    monkeypatch.setenv("HYPERLOSS_CPU_ISA", isa)
    if native.cpu_isa() != isa:
        pytest.skip(f"this CPU (or build) has no {isa} path")
    benchmark.extra_info["cpu_isa"] = isa
    bench_case(OP, "cpu", mode, n)
