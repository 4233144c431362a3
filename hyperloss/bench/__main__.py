"""``python -m hyperloss.bench`` / ``hyperloss-bench``: the benchmark sweep (options: ``--help``, bench/README.md)."""

import argparse
import functools
import importlib.util
import json
import os
import re
import sys
from pathlib import Path

from . import cases, isolation, report, roofline, sweep

QUICK_OUT = Path("bench/results/tmp")  # git-ignored: --quick runs are smoke tests, not results


def parse_n(text: str) -> int:
    """A size: 8192, 2^13, 2**13, 8k or 1M."""
    if m := re.fullmatch(r"(\d+)(?:\^|\*\*)(\d+)", text.strip()):
        return int(m[1]) ** int(m[2])
    if m := re.fullmatch(r"(\d+)([kKmM]?)", text.strip()):
        return int(m[1]) << {"": 0, "k": 10, "m": 20}[m[2].lower()]
    raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 8192, 2^13, 8k, 1M)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="hyperloss-bench", description="hyperloss against the paper's code and others")
    add, many = p.add_argument, {"nargs": "+"}
    add("--ops", **many, choices=cases.OPS, help="losses to measure (default: both)")
    add("--n", **many, type=parse_n, metavar="N", help="sizes, e.g. 1024 2^13 64k (default: per op and device)")
    add("--d", type=int, help=f"feature dimension (default {sweep.DEFAULT_D}; --quick {sweep.QUICK_D})")
    add("--dtype", **many, choices=list(cases.DTYPES), help="input dtypes (default fp32; on a GPU also bf16)")
    add("--precision", **many, choices=cases.PRECISIONS, help="fp32 matmul precision (default: GPU high, CPU highest)")
    add("--impls", **many, choices=list(cases.implementations()), help="implementations (default: all that run here)")
    add("--mode", **many, choices=cases.MODES, help="fwd, fwdbwd (default: fwdbwd)")
    add("--budget", type=float, help="seconds of timed calls per case (default: CPU 2, GPU 0.5; --quick 0.3)")
    add("--timeout", type=float, help="seconds per case, warm-up included (default 180; --quick 60)")
    add("--device", choices=("auto", "cpu", "cuda"), default="auto")
    add("--out", type=Path, help=f"results directory (default bench/results; --quick {QUICK_OUT})")
    add("--quick", action="store_true", help="tiny sizes, no torch.compile: a smoke test of the suite")
    add("--no-plots", action="store_true", help="JSON, CSV and Markdown only")
    add("--replot", type=Path, metavar="JSON", help="redraw the tables and plots of a results file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Runs the sweep and writes its files: 1 if a case failed with an error, 130 if interrupted, 2 if none ran."""
    args = parse_args(argv)
    plots = not args.no_plots
    if plots and importlib.util.find_spec("matplotlib") is None:
        print("plots skipped: matplotlib is not installed (pip install matplotlib, then --replot the JSON)", flush=True)
        plots = False
    if args.replot:  # the run's files redrawn (derived figures recomputed): in place, or as a new run in --out
        doc, out = json.loads(args.replot.read_text()), args.out or args.replot.parent
        rows, doc["results"] = doc["results"], []
        for row in rows:
            report.add_result(doc, row)
        in_place = out.resolve() == args.replot.parent.resolve()
        paths = report.write_files(doc, out, plots, args.replot.stem if in_place else None)
        print(report.render(doc) + "\nwrote:", *paths, sep="\n  ")
        return 0
    import torch

    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device.replace("auto", "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    os.environ.setdefault("TRITON_CACHE_AUTOTUNING", "1")  # cases are fresh processes: tune once per shape, on disk
    choices = {"ops": args.ops, "ns": args.n, "d": args.d, "dtypes": args.dtype, "precisions": args.precision}
    planned, left_out = sweep.build_plan(device, args.quick, **choices, impls=args.impls, modes=args.mode)
    if not planned:
        print("nothing to run:", *(f"{k}: {v}" for k, v in left_out.items()), sep="\n  ")
        return 2
    available = isolation.proc_kb("MemAvailable", "/proc/meminfo") * 1024
    budget = args.budget if args.budget is not None else 0.3 if args.quick else {"cpu": 2.0, "cuda": 0.5}[device]
    cap = int(0.8 * available) if device == "cpu" and available else None  # of the memory free (a shared machine)
    settings = {"budget_s": budget, "timeout_s": args.timeout or (60.0 if args.quick else 180.0), "memory_cap": cap}
    keys = sorted({k for c in planned for k in roofline.ceilings_needed(c.op, c.dtype, c.precision)})
    print(f"hyperloss benchmark: {len(planned)} cases on {device}; measuring the device's ceilings ...", flush=True)
    task = functools.partial(roofline.measure_ceilings, device, tuple(keys), args.quick)
    probe = isolation.run_in_child(task, settings["timeout_s"])
    if probe["status"] != isolation.OK:
        print(f"ceilings not measured ({probe.get('error')}); floors use the defaults where there are any")
    info = probe.get("info", {})
    params = {k: v for k, v in vars(args).items() if k not in ("out", "replot")} | settings  # as given, and resolved
    params |= {"argv": sys.argv[1:] if argv is None else argv, "t": cases.T, "alpha": cases.ALPHA}
    params["ceiling_sizes"] = probe.get("sizes")
    ceilings = roofline.ceiling_table(device, report.device_name(device, info), keys, probe.get("measured", {}))
    doc = report.new_document(device, info, ceilings, params, left_out)
    print(report.header(doc), flush=True)

    def on_result(index: int, total: int, row: dict) -> None:
        print(report.progress_line(index, total, report.add_result(doc, row)), flush=True)

    try:
        sweep.run_sweep(planned, functools.partial(sweep.run_case, **settings), on_result)
    except KeyboardInterrupt:  # keep what was measured: write it, then exit as interrupted
        doc["params"]["interrupted"] = True
    paths = report.write_files(doc, args.out or (QUICK_OUT if args.quick else Path("bench/results")), plots)
    print("\n" + report.tables(doc), *report.summary(doc), sep="\n")
    print("\nwrote:", *paths, sep="\n  ")
    errors = any(r["status"] == isolation.ERROR for r in doc["results"])
    return 130 if doc["params"].get("interrupted") else 1 if errors else 0  # 130: the shell's "interrupted"


if __name__ == "__main__":
    sys.exit(main())
