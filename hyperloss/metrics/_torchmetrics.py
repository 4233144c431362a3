"""``AlignmentUniformity``: the two metrics as a torchmetrics ``Metric`` (torchmetrics is an optional dependency)."""

from __future__ import annotations

from typing import Any

import torch

try:
    from torchmetrics import Metric
    from torchmetrics.utilities import dim_zero_cat
except ImportError as error:  # pragma: no cover - exercised where torchmetrics is missing
    raise ImportError(
        "hyperloss.metrics.AlignmentUniformity needs torchmetrics: pip install 'hyperloss[metrics]'"
    ) from error

from ._internals import check_bool, check_positive
from ._streamed import alignment, uniformity


class AlignmentUniformity(Metric):
    """Alignment and uniformity over every batch seen, exact (all pairs of all rows, not an average over batches).

    ``update(x, y)`` keeps the (N_b, D) embeddings of both views (torchmetrics list states; ``compute_on_cpu=True``
    keeps them in host memory); ``compute()`` returns, as float64 0-dim tensors:
    ``alignment`` (mean ||x_i - y_i||^alpha), ``uniformity_x``, ``uniformity_y`` and ``uniformity`` (their mean).
    ``update(x)`` alone (every call without y) gives ``uniformity`` of x only.

    Under DDP torchmetrics gathers the states of every rank (in rank order); the ranks then share the pairs of the
    gathered set among themselves and every rank returns the same values.

    Args:
        t: uniformity temperature.
        alpha: alignment exponent.
        normalize: L2-normalize the rows first.
        dtype: compute precision (torch.float32 or torch.float64; default: float64 for float64 data, else float32).
        **kwargs: torchmetrics ``Metric`` options (``compute_on_cpu``, ``sync_on_compute``, ``process_group``, ...).
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(
        self,
        t: float = 2.0,
        alpha: float = 2.0,
        normalize: bool = False,
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.t = float(check_positive("t", t))
        self.alpha = float(check_positive("alpha", alpha))
        self.normalize = check_bool("normalize", normalize)
        self.compute_dtype = dtype
        self.add_state("x", default=[], dist_reduce_fx="cat")
        self.add_state("y", default=[], dist_reduce_fx="cat")

    def update(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """Adds a batch (kept as it is, detached, until ``reset()``).

        Args:
            x: (N_b, D) embeddings.
            y: their positive pairs, of x's shape (for alignment), with every batch or with none.

        Returns:
            None.
        """
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or not x.is_floating_point():
            raise ValueError(f"x must be a 2-D floating-point tensor, got {getattr(x, 'shape', type(x).__name__)}")
        if y is not None and (not isinstance(y, torch.Tensor) or y.shape != x.shape):
            raise ValueError(f"y must be a tensor of x's shape {tuple(x.shape)}, got {getattr(y, 'shape', y)}")
        if (y is None) != (not self.y) and self.x:
            raise ValueError("pass y with every batch or with none")
        self.x.append(x.detach())
        if y is not None:
            self.y.append(y.detach())

    def compute(self) -> dict[str, torch.Tensor]:
        """The metrics over every row seen (on every rank, after torchmetrics' synchronization).

        Returns:
            ``uniformity_x`` and ``uniformity`` (with y also ``uniformity_y``, ``alignment``, and ``uniformity`` the
            mean of the two uniformities), float64 0-dim tensors.
        """
        x = dim_zero_cat(self.x)
        y = dim_zero_cat(self.y) if (isinstance(self.y, torch.Tensor) or self.y) else None
        # After torchmetrics' sync every rank holds the same gathered rows: share the pairs among the ranks.
        shared = dict(distributed=bool(self._is_synced), group=self.process_group)
        options = dict(normalize=self.normalize, dtype=self.compute_dtype, device=x.device, progress=False)
        u_x = uniformity(x, self.t, **options, **shared)
        result = {"uniformity_x": u_x, "uniformity": u_x}
        if y is not None and y.numel():
            u_y = uniformity(y, self.t, **options, **shared)
            result.update(
                alignment=alignment(x, y, self.alpha, **options, **shared),
                uniformity_y=u_y,
                uniformity=(u_x + u_y) / 2,
            )
        return {name: torch.tensor(value, dtype=torch.float64) for name, value in result.items()}
