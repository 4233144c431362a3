"""The pytest-benchmark modules' sizes, device, parametrization and case fixture (environment: bench/README.md).
Unless timings are asked for (--benchmark-only, -enable, -json, -save, -autosave or HYPERLOSS_BENCH_FULL=1), each
case is tiny, runs once untimed, and is checked against the paper's code: CI's smoke test."""

import os

import pytest
import torch

from hyperloss.bench import cases, sweep

FULL = os.environ.get("HYPERLOSS_BENCH_FULL", "0") not in ("", "0")
DEVICE = torch.device(os.environ.get("HYPERLOSS_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"))
DTYPE = os.environ.get("HYPERLOSS_BENCH_DTYPE", "fp32")
D = int(os.environ.get("HYPERLOSS_BENCH_D") or (sweep.DEFAULT_D if FULL else 16))
# pytest-benchmark repeats each case at least five times: fewer, smaller sizes than the sweep's (uniform, align).
FULL_SIZES = {"cpu": ((1024, 4096, 8192), (1 << 18,)), "cuda": ((4096, 16384, 65536), (1 << 20,))}
SIZES = dict(zip(cases.OPS, FULL_SIZES[DEVICE.type], strict=True)) if FULL else {"uniform": (64,), "align": (256,)}
TOLERANCES = {"cpu": (1e-4, 1e-3), "cuda": (2e-3, 2e-2)}  # loss, gradients vs the paper (a GPU may use TF32)


def pytest_configure(config: pytest.Config) -> None:
    """Runs before pytest-benchmark's own configure (``trylast``): a single cold call is no measurement."""
    options = ("benchmark_only", "benchmark_enable", "benchmark_json", "benchmark_save", "benchmark_autosave")
    if not (FULL or any(config.getoption(o, None) for o in options)) and hasattr(config.option, "benchmark_disable"):
        config.option.benchmark_disable = True


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every module declares its ``OP``; each test gets every implementation x mode x size of it."""
    if (op := getattr(metafunc.module, "OP", None)) is None:
        return
    sizes = os.environ.get("HYPERLOSS_BENCH_N")
    params = {"impl": list(cases.implementations()), "mode": cases.MODES}  # those that cannot run: skipped, with why
    params["n"] = [int(n) for n in sizes.split(",")] if sizes else SIZES[op]
    for name, values in params.items():
        if name in metafunc.fixturenames:
            metafunc.parametrize(name, values)


@pytest.fixture
def bench_case(benchmark):
    """``bench_case(op, impl, mode, n)`` under pytest-benchmark, grouped by case: the table sets the implementations
    of one case side by side. Each timed call waits for the device."""

    def run(op: str, impl: str, mode: str, n: int) -> None:
        reason = cases.unavailable_reason(impl, op, DEVICE.type)
        reason = reason or cases.unsupported_dtype(impl, op, DEVICE.type, DTYPE)
        if impl in sweep.SLOW_TO_START and not FULL:
            reason = reason or "torch.compile takes seconds per shape; runs with HYPERLOSS_BENCH_FULL=1"
        if reason:
            pytest.skip(reason)
        inputs = cases.make_inputs(op, n, D, DTYPE, DEVICE, grad=mode == "fwdbwd")
        step = cases.make_step(cases.build_loss(impl, op), inputs, mode, sync=True)
        benchmark.group = f"{op} {mode} N={n} D={D} {DTYPE} {DEVICE.type}"
        benchmark.extra_info.update(op=op, impl=impl, mode=mode, n=n, d=D, dtype=DTYPE, device=DEVICE.type)
        try:
            if not benchmark.disabled:
                step()  # compilation and autotuning stay out of the timings
            loss = benchmark(step)
        except torch.OutOfMemoryError:
            pytest.skip(f"{impl} runs out of memory at N={n}")
        if FULL or DTYPE != "fp32":
            return
        grads = [t.grad.clone() for t in inputs if mode == "fwdbwd"]
        expected = cases.make_step(cases.build_loss("paper", op), inputs, mode)()  # the paper's, on the same inputs
        torch.testing.assert_close(loss.float(), expected.float(), rtol=TOLERANCES[DEVICE.type][0], atol=1e-5)
        for got, t in zip(grads, inputs, strict=False):  # no gradients in "fwd" mode
            torch.testing.assert_close(got.float(), t.grad.float(), rtol=TOLERANCES[DEVICE.type][1], atol=1e-6)

    return run
