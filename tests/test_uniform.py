"""uniform_loss on every backend of the device against the float64 paper formulas and the float64 log-sum-exp."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hyperloss
from hyperloss import reference
from hyperloss._common import CENTER_JITTER, sampled_center
from tests.helpers import (
    BACKENDS,
    CPU_BACKENDS,
    DEVICE,
    assert_close_scaled,
    check_uniform,
    examples,
    features,
    max_centered_sq_norm,
    operand_kind,
    uniform_reference,
    uniform_tolerances,
    unsupported,
)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@settings(max_examples=examples(100), deadline=None, derandomize=True)
@given(
    n=st.integers(2, 300),
    d=st.integers(1, 257),
    t=st.floats(0.1, 10.0),
    scale=st.sampled_from([0.1, 0.5, 1.0, 3.0]),
    normalize=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_matches_paper(backend, dtype, n, d, t, scale, normalize, seed):
    check_uniform(backend, features(n, d, seed=seed, dtype=dtype, scale=scale, normalize=normalize), t)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@settings(max_examples=examples(60), deadline=None, derandomize=True)
@given(
    n=st.integers(1, 200),
    k=st.integers(1, 150),
    d=st.integers(1, 257),
    t=st.floats(0.1, 10.0),
    intra_batch=st.booleans(),
    queue_grad=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_queue_matches_paper(backend, dtype, n, k, d, t, intra_batch, queue_grad, seed):
    x = features(n, d, seed=seed, dtype=dtype)
    queue = features(k, d, seed=seed + 1, dtype=dtype)
    check_uniform(backend, x, t, queue, intra_batch=intra_batch and n >= 2, queue_grad=queue_grad)


@pytest.mark.parametrize(
    ("n", "d"), [(63, 15), (64, 16), (65, 17), (129, 31), (300, 257), (257, 129), (579, 5), (640, 3)]
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sizes_around_tile_edges(backend, dtype, n, d):
    """The native kernel tiles 64 rows and pads columns to 16 (float) or 8 (double): sizes on both sides of that,
    with odd and even numbers of 64-row blocks (the tile schedule pairs blocks round-robin) and queues with fewer
    and more blocks than x."""
    x = features(n, d, seed=n * d, dtype=dtype)
    check_uniform(backend, x, 2.0)
    check_uniform(backend, x, 2.0, features(n // 2 + 1, d, seed=n, dtype=dtype))
    check_uniform(backend, x[: n // 3 + 1], 2.0, features(n, d, seed=n + 1, dtype=dtype), intra_batch=False)


@pytest.mark.parametrize(
    ("case", "n", "d", "t", "scale"),
    [
        ("t=50 underflows float32", 64, 16, 50.0, 1.0),
        ("t=500 underflows float64", 64, 16, 500.0, 1.0),
        ("features x10", 80, 32, 2.0, 10.0),
        ("N=2", 2, 7, 2.0, 1.0),
        ("D=1", 50, 1, 2.0, 1.0),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_extremes_against_float64_logsumexp(backend, dtype, case, n, d, t, scale):
    x = features(n, d, seed=n + d, dtype=dtype, scale=scale)
    got = hyperloss.uniform_loss(x, t, backend=backend)
    assert torch.isfinite(got), case
    check_uniform(backend, x, t)
    queue = features(9, d, seed=3, dtype=dtype, scale=scale)
    check_uniform(backend, x, t, queue)


def test_where_paper_underflows_the_value_is_the_exact_log_mean_exp(backend):
    x = features(40, 8, seed=1, dtype=torch.float32, scale=10.0)
    assert reference.paper_uniform_loss(x.cpu(), 10.0) == -math.inf  # the paper's code in float32
    want = reference.dense_uniform_loss(x.cpu().double(), 10.0)
    got = hyperloss.uniform_loss(x, 10.0, backend=backend)
    assert abs(float(got) - float(want)) <= 1e-4 * abs(float(want))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_duplicate_rows_give_finite_gradients(backend, dtype):
    base = features(10, 6, seed=2, dtype=dtype)
    x = torch.cat([base, base[:4], base[:1]])  # repeated rows, one three times
    check_uniform(backend, x, 2.0)
    x = x.detach().requires_grad_()
    (grad,) = torch.autograd.grad(hyperloss.uniform_loss(x, 2.0, backend=backend), x)
    assert torch.isfinite(grad).all()


def test_all_rows_identical(backend):
    x = torch.ones(5, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    loss = hyperloss.uniform_loss(x, 2.0, backend=backend)
    assert float(loss) == pytest.approx(0.0, abs=1e-12)  # every distance is 0: log mean exp(0) = 0
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.equal(grad, torch.zeros_like(grad))


def test_non_contiguous_inputs(backend):
    wide = features(60, 40, seed=5, dtype=torch.float32)
    x = wide[::2, ::3]  # strided in both dimensions
    assert not x.is_contiguous()
    check_uniform(backend, x, 2.0)
    queue = features(14, 40, seed=6, dtype=torch.float32)[:, ::3]
    assert not queue.is_contiguous()
    check_uniform(backend, x, 2.0, queue)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_compute_in_float32(backend, dtype):
    x = features(50, 16, seed=7, dtype=dtype).requires_grad_()
    if unsupported(backend, dtype):
        with pytest.raises(NotImplementedError):
            hyperloss.uniform_loss(x, 2.0, backend=backend)
        return
    assert hyperloss.uniform_loss(x, 2.0, backend=backend).dtype == torch.float32
    check_uniform(backend, x, 2.0)  # against the rounded half inputs, computed exactly


@pytest.mark.parametrize("precision", ["highest", "high", "medium"])
@pytest.mark.parametrize(("n", "k", "d", "intra_batch"), [(130, 0, 33, True), (97, 45, 70, False), (40, 9, 300, True)])
def test_float32_precisions(backend, precision, n, k, d, intra_batch):
    """precision= picks the GPU kernels' products of float32 inputs (tf32, bf16 tensor cores): each within its
    tolerance; the CPU kernels and the chunked backend compute exact products whatever it says."""
    x = features(n, d, seed=n + d, dtype=torch.float32)
    queue = features(k, d, seed=k, dtype=torch.float32) if k else None
    if unsupported(backend, torch.float32, precision):
        with pytest.raises(NotImplementedError):
            hyperloss.uniform_loss(x, 2.0, queue=queue, intra_batch=intra_batch, backend=backend, precision=precision)
        return
    check_uniform(backend, x, 2.0, queue, intra_batch, precision=precision)


def test_forward_only_matches_forward_with_gradient(backend):
    x = features(70, 12, seed=8, dtype=torch.float32)
    queue = features(30, 12, seed=9, dtype=torch.float32)
    with torch.no_grad():
        plain = hyperloss.uniform_loss(x, 2.0, queue=queue, backend=backend)
    with_grad = hyperloss.uniform_loss(x.requires_grad_(), 2.0, queue=queue, backend=backend)
    assert float(plain) == pytest.approx(float(with_grad), rel=1e-6)


def test_upstream_gradient_scales(backend):
    x = features(30, 5, seed=10).requires_grad_()
    (g1,) = torch.autograd.grad(hyperloss.uniform_loss(x, backend=backend), x)
    (g3,) = torch.autograd.grad(-3.0 * hyperloss.uniform_loss(x, backend=backend), x)
    assert torch.allclose(g3, -3.0 * g1, rtol=1e-12, atol=0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input_gives_nan(backend, bad):
    x = features(20, 4, seed=11, dtype=torch.float32)
    x[3, 1] = bad
    x.requires_grad_()
    loss = hyperloss.uniform_loss(x, backend=backend)
    assert torch.isnan(loss)
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.isnan(grad).all()
    queue = features(5, 4, seed=12, dtype=torch.float32)
    queue[0, 0] = bad
    assert torch.isnan(
        hyperloss.uniform_loss(features(6, 4, seed=1, dtype=torch.float32), queue=queue, backend=backend)
    )


@pytest.mark.parametrize("with_queue", [False, True])
def test_gradcheck_native_kernel(with_queue):
    if "cpu" not in CPU_BACKENDS:
        pytest.skip("the native extension is not built")
    x = features(9, 4, seed=13, device="cpu").requires_grad_()
    queue = features(5, 4, seed=14, device="cpu").requires_grad_() if with_queue else None

    def fn(x, queue=None):
        return hyperloss.uniform_loss(x, 1.5, queue=queue, backend="cpu")

    inputs = (x, queue) if with_queue else (x,)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-8, rtol=1e-6)


def test_second_derivative_raises(backend):
    x = features(8, 3, seed=15).requires_grad_()
    loss = hyperloss.uniform_loss(x, backend=backend)
    with pytest.raises(RuntimeError, match="second derivatives"):
        torch.autograd.grad(loss, x, create_graph=True)


# ---------------------------------------------------------------------------------------------------------------
# Inputs the Gram form |u|^2 + |v|^2 - 2 u.v gets wrong unless the rows are centered first, and other hostile inputs.
# The oracle takes distances by direct differences in float64.


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_common_offset_examples(backend, dtype):
    x = torch.tensor([[1e4, 0.0], [1e4, 1.0]], dtype=dtype, device=DEVICE)
    assert hyperloss.uniform_loss(x, 2.0, backend=backend).item() == pytest.approx(-2.0, rel=1e-6)
    x = torch.tensor([[12345.0, 0.0], [12345.0, 3.0]], dtype=dtype, device=DEVICE, requires_grad=True)
    loss = hyperloss.uniform_loss(x, 50.0, backend=backend)
    assert loss.item() == pytest.approx(-450.0, rel=1e-6)
    (grad,) = torch.autograd.grad(loss, x)
    want = torch.tensor([[0.0, 300.0], [0.0, -300.0]], dtype=torch.float64)
    assert torch.allclose(grad.double().cpu(), want, rtol=1e-5)


@pytest.mark.parametrize(("norm", "spread", "t"), [(100.0, 0.1, 2.0), (30.0, 0.05, 500.0)])
def test_rows_around_a_far_common_vector(backend, norm, spread, t):
    """Rows = one common vector of norm 100 (or 30) plus small noise: errors at the level of float32 rounding of
    the noise, as the paper's float32 code gets (value 1.6e-8, gradient 5.8e-7 in the issue's example)."""
    g = torch.Generator().manual_seed(3)
    common = torch.nn.functional.normalize(torch.randn(1, 64, generator=g, dtype=torch.float64), dim=1) * norm
    x = (common + spread * torch.randn(256, 64, generator=g, dtype=torch.float64)).float().to(DEVICE)
    check_uniform(backend, x, t)
    check_uniform(backend, x, t, x[:40] + spread)


@pytest.mark.parametrize(("n", "k"), [(5, 0), (1023, 0), (1024, 0), (700, 2300), (1, 4000), (3069, 0)])
def test_center_is_the_midhinge_of_the_sampled_rows(n, k):
    """The rule csrc/center.h shares: rows floor(i total / S) + (i A mod floor(total / S)), S = min(total, 1023), of
    x then the queue; per column the mean of the values of ranks (S - 1) // 4 and S - 1 - (S - 1) // 4."""
    g = torch.Generator().manual_seed(n + k)
    rows = torch.randint(-50, 50, (n + k, 3), generator=g).float()  # ties
    x, queue = rows[:n], (rows[n:] if k else None)
    total = n + k
    size = min(total, 1023)
    picked = [i * total // size + i * CENTER_JITTER % (total // size) for i in range(size)]
    assert picked == sorted(set(picked)) and picked[-1] < total
    ordered = rows[picked].double().sort(dim=0).values
    low = (size - 1) // 4
    assert torch.equal(sampled_center(x, queue), (ordered[low] + ordered[size - 1 - low]) / 2)


def test_center_samples_periodic_rows_in_their_share():
    """5115 = 5 x 1023 rows, every fifth one from a group 1e3 away: an even stride would sample only those (the
    center in the far group); the jitter samples a fifth of them, and the quartiles stay among the other rows."""
    rows = torch.zeros(5115, 2)
    rows[::5] = 1e3
    assert torch.equal(sampled_center(rows), torch.zeros(2, dtype=torch.float64))


@pytest.mark.parametrize("queue_rows", [0, 1])
def test_center_traces_without_a_guard_on_the_sizes(queue_rows):
    """Under torch.compile(dynamic=True) one graph serves every N (and K): no guard on the sample's size or ranks."""
    frames = []

    def count(graph, example_inputs):
        frames.append(graph)
        return graph

    center = torch.compile(sampled_center, fullgraph=True, dynamic=True, backend=count)
    for n in (300, 301, 1100, 2500):
        x = torch.randn(n, 4)
        got = center(x, torch.randn(n // 3 + 7, 4) if queue_rows else None)
        assert got.shape == (4,)
    assert len(frames) == 1


@pytest.mark.parametrize("queue_rows", [0, 192])
def test_an_outlier_does_not_move_the_center(backend, queue_rows):
    """One row of norm 1e6 among 255 unit rows (float32, exact products): the paper's float32 pdist is exact here.
    Centered on the mean, which the outlier moves ~4000 away from every other row, the Gram form lost the unit rows'
    distances (-1.1 for -3.5, gradients 33% off); the sampled quartiles stay among them, and the outlier's own pairs
    keep their relative accuracy. With a queue: the last 192 rows are the queue."""
    g = torch.Generator().manual_seed(6)
    rows = torch.nn.functional.normalize(torch.randn(256, 16, generator=g, dtype=torch.float64), dim=1)
    rows[0] *= 1e6
    rows = rows.float().to(DEVICE)
    n = 256 - queue_rows
    x = rows[:n].clone().requires_grad_()
    queue = rows[n:].clone().requires_grad_() if queue_rows else None
    got = hyperloss.uniform_loss(x, 2.0, queue=queue, backend=backend, precision="highest")
    want, want_grads = uniform_reference(x, 2.0, queue)
    value = float(got.detach())
    assert abs(value - float(want)) <= 1e-5 * abs(float(want)), (value, float(want))
    grads = torch.autograd.grad(got, [x] + ([queue] if queue_rows else []))
    for name, grad, want_grad in zip(("x", "queue"), grads, want_grads, strict=False):
        assert_close_scaled(grad, want_grad, 1e-4, f"d loss / d {name}")


@pytest.mark.parametrize("apart", [1e2, 1e3, 1e4])
@pytest.mark.parametrize("queue_rows", [0, 100])
@pytest.mark.parametrize("weighted", [False, True])
def test_far_apart_groups_on_the_cpu_kernel(apart, queue_rows, weighted):
    """Two halves of unit-spread float32 rows ``apart`` away from each other: no center serves both, and the float32
    Gram form of one half's rows, far from the center, loses their distances (gradients 6% off at 1e3, -1.4 for -4.2
    at 1e4 before). The cpu kernel bounds that error from the rows' norms and computes such calls in double: the
    loss and gradients of the float32 rows to float32 rounding, as the paper's float32 pdist gets them."""
    if "cpu" not in CPU_BACKENDS:
        pytest.skip("the native extension is not built")
    g = torch.Generator().manual_seed(8)
    rows = torch.nn.functional.normalize(torch.randn(256, 16, generator=g, dtype=torch.float64), dim=1)
    rows[128:] += apart * torch.nn.functional.normalize(torch.randn(1, 16, generator=g, dtype=torch.float64), dim=1)
    rows = rows[torch.randperm(256, generator=g)].float()
    n = 256 - queue_rows
    leaves = [rows[:n].clone().requires_grad_()] + ([rows[n:].clone().requires_grad_()] if queue_rows else [])
    weights = 0.5 + torch.rand(n, generator=g, dtype=torch.float64) if weighted else None
    got = hyperloss.uniform_loss(leaves[0], 2.0, queue=leaves[1] if queue_rows else None, weights=weights,
                                 backend="cpu")  # fmt: skip
    wide = [v.detach().double().requires_grad_() for v in leaves]
    want = reference.dense_uniform_loss(wide[0], 2.0, queue=wide[1] if queue_rows else None, weights=weights)
    value, want_value = float(got.detach()), float(want.detach())
    assert abs(value - want_value) <= 1e-6 * abs(want_value), (value, want_value)
    for grad, want_grad in zip(torch.autograd.grad(got, leaves), torch.autograd.grad(want, wide), strict=True):
        assert_close_scaled(grad, want_grad, 1e-6, "gradient")


def test_long_rows_sum_without_losing_digits(backend):
    """N = 2, D = 4e6 in float32: plain float32 sums over D lost 0.35% (and once gave -inf)."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 4_000_000, generator=g).to(DEVICE).requires_grad_()
    got = hyperloss.uniform_loss(x, 2.0, backend=backend)
    want, (want_grad,) = uniform_reference(x, 2.0)
    assert abs(got.item() - want.item()) <= 1e-6 * abs(want.item())
    (grad,) = torch.autograd.grad(got, x)
    assert_close_scaled(grad, want_grad, 1e-5, "gradient of long rows")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_huge_norms_do_not_overflow(backend, dtype):
    """Rows of norm 1e19 (squared norms overflow float32) whose distances keep the loss within range."""
    big = 1e19 if dtype == torch.float32 else 1e150
    g = torch.Generator().manual_seed(5)
    x = big * torch.nn.functional.normalize(torch.randn(1, 4, generator=g, dtype=torch.float64), dim=1)
    x = (x + big / 1e18 * torch.randn(12, 4, generator=g, dtype=torch.float64)).to(device=DEVICE, dtype=dtype)
    check_uniform(backend, x, 2.0 * 1e18**2 / big**2)
    same = torch.full((6, 3), 1e10, dtype=dtype, device=DEVICE)
    assert hyperloss.uniform_loss(same, 2.0, backend=backend).item() == 0.0  # identical rows: every distance is 0


def test_loss_below_float32_range_is_minus_inf_with_finite_gradients(backend):
    """Random unit rows times 1e20 in float32: the exact loss (about -7e39) is below float32's range, so -inf is its
    rounding; the gradient (about 1e21) is representable and must match. At 1e19 the loss is finite and matches."""
    check_uniform(backend, features(10, 4, seed=10, dtype=torch.float64, scale=1e19).float(), 2.0)
    x = features(10, 4, seed=10, dtype=torch.float64, scale=1e20).float().requires_grad_()
    want, (want_grad,) = uniform_reference(x, 2.0)
    assert want.item() < -torch.finfo(torch.float32).max
    got = hyperloss.uniform_loss(x, 2.0, backend=backend)
    assert got.item() == -math.inf
    (grad,) = torch.autograd.grad(got, x)
    assert torch.isfinite(grad).all()
    assert_close_scaled(grad, want_grad, 1e-5, "gradient of rows of norm 1e19")


def test_near_zero_loss_keeps_its_digits(backend):
    """With t = 1e-6 the loss is about -2e-6: float32 lse - log|P| used to keep none of its digits."""
    x = features(1000, 32, seed=6, dtype=torch.float32)
    want, _ = uniform_reference(x, 1e-6)
    got = hyperloss.uniform_loss(x, 1e-6, backend=backend).item()
    assert got <= 0.0
    assert abs(got - want.item()) <= 1e-4 * abs(want.item()), (got, want.item())
    for t in (1e-12, 1e-9, 1e-3):
        assert hyperloss.uniform_loss(x[:300], t, backend=backend).item() <= 0.0


@pytest.mark.parametrize("t", [1e-8, 1e-12])
@pytest.mark.parametrize("with_queue", [False, True])
def test_float32_losses_far_below_float32_resolution(backend, t, with_queue):
    """Losses of -1e-8 .. -1e-12 (far below float32's resolution of log|P|) from float32 rows: every digit of the
    value (the cpu kernel computes such calls again in double) and the gradients, against float64."""
    x = features(60, 6, seed=7, dtype=torch.float32, normalize=False)
    queue = features(9, 6, seed=8, dtype=torch.float32, normalize=False) if with_queue else None
    _, want_grads = uniform_reference(x, t, queue)
    # The value as log1p(mean(expm1(-t d))) in float64: log(mean(exp(-t d))) keeps only ~1e-16 / 1e-12 of it.
    rows = torch.cat([x, queue]) if with_queue else x
    d = torch.cdist(x.double(), rows.double()).pow(2) if with_queue else torch.pdist(x.double()).pow(2)
    if with_queue:  # x's pairs j > i and every (x, queue) pair
        n = x.shape[0]
        d = torch.cat([d[:, :n][torch.triu(torch.ones(n, n, dtype=torch.bool), 1)], d[:, n:].reshape(-1)])
    want = torch.log1p(torch.expm1(-t * d).mean()).item()
    got = hyperloss.uniform_loss(x.requires_grad_(), t, queue=queue, backend=backend)
    # float64's floor: lse - log|P| is formed in float64, ~eps64 log|P| ~ 1e-15 absolute
    assert abs(got.item() - want) <= 1e-5 * abs(want) + 1e-15, (got.item(), want)
    assert_close_scaled(torch.autograd.grad(got, x)[0], want_grads[0], 1e-5, "gradient near 0")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("t", [1e39, 1e300])
def test_any_finite_t(backend, dtype, t):
    """t beyond float32 range: scores are formed relative to the closest pair, never as t * d in the input dtype."""
    x = features(20, 3, seed=7, dtype=torch.float64, normalize=False) * (1.0 / t) ** 0.5
    check_uniform(backend, x.to(dtype), t)
    with pytest.raises(ValueError, match="t must be finite"):
        hyperloss.uniform_loss(x.to(dtype), 10**400, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@settings(max_examples=examples(25), deadline=None, derandomize=True)
@given(
    n=st.integers(2, 80),
    k=st.integers(0, 30),
    d=st.integers(1, 40),
    t=st.sampled_from([0.5, 2.0, 20.0]),
    offset=st.sampled_from([0.0, 1.0, 1e2, 1e4, 1e6]),
    seed=st.integers(0, 2**16),
)
def test_translation_invariance(backend, dtype, n, k, d, t, offset, seed):
    """Translating every row (and the queue) by one vector leaves the loss as it was: against the float64 oracle of
    the translated (rounded) input, with tolerances set by the spread of the rows, not by their offset."""
    g = torch.Generator().manual_seed(seed)
    spread = 0.5
    shift = offset * spread * torch.randn(1, d, generator=g, dtype=torch.float64)
    x = (shift + spread * torch.randn(n, d, generator=g, dtype=torch.float64)).to(device=DEVICE, dtype=dtype)
    queue = (shift + spread * torch.randn(k, d, generator=g, dtype=torch.float64)).to(device=DEVICE, dtype=dtype)
    queue = queue if k else None
    check_uniform(backend, x, t, queue)
    if dtype == torch.float64 and queue is None:
        moved = hyperloss.uniform_loss(x, t, backend=backend).item()
        here = hyperloss.uniform_loss(x - shift.to(DEVICE), t, backend=backend).item()
        assert moved == pytest.approx(here, rel=1e-9, abs=1e-9 * (1 + offset) ** 2)


def test_gradients_are_reproducible(backend):
    """Identical calls give bitwise-identical values and gradients, whatever the thread count."""
    x = features(300, 24, seed=8, dtype=torch.float32)
    queue = features(70, 24, seed=9, dtype=torch.float32)

    def run():
        xr, qr = x.clone().requires_grad_(), queue.clone().requires_grad_()
        loss = hyperloss.uniform_loss(xr, 2.0, queue=qr, backend=backend)
        return (loss, *torch.autograd.grad(loss, (xr, qr)))

    threads = torch.get_num_threads()
    try:
        first = run()
        results = [run() for _ in range(3)]
        torch.set_num_threads(1)
        results.append(run())
    finally:
        torch.set_num_threads(threads)
    for other in results:
        for a, b in zip(first, other, strict=True):
            assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------------------------
# A trainable temperature: t as a tensor, d loss/dt from the same kernel call.


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=examples(40), deadline=None, derandomize=True)
@given(
    n=st.integers(2, 70),
    k=st.integers(0, 25),
    d=st.integers(1, 40),
    t=st.sampled_from([0.3, 2.0, 50.0]),  # 50: every exp underflows in float32
    dtype=st.sampled_from([torch.float32, torch.float64]),
    grads=st.sampled_from(["x t", "t", "x queue t", "queue t", "x"]),
    intra_batch=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_tensor_temperature_and_its_gradient(backend, n, k, d, t, dtype, grads, intra_batch, seed):
    """Value and gradients for x, the queue and t against float64 autograd through the dense definition."""
    x = features(n, d, seed=seed, dtype=dtype).requires_grad_("x" in grads)
    queue = features(k, d, seed=seed + 1, dtype=dtype).requires_grad_("queue" in grads) if k else None
    intra_batch = intra_batch or queue is None
    t_tensor = torch.tensor(t, dtype=torch.float64, device=DEVICE, requires_grad="t" in grads)
    got = hyperloss.uniform_loss(x, t_tensor, queue=queue, intra_batch=intra_batch, backend=backend)
    inputs = [v for v in (x, queue, t_tensor) if v is not None and v.requires_grad]
    got_grads = torch.autograd.grad(got, inputs)

    wanted = [v.detach().cpu().double().requires_grad_(v.requires_grad) if v is not None else None for v in (x, queue)]
    t64 = torch.tensor(t, dtype=torch.float64, requires_grad=True)
    want = reference.dense_uniform_loss(wanted[0], t64, queue=wanted[1], intra_batch=intra_batch)
    want_grads = torch.autograd.grad(want, [v for v in (*wanted, t64) if v is not None and v.requires_grad])
    if not t_tensor.requires_grad:
        want_grads = want_grads[:-1]

    kind = operand_kind(backend, dtype)
    value_tol, grad_tol, floor = uniform_tolerances(kind, dtype, t, x, queue, intra_batch, float(want.detach()))
    assert abs(float(got.detach()) - float(want.detach())) <= value_tol
    for got_grad, want_grad, v in zip(got_grads, want_grads, inputs, strict=True):
        assert got_grad.dtype == v.dtype and got_grad.shape == v.shape
        # d loss/dt = -(the pair-weighted mean squared distance): on the scale of the largest squared distance.
        scale = floor if v is not t_tensor else 4 * max_centered_sq_norm(x, *([] if queue is None else [queue]))
        assert_close_scaled(got_grad, want_grad, grad_tol, f"gradient ({backend}, {kind})", floor=scale)


def test_tensor_temperature_forms(backend):
    """A 0-dim or one-element tensor of any float dtype, with or without grad, gives the number's value; a
    bad one is refused."""
    x = features(30, 6, seed=3, dtype=torch.float32)
    want = hyperloss.uniform_loss(x, 1.5, backend=backend)
    for t in (torch.tensor(1.5), torch.tensor([1.5], dtype=torch.float64), torch.tensor(1.5, requires_grad=True)):
        assert hyperloss.uniform_loss(x, t.to(DEVICE), backend=backend).item() == want.item()
    with pytest.raises(TypeError, match="one-element floating tensor"):
        hyperloss.uniform_loss(x, torch.tensor([1.0, 2.0]), backend=backend)
    with pytest.raises(TypeError, match="one-element floating tensor"):
        hyperloss.uniform_loss(x, torch.tensor(2), backend=backend)
    with pytest.raises(ValueError, match="t must be finite and > 0"):
        hyperloss.uniform_loss(x, torch.tensor(-1.0, requires_grad=True), backend=backend)


def test_gradcheck_temperature_native_kernel():
    if "cpu" not in CPU_BACKENDS:
        pytest.skip("the native extension is not built")
    x = features(9, 4, seed=13, device="cpu").requires_grad_()
    queue = features(5, 4, seed=14, device="cpu").requires_grad_()
    t = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    for q in (None, queue):
        assert torch.autograd.gradcheck(
            lambda x, t, q=q: hyperloss.uniform_loss(x, t, queue=q, backend="cpu"), (x, t), eps=1e-6, atol=1e-8
        )
    assert torch.autograd.gradcheck(lambda t: hyperloss.uniform_loss(x.detach(), t, backend="cpu"), (t,))


def test_normalize_option(backend):
    x = features(40, 7, seed=4, dtype=torch.float64, normalize=False, scale=3.0).requires_grad_()
    queue = features(9, 7, seed=5, dtype=torch.float64, normalize=False).requires_grad_()
    got = hyperloss.uniform_loss(x, 2.0, queue=queue, normalize=True, backend=backend)
    unit = [torch.nn.functional.normalize(v.detach().cpu().requires_grad_(), dim=1) for v in (x, queue)]
    leaves = [u.grad_fn.next_functions[0][0].variable for u in unit]
    want = reference.dense_uniform_loss(unit[0], 2.0, queue=unit[1])
    assert float(got.detach()) == pytest.approx(float(want), rel=1e-10)
    for g, w in zip(torch.autograd.grad(got, (x, queue)), torch.autograd.grad(want, leaves), strict=True):
        assert_close_scaled(g, w, 1e-8, "gradient through the normalization")
