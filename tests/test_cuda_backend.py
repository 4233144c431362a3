"""What is particular to backend="cuda" (the CUDA C++ kernels of libhyperloss). The op tests (test_uniform.py,
test_align.py) run it on a GPU like every other backend of the device, float32 precisions included.

Skipped where libhyperloss has no CUDA kernels or no GPU is present; the same kernels are also checked without
torch by the C++ test csrc/tests/test_cuda.cpp (ctest)."""

from __future__ import annotations

import pytest
import torch

import hyperloss
from tests.helpers import features

_CUDA = next(b for b in hyperloss.backends() if b.name == "cuda")
pytestmark = pytest.mark.skipif(not _CUDA.available, reason=f"backend 'cuda' unavailable: {_CUDA.reason}")


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


def test_torch_compile_fullgraph():
    x = features(256, 64, seed=4, dtype=torch.float32).cuda().requires_grad_()
    y = features(256, 64, seed=5, dtype=torch.float32).cuda().requires_grad_()

    def step(x, y):
        return hyperloss.align_loss(x, y, backend="cuda") + hyperloss.uniform_loss(x, backend="cuda")

    got = torch.compile(step, fullgraph=True)(x, y)
    want = step(x, y)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
