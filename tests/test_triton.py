"""The Triton backend against the float64 references: on a GPU, or on the CPU under TRITON_INTERPRET=1.

CPU run (the interpreter is read when Python starts, so set it outside):  TRITON_INTERPRET=1 pytest tests/test_triton.py
The interpreter runs float32, float16 and float64; bfloat16 operands and tf32 products raise NotImplementedError
there (numpy cannot emulate them); they, autotuning and torch.compile need a GPU (tests marked ``gpu``).
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import os

import pytest
import torch

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed (pip install triton)", allow_module_level=True)
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
CUDA = torch.cuda.is_available()
if not (CUDA or INTERPRET):
    pytest.skip(
        "no CUDA device and TRITON_INTERPRET is not 1: run `TRITON_INTERPRET=1 pytest tests/test_triton.py` to test "
        "the Triton kernels on the CPU",
        allow_module_level=True,
    )

import triton  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import hyperloss  # noqa: E402
import hyperloss.triton as hl_triton  # noqa: E402
from hyperloss import reference  # noqa: E402
from hyperloss._common import as_scalar_tensor, log_num_pairs  # noqa: E402
from hyperloss.backends import chunked  # noqa: E402
from hyperloss.triton import uniform as triton_uniform  # noqa: E402
from hyperloss.triton.uniform import resolve_precision  # noqa: E402
from tests import helpers  # noqa: E402
from tests.helpers import (  # noqa: E402
    TOLERANCES,
    assert_close_scaled,
    features,
    score_error_budget,
    uniform_grad_scale,
    uniform_reference,
)

# The interpreter runs kernels on CPU tensors; a GPU run uses CUDA tensors.
DEVICE = "cpu" if INTERPRET else "cuda"
gpu = pytest.mark.skipif(not CUDA or INTERPRET, reason="needs a CUDA device and TRITON_INTERPRET unset")

# The tests' one tolerance model (tests/helpers.py), for the few checks written out here.
VALUE_REL = {torch.float64: TOLERANCES["float64"][0], torch.float32: TOLERANCES["float32"][0]}
GRAD_REL = {torch.float64: TOLERANCES["float64"][1], torch.float32: TOLERANCES["float32"][1]}


def _feats(n, d, seed, dtype=torch.float32, **kw):
    return features(n, d, seed=seed, dtype=dtype, **kw).to(DEVICE)


def check_uniform(x, t, queue=None, intra_batch=True, queue_grad=True, precision=None):
    """The Triton loss (public API, ``precision`` included) against float64, within the tolerance model."""
    return helpers.check_uniform("triton", x, t, queue, intra_batch, queue_grad, precision)


# ---------------------------------------------------------------------------------------------------------------
# Runs on the interpreter and on a GPU


def test_available():
    assert hl_triton.available() == (True, "")
    assert "triton" in [b.name for b in hyperloss.backends() if b.available]


@pytest.mark.parametrize(
    ("n", "d"),
    # Around the interpreter's 16-row blocks and 16-column D chunks; d > 32 takes the chunked-D path there.
    [(37, 5), (70, 33), (2, 3), (16, 16), (17, 15), (33, 32), (31, 48)],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_intra_batch(n, d, dtype):
    check_uniform(_feats(n, d, seed=n * d, dtype=dtype), 2.0)


def test_d_equal_1():
    # Not normalized: normalized 1-D rows are +-1, where the gradient is a tiny difference of large sums.
    check_uniform(_feats(30, 1, seed=1, normalize=False), 2.0)


@pytest.mark.parametrize(
    ("n", "k", "d", "intra_batch", "queue_grad"),
    [
        (37, 19, 5, True, True),
        (37, 19, 5, True, False),
        (30, 21, 33, False, True),
        (23, 40, 7, False, False),
        (1, 9, 4, False, True),
    ],
)
def test_with_queue(n, k, d, intra_batch, queue_grad):
    x, queue = _feats(n, d, seed=n), _feats(k, d, seed=k + 1)
    check_uniform(x, 2.0, queue, intra_batch=intra_batch, queue_grad=queue_grad)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    n=st.integers(1, 50),
    k=st.integers(0, 30),
    d=st.integers(1, 40),
    t=st.floats(0.1, 20.0),
    scale=st.sampled_from([0.3, 1.0, 3.0]),
    intra_batch=st.booleans(),
    queue_grad=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_random_shapes(n, k, d, t, scale, intra_batch, queue_grad, seed):
    if k == 0:  # no queue: the i<j pairs only
        n, intra_batch = max(n, 2), True
    # Normalized 1-D rows are +-1: duplicates whose gradient is a tiny difference of large sums (test_d_equal_1).
    x = _feats(n, d, seed=seed, scale=scale, normalize=d > 1)
    queue = _feats(k, d, seed=seed + 1, scale=scale, normalize=d > 1) if k else None
    check_uniform(x, t, queue, intra_batch=intra_batch and n >= 2, queue_grad=queue_grad)


def test_with_queue_float64():
    check_uniform(_feats(25, 9, seed=2, dtype=torch.float64), 1.5, _feats(13, 9, seed=3, dtype=torch.float64))


def test_float16_inputs():
    x = _feats(40, 24, seed=4, dtype=torch.float16)
    check_uniform(x, 2.0, _feats(12, 24, seed=5, dtype=torch.float16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_underflow_gives_the_exact_log_mean_exp(dtype):
    # Rows of norm 2 in 64 dimensions: every squared distance is far above 2, so at t = 50 every exp(-t d)
    # underflows (to 0 in float32, where the paper's code returns -inf).
    x = _feats(24, 64, seed=6, dtype=dtype, scale=2.0)
    queue = _feats(10, 64, seed=7, dtype=dtype, scale=2.0)
    if dtype == torch.float32:
        assert reference.paper_uniform_loss(x.cpu(), 50.0) == -math.inf
    value = check_uniform(x, 50.0)
    assert value == pytest.approx(float(reference.dense_uniform_loss(x.double().cpu(), 50.0)), rel=1e-6)
    check_uniform(x, 50.0, queue)


def test_loss_only_equals_loss_with_gradient():
    x, queue = _feats(45, 12, seed=8), _feats(20, 12, seed=9)
    for q, intra in ((None, True), (queue, True), (queue, False)):
        plain, gx, gq = hl_triton.uniform_lse(x, q, as_scalar_tensor(2.0), intra, False, False)
        assert gx is None and gq is None
        assert plain.dtype == torch.float64 and plain.shape == ()
        full, gx, gq = hl_triton.uniform_lse(x, q, as_scalar_tensor(2.0), intra, True, q is not None)
        assert gx.shape == x.shape and (q is None or gq.shape == q.shape)
        assert float(plain) == pytest.approx(float(full), rel=1e-6)
    with torch.no_grad():
        plain = hyperloss.uniform_loss(x, 2.0, queue=queue, backend="triton")
    with_grad = hyperloss.uniform_loss(x.clone().requires_grad_(), 2.0, queue=queue, backend="triton")
    assert float(plain) == pytest.approx(float(with_grad.detach()), rel=1e-6)


def test_non_contiguous_inputs():
    wide = _feats(60, 40, seed=10)
    x = wide[::2, ::3]  # strided in both dimensions
    assert not x.is_contiguous()
    contiguous = check_uniform(x, 2.0)
    assert contiguous == pytest.approx(float(hyperloss.uniform_loss(x.contiguous(), backend="triton")), rel=1e-6)
    transposed = _feats(14, 14, seed=11).T  # column-major
    assert not transposed.is_contiguous()
    check_uniform(x, 2.0, transposed, intra_batch=True)
    check_uniform(transposed, 2.0, x[:9], intra_batch=False)


def test_duplicate_rows_give_finite_gradients():
    base = _feats(10, 6, seed=12)
    x = torch.cat([base, base[:4], base[:1]])
    check_uniform(x, 2.0)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy under the interpreter: inf - inf
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_gives_nan(bad):
    x = _feats(20, 4, seed=13)
    x[3, 1] = bad
    x.requires_grad_()
    loss = hyperloss.uniform_loss(x, backend="triton")
    assert torch.isnan(loss)
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.isnan(grad).all()
    queue = _feats(5, 4, seed=14)
    queue[0, 0] = bad
    lse, gx, gq = hl_triton.uniform_lse(_feats(6, 4, seed=1), queue, as_scalar_tensor(2.0), True, True, True)
    assert torch.isnan(lse) and torch.isnan(gx).all() and torch.isnan(gq).all()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy under the interpreter: inf - inf
@pytest.mark.parametrize("queue_rows", [0, 13])
def test_gradients_in_the_input_dtype(queue_rows):
    # 16-bit inputs, input_dtype=True: the finish writes the gradients in x's dtype (over the kernels' own copy of the
    # rows), rounded once from float64: within one float16 rounding of the float32 ones; NaN where an input is not.
    x = _feats(37, 24, seed=21, dtype=torch.float16)
    queue = _feats(queue_rows, 24, seed=22, dtype=torch.float16) if queue_rows else None
    t = as_scalar_tensor(2.0)
    lse, gx, gq = hl_triton.uniform_lse(x, queue, t, True, True, True, input_dtype=True)
    lse32, gx32, gq32 = hl_triton.uniform_lse(x, queue, t, True, True, True)
    assert torch.equal(lse, lse32) and gx32.dtype == torch.float32
    for g, g32 in [(gx, gx32)] + ([] if queue is None else [(gq, gq32)]):
        assert g.dtype == torch.float16 and g.shape == g32.shape and g.is_contiguous()
        assert torch.allclose(g.float(), g32, rtol=2.0**-10, atol=2.0**-24)
    x[3, 1] = float("nan")
    _, gx, gq = hl_triton.uniform_lse(x, queue, t, True, True, True, input_dtype=True)
    assert gx.dtype == torch.float16 and torch.isnan(gx).all() and (gq is None or torch.isnan(gq).all())
    # float32 and float64 inputs: the compute dtype is theirs.
    x32 = _feats(20, 8, seed=23)
    assert torch.equal(
        hl_triton.uniform_lse(x32, None, t, True, True, False, input_dtype=True)[1],
        hl_triton.uniform_lse(x32, None, t, True, True, False)[1],
    )


def test_autograd_asks_for_gradients_in_the_input_dtype(monkeypatch):
    # The loss's backward returns x's dtype anyway: for bfloat16 it asks the kernels for it (no float32 N x D
    # gradient saved), except where d loss/dt is formed from the row gradients (kept in the compute dtype). float16
    # keeps float32 gradients (scaled by grad_output before rounding: AMP's loss scale). The interpreter cannot run
    # bfloat16, so the policy is checked with the kernel call recorded and replaced.
    calls = []

    def recording(*args, **kwargs):
        out = uniform_lse(*args, **kwargs)
        calls.append((kwargs.get("input_dtype", False), out[1].dtype))
        return out

    def as_float16(x, queue, *args, **kwargs):  # the bfloat16 call, run on a float16 copy
        return inner(x.to(torch.float16), queue, *args, **kwargs)

    uniform_lse = hl_triton.uniform_lse
    monkeypatch.setattr(hl_triton, "uniform_lse", recording)
    x = _feats(20, 8, seed=24, dtype=torch.float16).requires_grad_()
    hyperloss.uniform_loss(x, 2.0, backend="triton").backward()
    assert calls == [(False, torch.float32)] and x.grad.dtype == torch.float16
    inner = uniform_lse
    uniform_lse = as_float16
    xb = x.detach().to(torch.bfloat16).requires_grad_()
    hyperloss.uniform_loss(xb, 2.0, backend="triton").backward()
    assert calls[1] == (True, torch.float16) and xb.grad.dtype == torch.bfloat16
    uniform_lse = inner
    t = torch.tensor(2.0, requires_grad=True)
    hyperloss.uniform_loss(x, t, backend="triton").backward()
    assert calls[2] == (False, torch.float32) and t.grad is not None


def test_precision_follows_torch_and_can_be_overridden():
    saved = torch.get_float32_matmul_precision()
    try:
        for torch_name, ours in (("highest", "ieee"), ("high", "tf32"), ("medium", "bf16")):
            torch.set_float32_matmul_precision(torch_name)
            assert resolve_precision(torch.float32, None) == ours
            assert resolve_precision(torch.float32, "ieee") == "ieee"
            assert resolve_precision(torch.float16, None) == "native"
            assert resolve_precision(torch.float64, "bf16") == "native"
    finally:
        torch.set_float32_matmul_precision(saved)
    assert resolve_precision(torch.float32, "medium") == "bf16"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision(torch.float32, "fp8")


def _with_blocks(monkeypatch, config) -> None:
    """Makes the uniformity launcher use ``config`` alone in both row kernels, the lean sweep and the running
    reference (the kernel math must not depend on the block shape)."""
    kernel = triton.autotune(configs=[config], key=[])(triton_uniform._uniform_rows_kernel)
    monkeypatch.setattr(triton_uniform, "_rows_kernel", kernel)
    lean = triton.autotune(configs=[config], key=[])(triton_uniform._uniform_lean_kernel)
    monkeypatch.setattr(triton_uniform, "_lean_kernel", lean)


@pytest.mark.skipif(not INTERPRET, reason="block shapes for the interpreter; test_gpu_every_config covers the GPU")
@pytest.mark.parametrize(("block_m", "block_n"), [(16, 32), (32, 16)])
def test_other_block_shapes(monkeypatch, block_m, block_n):
    _with_blocks(monkeypatch, triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}))
    x, queue = _feats(53, 7, seed=block_m), _feats(21, 7, seed=block_n)
    check_uniform(x, 2.0, queue)
    test_loss_only_equals_loss_with_gradient()


def test_size_bucket_traces_without_a_guard():
    # Under torch.compile(dynamic=True) the autotuning key must not specialize the graph on the batch size.
    from torch._dynamo.source import ConstantSource
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    for n in (2, 1024, 1025, 3000, 1 << 20):
        env = ShapeEnv()
        symbolic = env.create_symintnode(env.create_symbol(n, ConstantSource("n")), hint=n)
        bucket = hl_triton._runtime.size_bucket(symbolic)
        assert not env.guards
        assert int(bucket.node.hint if isinstance(bucket, torch.SymInt) else bucket) == hl_triton._runtime.size_bucket(
            n
        )
    assert [hl_triton._runtime.size_bucket(n) for n in (2, 1024, 1025, 2048, 2049)] == [10, 10, 11, 11, 12]


ALIGN_SHAPES = [(37, 5), (20, 33), (9, 1)]  # d = 33 takes the two-pass path under the interpreter (> 32)


@pytest.mark.parametrize(("n", "d"), ALIGN_SHAPES)
@pytest.mark.parametrize("alpha", [2.0, 1.0, 3.3, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_align(n, d, alpha, dtype):
    x, y = _feats(n, d, seed=n, dtype=dtype), _feats(n, d, seed=n + 1, dtype=dtype)
    y[:2] = x[:2]  # equal rows: zero distance, zero gradient for every alpha
    loss, gx = hl_triton.align(x, y, as_scalar_tensor(alpha), True)
    want = reference.dense_align_loss(x.double().cpu(), y.double().cpu(), alpha)
    _, want_gx = chunked.align(x.double().cpu(), y.double().cpu(), as_scalar_tensor(alpha), True)
    rel = 1e-12 if dtype == torch.float64 else 1e-5
    assert loss.dtype == dtype and loss.shape == ()
    assert float(loss) == pytest.approx(float(want), rel=rel)
    assert_close_scaled(gx.cpu(), want_gx, rel, "d align / dx")
    assert torch.equal(gx[:2], torch.zeros_like(gx[:2]))
    plain, none = hl_triton.align(x, y, as_scalar_tensor(alpha), False)
    assert none is None and float(plain) == pytest.approx(float(loss), rel=1e-7)


def test_align_public_api_non_contiguous_and_nan():
    x = _feats(30, 40, seed=20)[:, ::2].requires_grad_()
    y = _feats(30, 20, seed=21).T.contiguous().T.requires_grad_()  # column-major
    assert not x.is_contiguous() and not y.is_contiguous()
    loss = hyperloss.align_loss(x, y, 1.5, backend="triton")
    gx, gy = torch.autograd.grad(loss, (x, y))
    x64, y64 = x.detach().double().requires_grad_(), y.detach().double().requires_grad_()
    want = reference.dense_align_loss(x64, y64, 1.5)
    want_gx, want_gy = torch.autograd.grad(want, (x64, y64))
    assert float(loss.detach()) == pytest.approx(float(want.detach()), rel=1e-5)
    assert_close_scaled(gx, want_gx, 1e-5, "d align / dx")
    assert_close_scaled(gy, want_gy, 1e-5, "d align / dy")
    bad = x.detach().clone()
    bad[1, 1] = float("nan")
    assert torch.isnan(hl_triton.align(bad, y.detach(), as_scalar_tensor(1.5), False)[0])


# ---------------------------------------------------------------------------------------------------------------
# Numerics: common offsets, losses near 0, any finite t, extreme magnitudes (interpreter and GPU)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_common_offset_does_not_cancel(dtype):
    # Through the Gram form of the raw rows both distances vanish in float32 (and the first one in float64 too
    # at larger offsets); the rows are centered first.
    x = torch.tensor([[1e4, 0.0], [1e4, 1.0]], dtype=dtype, device=DEVICE)
    assert float(hyperloss.uniform_loss(x, 2.0, backend="triton")) == pytest.approx(-2.0, rel=1e-6)
    cross = hyperloss.uniform_loss(x[:1], 2.0, queue=x[1:], intra_batch=False, backend="triton")
    assert float(cross) == pytest.approx(-2.0, rel=1e-6)

    x = torch.tensor([[12345.0, 0.0], [12345.0, 3.0]], dtype=dtype, device=DEVICE, requires_grad=True)
    loss = hyperloss.uniform_loss(x, 50.0, backend="triton")
    assert float(loss.detach()) == pytest.approx(-450.0, rel=1e-6)
    (grad,) = torch.autograd.grad(loss, x)
    want = torch.tensor([[0.0, 300.0], [0.0, -300.0]], dtype=torch.float64)
    assert_close_scaled(grad.cpu(), want, 1e-6, "d loss / dx at a common offset")
    check_uniform(x, 50.0)


@pytest.mark.parametrize(
    "dtype",
    [
        torch.float16,
        pytest.param(torch.bfloat16, marks=pytest.mark.skipif(INTERPRET, reason="the interpreter has no bfloat16")),
    ],
)
def test_half_precision_inputs_at_a_common_offset(dtype):
    # 16-bit rows keep exact 16-bit dot operands: their center is rounded to the input dtype where x - c is exact.
    shift = torch.linspace(300.0, 900.0, 24, dtype=torch.float64)
    x = (features(40, 24, seed=90) + shift).to(dtype).to(DEVICE).requires_grad_()
    got = hyperloss.uniform_loss(x, 2.0, backend="triton")
    want, (want_grad,) = uniform_reference(x, 2.0)
    budget = score_error_budget(torch.float32, 2.0, x)  # exact products, float32 sums
    assert abs(float(got.detach()) - float(want)) <= budget + VALUE_REL[torch.float32] * (1 + abs(float(want)))
    (grad,) = torch.autograd.grad(got, x)
    assert grad.dtype == dtype
    floor = uniform_grad_scale(x, 2.0)
    assert_close_scaled(grad.cpu(), want_grad, 2 * torch.finfo(dtype).eps, "16-bit gradient", floor=floor)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    n=st.integers(1, 40),
    k=st.integers(0, 20),
    d=st.integers(1, 24),
    t=st.floats(0.1, 20.0),
    spread=st.sampled_from([1e-3, 1.0, 1e3]),
    offset=st.sampled_from([0.0, 1.0, 1e2, 1e4, 1e6]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    intra_batch=st.booleans(),
    queue_grad=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_translation_invariance(n, k, d, t, spread, offset, dtype, intra_batch, queue_grad, seed):
    """Rows (and the queue) shifted by one vector up to 1e6 times their spread: still the float64 loss of the
    shifted inputs, within the error of the Gram form on *centered* rows (helpers.score_error_budget)."""
    if k == 0:
        n, intra_batch = max(n, 2), True
    g = torch.Generator().manual_seed(seed)
    shift = torch.randn(d, generator=g, dtype=torch.float64)
    shift = shift / shift.norm() * offset * spread
    t = t / spread**2  # scores of order 1
    x = (features(n, d, seed=seed, scale=spread) + shift).to(dtype).to(DEVICE)
    queue = (features(k, d, seed=seed + 1, scale=spread) + shift).to(dtype).to(DEVICE) if k else None
    check_uniform(x, t, queue, intra_batch=intra_batch and n >= 2, queue_grad=queue_grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_loss_near_zero(monkeypatch, dtype):
    # N = 1000 unit rows at t = 1e-6: every exp(-t d) is within 4e-6 of 1 and the loss is -2.0e-6. Plain sums of
    # terms near 1 (and a float32 combine) lose it, or even make it positive.
    if INTERPRET:
        _with_blocks(monkeypatch, triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}))  # fewer numpy steps
    x = _feats(1000, 32, seed=70, dtype=dtype).requires_grad_()
    got = hyperloss.uniform_loss(x, 1e-6, backend="triton")
    want, (want_grad,) = uniform_reference(x, 1e-6)
    assert -3e-6 < float(want) < -1e-6
    value = float(got.detach())
    assert value < 0
    assert abs(value - float(want)) <= (1e-4 if dtype == torch.float32 else 1e-9) * abs(float(want))
    (grad,) = torch.autograd.grad(got, x)
    assert_close_scaled(grad.cpu(), want_grad, GRAD_REL[dtype], "d loss / dx near 0")
    with torch.no_grad():
        plain = hyperloss.uniform_loss(x, 1e-6, backend="triton")  # the j > i sweep
    assert abs(float(plain) - float(want)) <= (1e-4 if dtype == torch.float32 else 1e-9) * abs(float(want))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("t", [1e-5, 1e-8])
def test_loss_near_zero_with_queue(dtype, t):
    x, queue = _feats(77, 9, seed=71, dtype=dtype), _feats(23, 9, seed=72, dtype=dtype)
    for q, intra in ((None, True), (queue, True), (queue, False)):
        want, _ = uniform_reference(x, t, q, intra)
        got = check_uniform(x, t, q, intra_batch=intra)
        assert got < 0
        # float64: lse - log|P| itself rounds at ~eps * log|P| (1e-15 here).
        tol = 1e-4 * abs(float(want)) if dtype == torch.float32 else 1e-9 * abs(float(want)) + 1e-14
        assert abs(got - float(want)) <= tol


@pytest.mark.parametrize(
    ("dtype", "scale", "t"),
    [
        (torch.float32, 1e-20, 1e39),  # t above float32's range; t' = t 4^E is not
        (torch.float32, 1e20, 1e-39),  # squared norms above float32's range
        (torch.float64, 1e-150, 1e300),  # t 4^E would under- and t' d overflow float64 if formed directly
        (torch.float64, 1e150, 1e-300),
    ],
)
def test_any_finite_t(dtype, scale, t):
    x = _feats(30, 8, seed=73, dtype=dtype, scale=scale)
    queue = _feats(11, 8, seed=74, dtype=dtype, scale=scale)
    value = check_uniform(x, t)
    assert -10 < value < 0
    check_uniform(x, t, queue)
    check_uniform(x, t, queue, intra_batch=False)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy under the interpreter: inf * 0 in masked lanes
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("t", [1e39, 1e300])
def test_huge_t_is_never_nan(dtype, t):
    # Duplicated unit rows: the float64 loss is log(#duplicate pairs / #pairs). Through the Gram form a duplicate
    # pair's distance is 0 only up to rounding (~ eps ||x||^2), which at such t may still drop it (documented);
    # whatever is resolved, the result is a finite log-mean-exp <= 0 with finite gradients, never NaN.
    base = _feats(9, 8, seed=75, dtype=dtype)
    x = torch.cat([base, base[:3]]).requires_grad_()
    loss = hyperloss.uniform_loss(x, t, backend="triton")
    assert torch.isfinite(loss) and float(loss.detach()) <= 0
    (grad,) = torch.autograd.grad(loss, x)
    assert not torch.isnan(grad).any()
    lse, gx, gq = hl_triton.uniform_lse(x, base, as_scalar_tensor(t), True, True, True)
    assert not torch.isnan(lse) and not torch.isnan(gx).any() and not torch.isnan(gq).any()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy under the interpreter: t' d overflows to -inf, as meant
def test_rows_of_norm_1e19_in_float32():
    # D = 1: squared norms ~1e38 (and 4e38 for their sums) are at float32's limit.
    x = torch.tensor([[1e19], [-1e19], [3e18]], device=DEVICE)
    value = check_uniform(x, 2.0)
    assert value == pytest.approx(-9.8e37, rel=1e-6)
    assert check_uniform(x, 1e-38) == pytest.approx(-1.3026132888, rel=1e-6)
    check_uniform(_feats(25, 16, seed=76, scale=1e19), 1e-38, _feats(7, 16, seed=77, scale=1e19))


def test_long_rows_with_offset():
    # Long rows go through the chunked path (D in chunks, dot products added in float64 per fold of columns; 600
    # columns are 19 folds under the interpreter).
    d = 600 if INTERPRET else 20000
    x = _feats(20, d, seed=78) + 100.0
    queue = _feats(9, d, seed=79) + 100.0
    check_uniform(x, 2.0)
    check_uniform(x, 2.0, queue)


# ---------------------------------------------------------------------------------------------------------------
# Interpreter limits and torch's precision settings


@pytest.mark.skipif(not INTERPRET, reason="the interpreter's limits")
def test_interpreter_refuses_bfloat16_and_rounded_products():
    x = _feats(10, 4, seed=80)
    with pytest.raises(NotImplementedError, match=r"interpreter.*bfloat16"):
        hyperloss.uniform_loss(x.bfloat16(), backend="triton")
    with pytest.raises(NotImplementedError, match=r"interpreter.*bfloat16"):
        hyperloss.align_loss(x.bfloat16(), x.bfloat16(), backend="triton")
    for precision in ("tf32", "bf16", "high", "medium"):
        with pytest.raises(NotImplementedError, match="interpreter"):
            hl_triton.uniform_lse(x, None, as_scalar_tensor(2.0), True, True, False, precision=precision)
    for precision in ("ieee", "highest"):  # exact float32 products run
        hl_triton.uniform_lse(x, None, as_scalar_tensor(2.0), True, True, False, precision=precision)


@pytest.mark.skipif(not hasattr(torch.backends.cuda.matmul, "fp32_precision"), reason="torch < 2.9")
def test_new_fp32_precision_api_does_not_crash():
    # Once the new API says "tf32", torch.get_float32_matmul_precision() raises RuntimeError.
    saved_legacy = torch.get_float32_matmul_precision()
    saved_new = torch.backends.cuda.matmul.fp32_precision
    x = _feats(12, 5, seed=81)
    try:
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        assert resolve_precision(torch.float32, None) == "tf32"
        assert resolve_precision(torch.float32, "ieee") == "ieee"
        if INTERPRET:
            with pytest.raises(NotImplementedError, match="tf32"):
                hyperloss.uniform_loss(x, backend="triton")
        else:
            check_uniform(x, 2.0, precision="tf32")
            hyperloss.uniform_loss(x, backend="triton")
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        assert resolve_precision(torch.float32, None) == "ieee"
        check_uniform(x, 2.0)
        torch.backends.cuda.matmul.fp32_precision = "none"  # back to the legacy setting
        torch.set_float32_matmul_precision("high")
        assert resolve_precision(torch.float32, None) == "tf32"
    finally:
        torch.set_float32_matmul_precision(saved_legacy)
        torch.backends.cuda.matmul.fp32_precision = saved_new
    assert torch.get_float32_matmul_precision() == saved_legacy


# ---------------------------------------------------------------------------------------------------------------
# GPU only


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize(
    ("dtype", "precision"),
    [
        (torch.float32, "ieee"),
        (torch.float32, "tf32"),
        (torch.float32, "bf16"),
        (torch.float16, None),
        (torch.bfloat16, None),
        (torch.float64, None),
    ],
)
@pytest.mark.parametrize("d", [128, 300])  # 300 > 256: the accumulator lives in memory, D is swept in chunks
def test_gpu_dtypes_and_precisions(dtype, precision, d):
    x, queue = _feats(1000, d, seed=d, dtype=dtype), _feats(257, d, seed=d + 1, dtype=dtype)
    check_uniform(x, 2.0, precision=precision)
    check_uniform(x, 2.0, queue, precision=precision)
    check_uniform(x[:301], 2.0, queue, intra_batch=False, precision=precision)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("config", range(len(triton_uniform._LEAN_CONFIGS)))
def test_gpu_every_config(monkeypatch, config):
    # bf16 at D = 128 runs the lean sweep (and the running reference for the rows it flags: none here).
    _with_blocks(monkeypatch, triton_uniform._LEAN_CONFIGS[config])
    x, queue = _feats(333, 128, seed=config, dtype=torch.bfloat16), _feats(71, 128, seed=9, dtype=torch.bfloat16)
    check_uniform(x, 2.0, queue)
    plain, _, _ = hl_triton.uniform_lse(x, queue, as_scalar_tensor(2.0), True, False, False)
    full, _, _ = hl_triton.uniform_lse(x, queue, as_scalar_tensor(2.0), True, True, True)
    assert float(plain) == pytest.approx(float(full), rel=1e-5)


@gpu
@pytest.mark.gpu
def test_gpu_precision_follows_torch():
    x = _feats(512, 64, seed=30)
    saved = torch.get_float32_matmul_precision()
    try:
        for name, ours in (("highest", "ieee"), ("high", "tf32"), ("medium", "bf16")):
            torch.set_float32_matmul_precision(name)
            got = hyperloss.uniform_loss(x, backend="triton")
            lse, _, _ = hl_triton.uniform_lse(x, None, as_scalar_tensor(2.0), True, False, False, precision=ours)
            want = lse - log_num_pairs(512, 0, True, lse.device)
            assert float(got) == pytest.approx(float(want), abs=1e-6), name
    finally:
        torch.set_float32_matmul_precision(saved)


@gpu
@pytest.mark.gpu
def test_gpu_peak_memory_bfloat16():
    # Issue #12: forward + backward at N = 65536, D = 128 in bfloat16 within 2 x (input + grad) = 64 MiB of extra
    # memory (x.grad included): the gradient is written in bfloat16 over the kernels' copy of the rows.
    x = torch.nn.functional.normalize(torch.randn(65536, 128, device="cuda"), dim=1).bfloat16().requires_grad_()
    hyperloss.uniform_loss(x, 2.0, backend="triton").backward()  # autotuning (its buffers) outside the count
    x.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    hyperloss.uniform_loss(x, 2.0, backend="triton").backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    limit = 2 * 2 * x.numel() * x.element_size()
    assert extra <= limit, f"{extra / 2**20:.1f} MiB extra > {limit / 2**20:.0f} MiB"


@gpu
@pytest.mark.gpu
def test_gpu_large_d_and_underflow():
    check_uniform(_feats(300, 4096, seed=31), 2.0, _feats(70, 4096, seed=32))
    check_uniform(_feats(700, 128, seed=33, dtype=torch.bfloat16), 50.0)
    n, d = 1 << 17, 16  # many row blocks, and a triangular sweep over 2^16 column blocks
    x = _feats(n, d, seed=34, dtype=torch.bfloat16)
    lse, _, _ = hl_triton.uniform_lse(x, None, as_scalar_tensor(2.0), True, False, False)
    want, _, _ = chunked.uniform_lse(x, None, as_scalar_tensor(2.0), True, False, False)
    assert float(lse) == pytest.approx(float(want), abs=1e-2)


@gpu
@pytest.mark.gpu
def test_gpu_align_dtypes():
    # d = 4099 keeps rows in registers (one read of x and y); d = 9000 sweeps D twice.
    for dtype, (n, d) in itertools.product(
        (torch.float16, torch.bfloat16, torch.float32, torch.float64), ((4099, 4099), (300, 9000))
    ):
        x, y = _feats(n, d, seed=40, dtype=dtype), _feats(n, d, seed=41, dtype=dtype)
        for alpha in (2.0, 1.3):
            loss, gx = hl_triton.align(x, y, as_scalar_tensor(alpha), True)
            want, want_gx = chunked.align(x.double(), y.double(), as_scalar_tensor(alpha), True)
            rel = 1e-12 if dtype == torch.float64 else 1e-5
            assert float(loss) == pytest.approx(float(want), rel=rel)
            assert_close_scaled(gx, want_gx, rel, f"align gradient {dtype}")


@gpu
@pytest.mark.gpu
@pytest.mark.skipif(not hl_triton._runtime.AUTOTUNE, reason="HYPERLOSS_TRITON_AUTOTUNE=0")
def test_gpu_autotuning_is_cached():
    x = _feats(2048, 128, seed=50, dtype=torch.bfloat16).requires_grad_()
    hyperloss.uniform_loss(x, backend="triton").backward()
    tuned = dict(triton_uniform._lean_kernel.cache)  # bf16 at D = 128: the lean sweep
    assert tuned, "the first call tunes and caches a config per key"
    hyperloss.uniform_loss(x, backend="triton").backward()
    assert dict(triton_uniform._lean_kernel.cache) == tuned


@gpu
@pytest.mark.gpu
def test_gpu_torch_compile_fullgraph():
    def step(x, y, queue):
        return hyperloss.align_loss(x, y, backend="triton") + hyperloss.uniform_loss(x, queue=queue, backend="triton")

    compiled = torch.compile(step, fullgraph=True)
    x = _feats(512, 128, seed=60).requires_grad_()
    y = _feats(512, 128, seed=61)
    queue = _feats(256, 128, seed=62).requires_grad_()
    got = compiled(x, y, queue)
    got_grads = torch.autograd.grad(got, (x, queue))
    want = step(x, y, queue)
    want_grads = torch.autograd.grad(want, (x, queue))
    assert float(got) == pytest.approx(float(want), rel=1e-6)
    for g, w in zip(got_grads, want_grads, strict=True):
        assert_close_scaled(g, w, 1e-5, "compiled gradient")


@gpu
@pytest.mark.gpu
def test_gpu_torch_compile_dynamic_traces_once_for_every_size_t_and_alpha():
    """As tests/test_api.py for the CPU backends: t and alpha are read at run time, log|P| and the autotuning key
    are symbolic in N (sizes on both sides of the 1024-row autotuning bucket)."""
    import torch._dynamo.testing

    def step(x, y, queue, t, alpha):
        uniform = hyperloss.uniform_loss(x, t, backend="triton")
        uniform = uniform + hyperloss.uniform_loss(y, t, queue=queue, backend="triton")
        return hyperloss.align_loss(x, y, alpha, backend="triton") + uniform

    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend("inductor")
    compiled = torch.compile(step, fullgraph=True, dynamic=True, backend=counter)
    queue = _feats(70, 32, seed=63)
    for n in (300, 301, 1100, 2500):
        for t, alpha in ((2.0, 2.0), (0.7, 1.5)):
            x = _feats(n, 32, seed=n).requires_grad_()
            y = _feats(n, 32, seed=n + 1)
            got = compiled(x, y, queue, t, alpha)
            (got_grad,) = torch.autograd.grad(got, x)
            want = step(x, y, queue, t, alpha)
            (want_grad,) = torch.autograd.grad(want, x)
            assert float(got) == pytest.approx(float(want), rel=1e-6, abs=1e-7)
            assert_close_scaled(got_grad, want_grad, 1e-5, "compiled gradient")
    assert counter.frame_count == 1
