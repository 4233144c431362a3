"""The Triton kernels as a GPU runs them, inspected on a machine without one: ``python -m hyperloss.triton.inspect``.

Each shipped kernel, and each block configuration the autotuner may pick, is compiled ahead of time for a target
(sm_90 by default, sm_80 too) with the specializations a real call gets: 16-byte aligned pointers, sizes divisible
by 16 (a large batch), the row width's compile-time constants (``uniform.launch_constants``), the operand and
compute dtypes of each input dtype and float32 precision. From the machine code (``cuobjdump``, shipped inside the
triton wheel) it reads per kernel and configuration:

- registers per thread and stack bytes (``cuobjdump -res-usage``), spill bytes (local stores, ``STL``, in the SASS),
- shared memory (Triton's launch metadata plus the static part),
- whether the dots run on wgmma (``HGMMA``, sm_90), and
- for the row kernel, SASS instructions per pair in the hot loop: the instructions in the body of the largest loop
  (the largest backward branch) x threads per program / (BLOCK_M x BLOCK_N): what each pair of a tile costs in
  issued instructions, tensor-core work aside.

``--out FILE`` writes the table as Markdown (the committed ``bench/results/kernels-sm90.md``);
tests/test_kernels_sm90.py runs it and asserts the targets of issue #12.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor

import triton

# The uniformity module, not the function of the same name that hyperloss.triton re-exports.
uniform = importlib.import_module("hyperloss.triton.uniform")

# Shared memory a block may use on sm_90 (227 KiB, opt-in) and sm_80 (163 KiB).
SHARED_LIMIT = {90: 232448, 80: 166912}

# Input dtype and float32 precision -> (operand dtype, compute dtype, precision passed to the launcher).
# float32 "medium" stores the rows as bfloat16 and compiles exactly like bfloat16 inputs.
DTYPES = {
    "bf16": ("bf16", "fp32", "native"),
    "fp16": ("fp16", "fp32", "native"),
    "fp32-high": ("fp16", "fp32", "tf32"),  # tf32 products from a float16 copy (uniform._operand_dtype)
    "fp32-medium": ("bf16", "fp32", "bf16"),
    "fp32-highest": ("fp16", "fp32", "ieee"),  # exact products: a float16 split, three dots per product
}

# The segment length a split sweep is compiled with (uniform._segments at N = 256, K = 65536 on a GPU).
SEGMENT_COLS = 1024

# Row-kernel variants: (SELF_MODE, HAS_OTHER, NEED_ACC). "grad" is the training step's sweep (loss and gradient of
# x, every j != i); "loss" the forward alone (j > i); "queue" the pairs with a queue only (the queue's gradient).
VARIANTS = {
    "grad": (2, False, True),
    "loss": (1, False, False),
    "grad+queue": (2, True, True),
    "queue": (0, True, True),
}


@dataclasses.dataclass(frozen=True)
class Case:
    """One compilation: a row kernel ("lean": the fixed-shift sweep, autotuned; "fallback": the running-reference
    sweep that recomputes the rows the lean one flags, one configuration; "rows": the running-reference sweep alone,
    autotuned, where the rows do not stay in registers; "merge": the merge of a segmented sweep's partial results,
    block_m x block_n its rows x columns) in one variant, dtype, row width and block configuration. ``segmented``:
    the other set's columns split across programs (few rows against a large queue, ``uniform._segments``), compiled
    with segments of SEGMENT_COLS columns (the length at N = 256 against K = 65536)."""

    kernel: str
    variant: str
    dtype: str
    d: int
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    arch: int = 90
    segmented: bool = False

    @property
    def config(self) -> str:
        return f"({self.block_m},{self.block_n},{self.num_warps},{self.num_stages})"


@dataclasses.dataclass(frozen=True)
class Report:
    case: Case
    registers: int
    stack_bytes: int
    spill_bytes: int
    shared_bytes: int
    dots: int  # tensor-core dot instructions of the target (HGMMA on sm_90, HMMA on sm_80)
    wgmma: bool
    loop_instructions: int
    per_pair: float
    compile_seconds: float

    @property
    def fits(self) -> bool:
        return self.shared_bytes <= SHARED_LIMIT[self.case.arch]


def _tool(name: str) -> str:
    try:
        return getattr(triton.knobs.nvidia, name).path
    except AttributeError:  # pragma: no cover - older Triton: the binaries ship in the same place
        return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


def autotune_configs(d: int, dtype: str) -> list[triton.Config]:
    """The configurations the autotuner may pick for the lean kernel at rows of width ``d`` (after its pruning)."""
    operand, _, precision = DTYPES[dtype]
    return uniform.prune_configs(list(uniform._LEAN_CONFIGS), d, _BYTES[operand], uniform._split(precision))


def cases(
    variants: Iterable[str] = ("grad",),
    dtypes: Iterable[str] = tuple(DTYPES),
    ds: Iterable[int] = (64, 128, 256),
    arch: int = 90,
    segmented: bool = False,
) -> list[Case]:
    """Every (variant, dtype, d, config) the autotuner can pick among, and the fallback's one configuration;
    ``segmented``: the sweeps of a split queue (variants with a queue), and the merge of their partial results."""
    out = []
    for variant in variants:
        for dtype in dtypes:
            for d in ds:
                split = uniform._split(DTYPES[dtype][2])
                if uniform._in_registers(d, split):
                    configs = [("lean", c) for c in autotune_configs(d, dtype)]
                    configs.append(("fallback", uniform._fallback_config(d, split, segmented)))
                else:  # D swept in chunks by the running-reference kernel alone
                    configs = [("rows", c) for c in uniform.rows_configs(False, split, segmented)]
                for kernel, config in configs:
                    kw = config.kwargs
                    blocks = (kw["BLOCK_M"], kw["BLOCK_N"], config.num_warps, config.num_stages)
                    out.append(Case(kernel, variant, dtype, d, *blocks, arch, segmented))
                if segmented:
                    blocks = (uniform._MERGE_ROWS, uniform._MERGE_COLS, uniform.MERGE_WARPS, 1)
                    out.append(Case("merge", variant, dtype, d, *blocks, arch, segmented))
    return out


_TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def _signature(case: Case):
    import torch

    operand, compute, precision = DTYPES[case.dtype]
    self_mode, has_other, need_acc = VARIANTS[case.variant]
    if case.kernel == "lean":
        kernel = uniform._uniform_lean_kernel
        operand_dtype = getattr(torch, _TORCH_DTYPES[operand])
        constants = uniform.lean_launch_constants(
            case.d, self_mode, has_other, need_acc, precision, operand_dtype, SEGMENT_COLS if case.segmented else 0
        )
    elif case.kernel == "merge":
        kernel = uniform._merge_segments_kernel
        constants = {"NEED_ACC": need_acc, "BLOCK_R": case.block_m, "BLOCK_C": case.block_n}
    else:
        kernel = uniform._uniform_rows_kernel
        segment_cols = SEGMENT_COLS if case.segmented else 0
        constants = uniform.launch_constants(case.d, self_mode, has_other, need_acc, precision, segment_cols)
        constants["CHECK_FLAGS"] = case.kernel == "fallback"
    if case.kernel != "merge":
        constants.update(BLOCK_M=case.block_m, BLOCK_N=case.block_n)
    pointer_types = uniform.POINTER_TYPES
    unspecialized = {"size_bucket", "n_segments"}  # do_not_specialize; a segment count need not divide by 16
    signature, attrs = {}, {}
    for index, name in enumerate(kernel.arg_names):
        if name in constants:
            signature[name] = "constexpr"
            continue
        if name.endswith("_ptr"):
            kind = pointer_types.get(name, "fp64")
            signature[name] = "*" + {"operand": operand, "compute": compute}.get(kind, kind)
        else:
            signature[name] = "i32"
        if name not in unspecialized:  # aligned pointers and sizes divisible by 16 (e.g. N = 65536)
            attrs[(index,)] = [["tt.divisibility", 16]]
    return kernel, signature, constants, attrs


_LINE = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?);")


def parse_sass(sass: str) -> list[tuple[int, str]]:
    """(address, instruction text) for each instruction of the first function in ``cuobjdump -sass`` output."""
    out = []
    for line in sass.splitlines():
        match = _LINE.match(line)
        if match:
            out.append((int(match.group(1), 16), match.group(2).strip()))
    return out


def hot_loop(instructions: Sequence[tuple[int, str]]) -> tuple[int, int]:
    """(instructions, tensor-core dots) in the body of the largest loop: from the target of a backward branch to the
    branch, NOPs (alignment padding) not counted. (0, 0) without a loop."""
    best = (0, 0)
    for address, text in instructions:
        opcode = re.sub(r"^@!?U?P[T0-9]+\s+", "", text).split()
        if not opcode or not opcode[0].startswith("BRA") or opcode[0].startswith("BRA.DIV"):
            continue
        target = re.search(r"0x([0-9a-f]+)", text)
        if target is None:
            continue
        target = int(target.group(1), 16)
        if target >= address:  # forward, or the trap loop on itself at the end
            continue
        body = [t for a, t in instructions if target <= a <= address and not t.split()[0].startswith("NOP")]
        dots = sum(1 for t in body if re.search(r"\bH?GMMA|\bHMMA", t))
        if len(body) > best[0]:
            best = (len(body), dots)
    return best


@functools.cache
def inspect_case(case: Case) -> Report:
    """Compiles ``case`` and reads its machine code (cached per process; Triton caches the compilation on disk)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel, signature, constants, attrs = _signature(case)
    start = time.perf_counter()
    compiled = triton.compile(
        ASTSource(kernel, signature, constants, attrs),
        target=GPUTarget("cuda", case.arch, 32),
        options={"num_warps": case.num_warps, "num_stages": case.num_stages},
    )
    seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "kernel.cubin")
        with open(cubin, "wb") as f:
            f.write(compiled.asm["cubin"])
        usage = subprocess.run([_tool("cuobjdump"), "-res-usage", cubin], capture_output=True, text=True, check=True)
        sass = subprocess.run([_tool("cuobjdump"), "-sass", cubin], capture_output=True, text=True, check=True)
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", usage.stdout))
    instructions = parse_sass(sass.stdout)
    spill = 0
    for _, text in instructions:
        opcode = re.sub(r"^@!?P[T0-9]+\s+", "", text).split()[0]
        if opcode.startswith("STL"):
            width = re.search(r"\.(64|128)", opcode)
            spill += int(width.group(1)) // 8 if width else 4
    dots = sum(1 for _, t in instructions if re.search(r"\bHGMMA", t))
    loop, _ = hot_loop(instructions)
    threads = 32 * case.num_warps
    return Report(
        case=case,
        registers=int(fields.get("REG", 0)),
        stack_bytes=int(fields.get("STACK", 0)),
        spill_bytes=spill,
        shared_bytes=int(compiled.metadata.shared) + int(fields.get("SHARED", 0)),
        dots=dots if case.arch >= 90 else sum(1 for _, t in instructions if re.search(r"\bHMMA", t)),
        wgmma=dots > 0,
        loop_instructions=loop,
        per_pair=loop * threads / (case.block_m * case.block_n),
        compile_seconds=seconds,
    )


def inspect_all(selected: Sequence[Case], jobs: int = 1) -> list[Report]:
    """Reports for ``selected`` in order; ``jobs`` compilations at a time, in separate processes (Triton's front end
    parses kernels with ``ast``, which is not safe across threads)."""
    if jobs <= 1:
        return [inspect_case(c) for c in selected]
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(inspect_case, selected))


def markdown(reports: Sequence[Report], title: str) -> str:
    lines = [
        f"# {title}",
        "",
        f"Triton {triton.__version__}; `python -m hyperloss.triton.inspect` (see its docstring for the definitions). "
        "Sizes divisible by 16; per pair = hot-loop SASS instructions x threads / (BLOCK_M x BLOCK_N).",
        "",
        "| kernel | variant | dtype | D | config (BM,BN,warps,stages) | regs | spill B | stack B | smem KiB | wgmma "
        "| loop instr | instr/pair |",
        "|---|---|---|---:|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in reports:
        c = r.case
        smem = f"{r.shared_bytes / 1024:.1f}" + ("" if r.fits else " (over)")
        wgmma = ("yes" if r.wgmma else "no") if c.arch >= 90 else "n/a"
        variant = f"{c.variant} (split)" if c.segmented else c.variant
        lines.append(
            f"| {c.kernel} | {variant} | {c.dtype} | {c.d} | {c.config} | {r.registers} | {r.spill_bytes} "
            f"| {r.stack_bytes} | {smem} | {wgmma} | {r.loop_instructions} | {r.per_pair:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hyperloss.triton.inspect", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[90], help="compute capabilities (90, 80)")
    parser.add_argument("--variant", nargs="+", default=["grad", "loss"], choices=list(VARIANTS))
    parser.add_argument("--dtype", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--d", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument(
        "--segmented", action="store_true", help="the split-queue sweeps (few rows, large queue) and their merge"
    )
    parser.add_argument("--jobs", type=int, default=1, help="compilations at a time (processes)")
    parser.add_argument("--out", help="write the table as Markdown to this file")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: the interpreter has no ahead-of-time compilation")
    selected = [c for arch in args.arch for c in cases(args.variant, args.dtype, args.d, arch, args.segmented)]
    reports = inspect_all(selected, args.jobs)
    text = "\n\n".join(
        markdown([r for r in reports if r.case.arch == arch], f"The Triton row kernel compiled for sm_{arch}")
        for arch in args.arch
    )
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
