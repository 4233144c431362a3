"""The native backends' old module path: they live in ``hyperloss.backends.native`` (kept so that code written
against this path, e.g. ``hyperloss.native.cpu_isa()``, keeps working)."""

from .backends.native import CPU, CUDA, cpu_isa  # noqa: F401
