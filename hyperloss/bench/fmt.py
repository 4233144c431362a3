"""Numbers and titles as the tables, the progress lines and the plots print them."""

import re

TITLES = {"uniform": "Uniformity loss", "align": "Alignment loss", "fwd": "forward", "fwdbwd": "forward + backward"}
PRECISION_TITLES = {"highest": "fp32 products", "high": "TF32 products", "medium": "bf16 products"}


def ms(value: float) -> str:
    """A duration given in ms, with three significant digits, in s or µs where that reads better."""
    return f"{value / 1e3:.2f} s" if value >= 1000 else f"{value:.3g} ms" if value >= 1 else f"{value * 1e3:.3g} µs"


def nbytes(n: float) -> str:
    """A byte count in decimal units (MB = 10^6 bytes)."""
    unit, scale = next(((u, s) for u, s in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)) if n >= s), ("", 0))
    return f"{n / scale:.3g} {unit}" if scale else "< 1 kB"


def speedup(x: float) -> str:
    return f"{x:.0f}×" if x >= 100 else f"{x:.3g}×"


def percent(fraction: float) -> str:
    return f"{100 * fraction:.2g}%" if fraction < 1 else f"{100 * fraction:.0f}%"


def size(n: int) -> str:
    """1024 -> 1k, 1048576 -> 1M: powers of two read at a glance."""
    shift, unit = next(((s, u) for s, u in ((20, "M"), (10, "k")) if n >= 1 << s and n % (1 << s) == 0), (0, ""))
    return f"{n >> shift}{unit}"


def slug(text: str) -> str:
    """A file-name-safe form: "NVIDIA H100 80GB HBM3" -> "nvidia-h100-80gb-hbm3"."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def config_title(row: dict) -> str:
    """The title of a table or plot: op, mode, D and dtype (with the fp32 precision where it matters)."""
    dtype = row["dtype"]
    if dtype == "fp32" and (row["device"] == "cuda" or row["precision"] != "highest"):
        dtype = f"fp32 ({PRECISION_TITLES.get(row['precision'], row['precision'])})"
    return f"{TITLES[row['op']]}, {TITLES[row['mode']]}, D={row['d']}, {dtype}"
