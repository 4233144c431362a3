"""The lean uniformity sweep (fixed exponent shift; rows it cannot resolve recomputed by the running-reference
kernel) against the float64 oracle, at any D: on a GPU, or on the CPU under TRITON_INTERPRET=1 (small N).

Under the interpreter the row kernels keep rows in registers only up to D = 32 (so that small tests reach the
chunked path too); ``gpu_thresholds`` switches to the GPU's 256 so that D = 64..256 run the lean kernel as on a GPU.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import pytest
import torch

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed (pip install triton)", allow_module_level=True)
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
if not (torch.cuda.is_available() or INTERPRET):
    pytest.skip("no CUDA device and TRITON_INTERPRET is not 1", allow_module_level=True)

import hyperloss  # noqa: E402
from hyperloss.triton import uniform as triton_uniform  # noqa: E402
from tests.helpers import assert_close_scaled, features, uniform_reference  # noqa: E402
from tests.test_triton import check_uniform  # noqa: E402

DEVICE = "cpu" if INTERPRET else "cuda"


@pytest.fixture(params=["default", "gpu"])
def thresholds(request, monkeypatch):
    """The interpreter's small register threshold (D > 32 chunked), or the GPU's (D <= 256 in registers)."""
    if request.param == "gpu":
        monkeypatch.setattr(triton_uniform, "_MAX_REGISTER_D", 256)
    return request.param


# N small enough for the interpreter; a queue on the larger widths.
WIDTHS = [1, 3, 64, 127, 128, 200, 256, 257, 1000, 4096]


@pytest.mark.parametrize("d", WIDTHS)
def test_any_width(thresholds, d):
    if thresholds == "gpu" and d > 256:
        pytest.skip("above 256 both settings take the chunked path")
    n = 24 if d <= 256 else 9
    x = features(n, d, seed=d).to(DEVICE)
    check_uniform(x, 2.0)
    if d in (3, 128, 257):
        check_uniform(x, 2.0, features(7, d, seed=d + 1).to(DEVICE))
        check_uniform(x[:5], 2.0, features(7, d, seed=d + 1).to(DEVICE), intra_batch=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_rows_the_shift_cannot_resolve_are_recomputed(thresholds, dtype):
    # A unit-norm cluster (the fixed shift resolves it) and far rows, whose every term underflows 2^-100 with the
    # shift at 0 (or drops below float16's range): flagged and recomputed with the running reference.
    cluster = features(40, 16, seed=1)
    far = features(5, 16, seed=2) * 1.0 + torch.linspace(30.0, 60.0, 5, dtype=torch.float64)[:, None]
    x = torch.cat([cluster[:20], far, cluster[20:]]).to(dtype).to(DEVICE)
    check_uniform(x, 2.0)
    check_uniform(x, 2.0, far.to(dtype).to(DEVICE))


@pytest.mark.parametrize("t", [1e-7, 0.05, 2.0, 30.0])
def test_any_t_on_the_lean_path(thresholds, t):
    # Tiny t: every term near 1 (flagged: the deficits' series); large t: most terms underflow.
    x = features(33, 8, seed=3).to(DEVICE)
    queue = features(19, 8, seed=4).to(DEVICE)
    check_uniform(x, t)
    check_uniform(x, t, queue)


# Exact float32 products ("highest"): a float16 split, hi.hi + (hi.lo + lo.hi) 2^-S, must keep float32-level
# accuracy: loss and gradients within 1e-5 of float64 (relative; gradients to their largest entry), where a plain
# float16 copy (11 bits) misses by ~1e-4.
HIGHEST_REL = 1e-5


def _check_highest(x, t, queue=None, intra_batch=True):
    x = x.detach().requires_grad_()
    queue = None if queue is None else queue.detach().requires_grad_()
    got = hyperloss.uniform_loss(x, t, queue=queue, intra_batch=intra_batch, backend="triton", precision="highest")
    want, want_grads = uniform_reference(x, t, queue, intra_batch)
    value, want = float(got.detach()), float(want.detach())
    assert abs(value - want) <= HIGHEST_REL * abs(want), (value, want)
    inputs = [x] if queue is None else [x, queue]
    for name, g, w in zip(("x", "queue")[: len(inputs)], torch.autograd.grad(got, inputs), want_grads, strict=True):
        assert_close_scaled(g, w, HIGHEST_REL, f"d loss / d {name} (highest)", floor=0.0)


@pytest.mark.parametrize("d", [16, 64, 128, 256])
def test_highest_precision_split(thresholds, d):
    x = features(40, d, seed=d, dtype=torch.float32).to(DEVICE)
    queue = features(11, d, seed=d + 1, dtype=torch.float32).to(DEVICE)
    _check_highest(x, 2.0)
    _check_highest(x, 2.0, queue)
    _check_highest(x[:9], 2.0, queue, intra_batch=False)


def test_highest_precision_hostile_inputs(thresholds):
    # A common offset 1e4 times the spread (the split is of the centered rows), losses where every term
    # underflows float32 (t = 50, rows of norm 2) or lies within 1e-6 of 1 (t = 1e-6), tiny and huge spreads.
    base = features(36, 24, seed=5, dtype=torch.float64)
    offset = torch.linspace(-1e4, 1e4, 24, dtype=torch.float64)
    _check_highest((base + offset).float().to(DEVICE), 2.0)
    _check_highest(features(30, 64, seed=6, scale=2.0, dtype=torch.float32).to(DEVICE), 50.0)
    _check_highest(features(30, 64, seed=7, dtype=torch.float32).to(DEVICE), 1e-6)
    _check_highest(features(30, 8, seed=8, scale=1e-20, dtype=torch.float32).to(DEVICE), 1e39)
    _check_highest(features(30, 8, seed=9, scale=1e15, dtype=torch.float32).to(DEVICE), 1e-30)


@pytest.mark.parametrize("d", [1000, 4096])
def test_highest_precision_long_rows(d):
    # The chunked path (D swept in chunks, dot products folded in float64, acc in memory), split too.
    x = (features(9, d, seed=d, dtype=torch.float64) + 3.0).float().to(DEVICE)
    _check_highest(x, 2.0, (features(5, d, seed=d + 1, dtype=torch.float64) + 3.0).float().to(DEVICE))


def test_highest_precision_needs_the_low_parts(monkeypatch):
    # Without lo (a float16 copy alone) the same loss misses the 1e-5 target: the test above measures the split.
    x = features(40, 16, seed=10, dtype=torch.float32).to(DEVICE)
    monkeypatch.setattr(triton_uniform, "_split", lambda precision: 0)
    with pytest.raises(AssertionError):
        _check_highest(x, 2.0)


def test_lean_configs_prune_to_fitting_tiles():
    configs = triton_uniform._LEAN_CONFIGS
    for d in (64, 128, 256):
        for width, split in ((2, False), (4, False), (2, True)):
            kept = triton_uniform.prune_configs(configs, d, width, split)
            assert kept and all(c in configs for c in kept)
    # A split at D = 128: 64-column tiles, 16 rows per warp (the 128-column ones spill, bench/results/kernels-sm90.md)
    split = triton_uniform.prune_configs(configs, 128, 2, True)
    assert all(c.kwargs["BLOCK_N"] == 64 and c.kwargs["BLOCK_M"] >= 16 * c.num_warps for c in split)
    wide = triton_uniform.prune_configs(configs, 128, 2)
    assert all(c.kwargs["BLOCK_N"] == 128 for c in wide)
    assert {(c.kwargs["BLOCK_M"], c.num_warps, c.num_stages) for c in wide} >= {(64, 4, 3), (128, 8, 2), (128, 8, 3)}


def test_autotuning_bucket_is_capped():
    from hyperloss.triton import _runtime

    assert _runtime.size_bucket(1 << 20) == _runtime.size_bucket((1 << 17) + 1) == _runtime.MAX_BUCKET == 17
    assert _runtime.size_bucket(1 << 17) == 17 and _runtime.size_bucket((1 << 16) + 1) == 17
    assert _runtime.size_bucket(1 << 16) == 16


# Few rows and a large queue: the other set's columns split across programs (``uniform._segments``), partial results
# merged before the finish. The target of programs is lowered so that these small inputs split as N = 256 rows
# against a 65536-row queue do on a GPU: 20 rows against 520 queue rows make 5 segments (4 x 128 columns and 8).
@pytest.fixture
def segmented(monkeypatch):
    monkeypatch.setattr(triton_uniform, "_SEGMENT_TARGET", 64)


def _segments(x, queue, need_acc=True):
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return triton_uniform._segments(x.shape[0], queue.shape[0], x.shape[1], dtype, need_acc, x.device)[0]


def _check_split(x, t, queue, intra_batch=True):
    assert _segments(x, queue) > 1 and _segments(x, queue, need_acc=False) > 1
    check_uniform(x, t, queue, intra_batch=intra_batch)
    with torch.no_grad():  # the loss alone (j > i only in x's own set)
        alone = hyperloss.uniform_loss(x, t, queue=queue, intra_batch=intra_batch, backend="triton")
    with_grad = hyperloss.uniform_loss(x.requires_grad_(), t, queue=queue, intra_batch=intra_batch, backend="triton")
    assert abs(float(alone) - float(with_grad.detach())) <= 1e-5 * (1 + abs(float(alone)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
@pytest.mark.parametrize("intra_batch", [True, False])
def test_small_row_grid_splits_the_columns(segmented, dtype, intra_batch):
    x = features(20, 8, seed=11, dtype=dtype).to(DEVICE)
    queue = features(520, 8, seed=12, dtype=dtype).to(DEVICE)
    assert _segments(x, queue) == 5
    _check_split(x, 2.0, queue, intra_batch)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_split_with_rows_the_shift_cannot_resolve(segmented, dtype):
    # The last segments hold only far queue rows: every term there underflows, so each row is flagged in them alone
    # and recomputed there with the running reference, whose partial sums (another reference) merge with the lean
    # ones. Two far rows of x are flagged in every segment.
    near = features(300, 16, seed=13)
    far = features(220, 16, seed=14) + torch.linspace(30.0, 60.0, 220, dtype=torch.float64)[:, None]
    x = torch.cat([features(18, 16, seed=15), far[:2] + 5.0]).to(dtype).to(DEVICE)
    _check_split(x, 2.0, torch.cat([near, far]).to(dtype).to(DEVICE))


@pytest.mark.parametrize("t", [1e-7, 30.0])
def test_split_any_t(segmented, t):
    # Tiny t: every term near 1 (flagged: the deficits' series, per segment); large t: most terms underflow.
    x = features(20, 8, seed=16).to(DEVICE)
    _check_split(x, t, features(520, 8, seed=17).to(DEVICE))


@pytest.mark.parametrize(("d", "dtype"), [(40, torch.float32), (40, torch.float64), (20, torch.float32)])
def test_split_long_rows(segmented, d, dtype):
    # The running-reference kernel alone, D swept in chunks (the accumulator in memory, per segment): 3 segments of
    # 128 columns, the last one 8 wide.
    x = features(20, d, seed=d, dtype=dtype).to(DEVICE)
    _check_split(x, 2.0, features(264, d, seed=d + 1, dtype=dtype).to(DEVICE))


def test_segments_for_a_small_batch_and_a_large_queue(monkeypatch):
    # N = 256 rows against 65536 (D = 128) on 132 SMs: 2 or 4 row blocks (BLOCK_M 128 or 64) become 128 or 256
    # programs (64 segments of 1024 columns, 8 MiB of partial accumulators); the queue's own sweep (65536 rows) and
    # a large batch are not split.
    monkeypatch.setattr(triton_uniform, "_sm_count", lambda device: 132)
    monkeypatch.setattr(triton_uniform, "_SEGMENT_ROWS", 128)  # the GPU's values (the interpreter's are smaller)
    monkeypatch.setattr(triton_uniform, "_SEGMENT_MIN_COLS", 1024)
    segments = functools.partial(triton_uniform._segments, dtype=torch.float32, need_acc=True, device="cuda")
    assert segments(256, 65536, 128) == (64, 1024)
    assert segments(256, 65536 + 1, 128) == (65, 1024)  # the last segment holds one column
    assert segments(65536, 256, 128) == segments(65536, 65536, 128) == segments(256, 0, 128) == (1, 0)
    assert segments(4096, 65536, 128) == (16, 4096)  # 32 row blocks: 9 segments would do, columns a power of two
    # Partial accumulators stay within _SEGMENT_BYTES: long rows get fewer segments.
    s, cols = segments(256, 65536, 4096)
    assert 1 < s == 65536 // cols and s * 256 * 4096 * 4 <= triton_uniform._SEGMENT_BYTES
