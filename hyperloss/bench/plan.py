"""Which cases a sweep runs: the default sweep for the device found, narrowed or replaced by the CLI's choices."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from . import cases

# Default sizes per device and op. The CPU sweep is sized to finish in a few minutes on two cores (the paper's
# code takes seconds per call at N = 8192); on a GPU the sweep goes on until each baseline runs out of memory.
DEFAULT_NS = {
    ("cpu", "uniform"): (1024, 2048, 4096, 8192),
    ("cpu", "align"): (1 << 16, 1 << 18),
    ("cuda", "uniform"): tuple(1 << k for k in range(10, 19)),  # 1024 ... 262144
    ("cuda", "align"): (1 << 16, 1 << 18, 1 << 20),
}
QUICK_NS = {"uniform": (128, 256), "align": (1024, 4096)}
DEFAULT_D, QUICK_D = 128, 32
# On a GPU the hyperloss kernels are also measured in bf16; the baselines only in fp32 (the paper's pdist and
# the dense versions are what users run in fp32, and their memory use does not depend on this choice).
DEFAULT_DTYPES = {"cpu": ("fp32",), "cuda": ("fp32", "bf16")}
DEFAULT_PRECISION = {"cpu": "highest", "cuda": "high"}  # fp32 on a GPU: TF32 products, as trainers run it
# Implementations left out of --quick: torch.compile spends ~10 s compiling each shape on a small CPU.
SLOW_TO_START = ("compiled-dense",)


@dataclass(frozen=True)
class Case:
    """One measurement: an implementation of an op at one size and dtype."""

    op: str
    mode: str
    dtype: str
    precision: str  # torch.set_float32_matmul_precision for fp32; "-" for other dtypes
    d: int
    n: int
    impl: str
    device: str  # "cpu" or "cuda"

    @property
    def series(self) -> tuple:
        """The cases that differ only in N: one line on a plot, one skip chain after a failure."""
        return (self.op, self.mode, self.dtype, self.precision, self.d, self.impl)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Plan:
    """The cases of a sweep, in run order, and the implementations left out with the reason."""

    cases: list[Case]
    # implementation, or "implementation (op, dtype)", -> why it does not run here
    left_out: dict[str, str] = field(default_factory=dict)


def build_plan(
    device: str,
    *,
    ops: Sequence[str] | None = None,
    ns: Sequence[int] | None = None,
    d: int | None = None,
    dtypes: Sequence[str] | None = None,
    precisions: Sequence[str] | None = None,
    impls: Sequence[str] | None = None,
    modes: Sequence[str] | None = None,
    quick: bool = False,
) -> Plan:
    """The sweep: every combination of the choices, each unset one taking the device's default.

    Cases run config by config, N ascending, and at each N the paper's code first, so that each result can be
    compared with it as soon as it is printed.
    """
    ops = tuple(ops or cases.OPS)
    modes = tuple(modes or ("fwdbwd",))
    d = d or (QUICK_D if quick else DEFAULT_D)
    explicit_dtypes = dtypes is not None
    dtypes = tuple(dtypes or DEFAULT_DTYPES[device])
    precisions = tuple(precisions or (DEFAULT_PRECISION[device],))
    order = [i.name for i in cases.all_impls()]
    for name in impls or ():
        cases.impl_named(name)  # an unknown name is an error, not a silent omission
    names = sorted(set(impls), key=order.index) if impls else order
    plan = Plan(cases=[])
    by_dtype = {}  # "paper (uniform, bf16)" -> why: listed even where the implementation runs in another dtype
    if quick and not impls:
        for name in SLOW_TO_START:
            names.remove(name)
            plan.left_out[name] = "left out of --quick: torch.compile takes seconds to compile each shape"

    for op, mode, dtype in itertools.product(ops, modes, dtypes):
        sizes = tuple(sorted(ns)) if ns else (QUICK_NS[op] if quick else DEFAULT_NS[(device, op)])
        runnable = []
        for name in names:
            if not (explicit_dtypes or dtype == "fp32" or cases.impl_named(name).backend not in (None, "reference")):
                continue
            if (reason := cases.unavailable_reason(name, op, device, dtype)) is not None:
                plan.left_out.setdefault(name, reason)
            elif (reason := cases.unsupported_dtype(name, op, device, dtype)) is not None:
                by_dtype[f"{name} ({op}, {dtype})"] = reason
            else:
                runnable.append(name)
        # Precision only changes fp32 matrix products; other dtypes run once.
        for precision in precisions if dtype == "fp32" else ("-",):
            for n in sizes:
                plan.cases.extend(Case(op, mode, dtype, precision, d, n, name, device) for name in runnable)
    # An implementation that ran somewhere is not "left out" because one op or dtype does not apply to it.
    ran = {c.impl for c in plan.cases}
    plan.left_out = {k: v for k, v in plan.left_out.items() if k not in ran} | by_dtype
    return plan
