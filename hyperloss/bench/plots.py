"""PNG plots of a sweep: time and peak extra memory against N, log-log, one line per implementation.

Imported only when plotting, so that matplotlib is needed by nobody else.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on a benchmark machine

import matplotlib.pyplot as plt
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator
from matplotlib.transforms import blended_transform_factory

from . import cases
from .report import MB, config_title, fmt_n
from .runner import OK, SKIPPED

# Failed points sit at the top of the axis (axes coordinates), stacked when several fail at the same N.
_FAIL_Y, _FAIL_STEP = 0.96, 0.05
# RSS is counted in 4 kB pages: a smaller extra (or noise below zero) is drawn at one page on the log axis.
_MIN_MB = 4096 / MB


def _style(impl: str) -> dict:
    """A fixed color per implementation across plots (gray is kept for the floor); the library's backends heavier."""
    names = [i.name for i in cases.all_impls()]
    palette = [c for i, c in enumerate(plt.get_cmap("tab10").colors) if i != 7]
    color = palette[names.index(impl) % len(palette) if impl in names else -1]
    native = impl in {i.name for i in cases.hyperloss_impls()}
    return {"color": color, "linewidth": 2.6 if native else 1.6, "marker": "o", "markersize": 5}


def _plain_log_ticks(ax: plt.Axes) -> None:
    """Y ticks as plain numbers (200, not 2 x 10^2), at 1-2-5 steps when the axis spans few decades."""
    low, high = ax.get_ylim()
    subs = (1.0, 2.0, 5.0) if high / low < 1e3 else (1.0,)
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def plot_config(doc: dict, rows: list[dict], path: Path) -> Path:
    """One figure for one config (op, mode, dtype, precision, D): time on the left, memory on the right."""
    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(14, 5.6), layout="constrained")
    ns = sorted({r["n"] for r in rows})
    failed_count: dict[int, int] = {}
    handles = []
    for impl in dict.fromkeys(r["impl"] for r in rows):
        mine = sorted((r for r in rows if r["impl"] == impl), key=lambda r: r["n"])
        ok = [r for r in mine if r["status"] == OK]
        style = _style(impl)
        x = [r["n"] for r in ok]
        ax_time.plot(x, [r["median_ms"] for r in ok], **style)
        ax_mem.plot(x, [max(r["peak_extra_bytes"] / MB, _MIN_MB) for r in ok], **style)
        handles.append(Line2D([], [], label=cases.label(impl), **style))
        for r in mine:
            if r["status"] in (OK, SKIPPED):
                continue
            y = _FAIL_Y - _FAIL_STEP * failed_count.get(r["n"], 0)
            failed_count[r["n"]] = failed_count.get(r["n"], 0) + 1
            for ax in (ax_time, ax_mem):
                at_top = blended_transform_factory(ax.transData, ax.transAxes)
                ax.plot(
                    r["n"],
                    y,
                    marker="X",
                    markersize=11,
                    color=style["color"],
                    markeredgecolor="black",
                    linestyle="none",
                    transform=at_top,
                    clip_on=False,
                )
                label = "OOM" if r["status"] == "oom" else r["status"]
                ax.annotate(label, (r["n"], y), xycoords=at_top, xytext=(8, -3), textcoords="offset points", fontsize=8)
    floors = sorted({(r["n"], r["floor_ms"]) for r in rows if "floor_ms" in r})
    if floors:
        floor_style = {"color": "gray", "linestyle": "--", "linewidth": 1.4}
        ax_time.plot(*zip(*floors, strict=True), **floor_style)
        label = "floor: counted work at\nthe device's ceilings"
        if any(r.get("floor_fraction", 0) > 1 for r in rows):
            label += "\n(above a measured time: the\nceiling was measured low)"
        handles.append(Line2D([], [], label=label, **floor_style))
    if failed_count:
        handles.append(
            Line2D(
                [],
                [],
                marker="X",
                markersize=10,
                color="gray",
                markeredgecolor="black",
                linestyle="none",
                label="out of memory or time limit\n(drawn at the top)",
            )
        )

    for ax, ylabel, title in (
        (ax_time, "median time per call (ms)", "Time per call"),
        (ax_mem, "peak extra memory (MB)", "Peak extra memory"),
    ):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(ns, [fmt_n(n) for n in ns])
        ax.xaxis.set_minor_locator(NullLocator())  # only the measured sizes are labelled
        ax.set_xlim(ns[0] / 1.4, ns[-1] * 1.4)
        ax.set_xlabel("N (rows of x)", fontsize=11)
        ax.set_ylabel(ylabel, fontsize=11)
        ax.set_title(title, fontsize=12)
        ax.grid(True, which="major", alpha=0.35)
        if failed_count:  # room above the data for the failure markers
            low, high = ax.get_ylim()
            ax.set_ylim(low, high * (high / low) ** (0.06 * (1 + max(failed_count.values()))))
        _plain_log_ticks(ax)
        ax.tick_params(labelsize=10)

    fig.suptitle(
        f"{config_title(rows[0])}\n{doc['device']['name']} · torch {doc['versions']['torch']} · {doc['date']}",
        fontsize=13,
    )
    fig.legend(handles=handles, loc="outside right upper", fontsize=10, title="implementation")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
