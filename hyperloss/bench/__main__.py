"""``python -m hyperloss.bench`` / ``hyperloss-bench``: the benchmark sweep.

With no arguments it runs the default sweep for the device it finds (a few minutes on a 2-core CPU; N up to
262144 on a GPU) and writes the table, JSON, CSV and plots under bench/results/.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import sys
from pathlib import Path

from . import cases, plan, report, runner

QUICK_OUT = Path("bench/results/tmp")  # git-ignored: --quick runs are smoke tests, not results
DEFAULT_BUDGET = {"cpu": 5.0, "cuda": 2.0}  # seconds of timed calls per case


def parse_n(text: str) -> int:
    """A size: 8192, 2^13, 2**13, 8k or 1M."""
    t = text.strip().lower().replace("**", "^")
    if m := re.fullmatch(r"(\d+)\^(\d+)", t):
        return int(m[1]) ** int(m[2])
    if m := re.fullmatch(r"(\d+)([km]?)", t):
        return int(m[1]) << {"": 0, "k": 10, "m": 20}[m[2]]
    raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 8192, 2^13, 8k, 1M)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hyperloss-bench",
        description="Benchmark hyperloss against the paper's code and what users write instead. Unset options "
        "take the defaults of the device found; each option takes one or more values, and the sweep runs every "
        "combination.",
    )
    p.add_argument("--ops", nargs="+", choices=cases.OPS, help="losses to measure (default: both)")
    p.add_argument("--n", nargs="+", type=parse_n, metavar="N", help="sizes, e.g. 1024 2^13 64k (default: per op)")
    p.add_argument("--d", type=int, help=f"feature dimension (default {plan.DEFAULT_D}; --quick {plan.QUICK_D})")
    p.add_argument(
        "--dtype",
        nargs="+",
        choices=list(cases.DTYPES),
        help="input dtypes (default: fp32; on a GPU also bf16 for the hyperloss kernels)",
    )
    p.add_argument(
        "--precision",
        nargs="+",
        choices=cases.PRECISIONS,
        help="torch.set_float32_matmul_precision for fp32 cases (default: high on a GPU, i.e. TF32; highest on CPU)",
    )
    p.add_argument(
        "--impls",
        nargs="+",
        metavar="IMPL",
        help="implementations (default: all that run here): " + ", ".join(i.name for i in cases.all_impls()),
    )
    p.add_argument("--mode", nargs="+", choices=cases.MODES, help="fwd, fwdbwd (default: fwdbwd)")
    p.add_argument("--reps", type=int, help="most timed calls per case (default 20; --quick 5)")
    p.add_argument(
        "--budget",
        type=float,
        help="seconds of timed calls per case, at least 3 calls (default 5 on CPU, 2 on GPU; --quick 0.3)",
    )
    p.add_argument("--timeout", type=float, help="seconds per case, warm-up included (default 180; --quick 60)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--out", type=Path, help=f"results directory (default bench/results; --quick {QUICK_OUT})")
    p.add_argument("--quick", action="store_true", help="tiny sizes, no torch.compile: a smoke test of the suite")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--replot", type=Path, metavar="JSON", help="redraw the table and plots of a results file")
    return p


def _device(choice: str) -> str:
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    return choice


def _memory_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _replot(path: Path, out: Path | None, plots: bool) -> int:
    doc = json.loads(path.read_text())
    rows, doc["results"] = doc["results"], []
    for row in rows:  # derived figures follow the current definitions
        report.derive(row, doc["results"], doc["ceilings"])
        doc["results"].append(row)
    out = out or path.parent
    # The run's own files are redrawn in place; elsewhere a new name, as for a new run.
    name = path.stem if out.resolve() == path.parent.resolve() else None
    paths = report.write_files(doc, out, plots=plots, name=name)
    print(report.render(doc))
    print("wrote:", *map(str, paths), sep="\n  ")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs the sweep the arguments describe and writes its files.

    Returns 1 if a case failed with an error (not out of memory or timeout), 130 if interrupted, else 0.
    """
    args = _parser().parse_args(argv)
    plots = not args.no_plots
    if plots and (missing := report.plots_unavailable()):
        print(f"plots skipped: {missing} (pip install matplotlib, then --replot the JSON)", flush=True)
        plots = False
    if args.replot:
        return _replot(args.replot, args.out, plots)
    device = _device(args.device)
    # Each case runs in a fresh process: keep Triton's autotuning results on disk so that a kernel is tuned once
    # per shape, not once per case (a Triton setting; ignored by versions without it).
    os.environ.setdefault("TRITON_CACHE_AUTOTUNING", "1")
    sweep = plan.build_plan(
        device,
        ops=args.ops,
        ns=args.n,
        d=args.d,
        dtypes=args.dtype,
        precisions=args.precision,
        impls=args.impls,
        modes=args.mode,
        quick=args.quick,
    )
    if not sweep.cases:
        print("nothing to run:", *(f"{k}: {v}" for k, v in sweep.left_out.items()), sep="\n  ")
        return 2
    available = _memory_available()
    settings = runner.Settings(
        # GPU timings vary little between calls; the CPU shares its two cores with the rest of the machine.
        budget_s=args.budget if args.budget is not None else (0.3 if args.quick else DEFAULT_BUDGET[device]),
        max_reps=args.reps or (5 if args.quick else 20),
        min_reps=min(3, args.reps or 3),
        timeout_s=args.timeout or (60.0 if args.quick else 180.0),
        # A CPU case may use most of the memory free at the start, and fails cleanly past it.
        memory_cap_bytes=int(0.8 * available) if device == "cpu" and available else None,
    )
    keys = sorted({k for c in sweep.cases for k in cases.ceilings_needed(c.op, c.dtype, c.precision)})
    print(f"hyperloss benchmark: {len(sweep.cases)} cases on {device}; measuring the device's ceilings ...", flush=True)
    probe = runner.run_in_child(functools.partial(runner.probe, device, tuple(keys), args.quick), settings.timeout_s)
    if probe["status"] != runner.OK:
        print(f"ceilings not measured ({probe.get('error')}); floors use the defaults where there are any")
    info, measured = probe.get("info", {}), probe.get("measured", {})
    name = report.device_name(device, info) if device == "cpu" or "name" in info else "unknown CUDA device"
    info.setdefault("name", name)
    params = {
        "argv": sys.argv[1:] if argv is None else list(argv),
        "quick": args.quick,
        "t": cases.T,
        "alpha": cases.ALPHA,
        "ops": sorted({c.op for c in sweep.cases}),
        "modes": sorted({c.mode for c in sweep.cases}),
        "dtypes": sorted({c.dtype for c in sweep.cases}),
        "precisions": sorted({c.precision for c in sweep.cases}),
        "d": sorted({c.d for c in sweep.cases}),
        "ns": {op: sorted({c.n for c in sweep.cases if c.op == op}) for op in cases.OPS},
        "impls": list(dict.fromkeys(c.impl for c in sweep.cases)),
        "settings": vars(settings) | {"ceiling_sizes": probe.get("sizes")},
    }
    doc = report.new_document(device, info, report.ceilings(device, name, keys, measured), params, sweep.left_out)
    print(report.header(doc), flush=True)

    def on_result(index: int, total: int, row: dict) -> None:
        report.derive(row, doc["results"], doc["ceilings"])
        doc["results"].append(row)
        print(report.progress_line(index, total, row), flush=True)

    try:
        runner.run_sweep(sweep, functools.partial(runner.run_case, settings=settings), on_result)
    except KeyboardInterrupt:  # keep what was measured
        print(f"\ninterrupted: writing the {len(doc['results'])} results so far")
        doc["params"]["interrupted"] = True
    out = args.out or (QUICK_OUT if args.quick else Path("bench/results"))
    paths = report.write_files(doc, out, plots=plots)
    print()
    print(report.tables(doc))
    print("\n".join(report.summary(doc)))
    print("\nwrote:", *map(str, paths), sep="\n  ")
    if doc["params"].get("interrupted"):
        return 130  # the shell's code for an interrupted command
    errors = [r for r in doc["results"] if r["status"] == runner.ERROR]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
