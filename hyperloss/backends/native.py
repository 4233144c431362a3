"""The native backends: "cpu" (the C++ kernels of csrc/cpu) and "cuda" (the CUDA kernels of csrc/cuda, where the
C library was built with them). The same kernels serve JAX and C/C++ programs through the C API.

Both are torch ops over the C API of libhyperloss (loaded by ``hyperloss._lib``), defined with the low-level
``torch.library.Library`` (its dispatch costs ~3 µs a call against ~11 µs for ``torch.library.custom_op``, which
matters for small batches), with their fake implementations beside them so that torch.compile and torch.export
trace them:
  hyperloss::uniform_lse(x, queue, t, intra_batch, grad_x, grad_queue, precision) -> (lse, grad_x, grad_queue)
  hyperloss::align(x, y, alpha, grad_x, grad_y) -> (loss, grad_x, grad_y)
  hyperloss::uniform_lse_weighted(x, queue, t, intra_batch, weights, queue_weights, grad_x, grad_queue,
      grad_weights, grad_queue_weights) -> (lse, grad_x, grad_queue, grad_weights, grad_queue_weights)  [CPU only]
t and alpha are 0-dim float64 CPU tensors (one compiled graph for every value), lse is float64, absent gradients
are empty tensors (an op returns tensors). ``CPU`` and ``CUDA`` at the end are the two backends (the
``hyperloss.backends.Backend`` protocol).
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode as _current_dispatch_mode

from .. import _lib
from .._lib import LOAD_ERROR
from .._precision import HL_PRECISION, resolve_precision
from .._validation import compute_dtype

_DTYPE = {
    torch.float32: _lib.FLOAT32,
    torch.float64: _lib.FLOAT64,
    torch.float16: _lib.FLOAT16,
    torch.bfloat16: _lib.BFLOAT16,
}


def _available_cpu() -> tuple[bool, str]:
    return (LOAD_ERROR is None, LOAD_ERROR or "")


def _available_cuda() -> tuple[bool, str]:
    if LOAD_ERROR is not None:
        return False, LOAD_ERROR
    if not _lib.lib.hl_has_cuda():
        return (
            False,
            "libhyperloss was built without CUDA kernels (no CUDA toolkit at build time, or HYPERLOSS_CUDA=OFF)",
        )
    if not torch.cuda.is_available():
        return False, "no CUDA device"
    return True, ""


def cpu_isa() -> str:
    """The instruction set the CPU kernels use here: "avx512", "avx2" or "generic" ("" without the library)."""
    return "" if LOAD_ERROR is not None else _lib.lib.hl_cpu_isa().decode()


def cuda_uniform_kernels() -> str:
    """Which kernels the ``cuda`` backend's uniformity runs for 16-bit operands (float16, bfloat16, float32 at
    "high"/"medium"; D <= 256) on the current device: "triton-aot" (the Triton backend's kernels compiled into
    libhyperloss ahead of time for sm_90: for the operand dtypes and widths the build compiled, all by default, once
    the driver has loaded them), "cuda" (the hand-written kernels: built without the former, another GPU, or
    HYPERLOSS_TRITON_AOT=0 in the environment) or "none" (no CUDA kernels, no device, or no library)."""
    return "none" if LOAD_ERROR is not None else _lib.lib.hl_cuda_uniform_kernels().decode()


def _matrix(t: torch.Tensor | None, cols: int) -> _lib.Matrix:
    if t is None:
        return _lib.no_matrix(cols)
    return _lib.Matrix(t.data_ptr(), t.shape[0], t.shape[1], t.stride(0), t.stride(1))


def _pointer(t: torch.Tensor) -> int | None:
    return t.data_ptr() if t.numel() else None


def _gradient_outputs(
    x: torch.Tensor, other: torch.Tensor | None, grad_x: bool, grad_other: bool, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """An op's gradient outputs on x's device: x's (and the other input's: the queue, or y) shape where asked for,
    else empty. One rule for both ops' CPU and CUDA implementations and their fakes."""
    # empty_like where a gradient is wanted (a third of new_empty's cost in a small call), row-major whatever the
    # input's strides (the kernels write it so); no comparison of the two shapes (a guard under torch.compile).
    dense = torch.contiguous_format
    gx = torch.empty_like(x, dtype=dtype, memory_format=dense) if grad_x else x.new_empty((0,), dtype=dtype)
    wanted = grad_other and other is not None
    g_other = torch.empty_like(other, dtype=dtype, memory_format=dense) if wanted else x.new_empty((0,), dtype=dtype)
    return gx, g_other


def _cpu_input(t: torch.Tensor) -> torch.Tensor:
    """The CPU kernels take float32 or float64: other float dtypes are converted to float32."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


_OPS = torch.library.Library("hyperloss", "DEF")  # kept alive for as long as the ops are registered
_OPS.define(
    "uniform_lse(Tensor x, Tensor? queue, Tensor t, bool intra_batch, bool grad_x, bool grad_queue, int precision=0)"
    " -> (Tensor, Tensor, Tensor)"
)
_OPS.define("align(Tensor x, Tensor y, Tensor alpha, bool grad_x, bool grad_y=False) -> (Tensor, Tensor, Tensor)")
_OPS.define(
    "uniform_lse_weighted(Tensor x, Tensor? queue, Tensor t, bool intra_batch, Tensor? weights,"
    " Tensor? queue_weights, bool grad_x, bool grad_queue, bool grad_weights, bool grad_queue_weights)"
    " -> (Tensor, Tensor, Tensor, Tensor, Tensor)"
)


def _uniform_lse_cpu(
    x: torch.Tensor,
    queue: torch.Tensor | None,
    t: torch.Tensor,
    intra_batch: bool,
    grad_x: bool,
    grad_queue: bool,
    precision: int = 0,  # float32 products are exact on the CPU
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x, queue = _cpu_input(x), None if queue is None else _cpu_input(queue)
    gx, gq = _gradient_outputs(x, queue, grad_x, grad_queue, x.dtype)
    lse = ctypes.c_double()
    status = _lib.lib.hl_uniform_lse_cpu(
        _DTYPE[x.dtype], _matrix(x, x.shape[1]), _matrix(queue, x.shape[1]), float(t), intra_batch,
        torch.get_num_threads(), ctypes.byref(lse), _pointer(gx), _pointer(gq),
    )  # fmt: skip
    _lib.check(status, "uniform_lse")
    return torch.tensor(lse.value, dtype=torch.float64), gx, gq


def _uniform_lse_cuda(x, queue, t, intra_batch, grad_x, grad_queue, precision=0):
    # Inputs stay in their dtype (the kernels convert float16/bfloat16 on load); outputs in the compute dtype.
    dtype = compute_dtype(x.dtype)
    k = 0 if queue is None else queue.shape[0]
    with torch.cuda.device(x.device):
        lse = torch.empty((), dtype=torch.float64, device=x.device)
        gx, gq = _gradient_outputs(x, queue, grad_x, grad_queue, dtype)
        code = _DTYPE[x.dtype]
        size = _lib.lib.hl_uniform_workspace_bytes_cuda(code, x.shape[0], k, x.shape[1], gx.numel() > 0, gq.numel() > 0)
        workspace = torch.empty(size, dtype=torch.uint8, device=x.device)
        status = _lib.lib.hl_uniform_lse_f64_cuda(
            code, precision, _matrix(x, x.shape[1]), _matrix(queue, x.shape[1]), float(t), intra_batch,
            lse.data_ptr(), _pointer(gx), _pointer(gq), workspace.data_ptr(), size,
            torch.cuda.current_stream(x.device).cuda_stream,
        )  # fmt: skip
    _lib.check(status, "uniform_lse (CUDA)")
    return lse, gx, gq


@torch.library.register_fake("hyperloss::uniform_lse", lib=_OPS)
def _uniform_lse_fake(x, queue, t, intra_batch, grad_x, grad_queue, precision=0):
    return x.new_empty((), dtype=torch.float64), *_gradient_outputs(
        x, queue, grad_x, grad_queue, compute_dtype(x.dtype)
    )


def _weight_gradient_outputs(
    x: torch.Tensor, queue: torch.Tensor | None, grad_weights: bool, grad_queue_weights: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The weighted op's float64 weight-gradient outputs: (N,) and (K,) where asked for, else empty."""
    gw = x.new_empty((x.shape[0] if grad_weights else 0,), dtype=torch.float64)
    gqw = x.new_empty((queue.shape[0] if grad_queue_weights and queue is not None else 0,), dtype=torch.float64)
    return gw, gqw


def _uniform_lse_weighted_cpu(
    x, queue, t, intra_batch, weights, queue_weights, grad_x, grad_queue, grad_weights, grad_queue_weights
):
    x, queue = _cpu_input(x), None if queue is None else _cpu_input(queue)
    # A negative weight is NaN here, as for the other backends: the frontend rejects it eagerly, and under
    # torch.compile (where values are not read) invalid weights give NaN, not the C library's argument error.
    weights, queue_weights = (
        None if w is None else torch.where(w < 0, math.nan, w.to(torch.float64)).contiguous()
        for w in (weights, queue_weights)
    )
    gx, gq = _gradient_outputs(x, queue, grad_x, grad_queue, x.dtype)
    gw, gqw = _weight_gradient_outputs(x, queue, grad_weights, grad_queue_weights)
    lse = ctypes.c_double()
    status = _lib.lib.hl_uniform_lse_weighted_cpu(
        _DTYPE[x.dtype], _matrix(x, x.shape[1]), _matrix(queue, x.shape[1]),
        None if weights is None else weights.data_ptr(), None if queue_weights is None else queue_weights.data_ptr(),
        float(t), intra_batch, torch.get_num_threads(), ctypes.byref(lse), _pointer(gx), _pointer(gq), _pointer(gw),
        _pointer(gqw),
    )  # fmt: skip
    _lib.check(status, "uniform_lse_weighted")
    return torch.tensor(lse.value, dtype=torch.float64), gx, gq, gw, gqw


@torch.library.register_fake("hyperloss::uniform_lse_weighted", lib=_OPS)
def _uniform_lse_weighted_fake(
    x, queue, t, intra_batch, weights, queue_weights, grad_x, grad_queue, grad_weights, grad_queue_weights
):
    lse = x.new_empty((), dtype=torch.float64)
    gx, gq = _gradient_outputs(x, queue, grad_x, grad_queue, compute_dtype(x.dtype))
    return lse, gx, gq, *_weight_gradient_outputs(x, queue, grad_weights, grad_queue_weights)


def _align_cpu(
    x: torch.Tensor, y: torch.Tensor, alpha: torch.Tensor, grad_x: bool, grad_y: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x, y = _cpu_input(x), _cpu_input(y)
    # Large gradients are advised to huge pages by the kernel before it first touches them (csrc/cpu/align.cpp).
    gx, gy = _gradient_outputs(x, y, grad_x, grad_y, x.dtype)
    return _align_cpu_into(x, y, float(alpha), _pointer(gx), _pointer(gy)), gx, gy


def _align_cpu_into(x: torch.Tensor, y: torch.Tensor, alpha: float, gx: int | None, gy: int | None) -> torch.Tensor:
    """The CPU kernel's call on float32/float64 rows: the loss, gradients written at the addresses gx, gy (None:
    not wanted)."""
    loss = ctypes.c_double()
    status = _lib.lib.hl_align_cpu(
        _DTYPE[x.dtype], _matrix(x, x.shape[1]), _matrix(y, y.shape[1]), alpha, torch.get_num_threads(),
        ctypes.byref(loss), gx, gy,
    )  # fmt: skip
    _lib.check(status, "align")
    return _scalar(loss.value, x.dtype)


_PLAIN = (torch.Tensor, torch.nn.Parameter)  # Parameter: no __torch_function__ of its own


def _plain_eager_cpu(*tensors: torch.Tensor) -> bool:
    """Whether a call on these tensors may skip the torch op and run the CPU kernel directly: eager (not compiled,
    not jit-traced), no torch function or dispatch mode (FakeTensorMode, `with torch.device(...)`, FLOP counters) and
    no profiler (which would miss the op), plain strided CPU tensors (or parameters; no other subclass, no functorch
    wrapper, no lazy negation, no ZeroTensor). What it saves is the dispatcher's share of a small call (with it, an
    alignment loss of 256 x 16 rows was slower than the paper's four torch ops)."""
    if (
        torch.compiler.is_compiling()
        or torch._C._get_tracing_state() is not None  # torch.jit.trace: would record the loss as a constant
        or torch._C._is_torch_function_mode_enabled()
        or _current_dispatch_mode() is not None
        or torch._C._autograd._profiler_enabled()  # every profiler, the legacy one included
    ):
        return False
    return all(
        type(t) in _PLAIN
        and t.is_cpu
        and t.layout == torch.strided
        and not t.is_neg()  # a lazily negated view: the dispatcher resolves it, the kernel would read the storage
        and not t._is_zerotensor()
        and not torch._C._functorch.is_functorch_wrapped_tensor(t)
        for t in tensors
    )


_FINITE_MAX = {dtype: torch.finfo(dtype).max for dtype in (torch.float32, torch.float64)}  # the CPU kernels' dtypes


def _scalar(value: float, dtype: torch.dtype) -> torch.Tensor:
    """A 0-dim tensor of ``value`` rounded to ``dtype``: +-inf beyond its range, as a cast gives (torch.scalar_tensor,
    half the cost of torch.tensor, raises there instead)."""
    if abs(value) <= _FINITE_MAX[dtype] or math.isnan(value):
        return torch.scalar_tensor(value, dtype=dtype)
    return torch.tensor(value, dtype=torch.float64).to(dtype)


def _align_cuda(x, y, alpha, grad_x, grad_y=False):
    dtype = compute_dtype(x.dtype)
    with torch.cuda.device(x.device):
        loss = torch.empty((), dtype=dtype, device=x.device)
        gx, gy = _gradient_outputs(x, y, grad_x, grad_y, dtype)
        code = _DTYPE[x.dtype]
        size = _lib.lib.hl_align_workspace_bytes_cuda(code, x.shape[0])
        workspace = torch.empty(size, dtype=torch.uint8, device=x.device)
        status = _lib.lib.hl_align_cuda(
            code, _matrix(x, x.shape[1]), _matrix(y, y.shape[1]), float(alpha), loss.data_ptr(), _pointer(gx),
            _pointer(gy), workspace.data_ptr(), size, torch.cuda.current_stream(x.device).cuda_stream,
        )  # fmt: skip
    _lib.check(status, "align (CUDA)")
    return loss, gx, gy


@torch.library.register_fake("hyperloss::align", lib=_OPS)
def _align_fake(x, y, alpha, grad_x, grad_y=False):
    dtype = compute_dtype(x.dtype)
    return x.new_empty((), dtype=dtype), *_gradient_outputs(x, y, grad_x, grad_y, dtype)


_OPS.impl("uniform_lse", _uniform_lse_cpu, "CPU")
_OPS.impl("uniform_lse", _uniform_lse_cuda, "CUDA")
_OPS.impl("align", _align_cpu, "CPU")
_OPS.impl("uniform_lse_weighted", _uniform_lse_weighted_cpu, "CPU")
_OPS.impl("align", _align_cuda, "CUDA")


def _uniform_lse(
    x: torch.Tensor,
    queue: torch.Tensor | None,
    t: torch.Tensor,
    intra_batch: bool,
    grad_x: bool,
    grad_queue: bool,
    precision: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    # The CPU kernels always compute exact float32 products; on CUDA ``precision`` picks them.
    code = HL_PRECISION[resolve_precision(x.dtype, precision)] if x.is_cuda else _lib.PRECISION_IEEE
    lse, gx, gq = torch.ops.hyperloss.uniform_lse(x, queue, t, intra_batch, grad_x, grad_queue, code)
    return lse, (gx if grad_x else None), (gq if grad_queue and queue is not None else None)


def _uniform_lse_weighted(
    x: torch.Tensor,
    queue: torch.Tensor | None,
    t: torch.Tensor,
    intra_batch: bool,
    weights: torch.Tensor | None,
    queue_weights: torch.Tensor | None,
    grad_x: bool,
    grad_queue: bool,
    grad_weights: bool,
    grad_queue_weights: bool,
    precision: str | None = None,  # the CPU kernels' float32 products are exact
) -> tuple[torch.Tensor, ...]:
    has_queue = queue is not None
    outputs = torch.ops.hyperloss.uniform_lse_weighted(
        x, queue, t, intra_batch, weights, queue_weights, grad_x, grad_queue, grad_weights, grad_queue_weights
    )
    wanted = (True, grad_x, grad_queue and has_queue, grad_weights, grad_queue_weights and has_queue)
    return tuple(out if want else None for out, want in zip(outputs, wanted, strict=True))


def _align(
    x: torch.Tensor, y: torch.Tensor, alpha: torch.Tensor, grad_x: bool, grad_y: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    if LOAD_ERROR is None and _plain_eager_cpu(x, y):  # the CPU op's implementation, without the dispatcher
        if not (grad_x or grad_y):  # the loss alone: no empty placeholders for the op's gradient outputs
            return _align_cpu_into(_cpu_input(x), _cpu_input(y), float(alpha), None, None), None, None
        loss, gx, gy = _align_cpu(x, y, alpha, grad_x, grad_y)
    else:
        loss, gx, gy = torch.ops.hyperloss.align(x, y, alpha, grad_x, grad_y)
    return loss, (gx if grad_x else None), (gy if grad_y else None)


class NativeBackend:
    """A backend over libhyperloss's torch ops for one device type (``hyperloss.backends.Backend``)."""

    def __init__(
        self,
        name: str,
        device_type: str,
        description: str,
        available: Callable[[], tuple[bool, str]],
        weighted: bool = False,
    ):
        self.name, self.description, self.devices = name, description, (device_type,)
        self.available = available
        self.uniform_lse, self.align = _uniform_lse, _align
        if weighted:  # per-row weights: only the CPU kernels have them (hyperloss.backends.supports_weights)
            self.uniform_lse_weighted = _uniform_lse_weighted

    def runs_on(self, device_type: str) -> bool:
        return device_type in self.devices

    def auto_rank(self, device_type: str) -> int | None:
        return 10  # after triton on CUDA; first on the CPU


CPU = NativeBackend(
    "cpu",
    "cpu",
    "native C++ CPU kernels (csrc/cpu, OpenMP; AVX2/AVX-512 chosen at run time), libhyperloss",
    _available_cpu,
    weighted=True,
)
CUDA = NativeBackend(
    "cuda",
    "cuda",
    "libhyperloss's GPU kernels (csrc/cuda; the Triton kernels compiled ahead of time on sm_90)",
    _available_cuda,
)
