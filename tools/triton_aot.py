"""Compiles hyperloss's Triton uniformity kernels ahead of time into C sources for libhyperloss (issue #13, item 1b).

    python tools/triton_aot.py --out DIR [--dtype bf16 fp16] [--d 16 32 64 128 256] [--variant ...]
                               [--kind lean fallback combine grad merge] [--segment-cols 1024] [--config largest]
                               [--jobs N] [--list]

Generates every kernel ``hl_uniform_lse_cuda`` runs for the operand dtypes (``--dtype``) and power-of-two row widths
(``--d``: one block width BLOCK_D each; the C side pads other widths with zero columns), sm_90 (``--arch``):
- ``lean``: ``_uniform_lean_kernel`` for each of the sweeps the C API runs (``VARIANTS``),
- ``fallback``: ``_uniform_rows_kernel`` with CHECK_FLAGS (the rows the lean sweep flags), the same sweeps,
- ``combine``: ``_combine_kernel`` per SELF_MODE, ``grad``: ``_grad_kernel`` per operand dtype,
- few rows against many (``uniform._segments``): the lean and fallback sweeps with a queue again, compiled with
  SEGMENT_COLS = each length of ``--segment-cols`` (one program per row block and column segment), and
  ``merge``: ``_merge_segments_kernel`` per NEED_ACC, which adds up the segments' partial results,
each with the compile-time arguments the Triton backend launches it with (``uniform.lean_launch_constants``,
``uniform.launch_constants`` + ``uniform._fallback_config``, the finish kernels' block sizes), pointers 16-byte
aligned (the C side passes only workspace pieces, carved in 256-byte steps), D divisible by 16 (a block width), and
no assumption on the row counts (any N). The arguments, names and types, come from the kernel itself
(``kernel.arg_names``, pointer types from ``uniform.POINTER_TYPES``), and the trailing pointers Triton adds (global
and profile scratch) are counted from the PTX entry. The C side binds its values to them by name (aot.h).

``--config``: the lean block configuration: ``largest`` (default: the pruned autotuning candidate with the largest
tile, fewest stages; the inspection tool's best at D = 64, 128 and 256 in bench/results/kernels-sm90.md), ``auto``
(compiles every candidate and takes the inspection tool's best: no spills, fits, fewest SASS instructions per pair;
~4x the compile time), or ``BM,BN,W,S`` for every width.

Writes into DIR: ``<name>.cubin`` per compilation; ``hl_aot_kernels.c`` (the cubins as byte arrays, each kernel's
argument names and types, the ``hl_aot_kernel`` table of csrc/cuda/aot/aot.h); ``hl_aot_kernels.h`` (the row padding
and architecture the kernels assume); ``manifest.json`` (per compilation its key, configuration, arguments and
machine-code metrics). ``--list`` prints the kernels and their arguments as JSON and compiles nothing.

Why not ``python -m triton.tools.compile``: its ``--signature`` string takes only int and float constexprs (these
kernels have a string, INPUT_PRECISION, and booleans), it executes the kernel's file outside its package (relative
imports fail), it needs a GPU driver, and its launcher calls the driver API directly (libcuda at link time) and
exits the process on an error. The compilation itself is the same call it makes (``triton.compile`` of an
``ASTSource``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from inspect import Parameter
from pathlib import Path

# The build runs this from the source tree, before (or without) the Python package being installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # as bench/results/kernels-sm90.md was generated

import torch
import triton

from hyperloss.triton import inspect, uniform

# hl_dtype values (csrc/include/hyperloss/hyperloss.h; aot.cpp checks them) of the operand dtypes.
HL_DTYPE = {"bf16": 3, "fp16": 2}
TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Triton argument types -> PTX parameter type.
PTX_TYPES = {"i32": "u32", "i64": "u64", "fp32": "f32", "fp64": "f64"}
# The sweeps the C API runs, (SELF_MODE, HAS_OTHER, NEED_ACC): the inspection tool's four and the two loss-only
# sweeps with a queue (intra_batch with a queue but no gradient; the queue's pairs alone, no gradient).
VARIANTS = {**inspect.VARIANTS, "loss+queue": (1, True, False), "queue-loss": (0, True, False)}
# The nearest inspection-tool variant, for ranking configurations (--config auto).
RANK_AS = {"loss+queue": "loss", "queue-loss": "queue"}
# Pointer arguments the row kernels' table (uniform.POINTER_TYPES) does not name: the gradient kernel's rows.
EXTRA_POINTER_TYPES = {"v_ptr": "operand", "v_lo_ptr": "operand"}
# Arguments never given an alignment or divisibility hint: row and segment counts (any N) and the autotuning key.
UNHINTED = ("n_rows", "n_other", "size_bucket", "n_segments")
# Warps of the finish kernels, as uniform.triton_uniform_lse launches them.
FINISH_WARPS = 8
KINDS = ("lean", "fallback", "combine", "grad", "merge")
# Column segment lengths compiled for the split sweeps (uniform._segments picks among powers of two times 128 from
# _SEGMENT_MIN_COLS; the C side takes the nearest compiled one that fits its budget, csrc/cuda/uniform.cu
# aot::split_columns): 1024 (a batch of up to ~1000 rows against a 65536-row queue), 4096 (up to ~4000 rows, or a
# queue of 2^20).
SEGMENT_COLS = (1024, 4096)
C_KEY_NONE = -1  # a key field that does not select this kernel (aot.h)
# The dynamic shared memory an sm_90 block may opt into (cudaDevAttrMaxSharedMemoryPerBlockOptin on H100/H200).
MAX_SHARED_BYTES = 232448


@dataclasses.dataclass(frozen=True)
class Spec:
    """One compilation: a kernel, its dispatch key and its launch configuration."""

    kind: str  # lean, fallback, combine, grad or merge
    dtype: str | None  # operand dtype (None: any)
    variant: str | None  # VARIANTS key (row kernels) or None
    self_mode: int | None  # combine's SELF_MODE (or the variant's)
    block_d: int | None
    blocks: tuple[int, int, int, int]  # BLOCK_M (rows of a program), BLOCK_N, warps, stages
    arch: int = 90
    segment_cols: int = 0  # row kernels: the other set's columns per segment (0: not split)
    need_acc: bool | None = None  # merge: NEED_ACC

    block_m = property(lambda self: self.blocks[0])
    block_n = property(lambda self: self.blocks[1])
    num_warps = property(lambda self: self.blocks[2])
    num_stages = property(lambda self: self.blocks[3])

    @property
    def name(self) -> str:
        parts = [self.kind, self.dtype, self.variant and self.variant.replace("+", "_").replace("-", "_")]
        if self.kind == "combine":
            parts.append(f"self{self.self_mode}")
        if self.kind == "merge":
            parts.append("acc" if self.need_acc else "sums")
        if self.block_d:
            parts.append(f"d{self.block_d}")
        if self.segment_cols:
            parts.append(f"seg{self.segment_cols}")
        return "_".join(p for p in parts if p)

    @property
    def function(self):
        return {
            "lean": uniform._uniform_lean_kernel,
            "fallback": uniform._uniform_rows_kernel,
            "combine": uniform._combine_kernel,
            "grad": uniform._grad_kernel,
            "merge": uniform._merge_segments_kernel,
        }[self.kind]

    def constants(self) -> dict[str, object]:
        """Every constexpr argument, as the Triton backend launches this kernel."""
        if self.kind in ("lean", "fallback"):
            self_mode, has_other, need_acc = VARIANTS[self.variant]
            operand, _, precision = inspect.DTYPES[self.dtype]
            if self.kind == "lean":
                operand_dtype = TORCH_DTYPES[operand]
                out = uniform.lean_launch_constants(
                    self.block_d, self_mode, has_other, need_acc, precision, operand_dtype, self.segment_cols
                )
            else:
                out = uniform.launch_constants(
                    self.block_d, self_mode, has_other, need_acc, precision, self.segment_cols
                )
                out["CHECK_FLAGS"] = True
            out.update(BLOCK_M=self.block_m, BLOCK_N=self.block_n)
        elif self.kind == "combine":
            out = {"SELF_MODE": self.self_mode, "BLOCK": uniform._FINISH_ROWS}
        elif self.kind == "merge":
            out = {"NEED_ACC": self.need_acc, "BLOCK_R": self.block_m, "BLOCK_C": self.block_n}
        else:
            out = {"SPLIT": False, "BLOCK_R": uniform._GRAD_ROWS, "BLOCK_C": uniform._GRAD_COLS}
        # Constexprs the launch leaves at their defaults (and a missing one is an error here, not a wrong kernel).
        for param in self.function.params:
            if param.is_constexpr and param.name not in out:
                if param.default is Parameter.empty:
                    raise RuntimeError(f"{self.name}: no value for the constexpr {param.name}")
                out[param.name] = param.default
        return out

    def signature(self) -> tuple[dict[str, str], dict[tuple[int], list]]:
        """Triton types of every argument (``constexpr`` for those in ``constants``) and the specialization hints."""
        constants = self.constants()
        kinds = {**uniform.POINTER_TYPES, **EXTRA_POINTER_TYPES}
        operand = inspect.DTYPES[self.dtype][0] if self.dtype else None
        signature, attrs = {}, {}
        for index, name in enumerate(self.function.arg_names):
            if name in constants:
                signature[name] = "constexpr"
                continue
            if name.endswith("_ptr"):
                kind = kinds.get(name, "fp64")
                if kind == "operand" and operand is None:
                    raise RuntimeError(f"{self.name}: {name} has the operand dtype, but the kernel has no dtype key")
                signature[name] = "*" + {"operand": operand, "compute": "fp32"}.get(kind, kind)
            else:
                signature[name] = "i32"
            if name not in UNHINTED:  # workspace pointers (256-byte aligned); D: a block width, >= 16
                attrs[(index,)] = [["tt.divisibility", 16]]
        return signature, attrs

    def args(self) -> list[tuple[str, str]]:
        """(name, Triton type) of the non-constexpr arguments, in the kernel's order."""
        signature, _ = self.signature()
        return [(a, signature[a]) for a in self.function.arg_names if signature[a] != "constexpr"]

    def key(self) -> dict[str, int]:
        """The dispatch key hl_aot_find matches (C_KEY_NONE: not part of this kernel's key)."""
        none = C_KEY_NONE
        if self.variant:
            self_mode, has_other, need_acc = (int(v) for v in VARIANTS[self.variant])
        else:
            self_mode = none if self.self_mode is None else self.self_mode
            has_other = none
            need_acc = none if self.need_acc is None else int(self.need_acc)
        return {
            "dtype": HL_DTYPE[self.dtype] if self.dtype else none,
            "self_mode": self_mode,
            "has_other": has_other,
            "need_acc": need_acc,
            "block_d": self.block_d or none,
            "segment_cols": self.segment_cols if self.kind in ("lean", "fallback") else none,
        }


def lean_config(dtype: str, variant: str, d: int, arch: int, config: str, jobs: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, warps, stages) of the lean kernel for this key."""
    if config == "largest":
        candidates = inspect.autotune_configs(d, dtype)
        best = max(candidates, key=lambda c: (c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"], -c.num_stages))
        return best.kwargs["BLOCK_M"], best.kwargs["BLOCK_N"], best.num_warps, best.num_stages
    if config == "auto":
        ranked = RANK_AS.get(variant, variant)
        candidates = [c for c in inspect.cases((ranked,), (dtype,), (d,), arch) if c.kernel == "lean"]
        reports = inspect.inspect_all(candidates, jobs)
        usable = [r for r in reports if r.spill_bytes == 0 and r.fits] or reports
        case = min(usable, key=lambda r: (r.per_pair, r.registers)).case
        return case.block_m, case.block_n, case.num_warps, case.num_stages
    bm, bn, w, s = (int(v) for v in config.split(","))
    return bm, bn, w, s


def specs(dtypes, widths, variants, kinds, arch: int, config: str, jobs: int, segment_cols=SEGMENT_COLS) -> list[Spec]:
    """Every compilation the C API needs for these operand dtypes and block widths; the sweeps with a queue also
    split into segments of each length in ``segment_cols``, with the merges of their results."""
    out = []
    for dtype in dtypes:
        for d in widths:
            for variant in variants:
                # The sweeps with a queue (HAS_OTHER) also split the queue's columns (few rows against many).
                splits = [0, *segment_cols] if VARIANTS[variant][1] else [0]
                if "lean" in kinds:
                    blocks = lean_config(dtype, variant, d, arch, config, jobs)
                    out += [Spec("lean", dtype, variant, None, d, blocks, arch, cols) for cols in splits]
                if "fallback" in kinds:
                    for cols in splits:
                        fb = uniform._fallback_config(d, segmented=cols > 0)
                        blocks = (fb.kwargs["BLOCK_M"], fb.kwargs["BLOCK_N"], fb.num_warps, fb.num_stages)
                        out.append(Spec("fallback", dtype, variant, None, d, blocks, arch, cols))
        if "grad" in kinds:
            # block_m: the rows of a program (the C side's grid), as uniform._finish_grad launches it.
            grad_blocks = (uniform._GRAD_ROWS, uniform._GRAD_COLS, FINISH_WARPS, 1)
            out.append(Spec("grad", dtype, None, None, None, grad_blocks, arch=arch))
    if "combine" in kinds:
        for self_mode in sorted({VARIANTS[v][0] for v in variants}):
            out.append(Spec("combine", None, None, self_mode, None, (0, 0, FINISH_WARPS, 1), arch=arch))
    if "merge" in kinds and segment_cols:
        # block_m x block_n: rows x acc columns of a program (the C side's 2D grid), as uniform._sweep launches it.
        merge_blocks = (uniform._MERGE_ROWS, uniform._MERGE_COLS, uniform.MERGE_WARPS, 1)
        for need_acc in sorted({VARIANTS[v][2] for v in variants if VARIANTS[v][1]}):
            out.append(Spec("merge", None, None, None, None, merge_blocks, arch, need_acc=need_acc))
    return out


@dataclasses.dataclass
class Compiled:
    spec: Spec
    function: str
    args: list[tuple[str, str]]
    num_hidden: int
    shared: int
    cubin: bytes
    constants: dict
    metrics: dict


def ptx_params(ptx: str, function: str) -> list[str]:
    """The PTX types (u64, u32, ...) of the entry's parameters, in order."""
    match = re.search(rf"\.entry\s+{re.escape(function)}\s*\((.*?)\)", ptx, re.S)
    if match is None:
        raise RuntimeError(f"no .entry {function} in the PTX")
    return re.findall(r"\.param\s+\.(\w+)", match.group(1))


def compile_spec(spec: Spec) -> Compiled:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature, attrs = spec.signature()
    constants = spec.constants()
    compiled = triton.compile(
        ASTSource(spec.function, signature, constants, attrs),
        target=GPUTarget("cuda", spec.arch, 32),
        options={"num_warps": spec.num_warps, "num_stages": spec.num_stages},
    )
    meta = compiled.metadata
    # What the C launcher (csrc/cuda/aot/aot.cpp) does not do: scratch memory (it passes NULL), clusters,
    # programmatic dependent launch, cooperative grids, tensor descriptors (TMA set up by the host); and more shared
    # memory than an sm_90 block may opt into.
    unsupported = [
        name
        for name, present in (
            (
                "global or profile scratch memory",
                bool(getattr(meta, "global_scratch_size", 0)) or bool(getattr(meta, "profile_scratch_size", 0)),
            ),
            ("num_ctas > 1", getattr(meta, "num_ctas", 1) != 1),
            ("launch_pdl", getattr(meta, "launch_pdl", False)),
            ("launch_cooperative_grid", getattr(meta, "launch_cooperative_grid", False)),
            ("tensor descriptors", bool(getattr(meta, "tensordesc_meta", None))),
            (f"{meta.shared} B of shared memory > {MAX_SHARED_BYTES}", int(meta.shared) > MAX_SHARED_BYTES),
        )
        if present
    ]
    if unsupported:
        raise RuntimeError(f"{spec.name}: the launcher cannot run it: {', '.join(unsupported)}")
    args = spec.args()
    params = ptx_params(compiled.asm["ptx"], meta.name)
    expected = ["u64" if ty.startswith("*") else PTX_TYPES[ty] for _, ty in args]
    hidden = params[len(args) :]
    if params[: len(args)] != expected or any(p != "u64" for p in hidden):
        raise RuntimeError(f"{spec.name}: PTX parameters {params} do not start with the kernel's {expected}")
    cubin = compiled.asm["cubin"]
    metrics = {}
    if spec.kind in ("lean", "fallback"):
        try:
            metrics = cubin_metrics(cubin, None, 32 * spec.num_warps, spec.block_m, spec.block_n)
        except (OSError, subprocess.CalledProcessError) as e:  # no cuobjdump with this Triton: the build goes on
            print(f"{spec.name}: no machine-code metrics ({e})", file=sys.stderr)
    return Compiled(spec, meta.name, args, len(hidden), int(meta.shared), cubin, constants, metrics)


def _run(*argv: str) -> str:
    return subprocess.run(list(argv), capture_output=True, text=True, check=True).stdout


def cubin_metrics(cubin: bytes | str, function: str | None, threads: int, block_m: int, block_n: int) -> dict:
    """Registers, stack, spill bytes (STL) and local loads (LDL), tensor-core dots (HGMMA on sm_90: wgmma; HMMA:
    mma.sync) and the hot loop (``inspect.hot_loop``) of one function of a cubin (the first where None), with the
    inspection tool's instructions per pair: loop instructions x threads / (block_m x block_n)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = cubin
        if isinstance(cubin, bytes):
            path = os.path.join(tmp, "kernel.cubin")
            Path(path).write_bytes(cubin)
        select = ["-fun", function] if function else []
        usage = _run(inspect._tool("cuobjdump"), "-res-usage", *select, path)
        sass = _run(inspect._tool("cuobjdump"), "-sass", *select, path)
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", usage))
    instructions = inspect.parse_sass(sass)
    spill = loads = 0
    for _, text in instructions:
        opcode = re.sub(r"^@!?U?P[T0-9]+\s+", "", text).split()[0]
        width = re.search(r"\.(64|128)", opcode)
        if opcode.startswith("STL"):
            spill += int(width.group(1)) // 8 if width else 4
        elif opcode.startswith("LDL"):
            loads += 1
    loop, loop_dots = inspect.hot_loop(instructions)
    return {
        "registers": int(fields.get("REG", 0)),
        "stack_bytes": int(fields.get("STACK", 0)),
        "spill_bytes": spill,
        "local_loads": loads,
        "hgmma": sum(1 for _, t in instructions if re.search(r"\bHGMMA", t)),
        "hmma": sum(1 for _, t in instructions if re.search(r"\bHMMA", t)),
        "instructions": len(instructions),
        "loop_instructions": loop,
        "loop_dots": loop_dots,
        "per_pair": loop * threads / (block_m * block_n),
    }


def _c_blob(name: str, path: Path, size: int) -> str:
    """The file at ``path`` as the bytes of ``name`` (the assembler includes it: no multi-megabyte C initializer)."""
    return (
        f'__asm__(".section .rodata\\n.balign 64\\n.hidden {name}\\n.globl {name}\\n{name}:\\n'
        f'.incbin \\"{path.resolve()}\\"\\n.previous");\n'
        f'extern const unsigned char {name}[{size}] __attribute__((visibility("hidden")));\n'
    )


def _c_strings(name: str, values: list[str]) -> str:
    return f"static const char* const {name}[] = {{" + ", ".join(f'"{v}"' for v in values) + "};\n"


def write_sources(out: Path, kernels: list[Compiled], arch: int) -> None:
    banner = f"/* Generated by tools/triton_aot.py with Triton {triton.__version__} for sm_{arch}: do not edit. */\n"
    header = [
        banner,
        '#pragma once\n#include "aot.h"\n\n',
        "/* Rows of every operand buffer are padded to a multiple of this (zeros; norms +inf, biases -inf): the lean\n"
        " * kernel reads whole blocks without bounds checks (uniform._ROW_PAD). */\n",
        f"#define HL_AOT_ROW_PAD {uniform._ROW_PAD}\n",
        "/* The compute capability the cubins run on (major * 10 + minor). */\n",
        f"#define HL_AOT_ARCH {arch}\n",
        "/* How the sweeps split a large queue's columns (uniform._segments, the GPU's values): row blocks of\n"
        " * SEGMENT_ROWS, PROGRAMS_PER_SM programs per SM wanted, segments of at least MIN_COLS columns (a\n"
        " * multiple of ALIGN), at most BYTES of partial accumulators; a merge program: MERGE_ROWS x MERGE_COLS. */\n",
        f"#define HL_AOT_SEGMENT_ROWS {uniform._SEGMENT_ROWS}\n",
        f"#define HL_AOT_SEGMENT_PROGRAMS_PER_SM {uniform._SEGMENT_PROGRAMS_PER_SM}\n",
        f"#define HL_AOT_SEGMENT_MIN_COLS {uniform._SEGMENT_MIN_COLS}\n",
        f"#define HL_AOT_SEGMENT_ALIGN {uniform._SEGMENT_ALIGN}\n",
        f"#define HL_AOT_SEGMENT_BYTES {uniform._SEGMENT_BYTES}\n",
        f"#define HL_AOT_MERGE_ROWS {uniform._MERGE_ROWS}\n",
        f"#define HL_AOT_MERGE_COLS {uniform._MERGE_COLS}\n",
    ]
    (out / "hl_aot_kernels.h").write_text("".join(header))

    for k in kernels:
        (out / f"{k.spec.name}.cubin").write_bytes(k.cubin)
    source = [banner, '#include "hl_aot_kernels.h"\n\n']
    for i, k in enumerate(kernels):
        source.append(_c_blob(f"hl_aot_cubin_{i}", out / f"{k.spec.name}.cubin", len(k.cubin)))
        source.append(_c_strings(f"names_{i}", [a for a, _ in k.args]))
        source.append(_c_strings(f"types_{i}", [t for _, t in k.args]))
    source.append("\nconst hl_aot_kernel hl_aot_kernel_table[] = {\n")
    for i, k in enumerate(kernels):
        s, key = k.spec, k.spec.key()
        source.append(
            f'  {{"{s.name}", "{k.function}", hl_aot_cubin_{i}, {len(k.cubin)}, {s.num_warps}, {k.shared}, '
            f"{len(k.args)}, {k.num_hidden}, names_{i}, types_{i}, {key['dtype']}, {key['self_mode']}, "
            f"{key['has_other']}, {key['need_acc']}, {key['block_d']}, {key['segment_cols']}, {s.block_m}, "
            f"{s.block_n}}},\n"
        )
    source.append(f"}};\nconst int hl_aot_kernel_count = {len(kernels)};\n")
    (out / "hl_aot_kernels.c").write_text("".join(source))


def describe(spec: Spec) -> dict:
    """What --list prints and manifest.json holds per kernel (besides the compiled facts)."""
    return {
        "name": spec.name,
        "kind": spec.kind,
        "function": spec.function.__name__,
        "key": spec.key(),
        "case": {
            k: getattr(spec, k)
            for k in (
                "dtype",
                "variant",
                "block_d",
                "segment_cols",
                "block_m",
                "block_n",
                "num_warps",
                "num_stages",
                "arch",
            )
        },
        "args": spec.args(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="directory for the generated files")
    parser.add_argument("--dtype", nargs="+", default=["bf16", "fp16"], choices=list(HL_DTYPE))
    parser.add_argument("--d", type=int, nargs="+", default=[16, 32, 64, 128, 256], help="block widths (powers of 2)")
    parser.add_argument("--variant", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--kind", nargs="+", default=list(KINDS), choices=list(KINDS))
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument(
        "--segment-cols", type=int, nargs="*", default=list(SEGMENT_COLS),
        help="column segment lengths of the split sweeps (few rows, large queue); none: no split sweeps",
    )  # fmt: skip
    parser.add_argument("--config", default="largest", help="'largest', 'auto' or BLOCK_M,BLOCK_N,warps,stages")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compilations at a time")
    parser.add_argument("--list", action="store_true", help="print the kernels and their arguments; compile nothing")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: the interpreter has no ahead-of-time compilation")
    for d in args.d:
        if d < 16 or d & (d - 1) or d > 256:
            parser.error(
                f"--d {d}: block widths are powers of two from 16 to 256 (the lean kernel's rows in registers)"
            )
    for cols in args.segment_cols:
        if cols < uniform._SEGMENT_MIN_COLS or cols % uniform._SEGMENT_ALIGN or cols & (cols - 1):
            parser.error(
                f"--segment-cols {cols}: segment lengths are powers of two from {uniform._SEGMENT_MIN_COLS} "
                "(uniform._segments)"
            )
    todo = specs(
        args.dtype, args.d, args.variant, args.kind, args.arch, args.config, args.jobs, tuple(args.segment_cols)
    )
    if args.list:
        print(json.dumps([describe(s) for s in todo], indent=1))
        return 0
    if args.out is None:
        parser.error("--out is required (unless --list)")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.jobs > 1:
        # Separate processes: Triton's front end parses kernels with ``ast``, which is not safe across threads.
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            kernels = list(pool.map(compile_spec, todo))
    else:
        kernels = [compile_spec(s) for s in todo]
    for k in kernels:
        m = k.metrics
        detail = f", regs {m['registers']} spill {m['spill_bytes']} B, {m['per_pair']:.1f} instr/pair" if m else ""
        print(f"{k.spec.name}: ({k.spec.block_m},{k.spec.block_n},{k.spec.num_warps},{k.spec.num_stages}){detail}, "
              f"smem {k.shared} B, cubin {len(k.cubin)} B", flush=True)  # fmt: skip
    write_sources(args.out, kernels, args.arch)
    manifest = [
        {
            **describe(k.spec),
            "entry": k.function,
            "constants": k.constants,
            "num_hidden": k.num_hidden,
            "shared": k.shared,
            "cubin_bytes": len(k.cubin),
            "metrics": k.metrics,
        }
        for k in kernels
    ]
    (args.out / "manifest.json").write_text(
        json.dumps({"triton": triton.__version__, "arch": args.arch, "kernels": manifest}, indent=1) + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
