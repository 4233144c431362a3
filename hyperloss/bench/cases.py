"""The implementations compared, their inputs and one step (the sweep and the pytest-benchmark modules time these)."""

import functools
import importlib.util
import math
from collections.abc import Callable

import torch
from torch.nn.functional import normalize

import hyperloss
from hyperloss import reference

T, ALPHA = 2.0, 2.0  # the paper's hyperparameters (Wang & Isola 2020), for every case
OPS, MODES, PRECISIONS = ("uniform", "align"), ("fwd", "fwdbwd"), ("highest", "high", "medium")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}
BASELINES = {
    "paper": "torch.pdist(x).pow(2).mul(-t).exp().mean().log(); (x - y).norm(dim=1).pow(alpha).mean()",
    "dense": "stable dense torch: ||x_i||^2 + ||x_j||^2 - 2 x@x.T, upper triangle, logsumexp",
    "chunked": "hyperloss backend='reference': row blocks of x@x.T in pure PyTorch",
    "compiled-dense": "torch.compile of the stable dense torch version",
    "keops": "KeOps LazyTensor log-sum-exp over all (i, j), the diagonal removed afterwards (uniformity only)",
}


def implementations() -> dict[str, str]:
    """Every implementation, runnable here or not, and what it is (backend "reference" is the "chunked" baseline)."""
    backends = {b.name: f"hyperloss backend={b.name!r}: {b.description}" for b in hyperloss.backends()}
    return BASELINES | {name: text for name, text in backends.items() if name != "reference"}


def backend(name: str) -> str | None:
    """The hyperloss backend implementation ``name`` calls; None for the baselines outside the library."""
    return "reference" if name == "chunked" else None if name in BASELINES else name


def label(name: str) -> str:
    """The name users read: the library's backends as "hyperloss (cpu)"; the baselines by their key."""
    return name if name in BASELINES else f"hyperloss ({name})"


def resolve_backend(name: str, device_type: str) -> str:
    """The backend ``name`` ("auto" or a backend) runs as on ``device_type``; ValueError saying why it cannot run."""
    return hyperloss.backends.resolve(name, device_type)


def unavailable_reason(name: str, op: str, device_type: str) -> str | None:
    """Why implementation ``name`` cannot run ``op`` on ``device_type`` (the library's own rule); None if it can."""
    if name == "keops":
        if op != "uniform":
            return f"keops has no {op} implementation"
        return None if importlib.util.find_spec("pykeops") else "pykeops is not installed (pip install pykeops)"
    try:
        if backend(name) not in (None, "reference"):
            resolve_backend(name, device_type)
    except ValueError as error:
        return str(error)
    return None


def _keops_uniform_loss(x: torch.Tensor, t: float) -> torch.Tensor:
    """KeOps: the sum over all (i, j) holds exp(0) = 1 for each i = j and each pair twice: sum_{i<j} = (sum - N) / 2."""
    from pykeops.torch import LazyTensor

    n, xi, xj = x.shape[0], LazyTensor(x[:, None, :]), LazyTensor(x[None, :, :])
    total = (-t * ((xi - xj) ** 2).sum(-1)).logsumexp(dim=1).view(-1).logsumexp(dim=0)
    return total + torch.log1p(-n * torch.exp(-total)) - math.log(n * (n - 1))


def _dense_uniform_loss(x: torch.Tensor, t: float) -> torch.Tensor:
    """The stable dense version users write, in the Gram form (the tests' oracle takes direct differences)."""
    n, norms = x.shape[0], x.pow(2).sum(1)
    sq_dists = (norms[:, None] + norms[None, :] - 2 * x @ x.T).clamp_min(0)
    i, j = torch.triu_indices(n, n, offset=1, device=x.device)
    return torch.logsumexp(sq_dists[i, j].mul(-t), dim=0) - math.log(n * (n - 1) / 2)


def build_loss(name: str, op: str) -> Callable[..., torch.Tensor]:
    """The loss of implementation ``name`` for ``op``: called with (x) for uniform, (x, y) for align."""
    uniform, kwargs = op == "uniform", {"t": T} if op == "uniform" else {"alpha": ALPHA}
    if library_backend := backend(name):
        loss = hyperloss.uniform_loss if uniform else hyperloss.align_loss
        return functools.partial(loss, backend=library_backend, **kwargs)
    if name == "paper":
        return functools.partial(reference.paper_uniform_loss if uniform else reference.paper_align_loss, **kwargs)
    loss = _keops_uniform_loss if name == "keops" else _dense_uniform_loss if uniform else reference.dense_align_loss
    return functools.partial(torch.compile(loss) if name == "compiled-dense" else loss, **kwargs)


def make_inputs(op: str, n: int, d: int, dtype: str, device: torch.device, grad: bool) -> tuple[torch.Tensor, ...]:
    """L2-normalized (x,), or (x, close positives y) for align, drawn on the device (cheaper than a CPU round trip)."""
    generator = torch.Generator(device=device).manual_seed(0)
    tensors = [normalize(torch.randn(n, d, device=device, generator=generator), dim=1)]
    if op == "align":
        tensors.append(normalize(tensors[0] + 0.1 * torch.randn(n, d, device=device, generator=generator), dim=1))
    return tuple(t.to(DTYPES[dtype]).requires_grad_(grad) for t in tensors)


def make_step(
    loss_fn: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...], mode: str, sync: bool = False
) -> Callable[[], torch.Tensor]:
    """One call: the loss, and in "fwdbwd" mode its backward, the previous gradients dropped first (freed before
    this call allocates, as ``zero_grad(set_to_none=True)`` does). ``sync``: wait for the GPU, for timers that don't."""

    def step() -> torch.Tensor:
        for t in inputs:
            t.grad = None
        loss = loss_fn(*inputs)
        if mode == "fwdbwd":
            loss.backward()
        if sync and loss.device.type == "cuda":
            torch.cuda.synchronize(loss.device)
        return loss.detach()

    return step


@functools.cache
def unsupported_dtype(name: str, op: str, device_type: str, dtype: str) -> str | None:
    """Why baseline ``name`` cannot run ``op`` in ``dtype`` (torch.pdist has no bf16 or fp16 CPU kernel); None if it
    can. The library's backends take every dtype; a baseline is tried on a 4 x 2 input (compiled-dense uncompiled)."""
    if name == "keops" or dtype == "fp32" or backend(name) is not None:
        return "KeOps has no bfloat16 support" if name == "keops" and dtype == "bf16" else None
    inputs = make_inputs(op, 4, 2, dtype, torch.device(device_type), grad=True)
    try:
        make_step(build_loss(name.removeprefix("compiled-"), op), inputs, "fwdbwd")()
    except Exception as error:  # whatever the baseline raises is the reason it is left out
        return f"no {dtype} support: {type(error).__name__}: {str(error).strip().splitlines()[0]}"
    return None
