"""backend="cuda" (the CUDA C++ kernels of libhyperloss) on a GPU against the float64 reference.

Skipped where libhyperloss has no CUDA kernels or no GPU is present; the same kernels are also checked without
torch by the C++ test csrc/tests/test_cuda.cpp (ctest)."""

from __future__ import annotations

import pytest
import torch

import hyperloss
from hyperloss import reference
from tests.helpers import assert_close_scaled, features, uniform_reference

_CUDA = next(b for b in hyperloss.backends() if b.name == "cuda")
pytestmark = pytest.mark.skipif(not _CUDA.available, reason=f"backend 'cuda' unavailable: {_CUDA.reason}")

# (input dtype, float32 matmul precision) -> (value tolerance relative to 1 + |value|, gradient tolerance)
CASES = {
    (torch.float64, "highest"): (1e-10, 1e-8),
    (torch.float32, "highest"): (2e-5, 2e-4),
    (torch.float32, "high"): (3e-3, 3e-2),  # tf32 products
    (torch.float32, "medium"): (2e-2, 2e-1),  # bf16 products
    # Exact products of the rounded inputs and float32 sums; the gradient is rounded to the input dtype.
    (torch.float16, "highest"): (2e-5, 2e-3),
    (torch.bfloat16, "highest"): (2e-5, 1e-2),
}


@pytest.fixture(params=list(CASES), ids=lambda c: f"{str(c[0]).split('.')[-1]}-{c[1]}")
def case(request):
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(request.param[1])
    yield request.param
    torch.set_float32_matmul_precision(previous)


@pytest.mark.parametrize(
    ("n", "k", "d", "t", "intra_batch"),
    [
        (2, 0, 1, 2.0, True),
        (130, 0, 33, 2.0, True),
        (200, 0, 128, 2.0, True),
        (97, 45, 70, 2.0, True),
        (97, 45, 70, 2.0, False),
        (65, 0, 64, 150.0, True),
        (40, 0, 300, 2.0, True),
    ],
)
def test_uniform_matches_float64(case, n, k, d, t, intra_batch):
    dtype, _ = case
    value_tol, grad_tol = CASES[case]
    x = features(n, d, seed=n + d, dtype=dtype).cuda().requires_grad_()
    queue = features(k, d, seed=k, dtype=dtype).cuda().requires_grad_() if k else None
    got = hyperloss.uniform_loss(x, t, queue=queue, intra_batch=intra_batch, backend="cuda")
    want, want_grads = uniform_reference(x.cpu(), t, None if queue is None else queue.cpu(), intra_batch)
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert abs(got.item() - want.item()) <= value_tol * (1 + abs(want.item()))
    grads = torch.autograd.grad(got, [x] + ([queue] if queue is not None else []))
    for g, w in zip(grads, want_grads, strict=True):
        assert g.dtype == dtype
        assert_close_scaled(g.double().cpu(), w, grad_tol, "gradient")


def test_forward_only_non_contiguous_and_nan():
    x = features(150, 48, seed=1, dtype=torch.float32).cuda()
    wide = torch.zeros(150, 96, device="cuda")
    wide[:, ::2] = x
    strided = wide[:, ::2]
    with torch.no_grad():
        plain = hyperloss.uniform_loss(x, backend="cuda")
        assert hyperloss.uniform_loss(strided, backend="cuda").item() == pytest.approx(plain.item(), rel=1e-6)
    want = reference.dense_uniform_loss(x.double().cpu())
    assert plain.item() == pytest.approx(want.item(), rel=1e-5)
    x[3, 3] = float("nan")
    assert torch.isnan(hyperloss.uniform_loss(x, backend="cuda"))


@pytest.mark.parametrize(
    ("rows", "t", "want", "grad"),
    [([[1e4, 0], [1e4, 1]], 2.0, -2.0, 4.0), ([[12345, 0], [12345, 3]], 50.0, -450.0, 300.0)],
)
def test_common_offset_is_exact(case, rows, t, want, grad):
    # The kernels center the rows on the device: a common offset costs no digits (it used to cancel in the Gram
    # form). Every dtype holds these rows' differences exactly, so every precision gives the exact answer.
    dtype, _ = case
    x = torch.tensor(rows, dtype=torch.float64).to(dtype).cuda().requires_grad_()
    got = hyperloss.uniform_loss(x, t, backend="cuda")
    assert got.item() == pytest.approx(want, rel=1e-6)
    (g,) = torch.autograd.grad(got, x)
    torch.testing.assert_close(g.double().cpu(), torch.tensor([[0, grad], [0, -grad]], dtype=torch.float64))
    # The same pair as x against a one-row queue.
    x1, q1 = x[:1].detach().requires_grad_(), x[1:].detach().requires_grad_()
    got = hyperloss.uniform_loss(x1, t, queue=q1, intra_batch=False, backend="cuda")
    assert got.item() == pytest.approx(want, rel=1e-6)
    gx, gq = torch.autograd.grad(got, (x1, q1))
    torch.testing.assert_close(gx.double().cpu(), torch.tensor([[0, grad]], dtype=torch.float64))
    torch.testing.assert_close(gq.double().cpu(), torch.tensor([[0, -grad]], dtype=torch.float64))


@pytest.mark.parametrize("offset", [1000.0, -300.0])
def test_common_offset_matches_float64(case, offset):
    dtype, _ = case
    value_tol, grad_tol = CASES[case]
    x = (features(100, 24, seed=6, dtype=torch.float64) + offset).to(dtype).cuda().requires_grad_()
    q = (features(40, 24, seed=7, dtype=torch.float64) + offset).to(dtype).cuda().requires_grad_()
    got = hyperloss.uniform_loss(x, 2.0, queue=q, backend="cuda")
    want, want_grads = uniform_reference(x.cpu(), 2.0, q.cpu())
    assert abs(got.item() - want.item()) <= value_tol * (1 + abs(want.item()))
    for g, w in zip(torch.autograd.grad(got, (x, q)), want_grads, strict=True):
        assert_close_scaled(g.double().cpu(), w, grad_tol, "gradient")


def test_near_zero_loss_float64():
    # 1000 unit rows, t = 1e-6: the loss is about -2e-6. The CUDA kernels sum the pair terms in double; in float64
    # the loss keeps (nearly) every digit. (For float32 inputs the C API's lse_out is a float, so the torch op's
    # lse - log|P| has only ~1e-6 absolute accuracy: not tested here.)
    x = features(1000, 16, seed=8, dtype=torch.float64)
    got = hyperloss.uniform_loss(x.cuda(), 1e-6, backend="cuda").item()
    d2 = torch.pdist(x).pow(2)
    want = torch.log1p(torch.expm1(-1e-6 * d2).mean()).item()
    assert got <= 0
    assert abs(got - want) <= 1e-8 * abs(want)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 3.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_align_matches_float64(alpha, dtype):
    x = features(300, 70, seed=2, dtype=dtype).cuda().requires_grad_()
    y = features(300, 70, seed=3, dtype=dtype).cuda()
    y[5] = x[5].detach()  # a row with x_i == y_i: zero gradient
    y.requires_grad_()
    got = hyperloss.align_loss(x, y, alpha, backend="cuda")
    x64, y64 = x.detach().double().cpu().requires_grad_(), y.detach().double().cpu().requires_grad_()
    want = reference.dense_align_loss(x64, y64, alpha)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert got.item() == pytest.approx(want.item(), rel=tol)
    gx, gy = torch.autograd.grad(got, (x, y))
    wx, wy = torch.autograd.grad(want, (x64, y64))
    assert_close_scaled(gx.double().cpu(), wx, 10 * tol if dtype != torch.bfloat16 else 1e-2, "d/dx")
    assert_close_scaled(gy.double().cpu(), wy, 10 * tol if dtype != torch.bfloat16 else 1e-2, "d/dy")


def test_torch_compile_fullgraph():
    x = features(256, 64, seed=4, dtype=torch.float32).cuda().requires_grad_()
    y = features(256, 64, seed=5, dtype=torch.float32).cuda().requires_grad_()

    def step(x, y):
        return hyperloss.align_loss(x, y, backend="cuda") + hyperloss.uniform_loss(x, backend="cuda")

    got = torch.compile(step, fullgraph=True)(x, y)
    want = step(x, y)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
