"""The public surface: input checks, backend listing and choice, modules, torch.compile."""

from __future__ import annotations

import pytest
import torch

import hyperloss
from hyperloss import reference
from tests.helpers import CPU_BACKENDS, features, native_extension_expected

X = features(8, 4, seed=0, dtype=torch.float32)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: hyperloss.uniform_loss(X[0]), ValueError, "2-D"),
        (lambda: hyperloss.uniform_loss(X[None]), ValueError, "2-D"),
        (lambda: hyperloss.uniform_loss(X[:1]), ValueError, "at least 2 row"),
        (lambda: hyperloss.uniform_loss(X[:, :0]), ValueError, "D >= 1"),
        (lambda: hyperloss.uniform_loss(X.numpy()), TypeError, "torch.Tensor"),
        (lambda: hyperloss.uniform_loss(X.int()), TypeError, "floating-point"),
        (lambda: hyperloss.uniform_loss(X > 0), TypeError, "floating-point"),
        (lambda: hyperloss.uniform_loss(X.to(torch.complex64)), TypeError, "floating-point"),
        (lambda: hyperloss.uniform_loss(X, t=0.0), ValueError, "t must be finite and > 0"),
        (lambda: hyperloss.uniform_loss(X, t=-1.0), ValueError, "t must be finite and > 0"),
        (lambda: hyperloss.uniform_loss(X, t=float("nan")), ValueError, "t must be finite"),
        (lambda: hyperloss.uniform_loss(X, t=float("inf")), ValueError, "t must be finite"),
        (lambda: hyperloss.uniform_loss(X, t="2"), TypeError, "t must be a real number"),
        (lambda: hyperloss.uniform_loss(X, t=True), TypeError, "t must be a real number"),
        (lambda: hyperloss.uniform_loss(X, queue=X[:, :3]), ValueError, "features per row"),
        (lambda: hyperloss.uniform_loss(X, queue=X[:0]), ValueError, "at least 1 row"),
        (lambda: hyperloss.uniform_loss(X, queue=X[0]), ValueError, "2-D"),
        (lambda: hyperloss.uniform_loss(X, queue=X.double()), TypeError, "dtype"),
        (lambda: hyperloss.uniform_loss(X, queue=X.to("meta")), ValueError, "device"),
        (lambda: hyperloss.uniform_loss(X, intra_batch=False), ValueError, "no pairs"),
        (lambda: hyperloss.uniform_loss(X, intra_batch=1), TypeError, "bool"),
        (lambda: hyperloss.uniform_loss(X, backend="nope"), ValueError, "unknown backend 'nope'"),
        (lambda: hyperloss.uniform_loss(X, backend=None), TypeError, "backend must be a string"),
        (lambda: hyperloss.align_loss(X, X[:5]), ValueError, "same shape"),
        (lambda: hyperloss.align_loss(X, X.double()), TypeError, "dtype"),
        (lambda: hyperloss.align_loss(X, X.to("meta")), ValueError, "device"),
        (lambda: hyperloss.align_loss(X[0], X[0]), ValueError, "2-D"),
        (lambda: hyperloss.align_loss(X[:0], X[:0]), ValueError, "at least 1 row"),
        (lambda: hyperloss.align_loss(X.long(), X.long()), TypeError, "floating-point"),
        (lambda: hyperloss.align_loss(X, X, alpha=0), ValueError, "alpha must be finite and > 0"),
        (lambda: hyperloss.align_loss(X, X, alpha=float("nan")), ValueError, "alpha must be finite"),
        (lambda: hyperloss.UniformLoss(t=-2), ValueError, "t must be"),
        (lambda: hyperloss.AlignLoss(alpha=-2), ValueError, "alpha must be"),
    ],
)
def test_bad_input_raises_before_any_work(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_unavailable_backend_says_what_is_available():
    unavailable = [b for b in hyperloss.backends() if not b.available]
    if not unavailable:
        pytest.skip("every backend is available here")
    with pytest.raises(ValueError, match=r"not available: .*Available for cpu: .*reference"):
        hyperloss.uniform_loss(X, backend=unavailable[0].name)


def test_backends_lists_each_with_a_reason():
    rows = {b.name: b for b in hyperloss.backends()}
    assert {"cpu", "triton", "reference"} <= set(rows)
    assert rows["reference"].available
    for row in rows.values():
        assert row.available == (row.reason == ""), row
        assert row.description


def test_native_extension_is_built():
    """CI builds the extension: its absence must fail loudly, not silently skip the native tests."""
    if not native_extension_expected():
        pytest.skip("HYPERLOSS_NO_EXTENSION=1: the pure-Python install was asked for")
    cpu = next(b for b in hyperloss.backends() if b.name == "cpu")
    assert cpu.available, cpu.reason


def test_auto_picks_native_on_cpu_and_env_overrides(monkeypatch):
    from hyperloss import _dispatch

    expected = "cpu" if "cpu" in CPU_BACKENDS else "reference"
    assert _dispatch.resolve("auto", X.device) == expected
    monkeypatch.setenv("HYPERLOSS_BACKEND", "reference")
    assert _dispatch.resolve("auto", X.device) == "reference"
    assert _dispatch.resolve("cpu", X.device) == "cpu" or "cpu" not in CPU_BACKENDS  # explicit beats the env
    monkeypatch.setenv("HYPERLOSS_BACKEND", "bogus")
    with pytest.raises(ValueError, match="unknown backend 'bogus'"):
        hyperloss.uniform_loss(X)


def test_modules_match_functions(backend):
    x = features(20, 6, seed=1).requires_grad_()
    y = features(20, 6, seed=2).requires_grad_()
    align = hyperloss.AlignLoss(alpha=1.5, backend=backend)(x, y)
    assert align.item() == pytest.approx(reference.paper_align_loss(x, y, 1.5).item(), rel=1e-12)
    uniform = hyperloss.UniformLoss(t=3, backend=backend)(x)
    assert uniform.item() == pytest.approx(reference.paper_uniform_loss(x, 3).item(), rel=1e-12)
    queue = features(7, 6, seed=3)
    with_queue = hyperloss.UniformLoss(t=3, intra_batch=False, backend=backend)(x, queue)
    assert with_queue.item() == pytest.approx(reference.paper_uniform_loss_with_queue(x, queue, 3, False).item())

    recipe = hyperloss.AlignUniformLoss(align_weight=0.5, uniform_weight=2.0, alpha=2, t=2, backend=backend)
    got = recipe(x, y)
    want = (
        0.5 * reference.paper_align_loss(x, y)
        + 2.0 * (reference.paper_uniform_loss(x) + reference.paper_uniform_loss(y)) / 2
    )
    assert got.item() == pytest.approx(want.item(), rel=1e-12)
    got_grads = torch.autograd.grad(got, (x, y))
    want_grads = torch.autograd.grad(want, (x, y))
    for g, w in zip(got_grads, want_grads, strict=True):
        assert torch.allclose(g, w, rtol=1e-9, atol=1e-12)
    assert "alpha=2.0" in repr(recipe)


def test_queue_without_grad_gets_none(backend):
    x = features(10, 4, seed=4).requires_grad_()
    queue = features(6, 4, seed=5)
    loss = hyperloss.uniform_loss(x, queue=queue, backend=backend)
    loss.backward()
    assert x.grad is not None and queue.grad is None


def test_torch_compile_fullgraph_matches_eager():
    x = features(48, 12, seed=6, dtype=torch.float32).requires_grad_()
    y = features(48, 12, seed=7, dtype=torch.float32).requires_grad_()
    queue = features(20, 12, seed=8, dtype=torch.float32)

    def step(x, y, queue):
        return hyperloss.align_loss(x, y) + hyperloss.uniform_loss(x, queue=queue) + hyperloss.uniform_loss(y)

    compiled = torch.compile(step, fullgraph=True)
    got = compiled(x, y, queue)
    got_grads = torch.autograd.grad(got, (x, y))
    want = step(x, y, queue)
    want_grads = torch.autograd.grad(want, (x, y))
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    for g, w in zip(got_grads, want_grads, strict=True):
        assert torch.allclose(g, w, rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        assert compiled(x, y, queue).item() == pytest.approx(want.item(), rel=1e-6)
