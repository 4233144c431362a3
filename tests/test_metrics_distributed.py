"""hyperloss.metrics under torch.distributed: 2 and 3 Gloo ranks return, on every rank, the value of one process
(bit for bit where the kernels compute the tiles), raise the same errors together, and the torchmetrics Metric
gives the single-process values over the rows of every rank."""

from __future__ import annotations

import math
import warnings
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hyperloss.metrics import alignment, uniformity

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs Gloo")

N, D, T, TILE = 600, 12, 2.0, 110  # 6 row blocks, 21 tiles: every rank gets several, of both kinds


def _rows(seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    x = torch.randn(N, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return torch.nn.functional.normalize(x, dim=1).to(dtype)


def _close(got: float, want: float, rel: float, what: str) -> None:
    assert abs(got - want) <= rel * abs(want), f"{what}: {got!r} vs {want!r}"


def _expect_value_error(call, message: str) -> None:
    try:
        call()
    except ValueError as error:
        assert message in str(error), str(error)
    else:
        raise AssertionError(f"no ValueError ({message})")


def _worker(rank: int, world: int, init_file: str, tmp: str) -> None:
    torch.set_num_threads(1)  # the ranks share this machine's cores
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=timedelta(seconds=120)
    )
    try:
        w = torch.rand(N, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
        for dtype in (torch.float64, torch.float32):
            x, y = _rows(1, dtype), _rows(2, dtype)
            alone = dict(tile_rows=TILE, distributed=False)
            # the kernel path: every rank combines the same tile values in the same order
            assert uniformity(x, T, tile_rows=TILE) == uniformity(x, T, **alone), dtype
            assert alignment(x, y, 1.5, tile_rows=TILE) == alignment(x, y, 1.5, **alone), dtype
            # the torch tile path: per-row partial sums are combined across ranks (rounding differs)
            got, scores = uniformity(x, T, weights=w, per_sample=True, tile_rows=TILE)
            want, want_scores = uniformity(x, T, weights=w, per_sample=True, **alone)
            _close(got, want, 1e-13, f"weighted per-sample {dtype}")
            assert np.abs(scores - want_scores).max() <= 1e-13 * np.abs(want_scores).max()
            _close(uniformity(x, T, weights=w, tile_rows=TILE), uniformity(x, T, weights=w, **alone), 1e-13, "w")
            got, per_row = alignment(x, y, weights=w, per_sample=True, tile_rows=TILE)
            want, want_per_row = alignment(x, y, weights=w, per_sample=True, **alone)
            assert got == want and np.array_equal(per_row, want_per_row)

        # a memmap source, and a per-sample file written by rank 0 only
        x = _rows(3, torch.float32)
        path = Path(tmp) / "x.npy"
        if rank == 0:
            np.save(path, x.numpy())
        dist.barrier()
        assert uniformity(str(path), T, tile_rows=TILE) == uniformity(x, T, tile_rows=TILE, distributed=False)
        _, scores = uniformity(str(path), T, per_sample=str(Path(tmp) / "scores.npy"), tile_rows=TILE)
        dist.barrier()
        assert np.array_equal(np.load(Path(tmp) / "scores.npy"), scores)

        # errors are raised on every rank, together
        other = _rows(4) if rank == world - 1 else _rows(3)
        _expect_value_error(lambda: uniformity(other, T), "they differ in: first and last rows (checksum)")
        _expect_value_error(lambda: uniformity(_rows(3), 1.0 + (rank == 1)), "they differ in: t")
        bad = _rows(5)
        bad[N - 3, 0] = math.nan  # only the ranks holding the last block read it
        _expect_value_error(lambda: uniformity(bad, T, tile_rows=TILE, nonfinite="raise"), f"row {N - 3}")
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            assert math.isnan(uniformity(bad, T, tile_rows=TILE))
        assert uniformity(_rows(1), T, tile_rows=TILE) == uniformity(_rows(1), T, tile_rows=TILE, distributed=False)

        if world == 2:  # the Metric under DDP with 2 ranks (importing torchmetrics takes seconds per process)
            _check_metric(rank, world)
    finally:
        dist.destroy_process_group()


def _check_metric(rank: int, world: int) -> None:
    """Each rank sees its own rows (uneven shares, several batches); compute() is exact over all of them."""
    from hyperloss.metrics import AlignmentUniformity

    x, y = _rows(11), _rows(12)  # float64: computed in float64
    bounds = np.linspace(0, N, world + 1).astype(int) + np.r_[0, [37] * (world - 1), 0]  # uneven shares
    mine = slice(bounds[rank], bounds[rank + 1])
    metric = AlignmentUniformity(t=T, alpha=2)
    for xb, yb in zip(x[mine].split(97), y[mine].split(97), strict=True):
        metric.update(xb, yb)
    got = metric.compute()
    want_x, want_y = uniformity(x, T, distributed=False), uniformity(y, T, distributed=False)
    # the ranks cut the gathered rows into smaller tiles than one process does: equal up to rounding
    _close(float(got["uniformity_x"]), want_x, 1e-13, "metric uniformity_x")
    _close(float(got["uniformity_y"]), want_y, 1e-13, "metric uniformity_y")
    _close(float(got["alignment"]), alignment(x, y, distributed=False), 1e-13, "metric alignment")
    metric.update(x[mine][:5], y[mine][:5])  # the local state is kept after compute() (torchmetrics unsyncs)
    assert metric.compute()["uniformity_x"].isfinite()


@pytest.mark.parametrize("world", [2, 3])
def test_every_rank_returns_the_single_process_value(tmp_path, world):
    if world == 2:
        pytest.importorskip("torchmetrics")
    mp.spawn(_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
