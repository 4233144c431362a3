"""uniform_loss with per-row weights: log( sum_pairs w_u w_v exp(-t d_uv) / sum_pairs w_u w_v ), on every backend
that supports weights, against float64 autograd through the dense weighted definition
(``hyperloss.reference.dense_uniform_loss(weights=..., queue_weights=...)``)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hyperloss
from hyperloss import _common, backends, reference
from tests.helpers import (
    BACKENDS,
    DEVICE,
    INTERPRET,
    assert_close_scaled,
    examples,
    features,
    max_centered_sq_norm,
    operand_kind,
    uniform_tolerances,
)
from tests.test_backends import CountingBackend

WEIGHT_BACKENDS = [name for name in BACKENDS if backends.supports_weights(name)]


def row_weights(rows: int, pattern: str, seed: int, dtype=torch.float64) -> torch.Tensor:
    """Weights of one of the patterns the properties cover, drawn from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(rows, generator=g, dtype=torch.float64) + 0.05
    if pattern == "zeros":  # about half of them 0
        w = torch.where(torch.rand(rows, generator=g, dtype=torch.float64) < 0.5, 0.0, w)
    elif pattern == "wide":  # over many orders of magnitude
        w = torch.exp(-30 * torch.rand(rows, generator=g, dtype=torch.float64))
    elif pattern == "huge":  # a common scale far from 1: the loss does not depend on it
        w = w * 1e250
    return w.to(device=DEVICE, dtype=dtype)


def dense_reference(x, t, queue, intra_batch, weights, queue_weights, wanted):
    """The float64 loss and its gradients for the inputs in ``wanted`` (names among x, queue, t, weights,
    queue_weights), by autograd through the dense weighted definition."""
    given_inputs = {"x": x, "queue": queue, "weights": weights, "queue_weights": queue_weights}
    leaves = {k: v.detach().cpu().double().requires_grad_() for k, v in given_inputs.items() if v is not None}
    leaves["t"] = torch.tensor(float(t), dtype=torch.float64, requires_grad=True)
    value = reference.dense_uniform_loss(
        leaves["x"],
        leaves["t"],
        queue=leaves.get("queue"),
        intra_batch=intra_batch,
        weights=leaves.get("weights"),
        queue_weights=leaves.get("queue_weights"),
    )
    return value.detach(), (torch.autograd.grad(value, [leaves[k] for k in wanted]) if wanted else ())


def weight_gradient_scale(x, queue, intra_batch, weights, queue_weights) -> float:
    """max over the rows of (sum of the row's partners' weights) / (sum of the pair weights): the size of one of
    the two terms whose difference is a weight's gradient (the difference may be 0: one pair of positive weight)."""
    k = 0 if queue is None else queue.shape[0]
    _, d_w, d_qw = _common.pair_weight_log_sum(weights, queue_weights, x.shape[0], k, intra_batch, x.device)
    return max(float(g.abs().max()) for g in (d_w, d_qw) if g is not None)


def check_weighted(
    backend, x, t, queue=None, intra_batch=True, weights=None, queue_weights=None, wanted=("x",), t_tensor=False
):
    """The public loss on ``backend`` with the inputs in ``wanted`` requiring grad (t is a tensor when named, or
    with ``t_tensor``: then without grad where not named):
    value, dtypes and gradients against the float64 dense definition, in the tolerance model of
    tests/helpers.py (the weights' gradients on the scale of their largest entry)."""
    inputs = {"x": x, "queue": queue, "weights": weights, "queue_weights": queue_weights}
    inputs = {k: None if v is None else v.detach().requires_grad_(k in wanted) for k, v in inputs.items()}
    t_arg = t
    if "t" in wanted or t_tensor:
        t_arg = torch.tensor(t, dtype=torch.float64, device=DEVICE, requires_grad="t" in wanted)
    got = hyperloss.uniform_loss(
        inputs["x"],
        t_arg,
        queue=inputs["queue"],
        intra_batch=intra_batch,
        weights=inputs["weights"],
        queue_weights=inputs["queue_weights"],
        backend=backend,
    )
    leaves = [t_arg if k == "t" else inputs[k] for k in wanted]
    got_grads = torch.autograd.grad(got, leaves) if wanted else ()
    want, want_grads = dense_reference(x, t, queue, intra_batch, weights, queue_weights, wanted)
    assert got.dtype == (torch.float64 if x.dtype == torch.float64 else torch.float32) and got.shape == ()
    kind = operand_kind(backend, x.dtype)
    value_tol, grad_tol, floor = uniform_tolerances(kind, x.dtype, t, x, queue, intra_batch, float(want))
    err = abs(float(got.detach()) - float(want))
    assert err <= value_tol, (
        f"value {float(got.detach())} vs {float(want)} ({backend}, {kind}): {err:.3g} > {value_tol:.3g}"
    )
    for name, leaf, g, w in zip(wanted, leaves, got_grads, want_grads, strict=True):
        assert g.dtype == leaf.dtype and g.shape == leaf.shape and g.device == leaf.device, name
        if name in ("x", "queue"):
            scale = floor
        elif name == "t":  # -(the weighted mean squared distance): on the scale of the largest one
            scale = 4 * max_centered_sq_norm(x, *([] if queue is None else [queue]))
        else:  # d loss/dw_u = r_u / S - (sum of u's partners' weights) / W: on the scale of the second term
            scale = weight_gradient_scale(x, queue, intra_batch, weights, queue_weights)
        assert torch.isfinite(g).all() == torch.isfinite(w).all(), name
        assert_close_scaled(g, w, grad_tol, f"d loss / d {name} ({backend}, {kind})", floor=scale)
    return got


@pytest.mark.parametrize("backend", WEIGHT_BACKENDS)
@settings(max_examples=examples(60), deadline=None, derandomize=True)
@given(
    n=st.integers(2, 150),
    k=st.integers(0, 70),
    d=st.integers(1, 40),
    t=st.sampled_from([0.3, 2.0, 50.0]),  # 50: every exp underflows in float32
    dtype=st.sampled_from([torch.float32, torch.float64]),
    pattern=st.sampled_from(["random", "zeros", "wide", "huge"]),
    queue_pattern=st.sampled_from(["none", "random", "zeros"]),
    wanted=st.sampled_from(
        [
            ("x", "weights"),
            ("x", "queue", "t", "weights", "queue_weights"),
            ("t",),
            ("weights",),
            ("queue_weights",),
            ("x", "t"),
            (),
        ]
    ),
    intra_batch=st.booleans(),
    offset=st.sampled_from([0.0, 300.0]),
    t_tensor=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_matches_dense_weighted_definition(
    backend, n, k, d, t, dtype, pattern, queue_pattern, wanted, intra_batch, offset, t_tensor, seed
):
    """Value and gradients for x, the queue, t and both weights, with zero weights, weights over 13 orders of
    magnitude or scaled by 1e250, underflow (t = 50), rows around a far common vector (offset), and t a number or a
    tensor with or without grad."""
    x = features(n, d, seed=seed) + offset
    queue = features(k, d, seed=seed + 1) + offset if k else None
    intra_batch = intra_batch or queue is None
    weights = row_weights(n, pattern, seed + 2)
    queue_weights = None if queue is None or queue_pattern == "none" else row_weights(k, queue_pattern, seed + 3)
    if pattern == "huge" and queue_weights is not None:
        queue_weights = queue_weights * 1e250
    positive = int((weights > 0).sum())
    q_positive = queue is not None and (queue_weights is None or bool((queue_weights > 0).any()))
    if not ((intra_batch and positive >= 2) or (positive >= 1 and q_positive)):
        weights[:2] = 1.0  # some pair of positive weight
        if queue_weights is not None:
            queue_weights[0] = 1.0
    wanted = tuple(v for v in wanted if not (v in ("queue", "queue_weights") and queue is None))
    wanted = tuple(v for v in wanted if v != "queue_weights" or queue_weights is not None)
    x, queue = x.to(dtype), None if queue is None else queue.to(dtype)
    check_weighted(backend, x, t, queue, intra_batch, weights, queue_weights, wanted, t_tensor)


@pytest.mark.parametrize("backend", WEIGHT_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("t", [2.0, 50.0])
def test_exactly_one_pair_of_positive_weight(backend, dtype, t):
    """Two positive weights: the loss is that pair's score; the rows of weight 0 (nearer each other than that pair,
    so that at t = 50 every score of a positive-weight pair is far below the closest pair's) still get their
    weights' gradients, and a zero x gradient."""
    x = features(40, 6, seed=7)
    x[5] = x[9] + 0.01  # a close pair of weight 0
    weights = torch.zeros(40, dtype=torch.float64, device=DEVICE)
    weights[[3, 17]] = torch.tensor([0.25, 3.0], dtype=torch.float64)
    got = check_weighted(backend, x.to(dtype), t, weights=weights, wanted=("x", "t", "weights"))
    d = float((x[3] - x[17]).pow(2).sum())
    assert float(got.detach()) == pytest.approx(-t * d, rel=1e-5 if dtype == torch.float32 else 1e-12)
    x_req = x.to(dtype).requires_grad_()
    grad = torch.autograd.grad(hyperloss.uniform_loss(x_req, t, weights=weights, backend=backend), x_req)[0]
    assert (grad[[i for i in range(40) if i not in (3, 17)]] == 0).all()
    # With a queue: one positive weight in x and one in the queue, intra pairs off.
    queue = features(9, 6, seed=8)
    q_weights = torch.zeros(9, dtype=torch.float64, device=DEVICE)
    q_weights[4] = 1.0
    check_weighted(
        backend,
        x.to(dtype),
        t,
        queue.to(dtype),
        False,
        weights,
        q_weights,
        wanted=("x", "queue", "weights", "queue_weights"),
    )


@pytest.mark.parametrize("backend", WEIGHT_BACKENDS)
def test_weights_of_one_equal_the_unweighted_loss_and_scale_drops_out(backend):
    x = features(70, 9, seed=11)
    queue = features(20, 9, seed=12)
    plain = hyperloss.uniform_loss(x, 2.0, queue=queue, backend=backend)
    ones = torch.ones(70, dtype=torch.float64, device=DEVICE)
    weighted = hyperloss.uniform_loss(x, 2.0, queue=queue, weights=ones, backend=backend)
    assert float(weighted) == pytest.approx(float(plain), rel=1e-12)
    w = row_weights(70, "random", 3)
    qw = torch.ones(20, dtype=torch.float64, device=DEVICE)
    base = hyperloss.uniform_loss(x, 2.0, queue=queue, weights=w, backend=backend)
    for factor in (1e-200, 3.0, 1e250):  # every weight, the queue's too
        scaled = hyperloss.uniform_loss(
            x, 2.0, queue=queue, weights=w * factor, queue_weights=qw * factor, backend=backend
        )
        assert float(scaled) == pytest.approx(float(base), rel=1e-12)
    # Weights of the queue only: x's rows weigh 1.
    qw = row_weights(20, "zeros", 4)
    qw[0] = 1.0
    check_weighted(backend, x, 2.0, queue, True, None, qw, wanted=("x", "queue", "queue_weights"))


@pytest.mark.parametrize("backend", WEIGHT_BACKENDS)
@pytest.mark.parametrize("t", [1e-8, 1e-10])
def test_float32_weighted_losses_near_zero(backend, t):
    """Weighted float32 losses of ~-1e-7 .. -1e-9 (far below float32's resolution of log W): their digits, and the
    gradients of the rows and the weights, against float64 (the cpu kernel computes such calls again in double)."""
    x = features(40, 6, seed=13, dtype=torch.float32, normalize=False)
    queue = features(7, 6, seed=14, dtype=torch.float32, normalize=False)
    w, qw = row_weights(40, "random", 5), row_weights(7, "random", 6)
    leaves = [v.detach().cpu().double().requires_grad_() for v in (x, w)]
    want = reference.dense_uniform_loss(leaves[0], t, queue=queue.double().cpu(), weights=leaves[1],
                                        queue_weights=qw.double().cpu())  # fmt: skip
    want_grads = torch.autograd.grad(want, leaves)
    got_leaves = [v.detach().clone().requires_grad_() for v in (x, w)]
    got = hyperloss.uniform_loss(got_leaves[0], t, queue=queue, weights=got_leaves[1], queue_weights=qw,
                                 backend=backend)  # fmt: skip
    assert abs(got.item() - want.item()) <= 1e-5 * abs(want.item()) + 1e-15, (got.item(), want.item())
    for g, w_grad in zip(torch.autograd.grad(got, got_leaves), want_grads, strict=True):
        assert float((g.cpu().double() - w_grad).abs().max() / w_grad.abs().max()) <= 1e-4


@pytest.mark.parametrize("backend", WEIGHT_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_weight_dtypes_and_forward_only(backend, dtype):
    """Weights of any float dtype; their gradient comes back in it; a call without a graph gives the same value."""
    x = features(30, 5, seed=5, dtype=torch.float32)
    w = row_weights(30, "random", 6, dtype=dtype).requires_grad_()
    loss = hyperloss.uniform_loss(x, 2.0, weights=w, backend=backend)
    (grad,) = torch.autograd.grad(loss, w)
    assert grad.dtype == dtype and grad.shape == w.shape
    with torch.no_grad():
        assert hyperloss.uniform_loss(x, 2.0, weights=w, backend=backend).item() == loss.item()
    want = reference.dense_uniform_loss(x.double().cpu(), 2.0, weights=w.detach().double().cpu())
    assert loss.item() == pytest.approx(float(want), abs=1e-5)


# The kernels with weights (the C++ CPU kernel; the Triton sweeps on a GPU or under TRITON_INTERPRET=1).
NATIVE_WEIGHT_BACKENDS = ["cpu"] if "cpu" in backends.usable("cpu") and backends.supports_weights("cpu") else []
NATIVE_WEIGHT_BACKENDS += ["triton"] if "triton" in WEIGHT_BACKENDS else []


@pytest.mark.parametrize("backend", NATIVE_WEIGHT_BACKENDS)
def test_gradcheck_native_kernel_weights_and_t(backend):
    """gradcheck for x, the queue, t and both weights; on the Triton sweeps under the interpreter (each call
    ~0.5 s) for t and the weights only (x and the queue: the property tests against the dense definition)."""
    device = DEVICE if backend == "triton" else "cpu"
    rows_too = not (backend == "triton" and INTERPRET)
    x = features(11, 4, seed=13, device=device).requires_grad_(rows_too)
    queue = features(6, 4, seed=14, device=device).requires_grad_(rows_too)
    t = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    w = (torch.rand(11, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) + 0.1).to(device)
    qw = (torch.rand(6, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) + 0.1).to(device)
    w, qw = w.requires_grad_(), qw.requires_grad_()

    def loss(x, q, t, w, qw):
        return hyperloss.uniform_loss(x, t, queue=q, weights=w, queue_weights=qw, backend=backend)

    if rows_too:
        assert torch.autograd.gradcheck(loss, (x, queue, t, w, qw), eps=1e-6, atol=1e-8)
        assert torch.autograd.gradcheck(lambda x, t, w: loss(x, None, t, w, None), (x, t, w), eps=1e-6, atol=1e-8)
    else:
        assert torch.autograd.gradcheck(lambda t, w, qw: loss(x, queue, t, w, qw), (t, w, qw), eps=1e-6, atol=1e-8)
    # A weight of 0 (one-sided differences: a weight may not go below 0).
    w0 = w.detach().clone()
    w0[2] = 0.0
    w0.requires_grad_()
    (got,) = torch.autograd.grad(loss(x.detach(), None, t.detach(), w0, None), w0)
    step = 1e-7
    up = w0.detach().clone()
    up[2] = step
    plus = float(loss(x.detach(), None, t.detach(), up, None))
    zero = float(loss(x.detach(), None, t.detach(), w0.detach(), None))
    assert float(got[2]) == pytest.approx((plus - zero) / step, rel=1e-5)


def test_validation_errors():
    x = features(10, 3, seed=1)
    queue = features(4, 3, seed=2)
    w = torch.ones(10, dtype=torch.float64, device=DEVICE)
    cases = [
        (dict(weights=torch.ones(9, device=DEVICE)), ValueError, r"weights must have shape \(10,\)"),
        (dict(weights=torch.ones(10, 1, device=DEVICE)), ValueError, r"weights must have shape \(10,\)"),
        (
            dict(queue=queue, queue_weights=torch.ones(5, device=DEVICE)),
            ValueError,
            r"queue_weights must have shape \(4,\)",
        ),
        (dict(weights=torch.ones(10, dtype=torch.int64, device=DEVICE)), TypeError, "weights must be a floating"),
        (dict(weights=[1.0] * 10), TypeError, "weights must be a torch.Tensor"),
        (dict(queue_weights=torch.ones(4, device=DEVICE)), ValueError, "queue_weights needs a queue"),
        (dict(weights=torch.where(w > 0, math.nan, w)), ValueError, "weights must be finite"),
        (dict(weights=torch.where(w > 0, math.inf, w)), ValueError, "weights must be finite"),
        (dict(weights=-w), ValueError, "weights must be >= 0"),
        (dict(queue=queue, queue_weights=-torch.ones(4, device=DEVICE)), ValueError, "queue_weights must be >= 0"),
        (dict(weights=w * 0), ValueError, "pair weights sum to 0"),
        (dict(weights=torch.eye(10, dtype=torch.float64, device=DEVICE)[3]), ValueError, "pair weights sum to 0"),
        (
            dict(
                queue=queue,
                intra_batch=False,
                weights=torch.eye(10, device=DEVICE)[3],
                queue_weights=torch.zeros(4, device=DEVICE),
            ),
            ValueError,
            "pair weights sum to 0",
        ),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            hyperloss.uniform_loss(x, 2.0, backend="chunked", **kwargs)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="weights is on cpu"):
            hyperloss.uniform_loss(x.cuda(), 2.0, weights=w.cpu())
    # One positive weight with a partner in the queue is a valid pair set.
    one = torch.eye(10, dtype=torch.float64, device=DEVICE)[3]
    assert torch.isfinite(hyperloss.uniform_loss(x, 2.0, queue=queue, weights=one, backend="chunked"))


def test_backend_choice_with_weights():
    """ "auto" takes a backend that supports weights; one named explicitly without them raises NotImplementedError
    naming those that do."""
    x = features(12, 3, seed=1)
    w = torch.ones(12, dtype=torch.float64, device=DEVICE)
    assert backends.supports_weights(backends.resolve("auto", DEVICE, weighted=True))
    assert backends.supports_weights("chunked")
    backends.register(CountingBackend(-1))  # ranked first, no weighted primitive
    try:
        assert backends.resolve("auto", "cpu") == "counting"
        assert backends.resolve("auto", "cpu", weighted=True) != "counting"
        with pytest.raises(NotImplementedError, match=r"'counting' does not support per-row weights.*chunked"):
            hyperloss.uniform_loss(x.cpu(), weights=w.cpu(), backend="counting")
    finally:
        backends.unregister("counting")
    for name in ("triton", "cuda"):
        if name in backends.names() and backends.availability(name)[0] and backends.get(name).runs_on(DEVICE.type):
            with pytest.raises(NotImplementedError, match="does not support per-row weights"):
                hyperloss.uniform_loss(x, weights=w, backend=name)


def test_module_free_temperature_and_weights_under_torch_compile():
    """Weights that require grad and a trainable t trace with fullgraph=True and get the eager gradients."""
    torch._dynamo.reset()
    x = features(40, 8, seed=6, dtype=torch.float32).requires_grad_()
    queue = features(10, 8, seed=7, dtype=torch.float32)
    t = torch.nn.Parameter(torch.tensor(1.7))
    w = (row_weights(40, "zeros", 8, dtype=torch.float32) + 0).requires_grad_()
    qw = row_weights(10, "random", 9, dtype=torch.float32)

    def step(x, t, w):
        return hyperloss.uniform_loss(x, t, queue=queue, weights=w, queue_weights=qw)

    got = torch.compile(step, fullgraph=True)(x, t, w)
    got_grads = torch.autograd.grad(got, (x, t, w))
    want = step(x, t, w)
    want_grads = torch.autograd.grad(want, (x, t, w))
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    for g, v in zip(got_grads, want_grads, strict=True):
        assert torch.allclose(g, v, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_native_kernel_on_many_blocks_matches_chunked(dtype):
    """The CPU kernel's tile schedule over groups of blocks (N >= 2048 rows) and a queue of several blocks, with a
    third of the weights 0, against the chunked backend; the module takes the weights too."""
    if "cpu" not in backends.usable("cpu") or not backends.supports_weights("cpu"):
        pytest.skip("the native CPU kernel with weights is not built")
    x = features(2100, 6, seed=21, device="cpu", dtype=dtype).requires_grad_()
    queue = features(300, 6, seed=22, device="cpu", dtype=dtype).requires_grad_()
    w = row_weights(2100, "zeros", 23).cpu().requires_grad_()
    qw = row_weights(300, "wide", 24).cpu().requires_grad_()
    results = []
    for backend in ("cpu", "chunked"):
        module = hyperloss.UniformLoss(5.0, backend=backend)
        loss = module(x, queue, weights=w, queue_weights=qw)
        results.append((loss, *torch.autograd.grad(loss, (x, queue, w, qw))))
    rel = 1e-10 if dtype == torch.float64 else 1e-4
    for got, want in zip(*results, strict=True):
        assert_close_scaled(got, want, rel, "cpu vs chunked", floor=1e-300)


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_every_instruction_set_of_the_weighted_tile(isa, monkeypatch):
    """The weighted tile arithmetic is compiled once per instruction set (a set the CPU lacks falls back to a lower
    one): each against the chunked backend, at t = 50 with zero weights."""
    if "cpu" not in backends.usable("cpu") or not backends.supports_weights("cpu"):
        pytest.skip("the native CPU kernel with weights is not built")
    monkeypatch.setenv("HYPERLOSS_CPU_ISA", isa)
    for dtype, rel in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        x = features(200, 7, seed=31, device="cpu", dtype=dtype).requires_grad_()
        w = row_weights(200, "zeros", 32).cpu().requires_grad_()
        results = []
        for backend in ("cpu", "chunked"):
            loss = hyperloss.uniform_loss(x, 50.0, weights=w, backend=backend)
            results.append((loss, *torch.autograd.grad(loss, (x, w))))
        for got, want in zip(*results, strict=True):
            assert_close_scaled(got, want, rel, f"cpu ({isa}) vs chunked", floor=1e-300)


@pytest.mark.parametrize("backend", WEIGHT_BACKENDS)
def test_weights_beyond_one_float64_scale(backend):
    """Weights 1e300 and 1e-300 side by side: every pair product is ~1, though no single scale of float64 holds
    both factors (the pair sum W is taken from log-weights; the kernels' biases likewise)."""
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    w = torch.tensor([1e300, 1e-300, 1e-300, 1e-300], dtype=torch.float64, requires_grad=True)
    loss = hyperloss.uniform_loss(x, 2.0, weights=w, backend=backend)
    loss.backward()
    # Pairs (0, j) weigh 1 and (i, j > 0) 1e-600 (nothing in double): the loss is the mean over the first three.
    d = (x[0] - x[1:]).pow(2).sum(1)
    expected = torch.logsumexp(-2.0 * d, 0) - math.log(3)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    assert torch.isfinite(w.grad).all()


@pytest.mark.parametrize("shape", [(1,), (1, 1)])
@pytest.mark.parametrize("weighted", [False, True])
def test_one_element_t_of_any_shape_gets_its_gradient(shape, weighted):
    x = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    t = torch.full(shape, 1.5, dtype=torch.float64, requires_grad=True)
    w = torch.rand(6, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) if weighted else None
    hyperloss.uniform_loss(x, t, weights=w, backend="chunked").backward()
    t0 = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    hyperloss.reference.dense_uniform_loss(x, t0, weights=w).backward()
    assert t.grad.shape == t.shape
    torch.testing.assert_close(t.grad.reshape(()), t0.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.skipif("cpu" not in WEIGHT_BACKENDS, reason="the cpu backend is not built")
def test_negative_weights_under_compile_give_nan_on_the_cpu_kernel():
    f = torch.compile(lambda x, w: hyperloss.uniform_loss(x, 2.0, weights=w, backend="cpu"), fullgraph=True)
    assert torch.isnan(f(torch.randn(6, 4), torch.tensor([1.0, -1, 1, 1, 1, 1])))
