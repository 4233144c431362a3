"""Training with a learnable temperature on a small real data set (scikit-learn's digits, bundled with it):
every backend follows the same curve as dense float64 autograd, to rounding."""

from __future__ import annotations

import pytest
import torch

import hyperloss
from hyperloss import reference
from tests.helpers import BACKENDS, DEVICE, INTERPRET

datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn is not installed")

STEPS = 3 if INTERPRET else 12


def _train(loss_fn, steps: int = STEPS) -> list[tuple[float, float]]:
    """SGD on a linear encoder and log t; returns (loss, t) per step. Views: the digits plus fixed noise."""
    digits = torch.tensor(datasets.load_digits().data, dtype=torch.float64, device=DEVICE) / 16
    torch.manual_seed(0)
    encoder = torch.nn.Linear(64, 16, dtype=torch.float64, device=DEVICE)
    log_t = torch.nn.Parameter(torch.tensor(0.0, dtype=torch.float64, device=DEVICE))  # t = 1 at the start
    optimizer = torch.optim.SGD([*encoder.parameters(), log_t], lr=0.5)
    g = torch.Generator().manual_seed(1)
    curve = []
    for step in range(steps):
        batch = digits[step * 128 : (step + 1) * 128]
        noise = [0.1 * torch.randn(batch.shape, generator=g, dtype=torch.float64).to(DEVICE) for _ in range(2)]
        za, zb = (torch.nn.functional.normalize(encoder(batch + n), dim=1) for n in noise)
        loss = loss_fn(za, zb, log_t.exp())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        curve.append((loss.item(), log_t.exp().item()))
    return curve


def _dense(za, zb, t):
    uniform = (reference.dense_uniform_loss(za, t) + reference.dense_uniform_loss(zb, t)) / 2
    return reference.dense_align_loss(za, zb) + uniform


@pytest.mark.parametrize("backend", BACKENDS)
def test_learnable_temperature_follows_dense_autograd(backend):
    def ours(za, zb, t):
        uniform = (hyperloss.uniform_loss(za, t, backend=backend) + hyperloss.uniform_loss(zb, t, backend=backend)) / 2
        return hyperloss.align_loss(za, zb, backend=backend) + uniform

    want = _train(_dense)
    got = _train(ours)
    assert want[-1][1] != pytest.approx(1.0, abs=1e-3)  # t did move
    for step, ((loss, t), (want_loss, want_t)) in enumerate(zip(got, want, strict=True)):
        assert loss == pytest.approx(want_loss, rel=1e-9, abs=1e-12), f"step {step}"
        assert t == pytest.approx(want_t, rel=1e-9), f"step {step}"
