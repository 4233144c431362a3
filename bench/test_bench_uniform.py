"""Uniformity loss: every implementation at each size, forward and forward + backward (see conftest.py)."""

OP = "uniform"


def test_uniform(bench_case, impl: str, mode: str, n: int) -> None:
    bench_case(OP, impl, mode, n)
