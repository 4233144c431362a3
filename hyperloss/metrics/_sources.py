"""Where the rows come from: tensors, NumPy arrays and memmaps, .npy/.pt files, and iterables of batches.

Every source becomes a ``Rows``: random access to row ranges, read as owned, contiguous CPU (or, for a tensor
source, same-device) tensors, so that a dataset larger than memory is read one tile at a time. An iterable (a
DataLoader, a generator) can be walked only once and in its own order, so its batches are first written to an
unnamed temporary file (deleted when closed) and read back as a memmap.
"""

from __future__ import annotations

import os
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._internals import SUPPORTED_DTYPES

Source = torch.Tensor | np.ndarray | str | os.PathLike | Iterable[Any]

_NUMPY_DTYPES = {np.dtype(np.float16): torch.float16, np.dtype(np.float32): torch.float32}
_NUMPY_DTYPES[np.dtype(np.float64)] = torch.float64
_DTYPE_NAMES = "float16, bfloat16 (tensors only), float32 or float64"


class Rows:
    """Random access to the rows of an (N, D) float matrix.

    Attributes:
        name: what the caller called it (for error messages).
        n, d: its shape.
        dtype: the torch dtype of its elements.
    """

    def __init__(self, name: str, data: torch.Tensor | np.ndarray, keep_open: Any = None) -> None:
        self.name = name
        self._data = data
        self._keep_open = keep_open  # the spool file, closed (and so deleted) by close()
        self.n, self.d = (int(s) for s in data.shape)
        self.dtype = data.dtype if isinstance(data, torch.Tensor) else _NUMPY_DTYPES[data.dtype.newbyteorder("=")]

    @property
    def device(self) -> torch.device:
        return self._data.device if isinstance(self._data, torch.Tensor) else torch.device("cpu")

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) as a new contiguous tensor (the source is never written through it)."""
        if isinstance(self._data, torch.Tensor):
            return self._data[start:stop].detach().clone(memory_format=torch.contiguous_format)
        native = self._data.dtype.newbyteorder("=")  # torch reads native byte order only
        return torch.from_numpy(np.array(self._data[start:stop], dtype=native, order="C"))

    def fingerprint(self) -> int:
        """A checksum of the shape, dtype and first and last rows: a cheap test that every rank reads one dataset."""
        ends = [self.read(0, 1), self.read(self.n - 1, self.n)]
        digest = zlib.crc32(repr((self.n, self.d, str(self.dtype))).encode())
        for row in ends:
            digest = zlib.crc32(row.cpu().contiguous().view(torch.uint8).numpy().tobytes(), digest)
        return digest

    def close(self) -> None:
        if self._keep_open is not None:
            self._keep_open.close()
            self._keep_open = None

    def __enter__(self) -> Rows:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_matrix(name: str, shape: tuple[int, ...], dtype: object, min_rows: int) -> None:
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} must hold floating-point numbers ({_DTYPE_NAMES}), got {dtype}")
    if len(shape) != 2:
        raise ValueError(f"{name} must be 2-D (N rows, D features), got shape {tuple(shape)}")
    if shape[1] < 1:
        raise ValueError(f"{name} needs at least one feature column, got shape {tuple(shape)}")
    if shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} row(s), got shape {tuple(shape)}")


def _torch_dtype(array: np.ndarray) -> object:
    return _NUMPY_DTYPES.get(array.dtype.newbyteorder("="), array.dtype)


def _load_file(name: str, path: Path) -> torch.Tensor | np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"{name}: no such file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as error:  # not a .npy file, or an object array
            raise ValueError(f"{name}: {path} is not a readable .npy array ({error})") from None
    if suffix in (".pt", ".pth"):
        try:
            try:
                data = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            except RuntimeError:  # the legacy (non-zip) format cannot be memory-mapped
                data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch.load raises many kinds for a file that is not a tensor archive
            raise ValueError(f"{name}: {path} is not a readable torch file ({type(error).__name__}: {error})") from None
        if not isinstance(data, torch.Tensor):
            raise TypeError(f"{name}: {path} must hold one tensor, got {type(data).__name__}")
        return data
    raise ValueError(f"{name}: {path} must be a .npy or .pt file, got {suffix or 'no suffix'!r}")


def batch_features(name: str, index: int, batch: object) -> torch.Tensor | np.ndarray:
    """A batch's features: the batch itself (a tensor or array), or the first item of a tuple or list (a
    DataLoader over a dataset of (features, label) pairs)."""
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ValueError(f"{name}: batch {index} is an empty {type(batch).__name__}")
        batch = batch[0]
    if not isinstance(batch, (torch.Tensor, np.ndarray)):
        raise TypeError(f"{name}: batch {index} must be a tensor or NumPy array, got {type(batch).__name__}")
    return batch


def _spool(name: str, batches: Iterable[Any], min_rows: int) -> Rows:
    """Writes every batch to an unnamed temporary file and maps it: O(batch) memory, one pass over the iterable."""
    spool = tempfile.TemporaryFile(prefix="hyperloss-metrics-")
    try:
        n = 0
        d = dtype = None
        for index, batch in enumerate(batches):
            batch = batch_features(name, index, batch)
            if isinstance(batch, torch.Tensor):
                if batch.dtype == torch.bfloat16:  # NumPy has no bfloat16; float32 holds it exactly
                    batch = batch.float()
                batch = batch.detach().cpu().numpy()
            _check_matrix(f"{name} (batch {index})", batch.shape, _torch_dtype(batch), 0)
            if d is None:
                d, dtype = batch.shape[1], batch.dtype.newbyteorder("=")
            elif batch.shape[1] != d or batch.dtype.newbyteorder("=") != dtype:
                raise ValueError(
                    f"{name}: batch {index} has {batch.shape[1]} features of {batch.dtype}; the first batch had "
                    f"{d} of {dtype}"
                )
            spool.write(np.ascontiguousarray(batch, dtype=dtype).tobytes())
            n += batch.shape[0]
        if d is None or n < min_rows:
            raise ValueError(f"{name} needs at least {min_rows} row(s), got {n}")
        spool.flush()
        return Rows(name, np.memmap(spool, dtype=dtype, mode="r", shape=(n, d)), keep_open=spool)
    except BaseException:
        spool.close()
        raise


def open_rows(name: str, source: Source, min_rows: int = 1) -> Rows:
    """The rows of ``source``: a tensor, a NumPy array or memmap, a path to a .npy or .pt file, or an iterable of
    batches (or already ``Rows``, returned as they are). Raises FileNotFoundError, TypeError or ValueError (with
    ``name`` in the message) before any work."""
    if isinstance(source, Rows):
        if source.n < min_rows:
            raise ValueError(f"{source.name} needs at least {min_rows} row(s), got {source.n}")
        return source
    if isinstance(source, (str, os.PathLike)):
        source = _load_file(name, Path(source))
    if isinstance(source, torch.Tensor):
        _check_matrix(name, tuple(source.shape), source.dtype, min_rows)
        return Rows(name, source.detach())
    if isinstance(source, np.ndarray):
        _check_matrix(name, source.shape, _torch_dtype(source), min_rows)
        return Rows(name, source)
    if isinstance(source, Iterable) and not isinstance(source, (bytes, dict)):
        return _spool(name, source, min_rows)
    raise TypeError(
        f"{name} must be a tensor, a NumPy array, a path to a .npy/.pt file or an iterable of batches, "
        f"got {type(source).__name__}"
    )


def iter_batches(name: str, source: Iterable[Any]) -> Iterator[torch.Tensor | np.ndarray]:
    """The feature batches of an iterable (see ``batch_features``)."""
    for index, batch in enumerate(source):
        yield batch_features(name, index, batch)


def load_weights(weights: object, n: int | None, min_positive: int) -> torch.Tensor:
    """Per-row weights as an (N,) float64 CPU tensor (8 bytes a row): finite, >= 0, at least ``min_positive`` of
    them > 0, N of them (any number for ``n`` None). ``weights``: a 1-D tensor, array, sequence, or a path to a
    .npy/.pt file holding one."""
    if isinstance(weights, (str, os.PathLike)):
        weights = _load_file("weights", Path(weights))
    if isinstance(weights, torch.Tensor):
        w = weights.detach().to(device="cpu", dtype=torch.float64)
    else:
        try:
            w = torch.from_numpy(np.array(weights, dtype=np.float64))
        except (TypeError, ValueError) as error:
            raise TypeError(f"weights must be a 1-D array of real numbers ({error})") from None
    if w.dim() != 1 or (n is not None and w.shape[0] != n):
        rows = "" if n is None else f" ({n})"
        raise ValueError(f"weights must be 1-D with one weight per row{rows}, got shape {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError("weights must be finite and >= 0")
    if int((w > 0).sum()) < min_positive:
        raise ValueError(f"weights need at least {min_positive} positive entries, got {int((w > 0).sum())}")
    return w
