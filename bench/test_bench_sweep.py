"""The sweep, values checked and nothing timed: its files, run names, --replot, matplotlib missing, dtypes a baseline
lacks, floors above a measured time, noisy ceilings, time limits, out-of-memory failures and the skip rule."""

import csv
import functools
import importlib.util
import json
import time
from pathlib import Path

import pytest
import torch

from hyperloss.bench import isolation, report, sweep
from hyperloss.bench.__main__ import main

OPS = ("align", "uniform")  # in file-name order
TINY = ["--quick", "--ops", "align", "--n", "1024", "--impls", "paper", "cpu", "--budget", "0"]


def test_quick_sweep_files_run_names_replot_and_no_matplotlib(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("TRITON_CACHE_AUTOTUNING", "1")  # main() sets it; restored after the test
    assert main(["--quick", "--out", str(tmp_path)]) == 0
    assert "| N" in capsys.readouterr().out  # the final table
    (json_path,) = tmp_path.glob("*.json")
    doc, stem = json.loads(json_path.read_text()), json_path.stem
    assert stem == f"{doc['device']['slug']}-{doc['date']}" and doc["versions"]["torch"]
    rows = doc["results"]
    assert {(r["op"], r["impl"]) for r in rows} >= {(op, i) for op in OPS for i in ("paper", "cpu")}
    for r in rows:
        assert r["status"] == "ok" and 0 < r["min_ms"] <= r["median_ms"] <= r["max_ms"] and r["reps"] >= 1, r
        assert r["peak_extra_bytes"] >= 0 and "floor_fraction" in r
        # Every implementation computes the paper's value on the same inputs (exact fp32 products: tightly).
        paper = next(p for p in rows if p["impl"] == "paper" and (p["op"], p["n"]) == (r["op"], r["n"]))
        assert r["loss"] == pytest.approx(paper["loss"], rel=1e-4, abs=1e-5), (r, paper)
    with json_path.with_suffix(".csv").open() as f:
        assert [float(t["median_ms"]) for t in csv.DictReader(f)] == [r["median_ms"] for r in rows]
    assert "hyperloss (cpu)" in json_path.with_suffix(".md").read_text()
    if importlib.util.find_spec("matplotlib"):
        import matplotlib.image

        plots = sorted(tmp_path.glob("*.png"))  # one per op (mode, dtype and precision are single here)
        assert [p.name.removeprefix(stem) for p in plots] == [f"-{op}-fwdbwd-fp32-highest.png" for op in OPS]
        assert all(matplotlib.image.imread(p).shape[1] > 1000 for p in plots)
    # A later run the same day gets a new name; without matplotlib it says so first and writes everything else.
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else find_spec(name))
    assert main([*TINY, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("plots skipped: ") and out.count("plots skipped") == 1 and "| N" in out
    files = sorted(tmp_path.iterdir())
    assert [p.name for p in files if p.name.startswith(f"{stem}-2")] == [f"{stem}-2.{e}" for e in ("csv", "json", "md")]
    assert main(["--replot", str(json_path)]) == 0
    assert sorted(tmp_path.iterdir()) == files  # the first run's files redrawn, none added


def test_a_baseline_without_the_dtype_is_left_out_with_the_reason() -> None:
    # torch.pdist has no bfloat16 kernel on the CPU: the paper's uniformity loss is left out, not an error.
    plan, left_out = sweep.build_plan("cpu", ops=["uniform"], ns=[64], dtypes=["fp32", "bf16"], impls=["paper", "cpu"])
    assert {(c.impl, c.dtype) for c in plan} == {("paper", "fp32"), ("cpu", "fp32"), ("cpu", "bf16")}
    assert "pdist" in left_out["paper (uniform, bf16)"]


def test_a_floor_above_a_measured_time_and_a_noisy_ceiling_are_said_so() -> None:
    # 12.9 Gflop per call at 100 Gflop/s: a 129 ms floor, above the 60 ms measured for "cpu".
    ceilings = {"matmul_fp32_highest": {"value": 1e11, "source": "measured", "spread": 0.2, "repeats": 9}}
    doc = report.new_document("cpu", {}, ceilings, {}, {})
    case = sweep.Case("uniform", "fwdbwd", "fp32", "highest", 128, 8192, "paper", "cpu")
    for impl, ms in (("paper", 4000.0), ("cpu", 60.0)):
        measured = {"status": "ok", "median_ms": ms, "q1_ms": ms, "q3_ms": ms, "reps": 3, "peak_extra_bytes": 1 << 20}
        report.add_result(doc, case._replace(impl=impl)._asdict() | measured)
    assert doc["results"][1]["floor_fraction"] > 1 and doc["results"][1]["speedup_vs_paper"] == pytest.approx(66.67)
    text = report.render(doc)
    assert "warning: noisy machine (matmul_fp32_highest ±20% between repeats)" in text
    assert f"% fl.{report.ABOVE}" in text and f"\n{report.ABOVE} floor above the measured time" in text
    assert "floor above the measured time" in report.progress_line(2, 2, doc["results"][1])


def test_time_limit_and_out_of_memory_are_recorded() -> None:
    start = time.monotonic()
    assert isolation.run_in_child(functools.partial(time.sleep, 60), timeout_s=1)["status"] == isolation.TIMEOUT
    assert time.monotonic() - start < 30
    # The address-space cap makes the allocation fail at once instead of waking the kernel's OOM killer.
    allocate = functools.partial(torch.empty, 1 << 36, dtype=torch.uint8)
    result = isolation.run_in_child(allocate, timeout_s=60, memory_cap=1 << 30)
    assert result["status"] == isolation.OOM, result


def test_larger_sizes_are_skipped_after_a_failure_and_statistics() -> None:
    (planned, _), rows = sweep.build_plan("cpu", ops=["uniform"], ns=[128, 256, 512], impls=["paper", "cpu"]), []
    oom_at_256 = lambda case: {"status": "oom" if (case.impl, case.n) == ("paper", 256) else "ok"}  # noqa: E731
    sweep.run_sweep(planned, oom_at_256, lambda index, total, row: rows.append(row))
    failed = [(r["impl"], r["n"], r["status"]) for r in rows if r["status"] != "ok"]
    assert failed == [("paper", 256, "oom"), ("paper", 512, sweep.SKIPPED)] and len(rows) == 6
    s = sweep.summarize([4.0, 1.0, 3.0, 2.0, 100.0])
    assert (s["median_ms"], s["q1_ms"], s["q3_ms"], s["min_ms"], s["max_ms"]) == (3.0, 2.0, 4.0, 1.0, 100.0)
