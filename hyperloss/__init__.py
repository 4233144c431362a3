"""hyperloss: the alignment and uniformity losses of Wang & Isola (ICML 2020) without an N x N matrix.

Drop-in for the paper's two functions (same names, arguments and values), with fused kernels for the CPU
(C++/OpenMP) and the GPU (Triton), and a pure-PyTorch fallback:

    import hyperloss
    loss = hyperloss.align_loss(x, y, alpha=2) + hyperloss.uniform_loss(x, t=2)

``hyperloss.backends()`` lists the backends, whether they can run here, and why not (``hyperloss.backends`` is
also the registry: ``register()`` adds one); ``python -m hyperloss`` prints
that with the versions, the CPU and the CUDA devices. ``hyperloss.distributed`` has the global-batch losses over
torch.distributed, ``hyperloss.jax`` the losses for JAX arrays, ``hyperloss.reference`` the paper's code and the
pure-PyTorch definitions.
"""

from . import backends, reference
from ._version import __version__
from .backends import BackendStatus
from .functional import align_loss, uniform_loss
from .modules import AlignLoss, AlignUniformLoss, AlignUniformParts, UniformLoss

__all__ = [
    "AlignLoss",
    "AlignUniformLoss",
    "AlignUniformParts",
    "BackendStatus",
    "UniformLoss",
    "__version__",
    "align_loss",
    "backends",
    "reference",
    "uniform_loss",
]
