"""Smoke test of the sweep CLI: a --quick run writes a parseable JSON, CSV, Markdown table and PNG plots."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image


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
    assert len(plots) == len({c[:-1] for c in configs})  # one per op, mode, dtype and precision
    for png in plots:
        height, width, _ = matplotlib.image.imread(png).shape
        assert width > 1000 and height > 400
