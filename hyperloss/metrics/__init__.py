"""Exact alignment and uniformity of whole datasets, as metrics (Wang & Isola 2020 use them to evaluate encoders).

- ``uniformity(source, t)`` and ``alignment(x_source, y_source, alpha)``: exact over every pair of a dataset of any
  size (tensor, NumPy array or memmap, .npy/.pt file, DataLoader), streamed to the device in row tiles with
  O(tile) memory; per-row weights, per-sample scores, a progress bar, and torch.distributed sharding.
- ``AlignmentUniformity``: a torchmetrics ``Metric`` (needs ``pip install "hyperloss[metrics]"``).
- ``hyperloss-metrics EMB.npy``: the command line (``hyperloss.metrics.cli``).
"""

from __future__ import annotations

from typing import Any

from ._streamed import alignment, uniformity

__all__ = ["AlignmentUniformity", "alignment", "uniformity"]


def __getattr__(name: str) -> Any:
    # torchmetrics is optional: it is imported only when the Metric is asked for.
    if name == "AlignmentUniformity":
        from ._torchmetrics import AlignmentUniformity

        return AlignmentUniformity
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
