"""hyperloss.metrics (one process): exact against float64 dense definitions with distances by direct differences,
the same value from every kind of source, weights, per-sample scores, the torchmetrics Metric, the CLI, and bad
input. torch.distributed: tests/test_metrics_distributed.py."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from hyperloss import reference
from hyperloss.metrics import alignment, cli, uniformity

N, D, T = 3000, 16, 2.0
TOL = {torch.float64: 1e-9, torch.float32: 1e-6}  # relative error of the value (the acceptance)


def _rows(n: int = N, d: int = D, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1) * scale


def _weights(n: int = N, seed: int = 1) -> torch.Tensor:
    w = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3
    w[::97] = 0  # zero weights leave their rows' pairs out
    return w


def dense_scores(x: torch.Tensor, t: float) -> torch.Tensor:
    """-t ||x_i - x_j||^2 in float64 by direct differences (reference.direct_sq_dists), -inf on the diagonal."""
    scores = reference.direct_sq_dists(x.double(), x.double()).mul_(-t)
    return scores.fill_diagonal_(-math.inf)


def dense_uniformity(x: torch.Tensor, t: float, w: torch.Tensor | None = None, scores=None) -> float:
    """log(sum_{i<j} w_i w_j exp(s_ij) / sum_{i<j} w_i w_j); w = 1: reference.dense_uniform_loss."""
    if w is None and scores is None:
        return float(reference.dense_uniform_loss(x.double(), t))
    n = x.shape[0]
    w = torch.ones(n, dtype=torch.float64) if w is None else w
    scores = dense_scores(x, t) if scores is None else scores
    upper = torch.triu_indices(n, n, offset=1)
    pair_w = (w[:, None] * w[None, :])[upper[0], upper[1]]
    return float(torch.logsumexp(scores[upper[0], upper[1]] + pair_w.log(), 0) - pair_w.sum().log())


def dense_per_sample(x: torch.Tensor, t: float, w: torch.Tensor | None = None, scores=None) -> torch.Tensor:
    """log(sum_{j != i} w_j exp(s_ij) / sum_{j != i} w_j) for every row i."""
    w = torch.ones(x.shape[0], dtype=torch.float64) if w is None else w
    scores = dense_scores(x, t) if scores is None else scores
    return torch.logsumexp(scores + w.log()[None, :], 1) - (w.sum() - w).log()


def _rel(got: float, want: float) -> float:
    return abs(got - want) / abs(want)


@pytest.fixture(scope="module")
def data() -> dict[str, object]:
    """Rows (float64 and their float32 rounding), weights, and every dense reference, computed once."""
    x64 = _rows()
    x32 = x64.float()
    w = _weights()
    ref = {}
    for name, x in (("64", x64), ("32", x32.double())):
        scores = dense_scores(x, T)  # one N x N matrix per dataset, every reference from it
        ref[name] = {
            "value": dense_uniformity(x, T, scores=scores),
            "weighted": dense_uniformity(x, T, w, scores=scores),
            "per_sample": dense_per_sample(x, T, scores=scores),
            "weighted_per_sample": dense_per_sample(x, T, w, scores=scores),
        }
    return {"x64": x64, "x32": x32, "w": w, "ref": ref}


def test_dense_helpers_match_the_reference():
    x = _rows(300)
    want = float(reference.dense_uniform_loss(x, T))
    assert _rel(dense_uniformity(x, T, scores=dense_scores(x, T)), want) <= 1e-14


@pytest.mark.parametrize("tile_rows", [None, 700])  # the default (one tile here) and 5 tiles, the last one short
@pytest.mark.parametrize("mode", ["float64", "float32 data, float32", "float32 data, float64"])
def test_uniformity_matches_dense(data, mode, tile_rows):
    x = data["x64"] if mode == "float64" else data["x32"]
    dtype = torch.float32 if mode.endswith("float32") else torch.float64
    want = data["ref"]["64" if mode == "float64" else "32"]["value"]
    got = uniformity(x, T, dtype=dtype, tile_rows=tile_rows)
    assert isinstance(got, float)
    assert _rel(got, want) <= TOL[dtype], (got, want)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_weights_and_per_sample_match_dense(data, dtype):
    x = data["x64"] if dtype == torch.float64 else data["x32"]
    ref = data["ref"]["64" if dtype == torch.float64 else "32"]
    tol = TOL[dtype]
    assert _rel(uniformity(x, T, weights=data["w"], tile_rows=800), ref["weighted"]) <= tol

    value, scores = uniformity(x, T, per_sample=True, tile_rows=800)
    assert _rel(value, ref["value"]) <= tol
    assert scores.shape == (N,) and scores.dtype == np.float64
    assert float((torch.from_numpy(scores) - ref["per_sample"]).abs().max()) <= tol * float(
        ref["per_sample"].abs().max()
    )

    value, scores = uniformity(x, T, weights=data["w"], per_sample=True, tile_rows=800)
    assert _rel(value, ref["weighted"]) <= tol
    err = (torch.from_numpy(scores) - ref["weighted_per_sample"]).abs().max()
    assert float(err) <= tol * float(ref["weighted_per_sample"].abs().max())


def test_one_dominant_weight():
    """The weight sums are running sums, never differences: 1e-10 beside 1e10 is kept."""
    x = _rows(5, 3)
    w = torch.tensor([1e-10, 1e10, 1e-10, 3e-10, 1e-10], dtype=torch.float64)
    scores = dense_scores(x, T)
    value, per_row = uniformity(x, T, weights=w, per_sample=True)
    others = torch.tensor([0, 2, 3, 4])
    want = torch.logsumexp(scores[1, others] + w[others].log(), 0) - w[others].sum().log()
    assert abs(per_row[1] - float(want)) <= 1e-12 * abs(float(want))
    pair_w = torch.tensor([float(w[i] * w[j]) for i in range(5) for j in range(i + 1, 5)], dtype=torch.float64)
    pair_s = torch.tensor([float(scores[i, j]) for i in range(5) for j in range(i + 1, 5)], dtype=torch.float64)
    want = float(torch.logsumexp(pair_s + pair_w.log(), 0) - pair_w.sum().log())
    assert _rel(value, want) <= 1e-12


def test_unit_weights_and_per_sample_agree_with_the_plain_total(data):
    x = data["x64"][:500]
    plain = uniformity(x, T)
    assert _rel(uniformity(x, T, weights=torch.ones(500)), plain) <= 1e-13
    assert _rel(uniformity(x, T, weights=np.full(500, 7.0)), plain) <= 1e-13  # only relative weights matter
    assert _rel(uniformity(x, T, per_sample=True)[0], plain) <= 1e-13


def test_same_value_from_every_source(data, tmp_path):
    """Tensor, NumPy array, memmap (.npy path), .pt path, a DataLoader with odd batch sizes and a generator: the
    same tiles, so bit for bit the same value."""
    x, w, n = data["x32"][:1500], data["w"][:1500], 1500
    want = uniformity(x, T, tile_rows=400)
    np.save(tmp_path / "x.npy", x.numpy())
    torch.save(x, tmp_path / "x.pt")
    labels = torch.arange(n)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, labels), batch_size=37)
    sources = {
        "array": x.numpy(),
        "memmap": np.load(tmp_path / "x.npy", mmap_mode="r"),
        "npy path": str(tmp_path / "x.npy"),
        "pt path": tmp_path / "x.pt",
        "DataLoader (37-row batches of (x, label))": loader,
        "generator of 1..100-row batches": (x[i : i + 1 + i % 100].numpy() for i in _batch_starts(n)),
        "column-major tensor": x.t().contiguous().t(),
    }
    for name, source in sources.items():
        assert uniformity(source, T, tile_rows=400) == want, name
    # the torch tile path (per sample, weights) from a memmap and a DataLoader
    value, scores = uniformity(x, T, weights=w, per_sample=True, tile_rows=400)
    for source in (np.load(tmp_path / "x.npy", mmap_mode="r"), loader):
        got, got_scores = uniformity(source, T, weights=w, per_sample=True, tile_rows=400)
        assert got == value and np.array_equal(got_scores, scores)


def _batch_starts(n: int) -> list[int]:
    starts, start = [], 0
    while start < n:
        starts.append(start)
        start += 1 + start % 100
    return starts


def test_normalize_and_large_offset():
    x = _rows(400) * 5 + 1e4  # far from the origin: the Gram form would cancel without centering
    want = dense_uniformity(x, 0.01)
    for dtype in (torch.float64, torch.float32):
        assert _rel(uniformity(x, 0.01, dtype=dtype, tile_rows=128), want) <= TOL[dtype] * 10
        value, _ = uniformity(x, 0.01, dtype=dtype, tile_rows=128, per_sample=True)
        assert _rel(value, want) <= TOL[dtype] * 10
    y = torch.nn.functional.normalize(x, dim=1)
    assert _rel(uniformity(x, T, normalize=True), dense_uniformity(y, T)) <= 1e-9


def test_large_t_stays_finite():
    x = _rows(300, 4)
    want = dense_uniformity(x, 400.0)  # every exp underflows in the paper's code
    assert math.isfinite(want)
    assert _rel(uniformity(x, 400.0, tile_rows=100), want) <= 1e-9
    assert _rel(uniformity(x, 400.0, tile_rows=100, per_sample=True)[0], want) <= 1e-9


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_alignment_matches_dense(dtype):
    x, y = _rows(2000, 12, seed=3).to(dtype), _rows(2000, 12, seed=4).to(dtype)
    w = _weights(2000)
    for alpha in (2.0, 1.5):
        want = float(reference.dense_align_loss(x.double(), y.double(), alpha))
        assert _rel(alignment(x, y, alpha, tile_rows=333), want) <= TOL[dtype]
        per_row = (x.double() - y.double()).pow(2).sum(1).pow(alpha / 2)
        value, values = alignment(x, y, alpha, per_sample=True, tile_rows=333)
        assert _rel(value, want) <= TOL[dtype]
        assert float((torch.from_numpy(values) - per_row).abs().max()) <= TOL[dtype] * float(per_row.max())
        weighted = float((w * per_row).sum() / w.sum())
        assert _rel(alignment(x, y, alpha, weights=w, tile_rows=333), weighted) <= TOL[dtype]
    want = float(reference.dense_align_loss(x.double(), y.double(), 2.0))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=51)
    assert _rel(alignment(loader, None, 2.0), want) <= TOL[dtype]  # batches of (x, y)
    assert _rel(alignment(iter(x.split(77)), iter(y.split(77)), 2.0), want) <= TOL[dtype]
    xn, yn = (torch.nn.functional.normalize(v.double(), dim=1) for v in (x * 3, y * 3))
    assert _rel(alignment(x * 3, y * 3, normalize=True), float(reference.dense_align_loss(xn, yn))) <= TOL[dtype]


# ----------------------------------------------------------------------------------------------------------------
# Non-finite rows


def test_non_finite_rows_give_nan_with_a_warning_or_raise():
    x = _rows(500)
    x[123, 4] = math.nan
    x[321, 0] = math.inf
    for kwargs in ({}, {"per_sample": True}, {"weights": torch.ones(500)}):
        with pytest.warns(RuntimeWarning, match="row 123 has a non-finite value"):
            result = uniformity(x, T, tile_rows=100, **kwargs)
        value = result[0] if isinstance(result, tuple) else result
        assert math.isnan(value)
        if isinstance(result, tuple):
            assert np.isnan(result[1]).all()
        with pytest.raises(ValueError, match="row 123 has a non-finite value"):
            uniformity(x, T, tile_rows=100, nonfinite="raise", **kwargs)
    y = _rows(500, seed=9)
    with pytest.warns(RuntimeWarning, match="row 123"):
        value, per_row = alignment(x, y, per_sample=True)
    assert math.isnan(value) and np.isnan(per_row[123]) and np.isfinite(np.delete(per_row, [123, 321])).all()
    with pytest.raises(ValueError, match="row 123"):
        alignment(y, x, nonfinite="raise")


# ----------------------------------------------------------------------------------------------------------------
# Bad input


def test_bad_sources(tmp_path):
    np.save(tmp_path / "flat.npy", np.zeros(10, dtype=np.float32))
    np.save(tmp_path / "cube.npy", np.zeros((4, 3, 2), dtype=np.float32))
    np.save(tmp_path / "ints.npy", np.zeros((4, 3), dtype=np.int64))
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    (tmp_path / "x.csv").write_text("1,2\n")
    torch.save({"a": torch.zeros(3, 2)}, tmp_path / "dict.pt")
    cases = {
        str(tmp_path / "missing.npy"): (FileNotFoundError, "no such file"),
        str(tmp_path / "flat.npy"): (ValueError, "must be 2-D"),
        str(tmp_path / "cube.npy"): (ValueError, "must be 2-D"),
        str(tmp_path / "ints.npy"): (TypeError, "floating-point"),
        str(tmp_path / "junk.npy"): (ValueError, "not a readable .npy"),
        str(tmp_path / "x.csv"): (ValueError, ".npy or .pt"),
        str(tmp_path / "dict.pt"): (TypeError, "one tensor"),
    }
    for source, (error, message) in cases.items():
        with pytest.raises(error, match=message):
            uniformity(source)
    with pytest.raises(ValueError, match="at least 2 row"):
        uniformity(torch.zeros(1, 3))
    with pytest.raises(TypeError, match="floating-point"):
        uniformity(torch.zeros(5, 3, dtype=torch.int32))
    with pytest.raises(TypeError, match="must be a tensor"):
        uniformity(42)
    with pytest.raises(ValueError, match="batch 1 has 4 features"):
        uniformity([np.zeros((3, 3)), np.zeros((3, 4))])
    with pytest.raises(ValueError, match="at least 2 row"):
        uniformity(iter([]))
    with pytest.raises(ValueError, match="same shape"):
        alignment(torch.zeros(5, 3), torch.zeros(6, 3))
    with pytest.raises(ValueError, match="different numbers of batches"):
        alignment([torch.zeros(5, 3)], [torch.zeros(5, 3)] * 2)
    with pytest.raises(ValueError, match="y_source is needed"):
        alignment(torch.zeros(5, 3))


def test_bad_arguments(tmp_path):
    x = _rows(50)
    with pytest.raises(ValueError, match="t must be finite"):
        uniformity(x, -1.0)
    with pytest.raises(ValueError, match="alpha must be finite"):
        alignment(x, x, math.nan)
    with pytest.raises(ValueError, match=">= 0"):
        uniformity(x, weights=-torch.ones(50))
    with pytest.raises(ValueError, match="one weight per row"):
        uniformity(x, weights=torch.ones(49))
    with pytest.raises(ValueError, match="at least 2 positive"):
        uniformity(x, weights=torch.eye(50)[0])
    with pytest.raises(ValueError, match="dtype must be"):
        uniformity(x, dtype=torch.float16)
    with pytest.raises(ValueError, match="nonfinite"):
        uniformity(x, nonfinite="ignore")
    with pytest.raises(ValueError, match=r"end in \.npy"):
        uniformity(x, per_sample=str(tmp_path / "out.txt"))
    with pytest.raises(FileNotFoundError, match="no such directory"):
        uniformity(x, per_sample=str(tmp_path / "nowhere" / "out.npy"))
    with pytest.raises(ValueError, match="49 entries for 50 rows"):
        uniformity(x, per_sample=np.zeros(49))
    with pytest.raises(RuntimeError, match=r"initialized torch\.distributed"):
        uniformity(x, distributed=True)
    with pytest.raises(ValueError, match="unknown backend"):
        uniformity(x, backend="nope")


# ----------------------------------------------------------------------------------------------------------------
# Output files, progress, optional dependencies


def test_per_sample_file_is_complete_or_absent(tmp_path, monkeypatch):
    x = _rows(300)
    out = tmp_path / "scores.npy"
    _, scores = uniformity(x, T, per_sample=str(out))
    assert np.array_equal(np.load(out), scores) and scores.shape == (300,)
    into = np.zeros(300)
    assert uniformity(x, T, per_sample=into)[1] is into and np.array_equal(into, scores)

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)  # Ctrl-C between the last write and the rename
    with pytest.raises(KeyboardInterrupt):
        uniformity(x, T, per_sample=str(tmp_path / "other.npy"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.npy"]


def test_progress_bar(capsys):
    x = _rows(300)
    uniformity(x, T)  # default: no terminal under pytest, no bar
    assert capsys.readouterr().err == ""
    uniformity(x, T, progress=True, tile_rows=100)
    assert "uniformity" in capsys.readouterr().err
    with pytest.raises(TypeError, match="progress must be a bool"):
        uniformity(x, T, progress="yes")


def test_missing_optional_dependencies(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    with pytest.raises(ImportError, match=r"hyperloss\[metrics\]"):
        uniformity(_rows(10), progress=True)
    uniformity(_rows(10))  # no bar asked for: fine without tqdm
    monkeypatch.setitem(sys.modules, "torchmetrics", None)
    monkeypatch.delitem(sys.modules, "hyperloss.metrics._torchmetrics", raising=False)
    with pytest.raises(ImportError, match=r"needs torchmetrics: pip install 'hyperloss\[metrics\]'"):
        from hyperloss.metrics import AlignmentUniformity  # noqa: F401


def test_torchmetrics_metric():
    pytest.importorskip("torchmetrics")
    from hyperloss.metrics import AlignmentUniformity

    x, y = _rows(700, seed=5), _rows(700, seed=6)
    metric = AlignmentUniformity(t=T, alpha=2)
    for start in range(0, 700, 123):
        metric.update(x[start : start + 123], y[start : start + 123])
    got = metric.compute()
    assert _rel(float(got["uniformity_x"]), dense_uniformity(x, T)) <= 1e-9
    assert _rel(float(got["uniformity_y"]), dense_uniformity(y, T)) <= 1e-9
    assert _rel(float(got["alignment"]), float(reference.dense_align_loss(x, y))) <= 1e-9
    assert float(got["uniformity"]) == (float(got["uniformity_x"]) + float(got["uniformity_y"])) / 2
    metric.reset()
    metric.update(x.float())
    assert set(metric.compute()) == {"uniformity", "uniformity_x"}
    with pytest.raises(ValueError, match="with every batch or with none"):
        metric.update(x, y)


# ----------------------------------------------------------------------------------------------------------------
# The command line


def test_cli_prints_json(tmp_path, capsys):
    x, y = _rows(400, seed=7).float(), _rows(400, seed=8).float()
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "y.npy", y.numpy())
    out = tmp_path / "scores.npy"
    argv = [str(tmp_path / "x.npy"), "--pairs", str(tmp_path / "y.npy"), "--per-sample", str(out), "--alpha", "1"]
    assert cli.main(argv) == 0
    import json

    result = json.loads(capsys.readouterr().out)
    assert result["rows"] == 400 and result["features"] == D and result["dtype"] == "float32"
    assert _rel(result["uniformity"], dense_uniformity(x.double(), T)) <= 1e-6
    assert _rel(result["alignment"], float(reference.dense_align_loss(x.double(), y.double(), 1.0))) <= 1e-6
    assert np.load(out).shape == (400,)


def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((5, 3), dtype=np.float32))
    np.save(tmp_path / "other.npy", np.zeros((6, 3), dtype=np.float32))
    np.save(tmp_path / "flat.npy", np.zeros(5, dtype=np.float32))
    np.save(tmp_path / "cube.npy", np.zeros((5, 3, 1), dtype=np.float32))
    np.save(tmp_path / "ints.npy", np.zeros((5, 3), dtype=np.int16))
    nan = np.zeros((5, 3), dtype=np.float32)
    nan[2, 1] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    cases = {
        "missing.npy": "no such file",
        "flat.npy": "must be 2-D",
        "cube.npy": "must be 2-D",
        "ints.npy": "floating-point",
        "nan.npy": "row 2 has a non-finite value",
    }
    for name, message in cases.items():
        assert cli.main([str(tmp_path / name)]) == 2, name
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err and err.startswith("hyperloss-metrics: error:"), err
    assert cli.main([str(tmp_path / "x.npy"), "--pairs", str(tmp_path / "other.npy")]) == 2
    assert "has shape (6, 3)" in capsys.readouterr().err
    assert cli.main([str(tmp_path / "x.npy"), "--t", "0"]) == 2
    assert "t must be finite and > 0" in capsys.readouterr().err


def test_cli_ctrl_c_leaves_no_output_file(tmp_path):
    """SIGINT while the per-sample scores are computed: exit 130, and neither the output nor a partial file."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.standard_normal((30_000, 8), dtype=np.float32))
    out = tmp_path / "scores.npy"
    command = [sys.executable, "-m", "hyperloss.metrics", str(tmp_path / "x.npy"), "--per-sample", str(out)]
    process = subprocess.Popen(
        [*command, "--progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # Python keeps SIGINT ignored when it starts with it ignored (as an earlier test may leave this process)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        seen = b""
        while b"uniformity" not in seen:  # the progress bar: the pairs are being computed
            chunk = os.read(process.stderr.fileno(), 256)
            assert chunk, (seen, process.communicate())
            seen += chunk
        time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, err.decode()[-2000:]
    assert b"interrupted" in err
    assert list(tmp_path.iterdir()) == [tmp_path / "x.npy"]


def test_console_script_is_declared():
    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["hyperloss-metrics"] == "hyperloss.metrics.cli:main"
    assert {"torchmetrics>=1.0", "tqdm"} <= set(pyproject["project"]["optional-dependencies"]["metrics"])


def test_warning_free_on_clean_input():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        uniformity(_rows(200), T, per_sample=True)
        alignment(_rows(200), _rows(200, seed=2))


def test_tile_schedule_covers_every_pair_once_in_balanced_shares():
    from hyperloss.metrics import _tiles

    for n, rows, world in [(1000, 128, 3), (10, 3, 4), (5, 100, 2), (100_000, 8192, 3)]:
        spans = _tiles.blocks(n, rows)
        pairs = _tiles.block_pairs(len(spans))
        costs = [_tiles.pairs_in(spans, a, b) for a, b in pairs]
        assert sum(costs) == n * (n - 1) // 2
        shares = _tiles.balanced_ranges(costs, world)
        assert shares[0][0] == 0 and shares[-1][1] == len(pairs) and len(shares) == world
        assert all(shares[r][1] == shares[r + 1][0] for r in range(world - 1))
        work = [sum(costs[a:b]) for a, b in shares]
        assert max(work) - min(work) <= 2 * max(costs), (work, max(costs))  # within a tile or two of even
