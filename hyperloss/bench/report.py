"""What a sweep produces: derived figures (speedup, floor), the progress lines, the tables, and the files.

A sweep is one JSON-serializable document (see ``new_document``); every output is rendered from it, so
``python -m hyperloss.bench --replot FILE.json`` redraws the tables and plots of a committed run exactly.
"""

from __future__ import annotations

import csv
import datetime
import importlib.metadata
import json
import os
import platform
import re
from collections.abc import Iterable
from pathlib import Path

from . import cases
from .runner import H100_CEILINGS, OK, SKIPPED, cpu_model

SCHEMA = 1
MB = 1e6  # decimal units throughout
NOISY = 0.05  # a ceiling's repeats spread more than ±5% (half-IQR over median): the machine is called noisy
ABOVE = "†"  # marks a % of floor over 100: the floor is above the measured time

OP_TITLES = {"uniform": "Uniformity loss", "align": "Alignment loss"}
MODE_TITLES = {"fwd": "forward", "fwdbwd": "forward + backward"}
PRECISION_TITLES = {"highest": "fp32 products", "high": "TF32 products", "medium": "bf16 products"}

CSV_FIELDS = (
    "device_name",
    "device",
    "date",
    "torch",
    "op",
    "mode",
    "dtype",
    "precision",
    "d",
    "n",
    "impl",
    "status",
    "median_ms",
    "q1_ms",
    "q3_ms",
    "min_ms",
    "max_ms",
    "reps",
    "warmup_ms",
    "peak_extra_bytes",
    "speedup_vs_paper",
    "floor_ms",
    "floor_bound",
    "floor_fraction",
    "flop",
    "exps",
    "bytes",
    "loss",
    "wall_s",
    "error",
)


# ----------------------------------------------------------------------------------------------------------------
# The document


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    """Versions of everything that shapes the numbers (read from package metadata, nothing imported)."""
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": _version("triton"),
        "pykeops": _version("pykeops"),
        "hyperloss": _version("hyperloss"),
        "numpy": _version("numpy"),
        "matplotlib": _version("matplotlib"),
    }


def device_name(device_type: str, info: dict) -> str:
    """A human name for the device: the GPU's, or the CPU model with its core count."""
    if device_type == "cuda":
        return info["name"]
    model = " ".join(re.sub(r"\((R|TM|tm)\)", "", cpu_model()).split())
    return f"{model}, {len(os.sched_getaffinity(0))} CPUs"


def slug(text: str) -> str:
    """A file-name-safe form of ``text``: "NVIDIA H100 80GB HBM3" -> "nvidia-h100-80gb-hbm3"."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def ceilings(device_type: str, name: str, keys: Iterable[str], measured: dict[str, dict]) -> dict[str, dict]:
    """Each needed ceiling with its source: measured here (with the spread of its repeats), else on a GPU the H100
    reference figure (said so)."""
    table = {}
    for key in sorted(set(keys)):
        if key in measured:
            table[key] = {**measured[key], "source": "measured"}
        elif device_type == "cuda" and key in H100_CEILINGS:
            source = "not measured: NVIDIA H100 80GB HBM3 figure (hyperloss.bench.runner.H100_CEILINGS)"
            if "H100" not in name:
                source += " (this GPU is not an H100)"
            table[key] = {"value": H100_CEILINGS[key], "source": source}
    return table


def new_document(device_type: str, info: dict, ceiling_table: dict, params: dict, left_out: dict) -> dict:
    """The sweep's document before any result: device, versions, date, parameters, ceilings."""
    now = datetime.datetime.now().astimezone()
    name = device_name(device_type, info)
    return {
        "schema": SCHEMA,
        "date": now.date().isoformat(),
        "timestamp": now.isoformat(timespec="seconds"),
        "device": {
            "type": device_type,
            "name": name,
            "slug": slug(name),
            "cpu_model": cpu_model(),
            "cpus": len(os.sched_getaffinity(0)),
            **info,
        },
        "versions": versions(),
        "params": params,
        "ceilings": ceiling_table,
        "implementations": {i.name: i.description for i in cases.all_impls()},
        "left_out": left_out,
        "results": [],
    }


DERIVED = (
    "flop",
    "exps",
    "bytes",
    "floor_ms",
    "floor_bound",
    "floor_fraction",
    "speedup_vs_paper",
    "paper_baseline",
)


def derive(row: dict, rows: list[dict], ceiling_table: dict) -> None:
    """Adds the counted work, the floor, the fraction of it achieved and the speedup over the paper's code
    (compared with the rows before it in ``rows``)."""
    for key in DERIVED:
        row.pop(key, None)
    w = cases.work(row["op"], row["mode"], row["n"], row["d"], row["dtype"])
    row.update(flop=w.flop, exps=w.exps, bytes=w.bytes)
    values = {k: v["value"] for k, v in ceiling_table.items()}
    floor = cases.floor_seconds(w, values, row["dtype"], row["precision"])
    if floor is not None:
        row["floor_ms"], row["floor_bound"] = _sig(floor[0] * 1e3), floor[1]
    if row["status"] != OK:
        return
    if floor is not None:
        row["floor_fraction"] = _sig(row["floor_ms"] / row["median_ms"])
    paper = _paper_for(rows, row)
    if paper is not None:
        row["speedup_vs_paper"] = _sig(paper["median_ms"] / row["median_ms"])
        if _config(paper) != _config(row):
            row["paper_baseline"] = f"{paper['dtype']}/{paper['precision']}"


def _sig(x: float, digits: int = 4) -> float:
    """``x`` to ``digits`` significant digits: derived figures carry no false precision into the files."""
    return float(f"{x:.{digits}g}")


def _config(row: dict) -> tuple:
    return (row["op"], row["mode"], row["dtype"], row["precision"], row["d"])


def _paper_for(rows: list[dict], like: dict) -> dict | None:
    """The paper's successful run to compare ``like`` with: same config and N; for a bf16/fp16 row without
    one, the fp32 run at the same N (what a user of the paper's code runs)."""
    candidates = [
        r
        for r in rows
        if r["impl"] == "paper"
        and r["status"] == OK
        and (r["op"], r["mode"], r["d"], r["n"]) == (like["op"], like["mode"], like["d"], like["n"])
    ]
    for r in candidates:
        if _config(r) == _config(like):
            return r
    if like["dtype"] in ("bf16", "fp16"):
        return next((r for r in candidates if r["dtype"] == "fp32"), None)
    return None


# ----------------------------------------------------------------------------------------------------------------
# Formatting


def fmt_ms(ms: float) -> str:
    """A duration in ms with three significant digits, in s or µs where that reads better."""
    if ms >= 1000:
        return f"{ms / 1e3:.2f} s"
    if ms >= 1:
        return f"{ms:.3g} ms"
    return f"{ms * 1e3:.3g} µs"


def fmt_bytes(n: float) -> str:
    """A byte count in decimal units (MB = 10^6 bytes)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return "< 1 kB"


def fmt_speedup(x: float) -> str:
    """A ratio such as 17.5×."""
    return f"{x:.0f}×" if x >= 100 else f"{x:.3g}×"


def fmt_n(n: int) -> str:
    """1024 -> 1k, 1048576 -> 1M: powers of two read at a glance."""
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20}M"
    if n >= 1 << 10 and n % (1 << 10) == 0:
        return f"{n >> 10}k"
    return str(n)


def _status_word(row: dict) -> str:
    return {"oom": "out of memory", SKIPPED: "skipped"}.get(row["status"], row["status"])


def config_title(row: dict) -> str:
    """A table's or plot's title for the config of ``row``: op, mode, D and dtype (with the fp32 precision)."""
    dtype = row["dtype"]
    # The precision setting matters where fp32 products may use tensor cores; the CPU default needs no note.
    if dtype == "fp32" and (row["device"] == "cuda" or row["precision"] != "highest"):
        dtype = f"fp32 ({PRECISION_TITLES.get(row['precision'], row['precision'])})"
    return f"{OP_TITLES[row['op']]}, {MODE_TITLES[row['mode']]}, D={row['d']}, {dtype}"


def progress_line(index: int, total: int, row: dict) -> str:
    """One line per finished case, e.g.
    ``[12/40] uniform fwdbwd fp32 N=8192 hyperloss (cpu): 190 ms ±2% (20 reps), peak +9.1 MB, 16.5× vs paper``."""
    width = len(str(total))
    dtype = f"{row['dtype']}/{row['precision']}" if row["dtype"] == "fp32" and row["device"] == "cuda" else row["dtype"]
    head = f"[{index:>{width}}/{total}] {row['op']} {row['mode']} {dtype} N={row['n']} {cases.label(row['impl'])}:"
    if row["status"] != OK:
        detail = f" ({row['error']})" if row.get("error") else ""
        return f"{head} {_status_word(row).upper()}{detail}"
    parts = [
        f"{head} {fmt_ms(row['median_ms'])} ±{_half_iqr_percent(row):.0f}% ({row['reps']} reps)",
        f"peak +{fmt_bytes(row['peak_extra_bytes'])}",
    ]
    if "speedup_vs_paper" in row and row["impl"] != "paper":
        parts.append(f"{fmt_speedup(row['speedup_vs_paper'])} vs paper")
    if "floor_fraction" in row:
        above = " (floor above the measured time: the ceiling was measured low)" if row["floor_fraction"] > 1 else ""
        parts.append(f"{_percent(row['floor_fraction'])} of floor{above}")
    return ", ".join(parts)


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.2g}%" if fraction < 1 else f"{100 * fraction:.0f}%"


def _half_iqr_percent(row: dict) -> float:
    return 50 * (row["q3_ms"] - row["q1_ms"]) / row["median_ms"]


def _cell(row: dict | None) -> str:
    if row is None:
        return ""
    if row["status"] != OK:
        return _status_word(row)
    parts = [f"{fmt_ms(row['median_ms'])} ±{_half_iqr_percent(row):.0f}%", fmt_bytes(row["peak_extra_bytes"])]
    if row["impl"] != "paper" and "speedup_vs_paper" in row:
        parts.append(fmt_speedup(row["speedup_vs_paper"]))
    if "floor_fraction" in row:
        parts.append(f"{_percent(row['floor_fraction'])} fl.{ABOVE if row['floor_fraction'] > 1 else ''}")
    return " · ".join(parts)


def _markdown(header: list[str], body: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" if i == 0 else "-" * (w + 2) for i, w in enumerate(widths)) + "|"
    return [line(header), rule, *(line(r) for r in body)]


def _configs(rows: list[dict]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(_config(r), []).append(r)
    return groups


def tables(doc: dict) -> str:
    """One Markdown table per config: rows N, columns implementations, cells time · memory · speedup."""
    out = []
    for group in _configs(doc["results"]).values():
        impls = list(dict.fromkeys(r["impl"] for r in group))
        ns = sorted({r["n"] for r in group})
        has_floor = any("floor_ms" in r for r in group)
        legend = "median time ±half-IQR · peak extra memory · speedup vs paper"
        baseline = next((r["paper_baseline"] for r in group if "paper_baseline" in r), None)
        if baseline is not None:
            legend = legend.replace("vs paper", f"vs paper ({baseline})")
        if has_floor:
            legend += " · % of floor (fl.)"
        out += [f"#### {config_title(group[0])} — {doc['device']['name']}", "", legend, ""]
        body = []
        for n in ns:
            at_n = {r["impl"]: r for r in group if r["n"] == n}
            cells = [fmt_n(n) if n >= 1024 else str(n)] + [_cell(at_n.get(i)) for i in impls]
            if has_floor:
                floor = next((r["floor_ms"] for r in at_n.values() if "floor_ms" in r), None)
                cells.append("" if floor is None else fmt_ms(floor))
            body.append(cells)
        out += [*_markdown(["N", *map(cases.label, impls), *(["floor"] if has_floor else [])], body), ""]
        if any(r.get("floor_fraction", 0) > 1 for r in group):
            out += [
                f"{ABOVE} floor above the measured time: its ceiling was measured below what that case reached (a "
                "noisy machine, or a ceiling measurement short of the device's peak); not a bound there.",
                "",
            ]
    return "\n".join(out)


def summary(doc: dict) -> list[str]:
    """The headline figures: each hyperloss backend against the paper at the largest N both ran, how far each
    implementation got."""
    rows = doc["results"]
    backends = {i.name for i in cases.hyperloss_impls()}
    lines = []
    for group in _configs(rows).values():
        title = config_title(group[0])
        for impl in dict.fromkeys(r["impl"] for r in group):
            if impl not in backends:
                continue
            both = [r for r in group if r["impl"] == impl and "speedup_vs_paper" in r]
            if both:
                r = max(both, key=lambda r: r["n"])
                paper = _paper_for(rows, r)
                speed = r["speedup_vs_paper"]
                relation = f"{fmt_speedup(speed)} faster" if speed >= 1 else f"{fmt_speedup(1 / speed)} slower"
                lines.append(
                    f"{title}, N={r['n']}: {cases.label(impl)} is {relation} than paper "
                    f"({fmt_ms(r['median_ms'])} vs {fmt_ms(paper['median_ms'])}), peak extra memory "
                    f"{fmt_bytes(r['peak_extra_bytes'])} vs {fmt_bytes(paper['peak_extra_bytes'])}"
                )
        reach = []
        for impl in dict.fromkeys(r["impl"] for r in group):
            mine = [r for r in group if r["impl"] == impl]
            done = [r["n"] for r in mine if r["status"] == OK]
            failed = next((r for r in mine if r["status"] not in (OK, SKIPPED)), None)
            text = f"{cases.label(impl)} {fmt_n(max(done)) if done else 'none'}"
            if failed is not None:
                text += f" ({_status_word(failed)} at {fmt_n(failed['n'])})"
            reach.append(text)
        lines.append(f"{title}: largest N completed: " + ", ".join(reach))
    return lines


def header(doc: dict) -> str:
    """The run's context: device, versions, ceilings and their sources, implementations left out."""
    v = doc["versions"]
    lines = [
        f"device: {doc['device']['name']} ({doc['device']['type']}), {doc['date']}",
        "versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
    ]
    for key, c in doc["ceilings"].items():
        unit = "B/s" if key == "copy" else ("exp/s" if key == "exp" else "flop/s")
        how = f": median of {c['repeats']} runs ±{100 * c['spread']:.2g}%" if "spread" in c else ""
        lines.append(f"ceiling {key}: {c['value']:.3g} {unit} ({c['source']}{how})")
    noisy = {k: c["spread"] for k, c in doc["ceilings"].items() if c.get("spread", 0) > NOISY}
    if noisy:
        spread = ", ".join(f"{k} ±{100 * v:.2g}%" for k, v in noisy.items())
        lines.append(f"warning: noisy machine ({spread} between repeats): floors and % of floor are approximate")
    if doc["device"]["type"] == "cpu":
        lines.append("floors on the CPU: matmul and memory terms only (the exp rate is not measured)")
    for name, reason in doc["left_out"].items():
        lines.append(f"not run: {cases.label(name)}: {reason}")
    return "\n".join(lines)


def render(doc: dict) -> str:
    """Everything the terminal shows at the end (also written as the .md file)."""
    return "\n".join([header(doc), "", tables(doc), *summary(doc), ""])


# ----------------------------------------------------------------------------------------------------------------
# Files


def stem(doc: dict, out: Path) -> str:
    """A new run's files' common name: <device-slug>-<YYYY-MM-DD>, or with -2, -3, ... where an earlier run in
    ``out`` has that name."""
    base = name = f"{doc['device']['slug']}-{doc['date']}"
    k = 1
    while any(out.glob(f"{name}.*")) or any(out.glob(f"{name}-[a-z]*.png")):
        k += 1
        name = f"{base}-{k}"
    return name


def plots_unavailable() -> str | None:
    """Why the PNG plots cannot be drawn here (matplotlib missing or broken); None when they can."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        return str(error)
    return None


def write_files(doc: dict, out: Path, plots: bool = True, name: str | None = None) -> list[Path]:
    """Writes <name>.{json,csv,md} and one PNG per config under ``out`` (``name``: a new ``stem``, unless given);
    returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    base = out / (name or stem(doc, out))
    paths = [Path(f"{base}.{ext}") for ext in ("json", "csv", "md")]
    paths[0].write_text(json.dumps(doc, indent=1) + "\n")
    with paths[1].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        context = {"device_name": doc["device"]["name"], "date": doc["date"], "torch": doc["versions"]["torch"]}
        for row in doc["results"]:
            writer.writerow({**context, **row})
    paths[2].write_text(render(doc))
    if plots:
        from .plots import plot_config

        for group in _configs(doc["results"]).values():
            r = group[0]
            tag = "-".join(str(x) for x in (r["op"], r["mode"], r["dtype"], r["precision"]) if x != "-")
            paths.append(plot_config(doc, group, Path(f"{base}-{tag}.png")))
    return paths
