"""The public surface: input checks, backend listing and choice, modules, torch.compile."""

from __future__ import annotations

import pytest
import torch

import hyperloss
from hyperloss import reference
from tests.helpers import CPU_BACKENDS, features, native_extension_expected

X = features(8, 4, seed=0, dtype=torch.float32, device="cpu")


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
        (lambda: hyperloss.uniform_loss(X, t=10**400), ValueError, "t must be finite"),
        (lambda: hyperloss.align_loss(X, X, alpha=10**400), ValueError, "alpha must be finite"),
        (lambda: hyperloss.uniform_loss(X.to(torch.float8_e4m3fn)), TypeError, "floating-point"),
        (lambda: hyperloss.align_loss(*[X.to(torch.float8_e5m2)] * 2), TypeError, "floating-point"),
        (lambda: hyperloss.UniformLoss(backend="nope"), ValueError, "unknown backend 'nope'"),
        (lambda: hyperloss.AlignLoss(backend=3), TypeError, "backend must be a string"),
        (lambda: hyperloss.UniformLoss(intra_batch="yes"), TypeError, "intra_batch must be a bool"),
        (lambda: hyperloss.AlignUniformLoss(align_weight=float("nan")), ValueError, "align_weight must be finite"),
        (lambda: hyperloss.AlignUniformLoss(uniform_weight="1"), TypeError, "uniform_weight must be a real"),
        (lambda: hyperloss.AlignUniformLoss(t=float("inf")), ValueError, "t must be finite"),
        (lambda: hyperloss.uniform_loss(X, precision="fp8"), ValueError, "precision must be None or one of"),
        (lambda: hyperloss.UniformLoss(precision="tf16"), ValueError, "precision must be None or one of"),
        (lambda: hyperloss.AlignUniformLoss(precision=1), ValueError, "precision must be None or one of"),
    ],
)
def test_bad_input_raises_before_any_work(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_unavailable_backend_says_what_is_available():
    unavailable = [b for b in hyperloss.backends() if not b.available]
    if not unavailable:
        pytest.skip("every backend is available here")
    with pytest.raises(ValueError, match=r"not available: .*Available for cpu: .*chunked"):
        hyperloss.uniform_loss(X, backend=unavailable[0].name)


def test_backends_lists_each_with_a_reason():
    rows = {b.name: b for b in hyperloss.backends()}
    assert {"cpu", "triton", "chunked"} <= set(rows)
    assert rows["chunked"].available
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
    from hyperloss import backends

    expected = "cpu" if "cpu" in CPU_BACKENDS else "chunked"
    assert backends.resolve("auto", X.device) == expected
    monkeypatch.setenv("HYPERLOSS_BACKEND", "reference")
    assert backends.resolve("auto", X.device) == "chunked"
    assert backends.resolve("cpu", X.device) == "cpu" or "cpu" not in CPU_BACKENDS  # explicit beats the env
    monkeypatch.setenv("HYPERLOSS_BACKEND", "bogus")
    with pytest.raises(ValueError, match="unknown HYPERLOSS_BACKEND 'bogus'"):
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


def test_torch_compile_fullgraph_trainable_temperature():
    """A temperature parameter traces with fullgraph=True and gets the eager gradient."""
    torch._dynamo.reset()
    x = features(40, 8, seed=6, dtype=torch.float32).requires_grad_()
    t = torch.nn.Parameter(torch.tensor(1.7))

    def step(x, t):
        return hyperloss.uniform_loss(x, t) + hyperloss.uniform_loss(x[:25], t * 2)

    got = torch.compile(step, fullgraph=True)(x, t)
    got_grads = torch.autograd.grad(got, (x, t))
    want = step(x, t)
    want_grads = torch.autograd.grad(want, (x, t))
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    for g, w in zip(got_grads, want_grads, strict=True):
        assert torch.allclose(g, w, rtol=1e-5, atol=1e-7)


def test_invalid_tensor_temperature_under_compile_gives_nan(backend):
    """Under torch.compile a tensor t is not read: t <= 0 or non-finite gives a NaN loss on every backend (the
    native kernels would refuse it, the formula would give a number), a valid one the eager value."""
    torch._dynamo.reset()
    x = features(16, 5, seed=8, dtype=torch.float32)
    compiled = torch.compile(lambda x, t: hyperloss.uniform_loss(x, t, backend=backend), fullgraph=True)
    for bad in (-1.0, 0.0, float("-inf"), float("inf"), float("nan")):
        assert torch.isnan(compiled(x, torch.tensor(bad, device=x.device))), bad
    want = hyperloss.uniform_loss(x, 2.0, backend=backend)
    assert compiled(x, torch.tensor(2.0, device=x.device)).item() == pytest.approx(want.item(), rel=1e-6)


def test_modules_trainable_temperature_parts_and_normalize(backend):
    """trainable_t makes log t a parameter; return_parts gives the unweighted terms; normalize=True with
    align_weight 1 and uniform_weight lam is lightly's HypersphereLoss(t, lam, alpha)."""
    za = features(30, 6, seed=1, normalize=False, scale=2.0).requires_grad_()
    zb = features(30, 6, seed=2, normalize=False, scale=2.0).requires_grad_()
    module = hyperloss.AlignUniformLoss(1.0, 0.5, 2.0, 1.0, trainable_t=True, normalize=True, return_parts=True)
    module.backend = backend
    parts = module(za, zb)
    assert [name for name, _ in module.named_parameters()] == ["temperature.log_t"] and module.t == 1.0

    x, y = (torch.nn.functional.normalize(v.detach().cpu().requires_grad_(), dim=1) for v in (za, zb))
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    lightly_style = (x - y).norm(dim=1).pow(2).mean()
    uniform = (reference.dense_uniform_loss(x, log_t.exp()) + reference.dense_uniform_loss(y, log_t.exp())) / 2
    assert parts.align.item() == pytest.approx(lightly_style.item(), rel=1e-10)
    assert parts.uniform.item() == pytest.approx(uniform.item(), rel=1e-10)
    assert parts.loss.item() == pytest.approx((lightly_style + 0.5 * uniform).item(), rel=1e-10)
    parts.loss.backward()
    (want,) = torch.autograd.grad(lightly_style + 0.5 * uniform, log_t)
    assert module.temperature.log_t.grad.item() == pytest.approx(want.item(), rel=1e-8)
    assert "trainable" in repr(module) and "normalize=True" in repr(module)
    plain = hyperloss.UniformLoss(t=3.0, trainable_t=True, backend=backend)
    assert plain.t == pytest.approx(3.0) and len(list(plain.parameters())) == 1


def _compiled_step():
    import torch._dynamo.testing

    counter = torch._dynamo.testing.CompileCounterWithBackend("inductor")

    def step(x, y, queue, t, alpha):
        uniform = hyperloss.uniform_loss(x, t) + hyperloss.uniform_loss(y, t, queue=queue)
        return hyperloss.align_loss(x, y, alpha) + uniform

    return step, torch.compile(step, fullgraph=True, dynamic=True, backend=counter), counter


def test_torch_compile_dynamic_traces_once_for_every_size_t_and_alpha():
    """A last batch of another size, or a scheduled t, must not recompile (log|P|, t and alpha are tensors)."""
    torch._dynamo.reset()
    step, compiled, counter = _compiled_step()
    queue = features(9, 6, seed=9, dtype=torch.float32)
    for n in range(4, 24):
        for t, alpha in ((2.0, 2.0), (0.7, 1.5), (5.0, 3.0)):
            x = features(n, 6, seed=n, dtype=torch.float32).requires_grad_()
            y = features(n, 6, seed=n + 1, dtype=torch.float32)
            got = compiled(x, y, queue, t, alpha)
            (got_grad,) = torch.autograd.grad(got, x)
            want = step(x, y, queue, t, alpha)
            (want_grad,) = torch.autograd.grad(want, x)
            assert got.item() == pytest.approx(want.item(), rel=1e-6, abs=1e-7)
            assert torch.allclose(got_grad, want_grad, rtol=1e-5, atol=1e-7)
    assert counter.frame_count == 1


@pytest.mark.parametrize("fullgraph", [False, True])
def test_bad_arguments_under_compile_raise_our_errors(fullgraph):
    """Without fullgraph the plain ValueError surfaces; with fullgraph=True dynamo wraps every exception raised while
    tracing in its own error, which carries our message."""
    torch._dynamo.reset()
    compiled = torch.compile(
        lambda x, y, t, alpha: hyperloss.align_loss(x, y, alpha) + hyperloss.uniform_loss(x, t),
        fullgraph=fullgraph,
        dynamic=True,
    )
    x = features(8, 6, seed=1, dtype=torch.float32)
    compiled(x, x, 2.0, 2.0)
    for args, match in (
        ((x, x, -1.0, 2.0), "t must be finite and > 0"),
        ((x, x, 2.0, float("nan")), "alpha must be finite and > 0"),
        ((x, x[:5], 2.0, 2.0), "same shape"),
    ):
        with pytest.raises(Exception, match=match) as raised:
            compiled(*args)
        assert fullgraph or raised.type is ValueError


def test_torch_export_with_a_dynamic_batch_dimension():
    class Model(torch.nn.Module):
        def forward(self, x, y, queue):
            return hyperloss.uniform_loss(x, 2.0, queue=queue) + hyperloss.align_loss(x, y)

    n = torch.export.Dim("n", min=2)
    example = [features(10, 6, seed=s, dtype=torch.float32) for s in (1, 2, 3)]
    program = torch.export.export(Model(), tuple(example), dynamic_shapes={"x": {0: n}, "y": {0: n}, "queue": None})
    for rows in (3, 17, 130):
        x, y = features(rows, 6, seed=rows, dtype=torch.float32), features(rows, 6, seed=rows + 1, dtype=torch.float32)
        assert program.module()(x, y, example[2]).item() == pytest.approx(Model()(x, y, example[2]).item(), rel=1e-6)
