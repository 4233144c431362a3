"""PNG plots of a sweep: time and peak extra memory against N, log-log, one line per implementation, failed sizes
marked at the top of the axis, the floor dashed. Imported only to plot, so that nobody else needs matplotlib."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on a benchmark machine

import matplotlib.pyplot as plt
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

from . import cases, fmt
from .isolation import OK
from .sweep import SKIPPED

MIN_MB = 4096 / 1e6  # RSS is counted in 4 kB pages: a smaller extra (or noise below zero) is drawn at one page
FAILED = {"marker": "X", "markersize": 11, "markeredgecolor": "black", "linestyle": "none", "clip_on": False}


def plot_config(doc: dict, rows: list[dict], path: Path) -> Path:
    """One figure for the rows of one config (op, mode, dtype, precision, D): time left, memory right."""
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.6), layout="constrained")
    ns, failed_at, handles = sorted({r["n"] for r in rows}), {}, []
    names, palette = list(cases.implementations()), [f"C{i}" for i in range(10) if i != 7]  # C7, gray: the floor
    for impl in dict.fromkeys(r["impl"] for r in rows):  # a fixed color per implementation; the library's heavier
        color = palette[names.index(impl) % len(palette) if impl in names else -1]
        style = {"color": color, "linewidth": 1.6 if impl in cases.BASELINES else 2.6, "marker": "o", "markersize": 5}
        mine = sorted((r for r in rows if r["impl"] == impl), key=lambda r: r["n"])
        ok = [r for r in mine if r["status"] == OK]
        axes[0].plot([r["n"] for r in ok], [r["median_ms"] for r in ok], **style)
        axes[1].plot([r["n"] for r in ok], [max(r["peak_extra_bytes"] / 1e6, MIN_MB) for r in ok], **style)
        handles.append(Line2D([], [], label=cases.label(impl), **style))
        for r in (r for r in mine if r["status"] not in (OK, SKIPPED)):  # stacked at the top, in axes coordinates
            y = 0.96 - 0.05 * failed_at.setdefault(r["n"], 0)
            failed_at[r["n"]] += 1
            for ax in axes:
                top = ax.get_xaxis_transform()
                ax.plot(r["n"], y, color=style["color"], transform=top, **FAILED)
                text = r["status"].upper()
                ax.annotate(text, (r["n"], y), xycoords=top, xytext=(8, -3), textcoords="offset points", fontsize=8)
    if floors := sorted({(r["n"], r["floor_ms"]) for r in rows if "floor_ms" in r}):
        floor_style = {"color": "gray", "linestyle": "--", "linewidth": 1.4}
        axes[0].plot(*zip(*floors, strict=True), **floor_style)
        label = "floor: counted work at\nthe device's ceilings"
        if any(r.get("floor_fraction", 0) > 1 for r in rows):
            label += "\n(above a measured time: the\nceiling was measured low)"
        handles.append(Line2D([], [], label=label, **floor_style))
    if failed_at:
        handles.append(Line2D([], [], color="gray", label="out of memory or time limit\n(drawn at the top)", **FAILED))
    labels = {"median time per call (ms)": "Time per call", "peak extra memory (MB)": "Peak extra memory"}
    for ax, (ylabel, title) in zip(axes, labels.items(), strict=True):
        ax.set(xscale="log", yscale="log", xlim=(ns[0] / 1.4, ns[-1] * 1.4), xlabel="N (rows of x)", ylabel=ylabel)
        ax.set_title(title, fontsize=12)
        ax.set_xticks(ns, [fmt.size(n) for n in ns])
        ax.xaxis.set_minor_locator(NullLocator())  # only the measured sizes are labelled
        ax.grid(True, which="major", alpha=0.35)
        low, high = ax.get_ylim()
        if failed_at:  # room above the data for the failure markers
            ax.set_ylim(low, high := high * (high / low) ** (0.06 * (1 + max(failed_at.values()))))
        # Plain numbers (200, not 2 x 10^2), at 1-2-5 steps when the axis spans few decades.
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if high / low < 1e3 else (1.0,)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    title = f"{fmt.config_title(rows[0])}\n{doc['device']['name']} · torch {doc['versions']['torch']} · {doc['date']}"
    fig.suptitle(title, fontsize=13)
    fig.legend(handles=handles, loc="outside right upper", fontsize=10, title="implementation")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
