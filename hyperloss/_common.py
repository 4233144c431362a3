"""Small pieces of math and autograd glue shared by the backends, the losses and the distributed losses.

Everything here works on symbolic sizes and values under ``torch.compile(dynamic=True)``: a new batch size, t or
alpha never forces a recompile.
"""

from __future__ import annotations

import functools
import math

import torch

from ._contract import num_pairs

_SECOND_DERIVATIVE = (
    "hyperloss computes analytic first derivatives only; second derivatives (create_graph=True through "
    "align_loss/uniform_loss) are not supported. Use hyperloss.reference.dense_uniform_loss / "
    "dense_align_loss for higher-order gradients on small inputs."
)


def log_num_pairs(n: int, k: int, intra_batch: bool, device: torch.device | str = "cpu") -> torch.Tensor:
    """log |P| as a 0-dim float64 tensor (a tensor op, so that a symbolic n traces instead of specializing)."""
    return torch.full((), num_pairs(n, k, intra_batch), dtype=torch.float64, device=device).log()


def as_scalar_tensor(value: float | torch.Tensor) -> torch.Tensor:
    """A Python number (or a one-element tensor) as the 0-dim float64 CPU tensor the backends take for t: kernels
    read it at run time, so torch.compile traces one graph for every value."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(device="cpu", dtype=torch.float64).reshape(())
    if not torch.compiler.is_compiling():
        return _eager_scalar(float(value))
    # zeros + value, not torch.full/torch.tensor: inductor specializes a float used as a fill value (one compiled
    # graph per value) but keeps it symbolic in arithmetic.
    return torch.zeros((), dtype=torch.float64) + value


@functools.lru_cache(maxsize=64)
def _eager_scalar(value: float) -> torch.Tensor:
    """Eager calls reuse one tensor per value (t and alpha rarely change): the backends only read it."""
    return torch.full((), value, dtype=torch.float64)


# The center of the uniformity kernels' rows (csrc/center.h states the same rule for the C++ and CUDA kernels).
CENTER_SAMPLE_ROWS = 1023
CENTER_JITTER = 2654435761  # prime


def sampled_center(x: torch.Tensor, queue: torch.Tensor | None = None) -> torch.Tensor:
    """The center c of the uniformity kernels' rows, float64 (D,): per column, the midhinge (Q1 + Q3) / 2 of a
    sample of S = min(N + K, 1023) rows of x followed by the queue's, row k = floor(k total / S) + (k A mod
    floor(total / S)) (one row per stretch of total / S rows, at a jittered place in it, A a large prime: rows of a
    period that divides the stretch are sampled in their share), Q1 and Q3 the values of ranks (S - 1) // 4 and
    S - 1 - (S - 1) // 4.

    Why: the Gram form ||u||^2 + ||v||^2 - 2 u.v of centered rows u, v is off by ~eps (||u||^2 + ||v||^2), so the
    center must lie near the rows whose pairs dominate the loss. The mean does where the rows are one cloud, but one
    outlier of norm 1e6 among 256 unit rows moves it ~4000 away from all the others (float32: -1.1 for -3.5).
    Quartiles ignore up to a quarter of the rows on either side, and a pair with such an outlier keeps its relative
    accuracy (its distance is about the outlier's own norm); where two groups hold more than a quarter each, the
    midhinge lies between them, as the mean does (a median would sit in one, twice as far from the other). A common
    offset is removed as by the mean. The sample keeps the cost at one small sort, whatever N; detached (any center
    gives the same distances). Traces under torch.compile(dynamic=True) without a guard on N or K."""
    n = x.shape[0]
    total = n + (0 if queue is None else queue.shape[0])
    size = torch.sym_min(total, CENTER_SAMPLE_ROWS)
    stretch = total // size
    k = torch.arange(size, device=x.device)
    rows = k * stretch + (k * (total % size)) // size + (k * CENTER_JITTER) % stretch
    sample = x.detach().index_select(0, rows.clamp(max=n - 1))
    if queue is not None:  # rows past x's are the queue's (no slices of a data-dependent length: no guards)
        from_queue = queue.detach().index_select(0, (rows - n).clamp(min=0))
        sample = torch.where((rows < n)[:, None], sample, from_queue)
    ordered = sample.sort(dim=0).values
    low = (size - 1) // 4
    high = size - 1 - low
    # Slices, not indexing: a symbolic index would guard on its value (one graph per batch size).
    return (0.5 * ordered[low : low + 1].double() + 0.5 * ordered[high : high + 1].double()).reshape(-1)


def log_mean_from_lse(lse: torch.Tensor, n: int, k: int, intra_batch: bool, dtype: torch.dtype) -> torch.Tensor:
    """The loss log mean_P exp(s) = lse - log |P|, subtracted in float64 before rounding to ``dtype`` (near 0 the
    loss is far smaller than log |P|) and never above 0, the largest possible score."""
    return (lse.to(torch.float64) - log_num_pairs(n, k, intra_batch, lse.device)).clamp_max(0.0).to(dtype)


def scale_saved_grad(grad_output: torch.Tensor, grad: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """The backward pass of every loss here: the gradient was computed with the forward pass and is only scaled.
    Raises under create_graph=True, where a graph-less saved gradient would silently give wrong second derivatives."""
    if grad is None:
        return None
    if torch.is_grad_enabled():  # backward(create_graph=True)
        raise RuntimeError(_SECOND_DERIVATIVE)
    # A loss backpropagated on its own (grad_output 1) takes the saved gradient as it is: no pass over it. Checked
    # eagerly on the CPU only, where reading the value costs nothing (on a GPU it would wait for the device; a
    # traced backward cannot branch on it). Autograd copies the tensor before accumulating into .grad while it is
    # saved here, so retain_graph stays safe.
    eager_cpu = grad_output.device.type == "cpu" and not torch.compiler.is_compiling()
    if grad.dtype == dtype and eager_cpu and grad_output.numel() == 1 and grad_output.item() == 1:
        return grad
    return (grad_output * grad).to(dtype)


def normalized_rows(*tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """Each (N, D) tensor with its rows L2-normalized (differentiably; None passes through): the ``normalize=``
    option of every loss and module."""
    return tuple(None if v is None else torch.nn.functional.normalize(v, dim=1) for v in tensors)


def split_align_gradient(
    loss: torch.Tensor, grad_x: torch.Tensor | None, want_x: bool, want_y: bool
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The align primitive's outputs for a kernel that returns d loss/dx only: d loss/dy is its negative."""
    return loss, (grad_x if want_x else None), (-grad_x if want_y else None)


def temperature_gradient(
    x: torch.Tensor,
    queue: torch.Tensor | None,
    grad_x: torch.Tensor,
    grad_queue: torch.Tensor | None,
    t: torch.Tensor,
) -> torch.Tensor:
    """d lse / dt (0-dim float64) from the gradients of the same call, with no pass over the pairs.

    lse depends on the rows and t only through t ||u - v||^2, and scaling every row by c maps that to c^2 t; so
    (Euler's relation for this homogeneity) 2t d lse/dt = sum over the rows of x and the queue of <v - m, d lse/dv>,
    which is -2t times the pair-weighted mean squared distance. m may be any vector (the gradients sum to 0: the
    loss is translation invariant); m = the rows' mean keeps a large common offset from cancelling.

    Args:
        x, queue: the rows (the queue optional).
        grad_x, grad_queue: d lse / dx and d lse / d queue (the latter where there is a queue).
        t: the temperature, a 0-dim float64 tensor.
    """
    rows = [x] if queue is None else [x, queue]
    grads = [grad_x] if queue is None else [grad_x, grad_queue]
    count = sum(r.shape[0] for r in rows)
    dtype = grads[0].dtype  # the compute dtype
    mean = sum(r.detach().to(dtype).sum(0) for r in rows) / count  # any vector will do: near the centroid is enough
    # Each row's dot in the compute dtype (D terms), the rows' sum in float64: one pass, no float64 copy.
    total = sum(
        torch.einsum("id,id->i", r.detach().to(dtype) - mean, g).sum(dtype=torch.float64)
        for r, g in zip(rows, grads, strict=True)
    )
    return total / (2 * t.to(device=total.device, dtype=torch.float64))


def power_of_two_scale(*weights: torch.Tensor | None) -> torch.Tensor:
    """2^-e (0-dim float64) with e the exponent of the largest entry of the given float64 weights: scaled by it
    (exactly), the largest is in [0.5, 1), so every log-weight is <= 0 and no sum of pair weights overflows. 1 where
    every weight is 0."""
    largest = torch.stack([w.amax() for w in weights if w is not None and w.numel()]).amax()
    return torch.ldexp(torch.ones_like(largest), -torch.frexp(largest).exponent)


def row_weights(weights: torch.Tensor | None, rows: int, device: torch.device) -> torch.Tensor:
    """Per-row weights as a float64 tensor on ``device`` (detached): ones where none are given."""
    if weights is None:
        return torch.ones(rows, dtype=torch.float64, device=device)
    return weights.detach().to(device=device, dtype=torch.float64)


def pair_weight_log_sum(
    weights: torch.Tensor | None,
    queue_weights: torch.Tensor | None,
    n: int,
    k: int,
    intra_batch: bool,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """log W with W = sum over the pairs of w_u w_v (missing weights mean 1), and d log W / dw, d log W / d qw
    (the latter None without a queue); all float64, analytic (the losses' backward only scales saved gradients).

    In the log domain, from the log-weights: the i < j pairs as logsumexp_u (log w_u + log(w_0 + ... + w_{u-1}))
    (the closed form ((sum w)^2 - sum w^2) / 2 loses every digit when one weight dominates), each row's partners as
    its exclusive prefix and suffix log-sums. Only sums of nonnegative terms, so nothing cancels; and no product of
    two weights is ever formed, so weights as far apart as 1e300 and 1e-300 (products near 1, each factor beyond
    any one scale of float64) keep every digit.
    """
    lw = row_weights(weights, n, device).log()  # -inf for weight 0
    lq = None if k == 0 else row_weights(queue_weights, k, device).log()
    empty = lw.new_full((1,), -math.inf)
    terms = [lw.new_full((), -math.inf)]  # log of each part of W
    partners = lw.new_full(lw.shape, -math.inf)  # for each row of x: log of the sum of its partners' weights
    if intra_batch and n:
        before = torch.cat([empty, torch.logcumsumexp(lw, 0)[:-1]])
        after = torch.cat([torch.logcumsumexp(lw.flip(0), 0)[:-1].flip(0), empty])
        terms.append(torch.logsumexp(lw + before, 0))
        partners = torch.logaddexp(before, after)
    q_log_partners = None
    if lq is not None:
        lq_sum, lw_sum = torch.logsumexp(lq, 0), torch.logsumexp(lw, 0)
        terms.append(lw_sum + lq_sum)
        partners = torch.logaddexp(partners, lq_sum.expand(n))
    log_w = torch.logsumexp(torch.stack(terms), 0)
    if lq is not None:
        q_log_partners = lw_sum.expand(k)
    return (
        log_w,
        torch.exp(partners - log_w),
        None if q_log_partners is None else torch.exp(q_log_partners - log_w),
    )


def poison_nonfinite(
    inputs: tuple[torch.Tensor, ...], lse: torch.Tensor, grads: tuple[torch.Tensor | None, ...]
) -> tuple[torch.Tensor, tuple[torch.Tensor | None, ...]]:
    """Makes the result NaN when any input element is NaN or Inf, as the native kernels do, without a host sync.

    An infinite coordinate can make some pair distances infinite and others NaN, so the plain formula may return a
    finite value, -inf or NaN depending on the data; one rule (NaN) is easier to rely on.
    """
    finite = torch.stack([torch.isfinite(t).all() for t in inputs]).all()
    nan = lse.new_full((), float("nan"))
    lse = torch.where(finite, lse, nan)
    grads = tuple(None if g is None else torch.where(finite, g, nan) for g in grads)
    return lse, grads
