"""Builds hyperloss and its native extension ``hyperloss._C`` (C++ CPU kernels, OpenMP) with ninja, and, where
jax is importable, ``hyperloss._jax_ffi`` (the same kernels behind XLA FFI handlers, for hyperloss.jax).

Build against the installed torch: ``pip install --no-build-isolation -e .``. If the extension cannot be built
(no compiler, say), set HYPERLOSS_NO_EXTENSION=1 to install the pure-Python package: the Triton and reference
backends still work, and ``hyperloss.backends()`` says why the native one is missing.
HYPERLOSS_NATIVE=0 builds for a generic x86-64 instead of this machine's CPU.
"""

import os

from setuptools import Extension, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
CORE_SOURCES = ["csrc/cpu/uniform.cpp", "csrc/cpu/align.cpp"]

ext_modules = []
cmdclass = {}
if os.environ.get("HYPERLOSS_NO_EXTENSION", "0") != "1":
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    flags = ["-O3", "-std=c++17", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
    if os.environ.get("HYPERLOSS_NATIVE", "1") == "1":
        flags.append("-march=native")
    ext_modules.append(
        CppExtension(
            name="hyperloss._C",
            sources=[*CORE_SOURCES, "csrc/torch/bindings.cpp"],
            include_dirs=[os.path.join(ROOT, "csrc", "include")],
            extra_compile_args=flags,
            extra_link_args=["-fopenmp"],
        )
    )
    cmdclass["build_ext"] = BuildExtension.with_options(use_ninja=True)

    try:
        import jax.ffi

        jax_include = jax.ffi.include_dir()
    except ImportError:
        jax_include = None
    if jax_include:
        # A plain shared library (no Python module): hyperloss/jax.py loads it with ctypes.
        ext_modules.append(
            Extension(
                name="hyperloss._jax_ffi",
                sources=[*CORE_SOURCES, "csrc/jax/ffi.cpp"],
                include_dirs=[os.path.join(ROOT, "csrc", "include")],
                extra_compile_args=[*flags, "-isystem", jax_include],
                extra_link_args=["-fopenmp"],
                language="c++",
            )
        )

setup(ext_modules=ext_modules, cmdclass=cmdclass)
