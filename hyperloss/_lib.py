"""The C library (libhyperloss, csrc/): loaded with ctypes, its C API declared once for every Python binding.

The library knows no framework: pointers, sizes, element strides, a dtype code, status codes (see
csrc/include/hyperloss/hyperloss.h). ``hyperloss.backends.native`` registers the torch ops over it,
``hyperloss.jax`` calls it from JAX. ctypes releases the GIL for the duration of each call.

If the library is missing or cannot be loaded, ``LOAD_ERROR`` says why and ``lib`` is None: the package still
imports and works through its Triton and pure-PyTorch backends.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import hyperloss

from ._version import __version__

# hl_dtype and hl_precision codes.
FLOAT32, FLOAT64, FLOAT16, BFLOAT16 = 0, 1, 2, 3
PRECISION_IEEE, PRECISION_TF32, PRECISION_BF16 = 0, 1, 2

OK, INVALID_ARGUMENT, OUT_OF_MEMORY, UNSUPPORTED, CUDA_ERROR = 0, 1, 2, 3, 4


class Matrix(ctypes.Structure):
    """hl_matrix: element (r, c) at data[r * row_stride + c * col_stride] (strides in elements)."""

    _fields_ = (
        ("data", ctypes.c_void_p),
        ("rows", ctypes.c_int64),
        ("cols", ctypes.c_int64),
        ("row_stride", ctypes.c_int64),
        ("col_stride", ctypes.c_int64),
    )


def no_matrix(cols: int) -> Matrix:
    """The absent second set (data NULL)."""
    return Matrix(None, 0, cols, 0, 0)


def candidates(name: str) -> list[Path]:
    """Where the library may be: $HYPERLOSS_LIBRARY_DIR, then every directory of the package (an editable install
    splits the package between the checkout and the build)."""
    directories = [Path(p) for p in os.environ.get("HYPERLOSS_LIBRARY_DIR", "").split(os.pathsep) if p]
    directories += [Path(p) for p in hyperloss.__path__]
    return [d / name for d in directories if (d / name).is_file()]


def _declare(library: ctypes.CDLL) -> None:
    c = ctypes
    status, matrix, size_t, i64 = c.c_int, Matrix, c.c_size_t, c.c_int64
    double_p, void_p = c.POINTER(c.c_double), c.c_void_p
    signatures = {
        "hl_uniform_lse_cpu": (
            status,
            [c.c_int, matrix, matrix, c.c_double, c.c_int, c.c_int, double_p, void_p, void_p],
        ),
        "hl_uniform_lse_weighted_cpu": (
            status,
            [c.c_int, matrix, matrix, void_p, void_p, c.c_double, c.c_int, c.c_int, double_p, *[void_p] * 4],
        ),
        "hl_align_cpu": (status, [c.c_int, matrix, matrix, c.c_double, c.c_int, double_p, void_p, void_p]),
        "hl_uniform_workspace_bytes_cuda": (size_t, [c.c_int, i64, i64, i64, c.c_int, c.c_int]),
        "hl_uniform_lse_f64_cuda": (
            status,
            [c.c_int, c.c_int, matrix, matrix, c.c_double, c.c_int, void_p, void_p, void_p, void_p, size_t, void_p],
        ),
        "hl_align_workspace_bytes_cuda": (size_t, [c.c_int, i64]),
        "hl_align_cuda": (
            status,
            [c.c_int, matrix, matrix, c.c_double, void_p, void_p, void_p, void_p, size_t, void_p],
        ),
        "hl_has_cuda": (c.c_int, []),
        "hl_cuda_uniform_kernels": (c.c_char_p, []),
        "hl_status_string": (c.c_char_p, [c.c_int]),
        "hl_cpu_isa": (c.c_char_p, []),
        "hl_version": (c.c_char_p, []),
    }
    for name, (restype, argtypes) in signatures.items():
        function = getattr(library, name)
        function.restype, function.argtypes = restype, argtypes


def _load() -> tuple[ctypes.CDLL | None, str | None]:
    found = candidates("libhyperloss.so")
    if not found:
        return None, (
            "the C library libhyperloss is not built (a pure-Python install, or a failed build): reinstall with "
            "`pip install .` (or `make build` in a checkout); a C++ compiler and CMake >= 3.18 are needed"
        )
    try:
        library = ctypes.CDLL(str(found[0]))
        _declare(library)
    except (OSError, AttributeError) as error:
        return None, f"the C library {found[0]} failed to load ({error}); rebuild it with `pip install .`"
    built = library.hl_version().decode()
    if built != __version__:
        return None, f"the C library {found[0]} is version {built}, the package {__version__}: rebuild it"
    return library, None


lib, LOAD_ERROR = _load()


def check(status: int, what: str) -> None:
    """Raises for a non-OK status: ValueError for invalid arguments (the callers check first, so this is a bug or
    a direct call), MemoryError, TypeError for an unsupported dtype, RuntimeError for CUDA errors."""
    if status == OK:
        return
    message = f"hyperloss: {what}: {lib.hl_status_string(status).decode()}"
    raise {INVALID_ARGUMENT: ValueError, OUT_OF_MEMORY: MemoryError, UNSUPPORTED: TypeError}.get(status, RuntimeError)(
        message
    )
