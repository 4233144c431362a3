"""Shared test helpers: the device and backends under test, inputs, the float64 oracle, and the one tolerance model.

Every op test takes the ``backend`` fixture (tests/conftest.py): each backend that runs on tensors of ``DEVICE``
here (the GPU when torch sees one, else the CPU; the Triton kernels join on the CPU under TRITON_INTERPRET=1).
Values and gradients are compared with the float64 oracle (distances by direct differences) through
``check_uniform`` / ``check_align``, with tolerances from ``TOLERANCES``, keyed by what the backend's dot products
round their operands to (the input dtype and the float32 precision).
"""

from __future__ import annotations

import math
import os

import torch

import hyperloss
from hyperloss import reference
from hyperloss._common import sampled_center
from hyperloss._precision import resolve_precision

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
BACKENDS = hyperloss.backends.usable(DEVICE.type)
# The C++ CPU kernels' backend, where it is built (tests of the kernels' own properties).
CPU_BACKENDS = [name for name in hyperloss.backends.usable("cpu") if name != "triton"]

EPS = {torch.float64: torch.finfo(torch.float64).eps, torch.float32: torch.finfo(torch.float32).eps}

# The tolerance model, keyed by what a backend's dot products round their operands to ("float64", "float32":
# exact products of the inputs; "tf32", "bfloat16", "float16": rounded operands, float32 sums).
#   value_rel: value error relative to 1 + |value|, beyond the score error below;
#   grad_rel: gradient error relative to its largest entry (or a floor with meaning, see uniform_grad_scale);
#   score_units: 0 for exact products, whose score error is score_error_budget (the Gram form on centered rows);
#     else the value error in units of t * max ||.||^2 * the operands' unit roundoff.
# Rounded kinds are sized on a torch emulation of their rounding (N = 256..512, D = 5..128) with a 2-5x margin.
TOLERANCES = {
    "float64": (1e-10, 1e-8, 0),
    "float32": (2e-5, 2e-4, 0),
    "tf32": (1e-5, 2e-2, 16),
    "bfloat16": (1e-5, 3e-2, 4),
    "float16": (1e-5, 1e-2, 4),
}
OPERAND_EPS = {"tf32": 2.0**-11, "bfloat16": 2.0**-8, "float16": 2.0**-11}
# Gradients are returned in the input dtype: rounding a 16-bit gradient costs this much relative to its largest entry.
GRAD_ROUNDING = {torch.float16: 2e-3, torch.bfloat16: 1e-2}


def operand_kind(backend: str, dtype: torch.dtype, precision: str | None = None) -> str:
    """What ``backend``'s dot products round operands to for ``dtype`` inputs on DEVICE (a TOLERANCES key)."""
    if dtype == torch.float64:
        return "float64"
    if backend in ("triton", "cuda"):  # the fused GPU kernels: 16-bit operands, or float32 per the precision
        if dtype != torch.float32:
            return str(dtype).removeprefix("torch.")
        return {"ieee": "float32", "tf32": "tf32", "bf16": "bfloat16"}[resolve_precision(dtype, precision)]
    if DEVICE.type == "cuda" and backend == "chunked":  # torch's own matmul setting
        return {"ieee": "float32", "tf32": "tf32", "bf16": "bfloat16"}[resolve_precision(torch.float32, None)]
    return "float32"  # the CPU kernels: exact float32 products of the (rounded) inputs


def unsupported(backend: str, dtype: torch.dtype, precision: str | None = None) -> bool:
    """True where the backend must refuse (raise NotImplementedError) instead of computing: Triton's CPU
    interpreter cannot emulate bfloat16 or tf32/bf16 products."""
    if not (INTERPRET and backend == "triton" and DEVICE.type == "cpu"):
        return False
    return dtype == torch.bfloat16 or (dtype == torch.float32 and resolve_precision(dtype, precision) != "ieee")


def native_extension_expected() -> bool:
    return os.environ.get("HYPERLOSS_NO_EXTENSION", "0") != "1"


def features(
    n: int, d: int, *, seed: int, dtype=torch.float64, scale: float = 1.0, normalize: bool = True, device=DEVICE
):
    """(n, d) Gaussian rows (unit rows when ``normalize``) times ``scale``, drawn in float64 on the CPU from
    ``seed``, then rounded to ``dtype`` on ``device``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    if normalize:
        x = torch.nn.functional.normalize(x, dim=1)
    return (x * scale).to(device=device, dtype=dtype)


def uniform_reference(x, t, queue=None, intra_batch=True):
    """Value and gradients in float64, distances by direct differences: the paper's formula where it keeps its
    precision, else the stable log-sum-exp (the paper's code returns -inf, or loses digits to subnormal numbers,
    below exp(-708))."""
    x64 = x.detach().cpu().double().requires_grad_()
    q64 = None if queue is None else queue.detach().cpu().double().requires_grad_()
    if q64 is None:
        value = reference.paper_uniform_loss(x64, t)
    else:
        value = reference.paper_uniform_loss_with_queue(x64, q64, t, intra_batch)
    # Below log(smallest normal) the paper's exp terms are subnormal (or 0): few or no significant digits left.
    if not value > math.log(torch.finfo(torch.float64).tiny) + 1:
        value = reference.dense_uniform_loss(x64, t, queue=q64, intra_batch=intra_batch)
    inputs = [x64] if q64 is None else [x64, q64]
    grads = torch.autograd.grad(value, inputs)
    return value.detach(), grads


def _all_rows(*tensors: torch.Tensor) -> torch.Tensor:
    return torch.cat([v.detach().double().reshape(-1, v.shape[-1]) for v in tensors])


def max_centered_sq_norm(*tensors: torch.Tensor) -> float:
    """max ||v - c||^2 over the rows of every tensor, c the backends' center (``sampled_center``): the scale of the
    squared distances that their Gram form works on after centering (the loss is translation invariant)."""
    rows = _all_rows(*tensors).cpu()
    return float((rows - sampled_center(rows)).pow(2).sum(1).max())  # x then the queue: the same sample


def score_error_budget(dtype, t: float, *tensors: torch.Tensor) -> float:
    """Absolute error of a score -t ||u - v||^2 computed through the Gram matrix of centered rows in ``dtype``: it
    scales with t * the largest centered squared norm (cancellation in n_u + n_v - 2 u.v), not with the score."""
    return 64 * EPS[dtype] * t * max_centered_sq_norm(*tensors)


def uniform_grad_scale(x, t: float, queue=None, intra_batch: bool = True) -> float:
    """The size of the largest term in any gradient entry, 2t * max_i (sum_j w_ij) * max |x_i - x_j|, with w the
    pair weights exp(s - lse) (float64, direct differences).

    A gradient entry is a sum of such terms; where they cancel (a row whose nearest neighbours are its duplicates)
    the entry is far smaller than its terms, and its rounding error is still measured against them.
    """
    x64 = x.detach().cpu().double()
    rows = [x64] if queue is None else [x64, queue.detach().cpu().double()]
    scores = []
    if intra_batch:
        n = x64.shape[0]
        mask = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
        intra = reference.direct_sq_dists(x64, x64).mul(-t).masked_fill(~mask, -math.inf)
        scores.append(intra)
    if queue is not None:
        scores.append(reference.direct_sq_dists(x64, rows[1]).mul(-t))
    lse = torch.logsumexp(torch.cat([s.flatten() for s in scores]), dim=0)
    mass = torch.zeros(sum(r.shape[0] for r in rows), dtype=torch.float64)
    n = x64.shape[0]
    if intra_batch:
        w = (scores[0] - lse).exp()
        mass[:n] += w.sum(1) + w.sum(0)
    if queue is not None:
        w = (scores[-1] - lse).exp()
        mass[:n] += w.sum(1)
        mass[n:] += w.sum(0)
    all_rows = torch.cat(rows)
    spread = float((all_rows.amax(0) - all_rows.amin(0)).max())
    return 2 * t * float(mass.max()) * spread


def assert_close_scaled(got: torch.Tensor, want: torch.Tensor, rel: float, what: str, floor: float = 1e-3) -> None:
    """max |got - want| <= rel * max(max |want|, floor): gradients compared on the scale of their largest entry, or
    of ``floor`` (an all-zero gradient is compared in absolute terms; see ``uniform_grad_scale`` for a floor with
    meaning)."""
    got, want = got.detach().cpu().double(), want.detach().cpu().double()
    scale = max(float(want.abs().max()), floor)
    err = float((got - want).abs().max())
    assert err <= rel * scale, f"{what}: max error {err:.3g} > {rel:.3g} * {scale:.3g}"


def uniform_tolerances(kind: str, grad_dtype: torch.dtype, t: float, x, queue=None, intra_batch=True, want=0.0):
    """(absolute value error, gradient error relative to its largest entry, gradient floor) allowed for a loss
    computed with ``kind`` operands (a TOLERANCES key) and gradients in ``grad_dtype``."""
    value_rel, grad_rel, units = TOLERANCES[kind]
    tensors = [x] if queue is None else [x, queue]
    if units == 0:
        budget = score_error_budget(torch.float64 if kind == "float64" else torch.float32, t, *tensors)
        value_tol, grad_tol = budget + value_rel * (1 + abs(want)), grad_rel + 8 * budget
        floor = uniform_grad_scale(x, t, queue, intra_batch)
    else:
        max_sq_norm = max(float(v.detach().cpu().double().pow(2).sum(1).max()) for v in tensors)
        scale = t * max(max_sq_norm, 1.0)
        value_tol = units * OPERAND_EPS[kind] * scale + value_rel * (1 + abs(want))
        grad_tol, floor = grad_rel * max(1.0, scale / 2), 1e-3
    return value_tol, max(grad_tol, GRAD_ROUNDING.get(grad_dtype, 0.0)), floor


def check_uniform(backend, x, t, queue=None, intra_batch=True, queue_grad=True, precision=None) -> float:
    """uniform_loss through the public API on ``backend``: value, dtype and gradients (x, and the queue when it
    requires grad) against the float64 oracle, within the tolerance model. Returns the value."""
    x = x.detach().requires_grad_()
    if queue is not None:
        queue = queue.detach().requires_grad_(queue_grad)
    got = hyperloss.uniform_loss(x, t, queue=queue, intra_batch=intra_batch, backend=backend, precision=precision)
    want, want_grads = uniform_reference(x, t, queue, intra_batch)
    assert got.dtype == (torch.float64 if x.dtype == torch.float64 else torch.float32)
    assert got.shape == () and got.device == x.device
    kind = operand_kind(backend, x.dtype, precision)
    value_tol, grad_tol, floor = uniform_tolerances(kind, x.dtype, t, x, queue, intra_batch, float(want))
    value = float(got.detach())
    err = abs(value - float(want))
    assert err <= value_tol, f"value {value} vs {float(want)} ({backend}, {kind}): error {err:.3g} > {value_tol:.3g}"
    grads = torch.autograd.grad(got, [x] + ([queue] if queue is not None and queue_grad else []))
    for name, g, w in zip(("x", "queue"), grads, want_grads, strict=False):
        assert g.dtype == x.dtype and g.shape == w.shape and g.device == x.device
        assert_close_scaled(g, w, grad_tol, f"d loss / d {name} ({backend}, {kind})", floor=floor)
    return value


def check_align(backend, x, y, alpha) -> float:
    """align_loss through the public API on ``backend``: value, dtype and both gradients against the float64
    paper formula (no products: the tolerance of the compute dtype, gradients rounded to the input dtype)."""
    x, y = x.detach().requires_grad_(), y.detach().requires_grad_()
    got = hyperloss.align_loss(x, y, alpha, backend=backend)
    x64, y64 = (v.detach().cpu().double().requires_grad_() for v in (x, y))
    want = reference.paper_align_loss(x64, y64, alpha)
    want_gx, want_gy = torch.autograd.grad(want, (x64, y64))
    assert got.shape == () and got.dtype == (torch.float64 if x.dtype == torch.float64 else torch.float32)
    value_rel, grad_rel, _ = TOLERANCES["float64" if x.dtype == torch.float64 else "float32"]
    value = float(got.detach())
    assert abs(value - float(want)) <= value_rel * (1 + abs(float(want))), (value, float(want), backend)
    grad_rel = max(grad_rel, GRAD_ROUNDING.get(x.dtype, 0.0))
    gx, gy = torch.autograd.grad(got, (x, y))
    assert gx.dtype == x.dtype and gy.dtype == y.dtype
    assert_close_scaled(gx, want_gx, grad_rel, f"d loss / dx ({backend})")
    assert_close_scaled(gy, want_gy, grad_rel, f"d loss / dy ({backend})")
    return value


def examples(n: int) -> int:
    """Hypothesis examples per property: ``n``, or a few under Triton's CPU interpreter (1000x slower kernels)."""
    return min(n, 6) if INTERPRET else n
