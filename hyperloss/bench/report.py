"""A sweep's results document, its derived figures, and what is rendered from it: progress lines, tables, JSON, CSV."""

import contextlib
import csv
import datetime
import importlib.metadata
import itertools
import json
import os
import platform
import re
from pathlib import Path

from . import cases, fmt, roofline
from .isolation import OK
from .sweep import SKIPPED

ABOVE = "†"  # marks a % of floor over 100: the floor is above the measured time
NOISY = 0.05  # a ceiling whose repeats spread more than ±5% (half-IQR over median) calls the machine noisy
CSV_FIELDS = (
    "device_name device date torch op mode dtype precision d n impl status median_ms q1_ms q3_ms min_ms max_ms reps "
    "warmup_ms peak_extra_bytes speedup_vs_paper floor_ms floor_bound floor_fraction flop exps bytes loss wall_s error"
).split()
DERIVED = ("flop", "exps", "bytes", "floor_ms", "floor_bound", "floor_fraction", "speedup_vs_paper", "paper_baseline")


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        if model := next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None):
            return model
    return platform.processor() or platform.machine()


def device_name(device_type: str, info: dict) -> str:
    """The GPU's name, or the CPU model with the number of CPUs this process may use."""
    if device_type == "cuda":
        return info.get("name", "unknown CUDA device")
    model = " ".join(re.sub(r"\((R|TM|tm)\)", "", cpu_model()).split())
    return f"{model}, {len(os.sched_getaffinity(0))} CPUs"


def new_document(device_type: str, info: dict, ceilings: dict, params: dict, left_out: dict) -> dict:
    """A sweep's document before any result: device, versions, date, parameters, ceilings, implementations."""
    now, name = datetime.datetime.now().astimezone(), device_name(device_type, info)
    installed = {d.metadata["Name"].lower(): d.version for d in importlib.metadata.distributions()}
    packages = ("torch", "triton", "pykeops", "hyperloss", "numpy", "matplotlib")
    versions = {"python": platform.python_version(), "cuda": info.get("cuda")} | {p: installed.get(p) for p in packages}
    device = {"type": device_type, "name": name, "slug": fmt.slug(name), "cpu_model": cpu_model()}
    device |= {"cpus": len(os.sched_getaffinity(0))} | info
    doc = {"schema": 1, "date": now.date().isoformat(), "timestamp": now.isoformat(timespec="seconds")}
    doc |= {"device": device, "versions": versions, "params": params, "ceilings": ceilings}
    return doc | {"implementations": cases.implementations(), "left_out": left_out, "results": []}


def _config(row: dict) -> tuple:
    return (row["op"], row["mode"], row["dtype"], row["precision"], row["d"])


def add_result(doc: dict, row: dict) -> dict:
    """Appends ``row`` with its counted work, floor, fraction of the floor and speedup over the paper's code."""
    row = {k: v for k, v in row.items() if k not in DERIVED}  # recomputed under the current definitions
    row |= (work := roofline.work(row["op"], row["mode"], row["n"], row["d"], row["dtype"]))
    values = {k: c["value"] for k, c in doc["ceilings"].items()}
    if floor := roofline.floor_seconds(work, values, row["dtype"], row["precision"]):
        row["floor_ms"], row["floor_bound"] = float(f"{floor[0] * 1e3:.4g}"), floor[1]
        if row["status"] == OK:
            row["floor_fraction"] = float(f"{row['floor_ms'] / row['median_ms']:.4g}")
    # The paper's run in the same config at that N; for bf16/fp16 without one, in fp32 (what its users run).
    same_n = [r for r in doc["results"] if r["impl"] == "paper" and r["status"] == OK and r["n"] == row["n"]]
    same_n = [r for r in same_n if (r["op"], r["mode"], r["d"]) == (row["op"], row["mode"], row["d"])]
    fp32 = [r for r in same_n if r["dtype"] == "fp32"] if row["dtype"] in ("bf16", "fp16") else []
    paper = next((r for r in same_n if _config(r) == _config(row)), next(iter(fp32), None))
    if row["status"] == OK and paper:
        row["speedup_vs_paper"] = float(f"{paper['median_ms'] / row['median_ms']:.4g}")
        if _config(paper) != _config(row):
            row["paper_baseline"] = f"{paper['dtype']}/{paper['precision']}"
    doc["results"].append(row)
    return row


def _describe(row: dict, long: bool) -> str:
    """A table cell or (``long``) progress line: time ±half-IQR, peak extra memory, speedup, % of floor; or failure."""
    if row["status"] != OK:
        word = {"oom": "out of memory", SKIPPED: "skipped"}.get(row["status"], row["status"])
        return word.upper() + (f" ({row['error']})" if row.get("error") else "") if long else word
    spread = f"±{50 * (row['q3_ms'] - row['q1_ms']) / row['median_ms']:.0f}%"
    figures = [f"{fmt.ms(row['median_ms'])} {spread}" + (f" ({row['reps']} reps)" if long else "")]
    figures.append(("peak +" if long else "") + fmt.nbytes(row["peak_extra_bytes"]))
    if row["impl"] != "paper" and "speedup_vs_paper" in row:
        figures.append(fmt.speedup(row["speedup_vs_paper"]) + (" vs paper" if long else ""))
    if "floor_fraction" in row:
        above = row["floor_fraction"] > 1
        note = " (floor above the measured time: the ceiling was measured low)" if above else ""
        figures.append(fmt.percent(row["floor_fraction"]) + (f" of floor{note}" if long else f" fl.{ABOVE * above}"))
    return (", " if long else " · ").join(figures)


def progress_line(index: int, total: int, row: dict) -> str:
    """``[12/40] uniform fwdbwd fp32 N=8192 hyperloss (cpu): 190 ms ±2% (20 reps), peak +9.1 MB, ...``."""
    dtype = f"{row['dtype']}/{row['precision']}" if row["dtype"] == "fp32" and row["device"] == "cuda" else row["dtype"]
    head = f"[{index:>{len(str(total))}}/{total}] {row['op']} {row['mode']} {dtype} N={row['n']}"
    return f"{head} {cases.label(row['impl'])}: {_describe(row, long=True)}"


def configs(rows: list[dict]) -> list[list[dict]]:
    """The rows grouped by config (op, mode, dtype, precision, D), in run order: a table and a plot each."""
    return [[r for r in rows if _config(r) == key] for key in dict.fromkeys(map(_config, rows))]


def _markdown(header: list[str], body: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    rule = "|" + "|".join("-" * (w + 1) + ":" if i == 0 else "-" * (w + 2) for i, w in enumerate(widths)) + "|"
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in [header, *body]]
    return [lines[0], rule, *lines[1:]]


def tables(doc: dict) -> str:
    """A Markdown table per config: rows N, columns implementations, cells time · memory · speedup · % of floor."""
    out = []
    for group in configs(doc["results"]):
        impls, has_floor = list(dict.fromkeys(r["impl"] for r in group)), any("floor_ms" in r for r in group)
        baseline = next((f" ({r['paper_baseline']})" for r in group if "paper_baseline" in r), "")
        legend = f"median time ±half-IQR · peak extra memory · speedup vs paper{baseline}"
        out += [f"#### {fmt.config_title(group[0])} — {doc['device']['name']}", ""]
        out += [legend + (" · % of floor (fl.)" if has_floor else ""), ""]
        body = []
        for n in sorted({r["n"] for r in group}):
            at_n = {r["impl"]: r for r in group if r["n"] == n}
            cells = [_describe(at_n[i], long=False) if i in at_n else "" for i in impls]
            floor = next((fmt.ms(r["floor_ms"]) for r in at_n.values() if "floor_ms" in r), "")
            body.append([fmt.size(n), *cells, *([floor] if has_floor else [])])
        out += [*_markdown(["N", *map(cases.label, impls), *(["floor"] if has_floor else [])], body), ""]
        if any(r.get("floor_fraction", 0) > 1 for r in group):  # a noisy machine, or a ceiling measured short
            out.append(f"{ABOVE} floor above the measured time: its ceiling was measured low, not a bound there.\n")
    return "\n".join(out)


def summary(doc: dict) -> list[str]:
    """The library's backends at the largest N where they were compared with the paper (rows run N ascending)."""
    rows = [r for r in doc["results"] if r["impl"] not in cases.BASELINES and "speedup_vs_paper" in r]
    last = {(_config(r), r["impl"]): r for r in rows}.values()
    return [f"{fmt.config_title(r)}, N={r['n']}: {cases.label(r['impl'])}: {_describe(r, long=True)}" for r in last]


def header(doc: dict) -> str:
    """The run's context: device, versions, ceilings with their sources and spread, implementations left out."""
    lines = [f"device: {doc['device']['name']} ({doc['device']['type']}), {doc['date']}"]
    lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in doc["versions"].items() if v))
    for key, c in doc["ceilings"].items():
        how = f": median of {c['repeats']} runs ±{100 * c['spread']:.2g}%" if "spread" in c else ""
        unit = {"copy": "B/s", "exp": "exp/s"}.get(key, "flop/s")
        lines.append(f"ceiling {key}: {c['value']:.3g} {unit} ({c['source']}{how})")
    noisy = [f"{k} ±{100 * c['spread']:.2g}%" for k, c in doc["ceilings"].items() if c.get("spread", 0) > NOISY]
    if noisy:
        lines.append(f"warning: noisy machine ({', '.join(noisy)} between repeats): floors and % of floor approximate")
    if doc["device"]["type"] == "cpu":
        lines.append("floors on the CPU: matmul and memory terms only (the exp rate is not measured)")
    return "\n".join(lines + [f"not run: {cases.label(k)}: {why}" for k, why in doc["left_out"].items()])


def render(doc: dict) -> str:
    """Everything the terminal shows at the end (also the .md file)."""
    return "\n".join([header(doc), "", tables(doc), *summary(doc), ""])


def new_run_name(base: str, out: Path) -> str:
    """``base`` (<device-slug>-<YYYY-MM-DD>), or with -2, -3, ... where an earlier run in ``out`` has that name."""
    names = (f"{base}-{k}" if k > 1 else base for k in itertools.count(1))
    return next(n for n in names if not any(out.glob(f"{n}.*")) and not any(out.glob(f"{n}-[a-z]*.png")))


def write_files(doc: dict, out: Path, plots: bool, name: str | None = None) -> list[Path]:
    """Writes the run's <name>.json, .csv (a row per case), .md (the final tables) and a PNG per config under ``out``
    (``name``: a new run's by default); returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    base = out / (name or new_run_name(f"{doc['device']['slug']}-{doc['date']}", out))
    paths = [base.with_name(f"{base.name}.{ext}") for ext in ("json", "csv", "md")]
    paths[0].write_text(json.dumps(doc, indent=1) + "\n")
    with paths[1].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        context = {"device_name": doc["device"]["name"], "date": doc["date"], "torch": doc["versions"]["torch"]}
        writer.writerows(context | row for row in doc["results"])
    paths[2].write_text(render(doc))
    if plots:
        from .plots import plot_config  # only here: matplotlib is optional

        for rows in configs(doc["results"]):
            tag = "-".join(rows[0][k] for k in ("op", "mode", "dtype", "precision") if rows[0][k] != "-")
            paths.append(plot_config(doc, rows, base.with_name(f"{base.name}-{tag}.png")))
    return paths
