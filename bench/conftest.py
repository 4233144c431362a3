"""The pytest-benchmark suite's shared part: sizes, device, parametrization and the fixture that runs one case.

By default every case is tiny and, without ``--benchmark-only`` (or ``--benchmark-enable``), runs once with
pytest-benchmark disabled, printing no timing table: the modules are smoke tests that CI runs, and they check
that every implementation agrees with the paper's code. Timed, at realistic sizes:

    HYPERLOSS_BENCH_FULL=1 pytest bench --benchmark-only
    HYPERLOSS_BENCH_FULL=1 HYPERLOSS_BENCH_N=8192 pytest bench/test_bench_uniform.py --benchmark-only -k "cpu or paper"

Environment: HYPERLOSS_BENCH_FULL (1: realistic sizes, timed), HYPERLOSS_BENCH_N (comma-separated sizes),
HYPERLOSS_BENCH_D (feature dimension; default 128 with FULL, else 16), HYPERLOSS_BENCH_DTYPE (fp32, bf16, ...),
HYPERLOSS_BENCH_DEVICE (cpu or cuda; default cuda when there is one).
"""

from __future__ import annotations

import os

import pytest
import torch

from hyperloss.bench import cases, plan

FULL = os.environ.get("HYPERLOSS_BENCH_FULL", "0") not in ("", "0")
DEVICE = torch.device(os.environ.get("HYPERLOSS_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"))
DTYPE = os.environ.get("HYPERLOSS_BENCH_DTYPE", "fp32")
D = int(os.environ.get("HYPERLOSS_BENCH_D") or (plan.DEFAULT_D if FULL else 16))

TINY_NS = {"uniform": (64,), "align": (256,)}
# pytest-benchmark repeats each case at least five times: fewer, smaller sizes than the sweep's.
FULL_NS = {
    ("cpu", "uniform"): (1024, 4096, 8192),
    ("cpu", "align"): (1 << 18,),
    ("cuda", "uniform"): (4096, 16384, 65536),
    ("cuda", "align"): (1 << 20,),
}


def pytest_configure(config: pytest.Config) -> None:
    """Timings only when asked for: otherwise pytest-benchmark runs each case once and prints no table (a single
    cold call is no measurement). Runs before pytest-benchmark's own configure, which is ``trylast``."""
    options = ("benchmark_only", "benchmark_enable", "benchmark_json", "benchmark_save", "benchmark_autosave")
    asked = FULL or any(config.getoption(o, None) for o in options)
    if not asked and hasattr(config.option, "benchmark_disable"):
        config.option.benchmark_disable = True


def sizes(op: str) -> tuple[int, ...]:
    if os.environ.get("HYPERLOSS_BENCH_N"):
        return tuple(int(n) for n in os.environ["HYPERLOSS_BENCH_N"].split(","))
    return FULL_NS[(DEVICE.type, op)] if FULL else TINY_NS[op]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every module declares its ``OP``; each test gets every implementation x mode x size of it."""
    op = getattr(metafunc.module, "OP", None)
    if op is None:
        return
    if "impl" in metafunc.fixturenames:
        metafunc.parametrize("impl", [i.name for i in cases.all_impls() if op in i.ops])
    if "mode" in metafunc.fixturenames:
        metafunc.parametrize("mode", cases.MODES)
    if "n" in metafunc.fixturenames:
        metafunc.parametrize("n", sizes(op))


# Relative tolerances (loss, gradients) against the paper's code in fp32: a GPU kernel may use TF32 products.
TOLERANCES = {"cpu": (1e-4, 1e-3), "cuda": (2e-3, 2e-2)}


def _agree_with_paper(op: str, mode: str, inputs: tuple[torch.Tensor, ...], loss: torch.Tensor) -> None:
    """The value (and gradients) of the case just run against the paper's code on the same inputs."""
    grads = [t.grad.clone() for t in inputs] if mode == "fwdbwd" else None
    expected = cases.make_step(cases.build_loss("paper", op), inputs, mode, DEVICE)()
    loss_rtol, grad_rtol = TOLERANCES[DEVICE.type]
    torch.testing.assert_close(loss.float(), expected.float(), rtol=loss_rtol, atol=1e-5)
    if grads is not None:
        for got, t in zip(grads, inputs, strict=True):
            torch.testing.assert_close(got.float(), t.grad.float(), rtol=grad_rtol, atol=1e-6)


@pytest.fixture
def bench_case(benchmark):
    """Runs one case under pytest-benchmark: ``bench_case(op, impl, mode, n)``.

    Grouped by case, so the comparison table sets implementations of the same case side by side. Each timed
    call synchronizes the device itself (``cases.make_step``).
    """

    def run(op: str, impl: str, mode: str, n: int) -> None:
        reason = cases.unavailable_reason(impl, op, DEVICE.type, DTYPE) or cases.unsupported_dtype(
            impl, op, DEVICE.type, DTYPE
        )
        if reason is not None:
            pytest.skip(reason)
        if impl in plan.SLOW_TO_START and not FULL:
            pytest.skip("torch.compile takes seconds per shape; runs with HYPERLOSS_BENCH_FULL=1")
        inputs = cases.make_inputs(op, n, D, DTYPE, DEVICE, requires_grad=mode == "fwdbwd")
        step = cases.make_step(cases.build_loss(impl, op), inputs, mode, DEVICE)
        benchmark.group = f"{op} {mode} N={n} D={D} {DTYPE} {DEVICE.type}"
        benchmark.extra_info.update(op=op, impl=impl, mode=mode, n=n, d=D, dtype=DTYPE, device=DEVICE.type)
        try:
            if not benchmark.disabled:
                step()  # compilation and autotuning stay out of the timings
            loss = benchmark(step)
        except torch.OutOfMemoryError:
            pytest.skip(f"{impl} runs out of memory at N={n}")
        if not FULL and DTYPE == "fp32":
            _agree_with_paper(op, mode, inputs, loss)

    return run
