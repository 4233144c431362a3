"""hyperloss.jax under jax.jit on the CPU: values and gradients equal the torch backends and the float64 reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hyperloss
from hyperloss import reference
from tests.helpers import CPU_BACKENDS, features, uniform_reference

jax = pytest.importorskip("jax", reason="jax is not installed")
jax.config.update("jax_enable_x64", True)  # float64 cases; float32 arrays stay float32
jnp = jax.numpy
try:
    import hyperloss.jax as hj
except ImportError as error:  # pragma: no cover - only where the FFI library was not built
    pytest.skip(f"hyperloss.jax unavailable: {error}", allow_module_level=True)

TOL = {np.float64: (1e-10, 1e-8), np.float32: (2e-5, 2e-4)}


def _max_rel(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-3)) if want.size else 0.0


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    ("n", "k", "d", "t", "intra_batch"),
    [
        (2, 0, 1, 2.0, True),
        (70, 0, 33, 2.0, True),
        (65, 13, 17, 0.5, True),
        (40, 21, 9, 3.0, False),
        (30, 0, 5, 50.0, True),
    ],
)
def test_uniform_matches_reference_under_jit(dtype, n, k, d, t, intra_batch):
    x = features(n, d, seed=n + d, dtype=torch.float64)
    queue = features(k, d, seed=k, dtype=torch.float64) if k else None
    want, want_grads = uniform_reference(x, t, queue, intra_batch)

    xj = jnp.asarray(x.numpy().astype(dtype))
    qj = None if queue is None else jnp.asarray(queue.numpy().astype(dtype))
    if qj is None:
        value, gx = jax.jit(jax.value_and_grad(lambda a: hj.uniform_loss(a, t)))(xj)
        got_grads = [gx]
    else:
        fn = jax.jit(jax.value_and_grad(lambda a, b: hj.uniform_loss(a, t, queue=b, intra_batch=intra_batch), (0, 1)))
        value, got_grads = fn(xj, qj)
    value_tol, grad_tol = TOL[dtype]
    assert value.dtype == dtype
    assert abs(float(value) - want.item()) <= value_tol * (1 + abs(want.item())) + 64 * np.finfo(dtype).eps * t
    for got, w in zip(got_grads, want_grads, strict=True):
        assert got.dtype == dtype
        assert _max_rel(got, w.numpy()) <= grad_tol

    # The same number as the torch backends.
    for backend in CPU_BACKENDS:
        xt = torch.from_numpy(np.array(xj))
        qt = None if qj is None else torch.from_numpy(np.array(qj))
        torch_value = hyperloss.uniform_loss(xt, t, queue=qt, intra_batch=intra_batch, backend=backend)
        assert abs(float(value) - torch_value.item()) <= value_tol * (1 + abs(torch_value.item()))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("alpha", [0.7, 2.0, 3.0])
def test_align_matches_reference_under_jit(dtype, alpha):
    x = features(50, 11, seed=1, dtype=torch.float64)
    y = features(50, 11, seed=2, dtype=torch.float64)
    x64, y64 = x.clone().requires_grad_(), y.clone().requires_grad_()
    want = reference.paper_align_loss(x64, y64, alpha)
    want_gx, want_gy = torch.autograd.grad(want, (x64, y64))
    fn = jax.jit(jax.value_and_grad(lambda a, b: hj.align_loss(a, b, alpha), (0, 1)))
    value, (gx, gy) = fn(jnp.asarray(x.numpy().astype(dtype)), jnp.asarray(y.numpy().astype(dtype)))
    value_tol, grad_tol = TOL[dtype]
    assert abs(float(value) - want.item()) <= value_tol * (1 + want.item())
    assert _max_rel(gx, want_gx.numpy()) <= grad_tol and _max_rel(gy, want_gy.numpy()) <= grad_tol


def test_half_precision_computes_in_float32():
    x = features(20, 6, seed=3, dtype=torch.float64)
    xj = jnp.asarray(x.numpy()).astype(jnp.bfloat16)
    value, grad = jax.value_and_grad(lambda a: hj.uniform_loss(a))(xj)
    assert value.dtype == jnp.float32 and grad.dtype == jnp.bfloat16
    want = reference.dense_uniform_loss(torch.from_numpy(np.array(xj.astype(jnp.float64))))
    assert abs(float(value) - want.item()) <= 1e-5 * (1 + abs(want.item()))


def test_bad_input():
    x = jnp.ones((4, 3), jnp.float32)
    with pytest.raises(ValueError, match="2-D"):
        hj.uniform_loss(x[0])
    with pytest.raises(ValueError, match="at least 2 row"):
        hj.uniform_loss(x[:1])
    with pytest.raises(TypeError, match="floating-point"):
        hj.uniform_loss(x.astype(jnp.int32))
    with pytest.raises(ValueError, match="t must be finite and > 0"):
        hj.uniform_loss(x, -1.0)
    with pytest.raises(ValueError, match="features per row"):
        hj.uniform_loss(x, queue=jnp.ones((2, 2), jnp.float32))
    with pytest.raises(ValueError, match="precision must be one of"):
        hj.uniform_loss(x, precision="tf32")
    with pytest.raises(ValueError, match="same shape"):
        hj.align_loss(x, x[:2])
    with pytest.raises(ValueError, match="alpha must be finite and > 0"):
        hj.align_loss(x, x, 0.0)
