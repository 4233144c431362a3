"""align_loss on every backend of the device against the float64 paper formula."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hyperloss
from hyperloss import reference
from tests.helpers import BACKENDS, CPU_BACKENDS, DEVICE, check_align, examples, features, unsupported


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@settings(max_examples=examples(100), deadline=None, derandomize=True)
@given(
    n=st.integers(1, 300),
    d=st.integers(1, 257),
    alpha=st.floats(0.5, 4.0),
    scale=st.sampled_from([0.01, 0.3, 1.0, 10.0]),
    seed=st.integers(0, 2**16),
)
def test_matches_paper(backend, dtype, n, d, alpha, scale, seed):
    x = features(n, d, seed=seed, dtype=dtype)
    y = x + features(n, d, seed=seed + 1, dtype=dtype, scale=scale, normalize=False)
    check_align(backend, x, y, alpha)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 1.5, 2.0, 3.0])
def test_equal_rows_have_zero_gradient(backend, alpha):
    x = features(6, 4, seed=1).requires_grad_()
    y = x.detach().clone()
    y[2:] += 0.5
    loss = hyperloss.align_loss(x, y, alpha, backend=backend)
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(grad).all()
    assert torch.equal(grad[:2], torch.zeros_like(grad[:2]))  # the subgradient torch's norm uses at 0
    want = reference.dense_align_loss(x.detach().cpu(), y.cpu(), alpha)
    assert loss.item() == pytest.approx(want.item(), rel=1e-12)


def test_non_contiguous_and_half(backend):
    x = features(40, 30, seed=2, dtype=torch.float32)[::2, ::3]
    y = features(40, 30, seed=3, dtype=torch.float32)[::2, ::3]
    check_align(backend, x, y, 2.0)
    for dtype in (torch.float16, torch.bfloat16):
        if unsupported(backend, dtype):
            with pytest.raises(NotImplementedError):
                hyperloss.align_loss(x.to(dtype), y.to(dtype), backend=backend)
            continue
        check_align(backend, x.to(dtype), y.to(dtype), 2.0)


def test_gradcheck_native_kernel():
    if "cpu" not in CPU_BACKENDS:
        pytest.skip("the native extension is not built")
    x = features(7, 3, seed=4, device="cpu").requires_grad_()
    y = features(7, 3, seed=5, device="cpu").requires_grad_()
    for alpha in (0.7, 2.0, 3.3):
        assert torch.autograd.gradcheck(lambda a, b, al=alpha: hyperloss.align_loss(a, b, al, backend="cpu"), (x, y))


def test_the_kernel_without_the_op_is_the_op():
    """Plain eager CPU calls run the kernel without the torch op (the dispatcher's cost is most of a small call):
    the same loss and gradients, bit for bit, as the op gives where it must run (here under a dispatch mode, which
    sees hyperloss::align; also traced, faked, profiled or on tensor subclasses)."""
    if "cpu" not in CPU_BACKENDS:
        pytest.skip("the native extension is not built")
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    def run(want_grad: bool):
        x = features(40, 9, seed=1, device="cpu").requires_grad_(want_grad)
        y = features(40, 9, seed=2, device="cpu").requires_grad_(want_grad)
        loss = hyperloss.align_loss(x, y, 1.5, backend="cpu")
        if want_grad:
            loss.backward()
        return loss.detach(), x.grad, y.grad

    for want_grad in (False, True):
        record = Record()
        with record:
            through_op = run(want_grad)
        assert any("hyperloss.align" in op for op in record.ops), record.ops
        direct = run(want_grad)
        for a, b in zip(direct, through_op, strict=True):
            assert (a is None and b is None) or torch.equal(a, b)


def test_the_kernel_without_the_op_reads_what_the_op_reads():
    """Where the direct call would differ, the op runs: a lazily negated view (the dispatcher resolves the bit, the
    kernel reads the storage) and torch.jit.trace (which records the op, not a constant)."""
    if "cpu" not in CPU_BACKENDS:
        pytest.skip("the native extension is not built")
    negated = torch.randn(6, 4, dtype=torch.complex128, generator=torch.Generator().manual_seed(3)).conj().imag
    assert negated.is_neg()
    y = features(6, 4, seed=4, device="cpu")
    want = reference.paper_align_loss(negated.resolve_neg().double(), y.double(), 2.0)
    assert torch.allclose(hyperloss.align_loss(negated, y, backend="cpu").double(), want, rtol=1e-6)
    x = features(6, 4, seed=5, device="cpu")
    traced = torch.jit.trace(lambda a, b: hyperloss.align_loss(a, b, backend="cpu"), (x, y), check_trace=False)
    want = reference.paper_align_loss(10 * x.double(), y.double(), 2.0)
    assert torch.allclose(traced(10 * x, y).double(), want, rtol=1e-6)


def test_non_finite_input(backend):
    x = features(5, 3, seed=6)
    y = x.clone()
    y[1, 1] = float("nan")
    assert torch.isnan(hyperloss.align_loss(x, y, backend=backend))
    y[1, 1] = float("inf")
    assert not torch.isfinite(hyperloss.align_loss(x, y, backend=backend))  # as the paper's formula: inf


def test_second_derivative_raises(backend):
    x = features(5, 3, seed=7).requires_grad_()
    loss = hyperloss.align_loss(x, features(5, 3, seed=8), backend=backend)
    with pytest.raises(RuntimeError, match="second derivatives"):
        torch.autograd.grad(loss, x, create_graph=True)


@pytest.mark.parametrize(("scale", "alpha"), [(1e19, 1.0), (1e19, 2.0), (1e-25, 1.0), (1e-30, 0.5), (1e-20, 0.25)])
@pytest.mark.parametrize("d", [5, 40])
def test_float32_rows_at_extreme_scales(backend, scale, alpha, d):
    """Differences whose float32 squares overflow (~1e19) or underflow (~1e-25), and alpha < 1 at 1e-30, whose
    coefficient d^(alpha/2-1) (~1e44) overflows float32 while the gradient does not: the float64 value rounded to
    float32 (inf where it does not fit, as the paper's formula in float32 gives), gradients to float32 digits."""
    torch.manual_seed(0)
    x = (torch.randn(8, d) * scale).to(DEVICE).requires_grad_()
    y = (torch.randn(8, d) * scale).to(DEVICE).requires_grad_()
    got = hyperloss.align_loss(x, y, alpha, backend=backend)
    x64, y64 = (v.detach().cpu().double().requires_grad_() for v in (x, y))
    want = reference.paper_align_loss(x64, y64, alpha)
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(float(want.float()), rel=1e-6)
    gx, gy = torch.autograd.grad(got, (x, y))
    want_gx, want_gy = torch.autograd.grad(want, (x64, y64))
    for g, w in ((gx, want_gx), (gy, want_gy)):
        assert torch.isfinite(g).all()
        assert float((g.cpu().double() - w).abs().max() / w.abs().max()) <= 1e-6


def test_float32_loss_beyond_range_is_inf(backend):
    """A loss beyond float32's range (its terms fit float64) is inf, as a float32 cast gives: not an error."""
    x = torch.full((4, 8), 1e19, device=DEVICE)
    assert hyperloss.align_loss(x, -x, backend=backend).item() == float("inf")
    assert hyperloss.align_loss(x, -x, 100.0, backend=backend).item() == float("inf")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_large_gradients(dtype):
    """Past the native kernel's size threshold (gradients advised to huge pages, non-temporal stores; 33 columns put
    the rows at every alignment): the oracle's values, and the same bits with one thread as with several."""
    if "cpu" not in CPU_BACKENDS:
        pytest.skip("the native extension is not built")
    x = features(70_000, 33, seed=9, dtype=dtype, device="cpu")
    y = x + features(70_000, 33, seed=10, dtype=dtype, scale=0.1, normalize=False, device="cpu")
    check_align("cpu", x, y, 2.0)
    runs = []
    threads = torch.get_num_threads()
    for n_threads in (1, max(2, threads)):
        torch.set_num_threads(n_threads)
        try:
            a, b = x.clone().requires_grad_(), y.clone().requires_grad_()
            hyperloss.align_loss(a, b, 1.5, backend="cpu").backward()
        finally:
            torch.set_num_threads(threads)
        runs.append((a.grad, b.grad))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert torch.equal(runs[0][1], -runs[0][0])
