"""hyperloss.jax under jax.jit: values and gradients equal the torch backends and the float64 reference.

Every test runs on the CPU; the unweighted ones (parameter ``device``) also on the GPU where JAX has one, through the
FFI's CUDA handlers into the library's CUDA kernels (per-row weights are CPU-only)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import hyperloss
from hyperloss import reference
from tests.helpers import CPU_BACKENDS, TOLERANCES, features, uniform_reference

# Before jax starts a GPU client: it would take 75% of the GPU's memory for the rest of the session.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
jax = pytest.importorskip("jax", reason="jax is not installed")
jax.config.update("jax_enable_x64", True)  # float64 cases; float32 arrays stay float32
jnp = jax.numpy
try:
    import hyperloss.jax as hj
except ImportError as error:  # pragma: no cover - only where the FFI library was not built
    pytest.skip(f"hyperloss.jax unavailable: {error}", allow_module_level=True)

# (value, gradient) tolerances of the tests' one model (tests/helpers.py), keyed by the NumPy dtype.
TOL = {np.float64: TOLERANCES["float64"][:2], np.float32: TOLERANCES["float32"][:2]}


def _platforms() -> list[str]:
    """The platforms to test: "cpu", and "gpu" where jax has one; with HYPERLOSS_JAX_GPU=1 (bench/gpu_check.sh)
    "gpu" always, so that a jax whose CUDA plugin fails to start fails the GPU cases instead of dropping them."""
    if os.environ.get("HYPERLOSS_JAX_GPU") == "1":
        return ["cpu", "gpu"]
    try:
        return ["cpu", "gpu"] if jax.devices("gpu") else ["cpu"]
    except RuntimeError:  # no GPU backend in this jax
        return ["cpu"]


@pytest.fixture(autouse=True)
def _on_cpu():
    """The CPU by default: a jax with CUDA would put every array on the GPU."""
    with jax.default_device(jax.devices("cpu")[0]):
        yield


@pytest.fixture(params=_platforms())
def device(request):
    """The platform a test's arrays are created on ("gpu" only where JAX has one). On a GPU the FFI's CUDA handlers
    must run (not the host callback, which takes CPU arrays only), with exact float32 products so that TOL holds
    (float32 follows jax_default_matmul_precision, tf32 unless set; tf32 is tested through the C API)."""
    if request.param == "cpu":
        yield "cpu"
        return
    assert hj.KERNEL_PATH == "ffi", "no FFI library: the GPU cannot be reached"
    with jax.default_device(jax.devices("gpu")[0]), jax.default_matmul_precision("highest"):
        yield "gpu"


def _on(value, device: str) -> None:
    assert {d.platform for d in value.devices()} == {device}


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
def test_uniform_matches_reference_under_jit(dtype, n, k, d, t, intra_batch, device):
    x = features(n, d, seed=n + d, dtype=torch.float64, device="cpu")
    queue = features(k, d, seed=k, dtype=torch.float64, device="cpu") if k else None
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
    _on(value, device)
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
def test_align_matches_reference_under_jit(dtype, alpha, device):
    x = features(50, 11, seed=1, dtype=torch.float64, device="cpu")
    y = features(50, 11, seed=2, dtype=torch.float64, device="cpu")
    x64, y64 = x.clone().requires_grad_(), y.clone().requires_grad_()
    want = reference.paper_align_loss(x64, y64, alpha)
    want_gx, want_gy = torch.autograd.grad(want, (x64, y64))
    fn = jax.jit(jax.value_and_grad(lambda a, b: hj.align_loss(a, b, alpha), (0, 1)))
    value, (gx, gy) = fn(jnp.asarray(x.numpy().astype(dtype)), jnp.asarray(y.numpy().astype(dtype)))
    _on(gx, device)
    value_tol, grad_tol = TOL[dtype]
    assert abs(float(value) - want.item()) <= value_tol * (1 + want.item())
    assert _max_rel(gx, want_gx.numpy()) <= grad_tol and _max_rel(gy, want_gy.numpy()) <= grad_tol


def test_half_precision_computes_in_float32(device):
    x = features(20, 6, seed=3, dtype=torch.float64, device="cpu")
    xj = jnp.asarray(x.numpy()).astype(jnp.bfloat16)
    value, grad = jax.value_and_grad(lambda a: hj.uniform_loss(a))(xj)
    _on(grad, device)
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
    with pytest.raises(ValueError, match="precision must be None or one of"):
        hj.uniform_loss(x, precision="fp8")
    with pytest.raises(ValueError, match="same shape"):
        hj.align_loss(x, x[:2])
    with pytest.raises(ValueError, match="alpha must be finite and > 0"):
        hj.align_loss(x, x, 0.0)


def _unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _direct_loss(x: np.ndarray, t: float, queue: np.ndarray | None = None, intra_batch: bool = True) -> float:
    """log mean_P exp(-t ||u - v||^2) in float64 by direct differences, as log1p(mean(expm1(.))): every digit of a
    loss near 0."""
    x = np.asarray(x, np.float64)
    terms = []
    if intra_batch:
        i, j = np.triu_indices(x.shape[0], 1)
        terms.append(np.expm1(-t * ((x[i] - x[j]) ** 2).sum(1)))
    if queue is not None:
        q = np.asarray(queue, np.float64)
        terms.append(np.expm1(-t * ((x[:, None, :] - q[None, :, :]) ** 2).sum(-1)).ravel())
    return float(np.log1p(np.concatenate(terms).mean()))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_near_zero_loss_keeps_its_digits(dtype, device):
    # N = 1000 unit rows, t = 1e-6: the loss is about -2e-6, far below float32's resolution of log|P| = 13.1.
    x = _unit_rows(1000, 16, seed=0).astype(dtype)
    want = _direct_loss(x, 1e-6)  # of the values the dtype holds
    assert -2.1e-6 < want < -1.9e-6
    xj = jnp.asarray(x)
    plain = hj.uniform_loss(xj, 1e-6)
    value, grad = jax.jit(jax.value_and_grad(lambda a: hj.uniform_loss(a, 1e-6)))(xj)
    _on(grad, device)
    for got in (plain, value):
        assert got.dtype == dtype
        assert float(got) <= 0
        assert abs(float(got) - want) <= 1e-4 * abs(want)
    # d loss / d x_i = -2t / |P| sum_j (x_i - x_j) e_ij / mean(e) ~ -2t (x_i - mean(x)) (1 + O(t)) / (N/2)
    approx = -2e-6 * (x.astype(np.float64) - x.astype(np.float64).mean(0)) * 2 / 999
    assert _max_rel(grad, approx) <= 1e-3


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("intra_batch", [True, False])
def test_near_zero_loss_with_queue(dtype, intra_batch, device):
    x = _unit_rows(300, 8, seed=1).astype(dtype)
    q = _unit_rows(200, 8, seed=2).astype(dtype)
    want = _direct_loss(x, 1e-6, q, intra_batch)
    got = jax.jit(lambda a, b: hj.uniform_loss(a, 1e-6, queue=b, intra_batch=intra_batch))(x, q)
    assert float(got) <= 0
    assert abs(float(got) - want) <= 1e-4 * abs(want)


def test_equal_rows_give_zero_never_positive(device):
    for dtype in (np.float32, np.float64):
        x = jnp.full((7, 3), 0.3, dtype)
        assert float(hj.uniform_loss(x, 2.0)) == 0.0
        assert float(hj.uniform_loss(x[:3], 1e-9, queue=x[3:])) == 0.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_common_offset(dtype, device):
    # Rows far from the origin: the kernels center them, so the Gram form cancels only on their spread.
    value, grad = jax.jit(jax.value_and_grad(lambda a: hj.uniform_loss(a, 2.0)))(
        jnp.asarray(np.array([[1e4, 0], [1e4, 1]], dtype))
    )
    assert float(value) == pytest.approx(-2.0, rel=1e-6)  # one pair at squared distance 1
    np.testing.assert_allclose(np.asarray(grad, np.float64), [[0, 4], [0, -4]], rtol=1e-6, atol=1e-6)

    x = jnp.asarray(np.array([[12345, 0], [12345, 3]], dtype))
    value, grad = jax.jit(jax.value_and_grad(lambda a: hj.uniform_loss(a, 50.0)))(x)
    assert float(value) == pytest.approx(-450.0, rel=1e-6)
    np.testing.assert_allclose(np.asarray(grad, np.float64), [[0, 300], [0, -300]], rtol=1e-6, atol=1e-6)
    # The same pair as x against a one-row queue.
    value, (gx, gq) = jax.value_and_grad(lambda a, b: hj.uniform_loss(a, 50.0, queue=b, intra_batch=False), (0, 1))(
        x[:1], x[1:]
    )
    assert float(value) == pytest.approx(-450.0, rel=1e-6)
    np.testing.assert_allclose(np.asarray(gx, np.float64), [[0, 300]], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(gq, np.float64), [[0, -300]], rtol=1e-6, atol=1e-6)


def test_offset_random_rows_match_the_direct_reference(device):
    # 64 random unit rows moved by 1000 in every coordinate: the float32 loss of the held values to ~float32 digits.
    base = _unit_rows(64, 12, seed=3)
    for dtype in (np.float32, np.float64):
        x = (base + 1000.0).astype(dtype)
        want = _direct_loss(x, 2.0)
        got = float(hj.uniform_loss(jnp.asarray(x), 2.0))
        assert abs(got - want) <= (2e-5 if dtype == np.float32 else 1e-10) * (1 + abs(want))


def test_rejects_other_array_types_and_dtypes():
    x = jnp.ones((4, 3), jnp.float32)
    with pytest.raises(
        TypeError, match=r"x must be a JAX array \(or NumPy array\); got torch\.Tensor .*hyperloss\.uniform_loss"
    ):
        hj.uniform_loss(torch.ones(4, 3))
    with pytest.raises(TypeError, match=r"queue must be a JAX array.*torch\.Tensor"):
        hj.uniform_loss(x, queue=torch.ones(2, 3))
    with pytest.raises(TypeError, match=r"got torch\.Tensor .*hyperloss\.align_loss"):
        hj.align_loss(torch.ones(4, 3), torch.ones(4, 3))
    with pytest.raises(TypeError, match="must be a JAX array"):
        hj.uniform_loss([[0.0, 1.0], [1.0, 0.0]])
    for dtype in (jnp.float8_e4m3fn, jnp.float8_e5m2, jnp.int32, jnp.int8, jnp.bool_, jnp.complex64):
        with pytest.raises(TypeError, match=rf"float16, bfloat16, float32, float64\), got {np.dtype(dtype)}"):
            hj.uniform_loss(x.astype(dtype))
        with pytest.raises(TypeError, match="floating-point"):
            hj.align_loss(x.astype(dtype), x.astype(dtype))
    # NumPy arrays of a supported dtype work, under jit too.
    xn = np.asarray(_unit_rows(5, 3, seed=4), np.float32)
    assert float(hj.uniform_loss(xn)) == pytest.approx(float(jax.jit(hj.uniform_loss)(jnp.asarray(xn))), rel=1e-6)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_callback_path_matches_the_reference(monkeypatch, dtype):
    """Without the FFI library (a plain `pip install ".[jax]"` builds none) the C kernels are reached through
    jax.pure_callback: the same values and gradients, under jit, with a queue, and for alignment."""
    monkeypatch.setattr(hj, "KERNEL_PATH", "callback")
    x = features(40, 7, seed=11, dtype=torch.float64, device="cpu")
    queue = features(9, 7, seed=12, dtype=torch.float64, device="cpu")
    want, want_grads = uniform_reference(x, 2.0, queue)
    fn = jax.jit(jax.value_and_grad(lambda a, b: hj.uniform_loss(a, 2.0, queue=b), (0, 1)))
    value, grads = fn(jnp.asarray(x.numpy().astype(dtype)), jnp.asarray(queue.numpy().astype(dtype)))
    value_tol, grad_tol = TOL[dtype]
    assert value.dtype == dtype
    assert abs(float(value) - want.item()) <= value_tol * (1 + abs(want.item()))
    for got, w in zip(grads, want_grads, strict=True):
        assert _max_rel(got, w.numpy()) <= grad_tol
    near_zero = float(jax.jit(lambda a: hj.uniform_loss(a, 1e-6))(jnp.asarray(_unit_rows(300, 8, 1).astype(dtype))))
    assert near_zero <= 0 and abs(near_zero - _direct_loss(_unit_rows(300, 8, 1).astype(dtype), 1e-6)) <= 1e-4 * abs(
        near_zero
    )
    y = features(40, 7, seed=13, dtype=torch.float64, device="cpu")
    align, (gx, _) = jax.jit(jax.value_and_grad(lambda a, b: hj.align_loss(a, b, 1.5), (0, 1)))(
        jnp.asarray(x.numpy().astype(dtype)), jnp.asarray(y.numpy().astype(dtype))
    )
    x64 = x.clone().requires_grad_()
    want_align = reference.paper_align_loss(x64, y, 1.5)
    (want_gx,) = torch.autograd.grad(want_align, x64)
    assert abs(float(align) - want_align.item()) <= value_tol * (1 + want_align.item())
    assert _max_rel(gx, want_gx.numpy()) <= grad_tol


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_traced_temperature_is_differentiable(dtype, device):
    """t as an array: jax.grad with respect to it (and the rows) under jit, against float64 autograd."""
    x = features(35, 6, seed=21, device="cpu")
    queue = features(8, 6, seed=22, device="cpu")
    loss = jax.jit(lambda x, q, t: hj.uniform_loss(x, t, queue=q))
    args = (jnp.asarray(x.numpy(), dtype), jnp.asarray(queue.numpy(), dtype), jnp.asarray(1.7, dtype))
    value, grads = jax.value_and_grad(loss, argnums=(0, 1, 2))(*args)
    x64, q64 = x.clone().requires_grad_(), queue.clone().requires_grad_()
    t64 = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    want = reference.dense_uniform_loss(x64, t64, queue=q64)
    want_grads = torch.autograd.grad(want, (x64, q64, t64))
    value_tol, grad_tol = TOL[dtype]
    assert abs(float(value) - want.item()) <= value_tol * (1 + abs(want.item()))
    for got, w in zip(grads, want_grads, strict=True):
        assert _max_rel(got, w.numpy()) <= grad_tol
    with pytest.raises(TypeError, match="one-element floating array"):
        hj.uniform_loss(args[0], jnp.ones(2))


def _weighted_case(n: int, k: int, d: int, pattern: str, seed: int):
    """Rows, queue and weights (float64 NumPy): weights over a few orders of magnitude, with zeros in "zeros",
    one pair of positive weight (x_0 and x_1) in "one pair"."""
    rng = np.random.default_rng(seed)
    x, queue = _unit_rows(n, d, seed), (_unit_rows(k, d, seed + 1) if k else None)
    w = np.exp(-4 * rng.random(n))
    qw = None if not k else rng.random(k) + 0.1
    if pattern == "zeros":
        w[rng.random(n) < 0.4] = 0.0
    elif pattern == "one pair":
        w[2:] = 0.0
        qw = None if not k else np.zeros(k)
    return x, queue, w, qw


def _weighted_reference(x, t, queue, intra_batch, w, qw):
    """The float64 dense weighted loss and its gradients for x, the queue, the weights and the queue weights."""
    leaves = [
        None if a is None else torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (x, queue, w, qw)
    ]
    value = reference.dense_uniform_loss(
        leaves[0], t, queue=leaves[1], intra_batch=intra_batch, weights=leaves[2], queue_weights=leaves[3]
    )
    given = [v for v in leaves if v is not None]
    return value.item(), [g.numpy() for g in torch.autograd.grad(value, given)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    ("n", "k", "d", "t", "intra_batch", "pattern"),
    [
        (40, 0, 7, 2.0, True, "wide"),
        (33, 9, 5, 0.5, True, "zeros"),
        (25, 12, 6, 3.0, False, "zeros"),
        (20, 6, 4, 2.0, True, "one pair"),
        (30, 0, 5, 50.0, True, "zeros"),
    ],
)
def test_weighted_matches_dense_reference_under_jit(dtype, n, k, d, t, intra_batch, pattern):
    """Per-row weights under jit: value and gradients for x, the queue, the weights and the queue weights against
    float64 autograd through the dense weighted definition, and the same value as the torch loss."""
    x, queue, w, qw = _weighted_case(n, k, d, pattern, seed=n + k)
    want, want_grads = _weighted_reference(x, t, queue, intra_batch, w, qw)
    args = [jnp.asarray(a, dtype) for a in (x, queue, w, qw) if a is not None]

    def loss(*a):
        if queue is None:
            return hj.uniform_loss(a[0], t, weights=a[1])
        return hj.uniform_loss(a[0], t, queue=a[1], intra_batch=intra_batch, weights=a[2], queue_weights=a[3])

    value, grads = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(len(args)))))(*args)
    value_tol, grad_tol = TOL[dtype]
    assert value.dtype == dtype
    assert abs(float(value) - want) <= value_tol * (1 + abs(want)) + 64 * np.finfo(dtype).eps * t
    for got, w_grad in zip(grads, want_grads, strict=True):
        assert got.dtype == dtype
        assert _max_rel(got, w_grad) <= grad_tol
    assert float(jax.jit(loss)(*args)) == pytest.approx(float(value), rel=1e-12, abs=1e-12)  # without gradients
    tensors = [torch.from_numpy(np.array(a)) for a in args]
    torch_value = hyperloss.uniform_loss(
        tensors[0],
        t,
        queue=None if queue is None else tensors[1],
        intra_batch=intra_batch,
        weights=tensors[1 if queue is None else 2],
        queue_weights=None if queue is None else tensors[3],
        backend="cpu",
    )
    assert abs(float(value) - torch_value.item()) <= value_tol * (1 + abs(torch_value.item()))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_weighted_partial_gradients_and_traced_temperature(dtype):
    """Gradients for some of the arguments only (the others are not computed), and a traced t, against float64
    autograd; weights of a 16-bit dtype are computed in float32 and get their gradient in their dtype."""
    x, queue, w, qw = _weighted_case(30, 8, 5, "zeros", seed=5)
    xj, qj, wj, qwj = (jnp.asarray(a, dtype) for a in (x, queue, w, qw))
    _, (want_x, want_q, want_w, want_qw) = _weighted_reference(x, 1.7, queue, True, w, qw)
    value_tol, grad_tol = TOL[dtype]

    def loss(a, b, c, e, t=1.7):
        return hj.uniform_loss(a, t, queue=b, weights=c, queue_weights=e)

    only_w = jax.jit(jax.grad(loss, argnums=2))(xj, qj, wj, qwj)
    assert _max_rel(only_w, want_w) <= grad_tol
    some = jax.jit(jax.grad(loss, argnums=(0, 1, 3)))(xj, qj, wj, qwj)
    for got, want in zip(some, (want_x, want_q, want_qw), strict=True):
        assert _max_rel(got, want) <= grad_tol

    x64, q64, w64, qw64 = (torch.tensor(a, requires_grad=True) for a in (x, queue, w, qw))
    t64 = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    want_t = reference.dense_uniform_loss(x64, t64, queue=q64, weights=w64, queue_weights=qw64)
    want_grads = torch.autograd.grad(want_t, (x64, w64, t64))
    value, grads = jax.jit(jax.value_and_grad(lambda a, c, t: loss(a, qj, c, qwj, t), argnums=(0, 1, 2)))(
        xj, wj, jnp.asarray(1.7, dtype)
    )
    assert abs(float(value) - want_t.item()) <= value_tol * (1 + abs(want_t.item()))
    for got, want in zip(grads, want_grads, strict=True):
        assert _max_rel(got, want.numpy()) <= grad_tol

    half = jax.grad(lambda c: hj.uniform_loss(xj, 2.0, weights=c))(jnp.asarray(w, jnp.bfloat16))
    assert half.dtype == jnp.bfloat16


def test_weighted_bad_input_and_gpu(monkeypatch):
    x = jnp.asarray(_unit_rows(4, 3, seed=6), jnp.float32)
    q = jnp.asarray(_unit_rows(2, 3, seed=7), jnp.float32)
    with pytest.raises(ValueError, match=r"weights must have shape \(4,\)"):
        hj.uniform_loss(x, weights=jnp.ones(3))
    with pytest.raises(TypeError, match="weights must be a JAX array"):
        hj.uniform_loss(x, weights=torch.ones(4))
    with pytest.raises(ValueError, match="queue_weights needs a queue"):
        hj.uniform_loss(x, queue_weights=jnp.ones(2))
    with pytest.raises(ValueError, match=r"weights must be >= 0"):
        hj.uniform_loss(x, weights=jnp.asarray([1.0, -1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"queue_weights must be finite"):
        hj.uniform_loss(x, queue=q, queue_weights=jnp.asarray([1.0, np.nan]))
    with pytest.raises(ValueError, match="the pair weights sum to 0"):
        hj.uniform_loss(x, weights=jnp.asarray([0.0, 0.0, 1.0, 0.0]))
    # Traced weights are not read: all-zero ones give NaN rather than an error.
    assert np.isnan(float(jax.jit(lambda c: hj.uniform_loss(x, weights=c))(jnp.zeros(4))))
    monkeypatch.setattr(hj, "_platform", lambda a: "gpu")
    with pytest.raises(NotImplementedError, match="per-row weights run on the CPU only"):
        hj.uniform_loss(x, weights=jnp.ones(4))
    assert np.isfinite(float(hj.uniform_loss(x)))  # without weights nothing changes


def test_traced_weights_are_not_refused(monkeypatch):
    """Under jit the arrays have no device yet: the weighted loss is not refused for the default backend (the GPU on
    a machine with one); its host callback runs wherever jit places the computation."""
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    x = jnp.asarray(_unit_rows(6, 3, seed=8), jnp.float32)
    value = jax.jit(lambda a, c: hj.uniform_loss(a, weights=c))(x, jnp.ones(6, jnp.float32))
    assert np.isfinite(float(value))
