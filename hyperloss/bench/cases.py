"""What the benchmark runs: the implementations compared, their inputs, one timed step, and counted work.

Shared by the sweep CLI (``python -m hyperloss.bench``) and the pytest-benchmark modules under ``bench/``, so
both time exactly the same calls.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

import hyperloss
from hyperloss import _dispatch, reference

# The paper's hyperparameters (Wang & Isola 2020), used for every case.
T = 2.0
ALPHA = 2.0

OPS = ("uniform", "align")
MODES = ("fwd", "fwdbwd")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}
PRECISIONS = ("highest", "high", "medium")  # torch.set_float32_matmul_precision, for fp32 cases


@dataclass(frozen=True)
class Impl:
    """One implementation compared by the benchmark."""

    name: str
    description: str
    ops: tuple[str, ...]
    backend: str | None = None  # the hyperloss backend it calls, for the library's own implementations


BASELINES = (
    Impl(
        "paper",
        "the paper's code: torch.pdist(x).pow(2).mul(-t).exp().mean().log(); (x - y).norm(dim=1).pow(alpha).mean()",
        OPS,
    ),
    Impl("dense", "stable dense torch: ||x_i||^2 + ||x_j||^2 - 2 x@x.T, upper triangle, logsumexp", OPS),
    Impl(
        "chunked",
        "hyperloss backend='reference': row blocks of x@x.T in pure PyTorch, analytic gradient (uniformity)",
        OPS,
        backend="reference",
    ),
    Impl("compiled-dense", "torch.compile of the stable dense torch version", OPS),
    Impl("keops", "KeOps LazyTensor log-sum-exp over all (i, j), the diagonal removed afterwards", ("uniform",)),
)


def hyperloss_impls() -> list[Impl]:
    """The library's native backends (the pure-PyTorch "reference" backend is the "chunked" baseline)."""
    return [
        Impl(s.name, f"hyperloss backend={s.name!r}: {s.description}", OPS, backend=s.name)
        for s in hyperloss.backends()
        if s.name != "reference"
    ]


def all_impls() -> list[Impl]:
    """Every implementation the benchmark knows, runnable here or not, baselines first."""
    return [*BASELINES, *hyperloss_impls()]


def label(name: str) -> str:
    """The name users read: hyperloss's backends as "hyperloss (cpu)"; the baselines by their key."""
    return f"hyperloss ({name})" if any(i.name == name for i in hyperloss_impls()) else name


def impl_named(name: str) -> Impl:
    """The implementation called ``name``; ValueError listing the known names otherwise."""
    for impl in all_impls():
        if impl.name == name:
            return impl
    known = ", ".join(i.name for i in all_impls())
    raise ValueError(f"unknown implementation {name!r}; known: {known}")


def unavailable_reason(name: str, op: str, device_type: str, dtype: str) -> str | None:
    """Why implementation ``name`` cannot run ``op`` on ``device_type`` in ``dtype``; None when it can."""
    impl = impl_named(name)
    if op not in impl.ops:
        return f"{name} has no {op} implementation"
    if name == "keops" and importlib.util.find_spec("pykeops") is None:
        return "pykeops is not installed (pip install pykeops)"
    if impl.backend is not None and impl.backend != "reference":
        try:  # the dispatcher's own rule for what runs where, with its reason
            _dispatch.resolve(impl.backend, torch.device(device_type))
        except ValueError as error:
            return str(error)
    return None


# ----------------------------------------------------------------------------------------------------------------
# The loss functions


def _keops_uniform_loss(x: torch.Tensor, t: float = T) -> torch.Tensor:
    """The same log-mean-exp through KeOps: a row-wise log-sum-exp over every (i, j), then the i<j half.

    The diagonal contributes exp(0) = 1 per row and each pair appears twice, so
    sum_{i<j} = (sum_{i,j} - N) / 2; the subtraction loses precision only when the pairs are negligible next to
    N, which L2-normalized features with t = 2 never are.
    """
    from pykeops.torch import LazyTensor

    n = x.shape[0]
    xi, xj = LazyTensor(x[:, None, :]), LazyTensor(x[None, :, :])
    row_lse = (-t * ((xi - xj) ** 2).sum(-1)).logsumexp(dim=1).view(-1)
    total = torch.logsumexp(row_lse, dim=0)
    lse = total + torch.log1p(-n * torch.exp(-total)) - math.log(2)
    return lse - math.log(n * (n - 1) / 2)


def _dense_uniform_loss(x: torch.Tensor, t: float = T) -> torch.Tensor:
    """What users write for a stable dense version: squared distances through x @ x.T (the Gram form), the upper
    triangle, logsumexp. (hyperloss.reference.dense_uniform_loss, the tests' oracle, takes direct differences
    instead: exact, but N^2 D memory traffic, which is not what this baseline stands for.)"""
    norms = x.pow(2).sum(1)
    sq_dists = (norms[:, None] + norms[None, :] - 2 * x @ x.T).clamp_min(0)
    i, j = torch.triu_indices(x.shape[0], x.shape[0], offset=1, device=x.device)
    n = x.shape[0]
    return torch.logsumexp(sq_dists[i, j].mul(-t), dim=0) - math.log(n * (n - 1) / 2)


def _dense_loss(op: str) -> Callable[..., torch.Tensor]:
    if op == "uniform":
        return _dense_uniform_loss
    return functools.partial(reference.dense_align_loss, alpha=ALPHA)


def build_loss(name: str, op: str) -> Callable[..., torch.Tensor]:
    """The loss function of implementation ``name`` for ``op``: called with (x) for uniform, (x, y) for align."""
    impl = impl_named(name)
    if impl.backend is not None:
        if op == "uniform":
            return functools.partial(hyperloss.uniform_loss, t=T, backend=impl.backend)
        return functools.partial(hyperloss.align_loss, alpha=ALPHA, backend=impl.backend)
    if name == "paper":
        if op == "uniform":
            return functools.partial(reference.paper_uniform_loss, t=T)
        return functools.partial(reference.paper_align_loss, alpha=ALPHA)
    if name == "dense":
        return _dense_loss(op)
    if name == "compiled-dense":
        return torch.compile(_dense_loss(op))
    if name == "keops":
        return _keops_uniform_loss
    raise AssertionError(f"no loss for {name}")


# ----------------------------------------------------------------------------------------------------------------
# Inputs and one step


def make_inputs(
    op: str, n: int, d: int, dtype: str, device: torch.device, requires_grad: bool, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """L2-normalized features (N, D) as the paper uses them: (x,) for uniform, (x, y) close positive pairs for align.

    Generated on the device itself: at N = 2^20 a CPU round trip would cost more than the case.
    """
    generator = torch.Generator(device=device).manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(n, d, device=device, generator=generator), dim=1)
    tensors = [x]
    if op == "align":
        noise = torch.randn(n, d, device=device, generator=generator)
        tensors.append(torch.nn.functional.normalize(x + 0.1 * noise, dim=1))
        del noise
    return tuple(t.to(DTYPES[dtype]).requires_grad_(requires_grad) for t in tensors)


def clear_grads(inputs: tuple[torch.Tensor, ...]) -> None:
    """Drops the inputs' gradients (frees them), as ``zero_grad(set_to_none=True)`` does."""
    for t in inputs:
        t.grad = None


def synchronizer(device: torch.device) -> Callable[[], None]:
    """Waits for the device's queued work, so that a timed call includes it (a no-op on the CPU)."""
    if device.type == "cuda":
        return functools.partial(torch.cuda.synchronize, device)
    return lambda: None


def make_step(
    loss_fn: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...], mode: str, device: torch.device
) -> Callable[[], torch.Tensor]:
    """One timed call: the loss (and in "fwdbwd" mode its backward into ``inputs[i].grad``), synchronized.

    Gradients are dropped at the start of each call, as ``zero_grad(set_to_none=True)`` does in training, so
    the previous call's gradient is freed before the next one allocates; they stay readable after the call.
    """
    sync = synchronizer(device)
    backward = mode == "fwdbwd"

    def step() -> torch.Tensor:
        clear_grads(inputs)
        loss = loss_fn(*inputs)
        if backward:
            loss.backward()
        sync()
        return loss.detach()

    return step


@functools.cache
def unsupported_dtype(name: str, op: str, device_type: str, dtype: str) -> str | None:
    """Why baseline ``name`` cannot run ``op`` in ``dtype`` here (torch.pdist has no bfloat16 or float16 kernel on
    the CPU); None when it can.

    hyperloss's backends take every dtype of DTYPES, and every baseline runs in fp32; the other cases are tried
    once on a 4 x 2 input (compiled-dense as dense: the same operations, without seconds of compiling).
    """
    if name == "keops":
        return "KeOps has no bfloat16 support" if dtype == "bf16" else None
    if dtype == "fp32" or impl_named(name).backend is not None:
        return None
    device = torch.device(device_type)
    inputs = make_inputs(op, 4, 2, dtype, device, requires_grad=True)
    try:
        make_step(build_loss("dense" if name == "compiled-dense" else name, op), inputs, "fwdbwd", device)()
    except Exception as error:  # whatever the baseline raises is the reason it is left out
        return f"no {dtype} support: {type(error).__name__}: {str(error).strip().splitlines()[0]}"
    return None


# ----------------------------------------------------------------------------------------------------------------
# Counted work: what the floor of a case is computed from


@dataclass(frozen=True)
class Work:
    """The unavoidable work of one call."""

    flop: float  # matrix-product flop (Gram tiles and gradient products)
    exps: float  # exponentials
    bytes: float  # compulsory memory traffic: inputs read once, gradients written once


def work(op: str, mode: str, n: int, d: int, dtype: str) -> Work:
    """Counted operations of one call.

    Uniformity, one symmetric pass over the N(N-1)/2 pairs: the Gram entry costs 2D flop per pair and one exp;
    the gradient adds two products of 2D flop per pair (row side and column side). Alignment is memory bound:
    read x and y, and with the backward write both gradients.
    """
    elt = DTYPES[dtype].itemsize
    backward = mode == "fwdbwd"
    if op == "uniform":
        pairs = n * (n - 1) / 2
        return Work(flop=2 * d * pairs * (3 if backward else 1), exps=pairs, bytes=n * d * elt * (2 if backward else 1))
    return Work(flop=0.0, exps=0.0, bytes=n * d * elt * (4 if backward else 2))


def matmul_ceiling_key(dtype: str, precision: str) -> str:
    """The name of the matmul ceiling a case is bound by: fp32 depends on the matmul precision setting."""
    return f"matmul_{dtype}_{precision}" if dtype == "fp32" else f"matmul_{dtype}"


def floor_seconds(w: Work, ceilings: dict[str, float], dtype: str, precision: str) -> tuple[float, str] | None:
    """The floor of a call and its binding term: the slowest of matmul flop, exps and bytes at the ceilings known.

    The three can overlap in a fused kernel, so the floor is their maximum, not their sum. None when no term
    has a ceiling.
    """
    terms = []
    key = matmul_ceiling_key(dtype, precision)
    for amount, ceiling, name in ((w.flop, key, "matmul"), (w.exps, "exp", "exp"), (w.bytes, "copy", "memory")):
        if amount and ceilings.get(ceiling):
            terms.append((amount / ceilings[ceiling], name))
    return max(terms) if terms else None


def ceilings_needed(op: str, dtype: str, precision: str) -> tuple[str, ...]:
    """The ceilings the floor of an ``op`` case is computed from."""
    return (matmul_ceiling_key(dtype, precision), "exp", "copy") if op == "uniform" else ("copy",)
