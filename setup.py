"""Builds hyperloss and its native extension ``hyperloss._C`` (C++ CPU kernels, OpenMP) with ninja, and, where
jax is importable, ``hyperloss._jax_ffi`` (the same kernels behind XLA FFI handlers, for hyperloss.jax).

Build against the installed torch: ``pip install --no-build-isolation -e .``. If the extension cannot be built
(no compiler, say), set HYPERLOSS_NO_EXTENSION=1 to install the pure-Python package: the Triton and reference
backends still work, and ``hyperloss.backends()`` says why the native one is missing.
HYPERLOSS_NATIVE=0 builds for a generic x86-64 instead of this machine's CPU. With a CUDA build of torch and a
CUDA toolkit, the CUDA kernels (csrc/cuda) are built too (TORCH_CUDA_ARCH_LIST, default 9.0; MAX_JOBS);
HYPERLOSS_NO_CUDA=1 leaves them out.
"""

import os

from setuptools import Extension, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
CORE_SOURCES = ["csrc/cpu/uniform.cpp", "csrc/cpu/align.cpp", "csrc/status.cpp"]

ext_modules = []
cmdclass = {}
if os.environ.get("HYPERLOSS_NO_EXTENSION", "0") != "1":
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    flags = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]  # torch picks the C++ standard
    if os.environ.get("HYPERLOSS_NATIVE", "1") == "1":
        flags.append("-march=native")
    # The CUDA kernels need a CUDA build of torch and a toolkit; HYPERLOSS_NO_CUDA=1 skips them.
    with_cuda = os.environ.get("HYPERLOSS_NO_CUDA", "0") != "1" and torch.version.cuda is not None and CUDA_HOME
    sources = [*CORE_SOURCES, "csrc/torch/bindings.cpp"]
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")  # Hopper unless told otherwise
        extension = CUDAExtension(
            name="hyperloss._C",
            sources=[*sources, "csrc/cuda/uniform.cu", "csrc/cuda/align.cu"],
            include_dirs=[os.path.join(ROOT, "csrc", "include")],
            extra_compile_args={
                "cxx": [*flags, "-DHYPERLOSS_WITH_CUDA"],
                "nvcc": ["-O3", "-DHYPERLOSS_WITH_CUDA"],
            },
            extra_link_args=["-fopenmp"],
        )
    else:
        extension = CppExtension(
            name="hyperloss._C",
            sources=sources,
            include_dirs=[os.path.join(ROOT, "csrc", "include")],
            extra_compile_args=flags,
            extra_link_args=["-fopenmp"],
        )
    ext_modules.append(extension)
    cmdclass["build_ext"] = BuildExtension.with_options(use_ninja=True)

    try:
        import jax.ffi

        jax_include = jax.ffi.include_dir()
    except ImportError:
        jax_include = None
    if jax_include:
        # A shared library with no Python module: hyperloss/jax.py loads it with ctypes. With CUDA it also holds
        # the CUDA kernels and the GPU handlers.
        jax_sources = [*CORE_SOURCES, "csrc/jax/ffi.cpp"]
        if with_cuda:
            ext_modules.append(
                CUDAExtension(
                    name="hyperloss._jax_ffi",
                    sources=[*jax_sources, "csrc/cuda/uniform.cu", "csrc/cuda/align.cu"],
                    include_dirs=[os.path.join(ROOT, "csrc", "include")],
                    extra_compile_args={
                        "cxx": [*flags, "-DHYPERLOSS_WITH_CUDA", "-isystem", jax_include],
                        "nvcc": ["-O3", "-DHYPERLOSS_WITH_CUDA"],
                    },
                    extra_link_args=["-fopenmp"],
                )
            )
        else:
            ext_modules.append(
                Extension(
                    name="hyperloss._jax_ffi",
                    sources=jax_sources,
                    include_dirs=[os.path.join(ROOT, "csrc", "include")],
                    extra_compile_args=[*flags, "-isystem", jax_include],
                    extra_link_args=["-fopenmp"],
                    language="c++",
                )
            )

setup(ext_modules=ext_modules, cmdclass=cmdclass)
