"""Exact alignment and uniformity of whole datasets, streamed to the device in row tiles.

Uniformity is a log-sum-exp over all N (N - 1) / 2 pairs. The rows are cut into blocks of ``tile_rows``; every
pair of blocks (a <= b) is one tile, whose log-sum-exp is computed by the backend's ``uniform_lse`` (block a with
itself, or block a against block b as its "queue"), and the tiles' values are combined in float64 in a fixed order.
Memory is O(tile) whatever N; under torch.distributed each rank takes a consecutive run of tiles with about 1/world
of the pairs, and one all-reduce gives every rank every tile's value, so all ranks (and a single process) combine
the same numbers in the same order and return the same value.

Per-row weights and per-sample scores have no kernel yet: those tiles are computed in torch (``_tiles``), with a
running log-sum-exp per row (8 bytes a row).
"""

from __future__ import annotations

import itertools
import math
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from . import _tiles
from ._internals import backend as find_backend
from ._internals import check_bool, check_positive, compute_dtype
from ._sources import Rows, Source, iter_batches, load_weights, open_rows

PerSample = bool | str | os.PathLike | np.ndarray

# Bytes of one row tile in the compute dtype (kernel path), and of one score tile (torch path), per device type.
# On the CPU, 4 MB tiles (8192 rows of 128 float32) cost about 30 MB in all (two tiles and the kernels' centered
# copies) and run within a few percent of the speed of larger ones (bench/bench_metrics.py).
_KERNEL_TILE_BYTES = {"cpu": 4 << 20}
_SCORE_TILE_BYTES = {"cpu": 16 << 20}
_GPU_KERNEL_TILE_BYTES = 128 << 20
_GPU_SCORE_TILE_BYTES = 1 << 30
_DTYPE_CODES = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2, torch.float64: 3}
# Without a terminal no bar is drawn; on one, a bar appears only for work that lasts longer than this (seconds).
_PROGRESS_DELAY_S = 1.0


# ----------------------------------------------------------------------------------------------------------------
# Arguments


def _device(device: object, source_device: torch.device) -> torch.device:
    if device is None:
        if source_device.type != "cpu":
            return source_device
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        return torch.device(device)
    except (TypeError, RuntimeError) as error:
        raise ValueError(f"device: {error}") from None


def _compute_dtype(dtype: object, source_dtype: torch.dtype) -> torch.dtype:
    if dtype is None:
        return compute_dtype(source_dtype)
    named = {"float32": torch.float32, "float64": torch.float64}
    dtype = named.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64 (or None: the source's), got {dtype!r}")
    return dtype


def _check_nonfinite(nonfinite: object) -> str:
    if nonfinite not in ("nan", "raise"):
        raise ValueError(f"nonfinite must be 'nan' or 'raise', got {nonfinite!r}")
    return nonfinite


def _tile_rows(
    tile_rows: object, n: int, d: int, dtype: torch.dtype, device: torch.device, scores: bool, least_blocks: int
) -> int:
    """Rows per tile: ``tile_rows`` when given, else what fits the device's byte budget (row tiles for the kernels,
    square score tiles for the torch path), cut to give at least ``least_blocks`` row blocks (enough tiles for
    every rank to get a balanced share)."""
    if tile_rows is not None:
        if isinstance(tile_rows, bool) or not isinstance(tile_rows, int) or tile_rows < 1:
            raise ValueError(f"tile_rows must be a positive int, got {tile_rows!r}")
        return tile_rows
    size = torch.finfo(dtype).bits // 8
    cpu = device.type == "cpu"
    if scores:
        budget = _SCORE_TILE_BYTES["cpu"] if cpu else _GPU_SCORE_TILE_BYTES
        rows = max(64, math.isqrt(budget // size))
    else:
        budget = _KERNEL_TILE_BYTES["cpu"] if cpu else _GPU_KERNEL_TILE_BYTES
        rows = max(256, budget // (size * d))
    return max(1, min(rows, -(-n // least_blocks)))


class _Output:
    """Where per-sample values go: a new in-memory array (``True``), a caller's array, or a .npy path written to a
    temporary name beside it and renamed when complete (an interrupted run leaves no file claiming to be done)."""

    def __init__(self, per_sample: PerSample) -> None:
        self.path: Path | None = None
        self.array: np.ndarray | None = None
        if isinstance(per_sample, (str, os.PathLike)):
            self.path = Path(per_sample)
            if self.path.suffix.lower() != ".npy":
                raise ValueError(f"per_sample: the output file must end in .npy, got {self.path}")
            if not self.path.parent.is_dir():
                raise FileNotFoundError(f"per_sample: no such directory: {self.path.parent}")
        elif isinstance(per_sample, np.ndarray):
            if per_sample.ndim != 1 or per_sample.dtype.kind != "f" or not per_sample.flags.writeable:
                raise ValueError("per_sample: an output array must be 1-D, floating point and writeable")
            self.array = per_sample
        elif not isinstance(per_sample, bool):
            raise TypeError(f"per_sample must be a bool, a .npy path or an array, got {type(per_sample).__name__}")

    def check_rows(self, n: int) -> None:
        if self.array is not None and self.array.shape[0] != n:
            raise ValueError(f"per_sample: the output array has {self.array.shape[0]} entries for {n} rows")

    def write(self, values: torch.Tensor, chunk: int, is_writer: bool) -> np.ndarray:
        """Writes the float64 values in chunks of rows; returns the array (for a path: opened read-only). Ranks
        other than the writer return them in memory instead of writing the file."""
        values = values.cpu()
        if self.path is None or not is_writer:
            out = self.array if self.array is not None else np.empty(values.shape[0], dtype=np.float64)
            out[:] = values.numpy()
            return out
        fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".partial")
        os.close(fd)
        try:
            out = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.float64, shape=(values.shape[0],))
            for start in range(0, values.shape[0], chunk):
                out[start : start + chunk] = values[start : start + chunk].numpy()
            out.flush()
            del out
            os.replace(temporary, self.path)
        except BaseException:  # KeyboardInterrupt too
            Path(temporary).unlink(missing_ok=True)
            raise
        return np.load(self.path, mmap_mode="r")


# ----------------------------------------------------------------------------------------------------------------
# Ranks, progress, tiles


class _Ranks:
    """This process's place among the ranks: the whole job in one process unless torch.distributed is in use."""

    def __init__(self, distributed: object, group: object) -> None:
        initialized = dist.is_available() and dist.is_initialized()
        if distributed is None:
            distributed = initialized
        check_bool("distributed", distributed)
        if distributed and not initialized:
            raise RuntimeError("distributed=True needs an initialized torch.distributed process group")
        self.group = group if distributed else None
        self.world = dist.get_world_size(group) if distributed else 1
        self.rank = dist.get_rank(group) if distributed else 0
        self.device = torch.device("cpu")
        if self.world > 1 and dist.get_backend(group) == dist.Backend.NCCL:
            self.device = torch.device("cuda", torch.cuda.current_device())

    def check_same(self, what: str, fields: dict[str, float]) -> None:
        """Raises the same ValueError on every rank when the ranks passed different data or arguments."""
        if self.world == 1:
            return
        mine = torch.tensor(list(fields.values()), dtype=torch.float64, device=self.device)
        every = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(every, mine, group=self.group)
        every = torch.stack(every).cpu()
        differ = [name for i, name in enumerate(fields) if not bool((every[:, i] == every[0, i]).all())]
        if differ:
            raise ValueError(
                f"{what}: every rank must pass the same data and arguments; they differ in: {', '.join(differ)} "
                "(distributed=False computes each rank's own value)"
            )

    def sum(self, mine: torch.Tensor) -> torch.Tensor:
        """Sum over the ranks (each fills its own entries, zeros elsewhere, so the sum is exact); float64 CPU."""
        mine = mine.to(device=self.device, dtype=torch.float64)
        if self.world > 1:
            dist.all_reduce(mine, group=self.group)
        return mine.cpu()


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(progress: object, total: int, what: str, rank: int) -> Any:
    """A tqdm bar over ``total`` pairs; None: only on a terminal and for work longer than a second."""
    if progress is not None:
        check_bool("progress", progress)
    if progress is False or rank != 0:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        if progress:
            raise ImportError("progress=True needs tqdm: pip install 'hyperloss[metrics]'") from None
        return _NoBar()
    return tqdm(
        total=total,
        desc=what,
        unit="pair",
        unit_scale=True,
        disable=None if progress is None else False,  # None: off when stderr is not a terminal
        delay=_PROGRESS_DELAY_S if progress is None else 0,
    )


class _Reader:
    """Reads row tiles onto the device in the compute dtype (L2-normalized when asked) and remembers the first
    non-finite row it has seen."""

    def __init__(self, rows: Rows, device: torch.device, dtype: torch.dtype, normalize: bool, raise_now: bool):
        self.rows, self.device, self.dtype, self.normalize = rows, device, dtype, normalize
        self.raise_now = raise_now  # raise at once (one process); else report after the all-reduce
        self.first_bad = rows.n
        self._cached: tuple[tuple[int, int], torch.Tensor, bool] | None = None

    def read(self, span: tuple[int, int], keep: bool = False) -> tuple[torch.Tensor, bool]:
        """Rows [start, stop) and whether they are all finite; ``keep`` holds the tile for the next calls."""
        if self._cached is not None and self._cached[0] == span:
            return self._cached[1], self._cached[2]
        tile = self.rows.read(*span).to(self.device)
        finite_rows = torch.isfinite(tile).all(1)
        finite = bool(finite_rows.all())
        if not finite:
            self.first_bad = min(self.first_bad, span[0] + int((~finite_rows).nonzero()[0, 0]))
            if self.raise_now:
                raise ValueError(non_finite_message(self.rows.name, self.first_bad))
        if self.normalize:
            tile = F.normalize(tile.double(), dim=1)
        tile = tile.to(self.dtype)
        if keep:
            self._cached = (span, tile, finite)
        return tile, finite


def non_finite_message(name: str, row: int) -> str:
    return f"{name}: row {row} has a non-finite value (NaN or Inf)"


def _settle_non_finite(first_bad: int, n: int, name: str, nonfinite: str) -> bool:
    """After the all-reduce: True when some row is not finite (the result is then NaN), raising instead when asked."""
    if first_bad >= n:
        return False
    if nonfinite == "raise":
        raise ValueError(non_finite_message(name, first_bad))
    warnings.warn(non_finite_message(name, first_bad) + "; the result is NaN", RuntimeWarning, stacklevel=3)
    return True


def _log(value: float) -> float:
    return math.log(value) if value > 0 else -math.inf


# ----------------------------------------------------------------------------------------------------------------
# Uniformity


def uniformity(
    source: Source,
    t: float = 2.0,
    *,
    normalize: bool = False,
    weights: object = None,
    per_sample: PerSample = False,
    device: str | torch.device | None = None,
    progress: bool | None = None,
    dtype: torch.dtype | str | None = None,
    tile_rows: int | None = None,
    backend: str = "auto",
    distributed: bool | None = None,
    group: Any = None,
    nonfinite: str = "nan",
) -> float | tuple[float, np.ndarray]:
    """The uniformity of a whole dataset, exact over all i < j pairs: log mean_{i<j} exp(-t ||x_i - x_j||^2).

    Args:
        source: (N, D) rows, N >= 2: a tensor, a NumPy array or memmap, a path to a .npy or .pt file (memory-mapped),
            or an iterable of batches (a DataLoader; a batch may be a (features, ...) tuple). An iterable is read once
            and spooled to an unnamed temporary file.
        t: temperature, finite and > 0.
        normalize: L2-normalize every row first (the paper's metrics use normalized features).
        weights: optional per-row weights w_i >= 0 (a 1-D tensor, array or .npy/.pt path):
            log(sum_{i<j} w_i w_j exp(-t d_ij) / sum_{i<j} w_i w_j). No N x N matrix is formed.
        per_sample: also return each row's log-mean-exp to all the others,
            u_i = log(sum_{j != i} w_j exp(-t d_ij) / sum_{j != i} w_j) (w = 1 without weights): a Gaussian-kernel
            log-density that is high in collapsed clusters and low for outliers. ``True``: a new float64 array;
            a path ending in .npy: written there (to a temporary name first, renamed when complete; under
            torch.distributed rank 0 writes it); a 1-D float array: filled. Costs 8 bytes a row (8 x world during
            the all-reduce). A row whose every other row has weight 0 gets NaN.
        device: where the tiles are computed; default: the source's device if it is a GPU tensor, else the GPU when
            present, else the CPU.
        progress: a tqdm bar; None (default): only on a terminal, for work longer than a second.
        dtype: compute precision, torch.float32 or torch.float64 (default: float64 for float64 data, else float32).
        tile_rows: rows per tile (default: a few MB per tile on the CPU, more on a GPU; under torch.distributed at
            most what makes 4 tiles per rank). With the same tiles, a single process and any number of ranks
            return the same value bit for bit.
        backend: the kernels for the plain total ("auto" or a backend name, see ``hyperloss.backends()``).
        distributed: share the tiles among the ranks of torch.distributed (default: when it is initialized). Every
            rank must pass the same data and arguments (checked: shape, first and last rows, t, ...) and every rank
            returns the same value; ``False``: this process alone.
        group: the process group (default: the default group).
        nonfinite: a row with NaN or Inf makes the result NaN (every per-sample value too) with a RuntimeWarning
            naming the row ("nan", default), or raises ValueError ("raise").

    Returns:
        The uniformity as a Python float; with ``per_sample``, (uniformity, per-sample array).

    Raises:
        FileNotFoundError, TypeError, ValueError: for a missing file or bad arguments, before any work.
    """
    t = float(check_positive("t", t))
    check_bool("normalize", normalize)
    nonfinite = _check_nonfinite(nonfinite)
    output = None if per_sample is False else _Output(per_sample)
    ranks = _Ranks(distributed, group)
    with open_rows("source", source, min_rows=2) as rows:
        n = rows.n
        device_ = _device(device, rows.device)
        dtype_ = _compute_dtype(dtype, rows.dtype)
        w = None if weights is None else load_weights(weights, n, min_positive=2)
        if output is not None:
            output.check_rows(n)
        kernel_path = w is None and output is None
        # B blocks make B (B + 1) / 2 tiles: at least 4 per rank with B >= sqrt(8 world).
        least_blocks = math.isqrt(8 * ranks.world - 1) + 1 if ranks.world > 1 else 1
        rows_per_tile = _tile_rows(tile_rows, n, rows.d, dtype_, device_, not kernel_path, least_blocks)
        spans = _tiles.blocks(n, rows_per_tile)
        pairs = _tiles.block_pairs(len(spans))
        costs = [_tiles.pairs_in(spans, a, b) for a, b in pairs]
        if ranks.world > 1:
            ranks.check_same(
                "uniformity",
                {
                    "rows N": n,
                    "features D": rows.d,
                    "dtype": _DTYPE_CODES[rows.dtype],
                    "first and last rows (checksum)": rows.fingerprint(),
                    "t": t,
                    "normalize": normalize,
                    "compute dtype": _DTYPE_CODES[dtype_],
                    "tile_rows": rows_per_tile,
                    "weights (sum)": -1 if w is None else float(w.sum()),
                    "per_sample": output is not None,
                },
            )
        first, last = _tiles.balanced_ranges(costs, ranks.world)[ranks.rank]
        reader = _Reader(rows, device_, dtype_, normalize, raise_now=nonfinite == "raise" and ranks.world == 1)
        bar = _progress_bar(progress, sum(costs[first:last]), "uniformity", ranks.rank)
        try:
            work = range(first, last)
            if kernel_path:
                tile_lses = _kernel_tiles(reader, spans, pairs, work, costs, t, find_backend(backend, device_), bar)
            elif output is None:
                tile_lses = _weighted_tiles(reader, spans, pairs, work, costs, t, w.to(device_), bar)
            else:
                row_lses = _per_row_tiles(reader, spans, pairs, work, costs, t, w, n, bar)
        finally:
            bar.close()

        bad_slots = torch.zeros(ranks.world, dtype=torch.float64)
        bad_slots[ranks.rank] = reader.first_bad
        if output is None:
            every = ranks.sum(torch.cat([tile_lses.cpu(), bad_slots]))
            tile_lses, bad_slots = every[: len(pairs)], every[len(pairs) :]
        else:
            slots = torch.zeros(ranks.world, n, dtype=torch.float64)
            slots[ranks.rank] = row_lses.cpu()
            every = ranks.sum(torch.cat([slots.flatten(), bad_slots]))
            row_lses, bad_slots = every[: ranks.world * n].view(ranks.world, n), every[ranks.world * n :]
            row_lses = row_lses[0] if ranks.world == 1 else torch.logsumexp(row_lses, 0)
        poisoned = _settle_non_finite(int(bad_slots.min()), n, rows.name, nonfinite)

        log_w = None if w is None else w.log()
        if w is None:
            log_pairs = math.log(n * (n - 1) // 2)
        else:
            log_pairs = _log(float((w * _sum_before(w)).sum()))  # log sum_{i<j} w_i w_j
        if output is None:
            lse = float(torch.logsumexp(tile_lses, 0))
        else:  # every pair is counted from both of its rows
            weighted = row_lses if log_w is None else row_lses + log_w
            lse = float(torch.logsumexp(weighted, 0)) - math.log(2)
        value = math.nan if poisoned else min(lse - log_pairs, 0.0)
        if output is None:
            return value
        if w is None:
            log_others = torch.full((n,), math.log(n - 1), dtype=torch.float64)
        else:
            log_others = (_sum_before(w) + _sum_before(w.flip(0)).flip(0)).log()  # log sum_{j != i} w_j
        scores = (row_lses - log_others).clamp_max(0.0)
        if poisoned:
            scores.fill_(math.nan)
        return value, output.write(scores, rows_per_tile, is_writer=ranks.rank == 0)


def _sum_before(w: torch.Tensor) -> torch.Tensor:
    """sum_{j < i} w_j for every i: an exclusive running sum of non-negative terms (never a difference, which
    would cancel where one weight dominates)."""
    return torch.cat([w.new_zeros(1), w.cumsum(0)[:-1]])


def _kernel_tiles(reader, spans, pairs, work, costs, t, backend, bar) -> torch.Tensor:
    """The log-sum-exp of every tile in ``work`` by the backend's kernels (other entries 0)."""
    lses = torch.zeros(len(pairs), dtype=torch.float64)
    t_tensor = torch.tensor(t, dtype=torch.float64)
    for k in work:
        a, b = pairs[k]
        rows_a, finite_a = reader.read(spans[a], keep=True)
        if a == b:
            finite = finite_a
            compute = finite and rows_a.shape[0] >= 2
            lse = backend.uniform_lse(rows_a, None, t_tensor, True, False, False)[0] if compute else -math.inf
        else:
            rows_b, finite_b = reader.read(spans[b])
            finite = finite_a and finite_b
            lse = backend.uniform_lse(rows_a, rows_b, t_tensor, False, False, False)[0] if finite else 0.0
        lses[k] = lse if finite else math.nan
        bar.update(costs[k])
    return lses


def _weighted_tiles(reader, spans, pairs, work, costs, t, w, bar) -> torch.Tensor:
    """log sum over the tile's pairs of w_i w_j exp(s_ij), for every tile in ``work`` (other entries 0)."""
    lses = torch.zeros(len(pairs), dtype=torch.float64)
    log_w = w.log()
    for k in work:
        a, b = pairs[k]
        rows_a, finite_a = reader.read(spans[a], keep=True)
        rows_b, finite_b = (rows_a, True) if a == b else reader.read(spans[b])
        if not (finite_a and finite_b):
            lses[k] = math.nan
        else:
            scores = _tiles.score_tile(rows_a, None if a == b else rows_b, t, reader.dtype)
            if a == b:
                _tiles.mask_not_above_diagonal(scores)
            per_row = _tiles.row_lse(scores, log_w[slice(*spans[b])]) + log_w[slice(*spans[a])]
            lses[k] = float(torch.logsumexp(per_row, 0))
        bar.update(costs[k])
    return lses


def _per_row_tiles(reader, spans, pairs, work, costs, t, w, n, bar) -> torch.Tensor:
    """log sum_{j != i} w_j exp(s_ij) for every row i, over the tiles in ``work`` (w = 1 without weights); each
    off-diagonal tile serves its rows both ways."""
    row_lses = torch.full((n,), -math.inf, dtype=torch.float64, device=reader.device)
    log_w = None if w is None else w.log().to(reader.device)

    def add(span: tuple[int, int], values: torch.Tensor) -> None:
        row_lses[slice(*span)] = torch.logaddexp(row_lses[slice(*span)], values)

    for k in work:
        a, b = pairs[k]
        rows_a, finite_a = reader.read(spans[a], keep=True)
        rows_b, finite_b = (rows_a, True) if a == b else reader.read(spans[b])
        weights_a = None if log_w is None else log_w[slice(*spans[a])]
        weights_b = None if log_w is None else log_w[slice(*spans[b])]
        if not (finite_a and finite_b):
            add(spans[a], row_lses.new_full((spans[a][1] - spans[a][0],), math.nan))
        elif a == b:
            scores = _tiles.score_tile(rows_a, None, t, reader.dtype).fill_diagonal_(-math.inf)
            add(spans[a], _tiles.row_lse(scores, weights_a))
        else:
            scores = _tiles.score_tile(rows_a, rows_b, t, reader.dtype)
            add(spans[a], _tiles.row_lse(scores, weights_b))
            add(spans[b], _tiles.row_lse(scores.T, weights_a))
        bar.update(costs[k])
    return row_lses


# ----------------------------------------------------------------------------------------------------------------
# Alignment


def _random_access(source: object) -> bool:
    return isinstance(source, (Rows, torch.Tensor, np.ndarray, str, os.PathLike))


def alignment(
    x_source: Source,
    y_source: Source | None = None,
    alpha: float = 2.0,
    *,
    normalize: bool = False,
    weights: object = None,
    per_sample: PerSample = False,
    device: str | torch.device | None = None,
    progress: bool | None = None,
    dtype: torch.dtype | str | None = None,
    tile_rows: int | None = None,
    backend: str = "auto",
    distributed: bool | None = None,
    group: Any = None,
    nonfinite: str = "nan",
) -> float | tuple[float, np.ndarray]:
    """The alignment of a whole dataset of positive pairs: mean_i ||x_i - y_i||^alpha, streamed in row tiles.

    Args:
        x_source, y_source: (N, D) rows of the two views, each as for ``uniformity``. With ``y_source`` None,
            ``x_source`` is an iterable of (x, y, ...) batches. Two iterables are read in step.
        alpha: exponent, finite and > 0.
        normalize: L2-normalize every row of x and y first.
        weights: optional per-row weights w_i >= 0: sum_i w_i ||x_i - y_i||^alpha / sum_i w_i.
        per_sample: also return each row's ||x_i - y_i||^alpha (as for ``uniformity``).
        device, progress, dtype, tile_rows, backend, group: as for ``uniformity``.
        distributed: share the tiles of tensor, array and file sources among the ranks (default: when
            torch.distributed is initialized); every rank must pass the same data, and every rank returns the same
            value. Iterables are read whole by every rank.
        nonfinite: a row with NaN or Inf in x or y makes the result NaN (per-sample values: that row's own value)
            with a RuntimeWarning ("nan", default), or raises ValueError ("raise").

    Returns:
        The alignment as a Python float; with ``per_sample``, (alignment, per-sample array).
    """
    alpha = float(check_positive("alpha", alpha))
    check_bool("normalize", normalize)
    nonfinite = _check_nonfinite(nonfinite)
    output = None if per_sample is False else _Output(per_sample)
    if y_source is None and _random_access(x_source):
        raise ValueError("y_source is needed unless x_source is an iterable of (x, y) batches")
    ranks = _Ranks(distributed, group)
    if _random_access(x_source) and _random_access(y_source):
        with open_rows("x_source", x_source) as x_rows, open_rows("y_source", y_source) as y_rows:
            if (x_rows.n, x_rows.d) != (y_rows.n, y_rows.d):
                raise ValueError(
                    f"x_source and y_source must have the same shape, got {(x_rows.n, x_rows.d)} and "
                    f"{(y_rows.n, y_rows.d)}"
                )
            return _align_rows(
                x_rows, y_rows, alpha, normalize, weights, output, device, progress, dtype, tile_rows, backend,
                ranks, nonfinite,
            )  # fmt: skip
    if _random_access(x_source) or _random_access(y_source):
        raise TypeError("x_source and y_source must both be tensors, arrays or files, or both be iterables of batches")
    return _align_stream(
        x_source, y_source, alpha, normalize, weights, output, device, dtype, backend, nonfinite, progress
    )


class _AlignSums:
    """Per-tile sums of ||x_i - y_i||^alpha (weighted when asked) and, when asked, the per-row values."""

    def __init__(self, alpha: float, w: torch.Tensor | None, backend: Any, per_row: bool) -> None:
        self.alpha, self.w, self.backend, self.per_row = alpha, w, backend, per_row
        self.alpha_tensor = torch.tensor(alpha, dtype=torch.float64)

    def tile(self, x: torch.Tensor, y: torch.Tensor, start: int) -> tuple[float, torch.Tensor | None]:
        if self.w is None and not self.per_row:
            mean = self.backend.align(x, y, self.alpha_tensor, False)[0]
            return float(mean) * x.shape[0], None
        values = (x - y).pow(2).sum(1, dtype=torch.float64).pow(self.alpha / 2)
        weights = None if self.w is None else self.w[start : start + x.shape[0]].to(values.device)
        total = values.sum() if weights is None else (weights * values).sum()
        return float(total), values.cpu()


def _align_rows(
    x_rows, y_rows, alpha, normalize, weights, output, device, progress, dtype, tile_rows, backend, ranks, nonfinite
):
    n = x_rows.n
    device_ = _device(device, x_rows.device)
    dtype_ = _compute_dtype(dtype, x_rows.dtype if x_rows.dtype == y_rows.dtype else torch.float32)
    w = None if weights is None else load_weights(weights, n, min_positive=1)
    if output is not None:
        output.check_rows(n)
    rows_per_tile = _tile_rows(
        tile_rows, n, x_rows.d, dtype_, device_, False, 4 * ranks.world if ranks.world > 1 else 1
    )
    spans = _tiles.blocks(n, rows_per_tile)
    if ranks.world > 1:
        ranks.check_same(
            "alignment",
            {
                "rows N": n,
                "features D": x_rows.d,
                "x first and last rows (checksum)": x_rows.fingerprint(),
                "y first and last rows (checksum)": y_rows.fingerprint(),
                "alpha": alpha,
                "normalize": normalize,
                "compute dtype": _DTYPE_CODES[dtype_],
                "weights (sum)": -1 if w is None else float(w.sum()),
                "per_sample": output is not None,
            },
        )
    first, last = _tiles.balanced_ranges([b - a for a, b in spans], ranks.world)[ranks.rank]
    raise_now = nonfinite == "raise" and ranks.world == 1
    readers = [_Reader(rows, device_, dtype_, normalize, raise_now) for rows in (x_rows, y_rows)]
    sums = _AlignSums(alpha, w, find_backend(backend, device_), output is not None)
    tile_sums = torch.zeros(len(spans), dtype=torch.float64)
    per_row = torch.zeros(n if output is not None else 0, dtype=torch.float64)
    bar = _progress_bar(progress, spans[last - 1][1] - spans[first][0] if last > first else 0, "alignment", ranks.rank)
    try:
        for k in range(first, last):
            (x, _), (y, _) = (reader.read(spans[k]) for reader in readers)
            tile_sums[k], values = sums.tile(x, y, spans[k][0])
            if output is not None:
                per_row[slice(*spans[k])] = values
            bar.update(spans[k][1] - spans[k][0])
    finally:
        bar.close()
    bad = torch.zeros(ranks.world, dtype=torch.float64)
    bad[ranks.rank] = min(readers[0].first_bad, readers[1].first_bad)
    every = ranks.sum(torch.cat([tile_sums, per_row, bad]))
    tile_sums, per_row = every[: len(spans)], every[len(spans) : len(spans) + per_row.shape[0]]
    poisoned = _settle_non_finite(int(every[-ranks.world :].min()), n, "x_source or y_source", nonfinite)
    value = math.nan if poisoned else float(tile_sums.sum()) / (n if w is None else float(w.sum()))
    if output is None:
        return value
    return value, output.write(per_row, rows_per_tile, is_writer=ranks.rank == 0)


def _pairs_of(x_source: Iterable[Any], y_source: Iterable[Any] | None) -> Iterator[tuple[Any, Any]]:
    if y_source is None:
        for index, batch in enumerate(x_source):
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise TypeError(f"x_source: batch {index} must be an (x, y, ...) tuple when y_source is None")
            yield batch[0], batch[1]
        return
    missing = object()
    pairs = itertools.zip_longest(
        iter_batches("x_source", x_source), iter_batches("y_source", y_source), fillvalue=missing
    )
    for index, (x, y) in enumerate(pairs):
        if x is missing or y is missing:
            raise ValueError(f"x_source and y_source have different numbers of batches (from batch {index})")
        yield x, y


def _align_stream(x_source, y_source, alpha, normalize, weights, output, device, dtype, backend, nonfinite, progress):
    """Alignment over iterables: one pass, batch by batch, in this process (no collective)."""
    w = None if weights is None else load_weights(weights, None, min_positive=1)
    total, n, first_bad = 0.0, 0, None
    per_row: list[torch.Tensor] = []
    sums = device_ = dtype_ = None
    bar = _progress_bar(progress, None, "alignment", 0)
    try:
        for index, (x, y) in enumerate(_pairs_of(x_source, y_source)):
            x, y = (torch.as_tensor(v).detach() for v in (x, y))
            name = f"x_source/y_source batch {index}"
            if x.dim() != 2 or x.shape != y.shape:
                raise ValueError(f"{name}: x and y must be 2-D of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
            if not (x.is_floating_point() and y.is_floating_point()):
                raise TypeError(f"{name}: x and y must be floating point, got {x.dtype} and {y.dtype}")
            if sums is None:
                device_, dtype_ = _device(device, x.device), _compute_dtype(dtype, x.dtype)
                sums = _AlignSums(alpha, w, find_backend(backend, device_), output is not None)
            if w is not None and n + x.shape[0] > w.shape[0]:
                raise ValueError(f"weights has {w.shape[0]} entries, fewer than the rows (at least {n + x.shape[0]})")
            finite_rows = (torch.isfinite(x) & torch.isfinite(y)).all(1)
            if first_bad is None and not bool(finite_rows.all()):
                first_bad = n + int((~finite_rows).nonzero()[0, 0])
                if nonfinite == "raise":
                    raise ValueError(non_finite_message("x_source or y_source", first_bad))
            if x.shape[0]:
                x, y = (v.to(device_) for v in (x, y))
                if normalize:
                    x, y = (F.normalize(v.double(), dim=1) for v in (x, y))
                tile_total, values = sums.tile(x.to(dtype_), y.to(dtype_), n)
                total += tile_total
                if output is not None:
                    per_row.append(values)
            n += x.shape[0]
            bar.update(x.shape[0])
    finally:
        bar.close()
    if n == 0:
        raise ValueError("x_source and y_source need at least one row, got 0")
    if w is not None and w.shape[0] != n:
        raise ValueError(f"weights must have one weight per row ({n}), got {w.shape[0]}")
    poisoned = _settle_non_finite(n if first_bad is None else first_bad, n, "x_source or y_source", nonfinite)
    value = math.nan if poisoned else total / (n if w is None else float(w.sum()))
    if output is None:
        return value
    output.check_rows(n)
    return value, output.write(torch.cat(per_row), 1 << 16, is_writer=True)
