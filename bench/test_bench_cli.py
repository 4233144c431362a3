"""The sweep CLI: a --quick run writes a parseable JSON, CSV, Markdown table and PNG plots; runs without
matplotlib; a second run keeps the first one's files; baselines without the dtype and floors above a measured
time are said so."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hyperloss.bench import plan, report
from hyperloss.bench.__main__ import main


def _config(row: dict) -> tuple:
    return (row["op"], row["mode"], row["dtype"], row["precision"], row["d"], row["n"])


def test_quick_sweep_writes_results(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "hyperloss.bench", "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| N" in proc.stdout  # the final table
    assert "hyperloss (cpu)" in proc.stdout  # the library's backends by a name users read

    (json_path,) = tmp_path.glob("*.json")
    doc = json.loads(json_path.read_text())
    assert json_path.name == f"{doc['device']['slug']}-{doc['date']}.json"
    assert doc["device"]["name"] and doc["versions"]["torch"] and doc["params"]["quick"]
    rows = doc["results"]
    assert {r["op"] for r in rows} == {"uniform", "align"}
    assert {"paper", "dense", "chunked"} <= {r["impl"] for r in rows}
    configs = {_config(r) for r in rows}
    for r in rows:
        assert r["status"] == "ok", r
        assert 0 < r["min_ms"] <= r["median_ms"] <= r["max_ms"]
        assert r["peak_extra_bytes"] >= 0
        # Every implementation computes the paper's value on the same inputs (exact fp32 products: tightly).
        paper = next((p for p in rows if p["impl"] == "paper" and _config(p) == _config(r)), None)
        if paper is not None:
            rtol = 1e-4 if r["dtype"] == "fp32" and r["precision"] == "highest" else 2e-2
            assert abs(r["loss"] - paper["loss"]) <= rtol * abs(paper["loss"]) + 1e-5, (r, paper)

    with json_path.with_suffix(".csv").open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows)
    assert {row["status"] for row in table} == {"ok"}
    assert table[0]["device_name"] == doc["device"]["name"]
    assert float(table[0]["median_ms"]) == rows[0]["median_ms"]
    assert "| N" in json_path.with_suffix(".md").read_text()

    plots = sorted(tmp_path.glob("*.png"))
    if importlib.util.find_spec("matplotlib") is None:  # said at the start; everything else written
        assert "plots skipped" in proc.stdout.splitlines()[0] and not plots
        return
    import matplotlib.image

    assert len(plots) == len({c[:-1] for c in configs})  # one per op, mode, dtype and precision
    for png in plots:
        height, width, _ = matplotlib.image.imread(png).shape
        assert width > 1000 and height > 400


def _tiny_run(out: Path, *args: str) -> int:
    """A sweep of two cases at a tiny size, in this process (its cases still run in child processes)."""
    tiny = ["--quick", "--ops", "align", "--n", "1024", "--impls", "paper", "cpu", "--budget", "0", "--reps", "3"]
    return main([*tiny, "--out", str(out), *args])


@pytest.fixture(autouse=True)
def _no_env_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_CACHE_AUTOTUNING", "1")  # main() sets it; restored after each test


def test_without_matplotlib_the_sweep_says_so_first_and_writes_everything_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # "import matplotlib" raises ImportError
    monkeypatch.delitem(sys.modules, "hyperloss.bench.plots", raising=False)
    assert _tiny_run(tmp_path) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("plots skipped: ") and out.count("plots skipped") == 1
    assert "| N" in out
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".csv", ".json", ".md"]


def test_a_second_run_keeps_the_first_runs_files_and_replot_redraws_in_place(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert _tiny_run(tmp_path) == 0
    assert _tiny_run(tmp_path) == 0
    (first,) = tmp_path.glob("*[0-9][0-9].json")  # <device>-<date>.json
    second = tmp_path / f"{first.stem}-2.json"
    files = sorted(p.name for p in tmp_path.iterdir())
    expected = [f"{s}{tail}" for s in (first.stem, second.stem) for tail in (".csv", ".json", ".md")]
    plots = [f"{s}-align-fwdbwd-fp32-highest.png" for s in (first.stem, second.stem)]
    if importlib.util.find_spec("matplotlib") is None:
        plots = []
    assert files == sorted(expected + plots)
    assert json.loads(first.read_text())["timestamp"] <= json.loads(second.read_text())["timestamp"]
    capsys.readouterr()
    assert main(["--replot", str(first)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == files  # the first run's files redrawn, none added
    assert f"{first.stem}.md" in capsys.readouterr().out


def test_a_baseline_without_the_dtype_is_left_out_with_the_reason() -> None:
    # torch.pdist has no bfloat16 kernel on the CPU: the paper's uniformity loss is left out, not an error.
    sweep = plan.build_plan("cpu", ops=["uniform"], ns=[64], dtypes=["fp32", "bf16"], impls=["paper", "cpu"])
    assert {(c.impl, c.dtype) for c in sweep.cases} == {("paper", "fp32"), ("cpu", "fp32"), ("cpu", "bf16")}
    assert "pdist" in sweep.left_out["paper (uniform, bf16)"]


def _row(impl: str, median_ms: float) -> dict:
    case = plan.Case("uniform", "fwdbwd", "fp32", "highest", 128, 8192, impl, "cpu").as_dict()
    return {**case, "status": "ok", "median_ms": median_ms, "q1_ms": median_ms, "q3_ms": median_ms, "reps": 3}


def test_a_floor_above_a_measured_time_and_a_noisy_ceiling_are_said_so() -> None:
    # 12.9 Gflop per call at 100 Gflop/s: a 129 ms floor, above the 60 ms measured for "cpu".
    ceilings = {"matmul_fp32_highest": {"value": 1e11, "source": "measured", "spread": 0.2, "repeats": 9}}
    doc = report.new_document("cpu", {}, ceilings, {}, {})
    for r in (_row("paper", 4000.0), _row("cpu", 60.0)):
        r["peak_extra_bytes"] = 1 << 20
        report.derive(r, doc["results"], doc["ceilings"])
        doc["results"].append(r)
    assert doc["results"][1]["floor_fraction"] > 1
    text = report.render(doc)
    assert "warning: noisy machine (matmul_fp32_highest ±20% between repeats)" in text
    assert f"% fl.{report.ABOVE}" in text and f"\n{report.ABOVE} floor above the measured time" in text
    assert "hyperloss (cpu)" in text and "ACCEPTANCE" not in text
    assert "floor above the measured time" in report.progress_line(2, 2, doc["results"][1])
