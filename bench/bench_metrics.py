"""hyperloss.metrics at scale: the uniformity of N = 100,000 rows, D = 128, float32, read from a memmap, beside the
hand-chunked torch loop users write, in one process; then the exactness check of the issue on N = 20,000 rows
(too slow for the unit tests, which check N = 3,000): memmap source, weights, per-sample scores, against float64
dense with distances by direct differences.

    python bench/bench_metrics.py [--rows 100000] [--features 128] [--repeats 1] [--exactness-rows 20000]
                                  [--out bench/results/...json]

For each method: wall time, the value, and the peak extra anonymous memory (RssAnon, sampled every 2 ms from
/proc/self/status, minus its value before the call): memory the call allocated, not the page cache that holds the
memmapped file. The file is written to a temporary directory and read once before timing (so it is in the page
cache). The issue's target: <= 30 s and <= 64 MB on a 2-core CPU. Timings on a shared machine are noisy: the load
average is recorded beside them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np
import torch

import hyperloss
from hyperloss.metrics import uniformity


def _rss_anon_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


def measure(call: Callable[[], float]) -> dict[str, float]:
    """Runs ``call``; returns its value, wall time, CPU time (all threads: on a shared machine, a steadier measure
    of the work than the wall time) and the peak of RssAnon above its value at the start."""
    before = _rss_anon_bytes()
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.002):
            peak = max(peak, _rss_anon_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    try:
        value = call()
    finally:
        seconds, cpu_seconds = time.perf_counter() - start, _cpu_seconds() - cpu_start
        done.set()
        sampler.join()
    peak = max(peak, _rss_anon_bytes())
    return {"value": value, "seconds": seconds, "cpu_seconds": cpu_seconds, "peak_extra_mb": (peak - before) / 2**20}


def hand_chunked(path: Path, t: float, chunk: int = 512) -> float:
    """The loop users write: the rows in memory, a block of rows against the later ones with torch.cdist, the
    exps summed in float64."""
    x = torch.from_numpy(np.load(path))
    n = x.shape[0]
    total = torch.zeros((), dtype=torch.float64)
    for start in range(0, n, chunk):
        block = x[start : start + chunk]
        sq = torch.cdist(block, x[start:]).pow_(2)
        sq = sq.masked_fill_(torch.ones_like(sq, dtype=torch.bool).tril_(), math.inf)  # keep the j > i pairs
        total += sq.mul_(-t).exp_().sum(dtype=torch.float64)
    return float(total.log() - math.log(n * (n - 1) / 2))


def direct_sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """||a_i - b_j||^2 by direct differences, one feature column at a time (the sum of (a_ik - b_jk)^2 over k;
    faster than reference.direct_sq_dists' (rows, M, D) blocks for M in the ten thousands)."""
    out = torch.zeros(a.shape[0], b.shape[0], dtype=torch.float64)
    for k in range(a.shape[1]):
        out.add_((a[:, k, None] - b[None, :, k]).square_())
    return out


def dense_reference(x: torch.Tensor, t: float, w: torch.Tensor) -> dict[str, object]:
    """float64, distances by direct differences, 256 rows against all rows at a time: the uniformity (from the
    i < j pairs), its weighted form, and the per-sample scores, plain and weighted."""
    n = x.shape[0]
    log_w = w.log()
    upper, upper_w, rows, rows_w = [], [], [], []
    for start in range(0, n, 256):
        stop = min(n, start + 256)
        scores = direct_sq_dists(x[start:stop], x).mul_(-t)
        index = torch.arange(start, stop)[:, None]
        columns = torch.arange(n)[None, :]
        others = scores.masked_fill(columns == index, -math.inf)
        rows.append(torch.logsumexp(others, 1))
        rows_w.append(torch.logsumexp(others + log_w[None, :], 1))
        later = scores.masked_fill(columns <= index, -math.inf)
        upper.append(torch.logsumexp(later, 1))
        upper_w.append(torch.logsumexp(later + log_w[None, :], 1) + log_w[start:stop])
    before = w.cumsum(0) - w
    return {
        "value": float(torch.logsumexp(torch.cat(upper), 0)) - math.log(n * (n - 1) / 2),
        "weighted": float(torch.logsumexp(torch.cat(upper_w), 0) - (w * before).sum().log()),
        "per_sample": torch.cat(rows) - math.log(n - 1),
        "weighted_per_sample": torch.cat(rows_w) - (w.sum() - w).log(),
    }


def exactness(rows: int, features: int, t: float) -> dict[str, object]:
    """The issue's acceptance on N = ``rows`` random unit rows (float32): a memmap source, weights and per-sample
    scores, in float64 and float32 mode, against float64 dense (relative errors; targets 1e-9 and 1e-6)."""
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(rows, features, generator=g, dtype=torch.float64), dim=1).float()
    w = torch.rand(rows, generator=g, dtype=torch.float64)
    start = time.perf_counter()
    ref = dense_reference(x.double(), t, w)
    print(f"dense float64 reference, N={rows}: {time.perf_counter() - start:.1f} s", flush=True)
    errors: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "x.npy", x.numpy())
        source = np.load(Path(tmp) / "x.npy", mmap_mode="r")
        for mode, dtype in (("float64", torch.float64), ("float32", torch.float32)):
            start = time.perf_counter()
            value = uniformity(source, t, dtype=dtype, progress=False)
            weighted, weighted_scores = uniformity(source, t, dtype=dtype, weights=w, per_sample=True)
            _, scores = uniformity(source, t, dtype=dtype, per_sample=True, progress=False)
            print(f"hyperloss.metrics, {mode} mode, 3 calls: {time.perf_counter() - start:.1f} s", flush=True)
            errors[f"{mode} mode: value"] = abs(value - ref["value"]) / abs(ref["value"])
            errors[f"{mode} mode: weighted value"] = abs(weighted - ref["weighted"]) / abs(ref["weighted"])
            for label, got, want in (
                ("per-sample", scores, ref["per_sample"]),
                ("weighted per-sample", weighted_scores, ref["weighted_per_sample"]),
            ):
                err = (torch.from_numpy(np.asarray(got)) - want).abs().max() / want.abs().max()
                errors[f"{mode} mode: {label} (max error / max |score|)"] = float(err)
    for key, err in errors.items():
        print(f"  {key}: relative error {err:.2e}", flush=True)
    return {"rows": rows, "features": features, "t": t, "source": "float32 memmap", "relative_errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--features", type=int, default=128)
    parser.add_argument("--t", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--skip-torch", action="store_true", help="leave out the hand-chunked loop")
    parser.add_argument(
        "--exactness-rows", type=int, default=20_000, help="rows of the exactness check against float64 dense (0: skip)"
    )
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "embeddings.npy"
        data = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(args.rows, args.features))
        for start in range(0, args.rows, 8192):  # unit rows, written in blocks
            rows = rng.standard_normal((min(8192, args.rows - start), args.features), dtype=np.float32)
            data[start : start + rows.shape[0]] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        data.flush()
        del data
        np.load(path, mmap_mode="r").sum()  # into the page cache
        uniformity(np.load(path, mmap_mode="r")[:2000], args.t, progress=False)  # load the kernels, start threads

        runs = []
        for repeat in range(args.repeats):
            memmap = np.load(path, mmap_mode="r")
            methods: dict[str, Callable[[], float]] = {
                "hyperloss.metrics.uniformity (memmap)": lambda m=memmap: uniformity(m, args.t, progress=False),
            }
            if not args.skip_torch:
                methods["hand-chunked torch loop (cdist, 512-row blocks)"] = lambda: hand_chunked(path, args.t)
            for name, call in methods.items():
                result = {"method": name, "repeat": repeat, **measure(call), "load_average": os.getloadavg()}
                runs.append(result)
                print(
                    f"{name}: {result['seconds']:.2f} s ({result['cpu_seconds']:.1f} CPU s), "
                    f"value {result['value']:.12f}, peak extra memory {result['peak_extra_mb']:.1f} MB, "
                    f"load average {result['load_average'][0]:.2f}",
                    flush=True,
                )

    checked = exactness(args.exactness_rows, 16, args.t) if args.exactness_rows else None
    report = {
        "case": f"uniformity, N={args.rows}, D={args.features}, float32 memmap, t={args.t}",
        "date": date.today().isoformat(),
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "versions": {"hyperloss": hyperloss.__version__, "torch": torch.__version__, "numpy": np.__version__},
        "cpu_isa": hyperloss.backends.native.cpu_isa(),
        "runs": runs,
        "exactness": checked,
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
