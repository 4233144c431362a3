"""Compiles hyperloss's Triton uniformity kernels ahead of time into C sources for libhyperloss (issue #13, item 1b).

    python tools/triton_aot.py --out DIR [--dtype bf16 fp16] [--variant grad loss ...] [--d 128] [--config auto]

For each (dtype, variant, row width D) it compiles ``_uniform_lean_kernel`` for sm_90 (``--arch``) with the
specializations a C API call can promise: the compile-time arguments ``uniform.lean_launch_constants`` gives (the
same ones the Triton backend launches with), pointers 16-byte aligned (the workspace is carved in 256-byte pieces),
D divisible by 16 where EVEN_D (D is then a power of two >= 16), and no assumption on the row counts n_rows and
n_other (any N). The argument list, names and types, comes from the kernel itself (``kernel.arg_names`` and the
signature ``hyperloss.triton.inspect`` derives from them), and the trailing pointers Triton adds (global and profile
scratch) are counted from the PTX entry. ``--config auto`` takes the block configuration the inspection tool ranks
best among the autotuner's candidates: no spills, fits shared memory, fewest SASS instructions per pair.

Writes into DIR:
- ``<name>.cubin`` per compilation (for cuobjdump / nvdisasm),
- ``hl_aot_kernels.c``: the cubins as byte arrays, the ``hl_aot_kernel`` table (csrc/cuda/aot/aot.h) and one typed
  launcher per Triton kernel function, ``hl_aot_<function>(kernel, stream, grid_x, <its arguments>)``,
- ``hl_aot_kernels.h``: their declarations,
- ``manifest.json``: per compilation its key, configuration, arguments and machine-code metrics.

Why not ``python -m triton.tools.compile``: its ``--signature`` string takes only int and float constexprs (this
kernel has a string, INPUT_PRECISION, and booleans), it executes the kernel's file outside its package (relative
imports fail), and its launcher calls the driver API directly (libcuda at link time) and exits the process on an
error. The compilation itself is the same call it makes (``triton.compile`` of an ``ASTSource``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

# The build runs this from the source tree, before (or without) the Python package being installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # as bench/results/kernels-sm90.md was generated

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from hyperloss.triton import inspect

# hl_dtype values (csrc/include/hyperloss/hyperloss.h; aot.cpp checks them) of the operand dtypes.
HL_DTYPE = {"bf16": 3, "fp16": 2}
# Triton argument types -> (C type, PTX parameter type).
C_TYPES = {"i32": ("int32_t", "u32"), "i64": ("int64_t", "u64"), "fp32": ("float", "f32"), "fp64": ("double", "f64")}
CPP_OPEN = '#ifdef __cplusplus\nextern "C" {\n#endif\n'
CPP_CLOSE = "\n#ifdef __cplusplus\n}\n#endif\n"
# The arguments no C API call can promise to be divisible by 16 (any number of rows).
ROW_COUNTS = ("n_rows", "n_other")


@dataclasses.dataclass
class Compiled:
    name: str
    case: inspect.Case
    function: str
    args: list[tuple[str, str]]  # (name, Triton type) of the non-constexpr arguments, in order
    num_hidden: int
    shared: int
    cubin: bytes
    constants: dict
    metrics: dict


def best_config(dtype: str, variant: str, d: int, arch: int, jobs: int) -> inspect.Case:
    """The lean configuration the inspection tool ranks best for this key."""
    candidates = [c for c in inspect.cases((variant,), (dtype,), (d,), arch) if c.kernel == "lean"]
    reports = inspect.inspect_all(candidates, jobs)
    usable = [r for r in reports if r.spill_bytes == 0 and r.fits] or reports
    return min(usable, key=lambda r: (r.per_pair, r.registers)).case


def ptx_params(ptx: str, function: str) -> list[str]:
    """The PTX types (u64, u32, ...) of the entry's parameters, in order."""
    match = re.search(rf"\.entry\s+{re.escape(function)}\s*\((.*?)\)", ptx, re.S)
    if match is None:
        raise RuntimeError(f"no .entry {function} in the PTX")
    return re.findall(r"\.param\s+\.(\w+)", match.group(1))


def compile_case(case: inspect.Case, name: str) -> Compiled:
    kernel, signature, constants, attrs = inspect._signature(case)
    index = {arg: i for i, arg in enumerate(kernel.arg_names)}
    for arg in ROW_COUNTS:
        attrs.pop((index[arg],), None)
    if case.d % 16:
        attrs.pop((index["D"],), None)
    compiled = triton.compile(
        ASTSource(kernel, signature, constants, attrs),
        target=GPUTarget("cuda", case.arch, 32),
        options={"num_warps": case.num_warps, "num_stages": case.num_stages},
    )
    meta = compiled.metadata
    if getattr(meta, "global_scratch_size", 0) or getattr(meta, "profile_scratch_size", 0):
        raise RuntimeError(f"{name}: needs global or profile scratch memory, which the launcher does not provide")
    args = [(arg, signature[arg]) for arg in kernel.arg_names if signature[arg] != "constexpr"]
    params = ptx_params(compiled.asm["ptx"], meta.name)
    expected = ["u64" if ty.startswith("*") else C_TYPES[ty][1] for _, ty in args]
    hidden = params[len(args) :]
    if params[: len(args)] != expected or any(p != "u64" for p in hidden):
        raise RuntimeError(f"{name}: PTX parameters {params} do not start with the kernel's {expected}")
    cubin = compiled.asm["cubin"]
    metrics = cubin_metrics(cubin, None, 32 * case.num_warps, case.block_m, case.block_n)
    return Compiled(name, case, meta.name, args, len(hidden), int(meta.shared), cubin, constants, metrics)


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


def _c_array(name: str, data: bytes) -> str:
    rows = [", ".join(f"0x{b:02x}" for b in data[i : i + 24]) for i in range(0, len(data), 24)]
    return f"static const unsigned char {name}[{len(data)}] = {{\n  " + ",\n  ".join(rows) + "\n};\n"


def _launcher(function: str, args: list[tuple[str, str]]) -> tuple[str, str]:
    """(declaration, definition) of the typed launcher of one Triton kernel function."""
    params = ", ".join(f"void* {a}" if ty.startswith("*") else f"{C_TYPES[ty][0]} {a}" for a, ty in args)
    head = f"int hl_aot_{function.lstrip('_')}(const hl_aot_kernel* k, void* stream, unsigned grid_x, {params})"
    body = (
        f"{head} {{\n  void* args[{len(args)}] = {{{', '.join('&' + a for a, _ in args)}}};\n"
        "  return hl_aot_launch(k, stream, grid_x, args);\n}\n"
    )
    return head + ";\n", body


def write_sources(out: Path, kernels: list[Compiled]) -> None:
    banner = (
        f"/* Generated by tools/triton_aot.py with Triton {triton.__version__} for sm_{kernels[0].case.arch}: "
        "do not edit. */\n"
    )
    launchers: dict[str, tuple[str, str]] = {}
    for k in kernels:
        launcher = _launcher(k.function, k.args)
        if launchers.setdefault(k.function, launcher) != launcher:
            raise RuntimeError(f"{k.function}: two compilations with different arguments")
    header = [banner, '#pragma once\n#include <stdint.h>\n\n#include "aot.h"\n\n', CPP_OPEN]
    for function, (declaration, _) in launchers.items():
        args = next(k.args for k in kernels if k.function == function)
        header.append(f"/* {function}: " + ", ".join(f"{a} ({ty})" for a, ty in args) + " */\n" + declaration)
    header.append(CPP_CLOSE)
    (out / "hl_aot_kernels.h").write_text("".join(header))

    source = [banner, '#include "hl_aot_kernels.h"\n\n']
    source += [_c_array(f"cubin_{i}", k.cubin) for i, k in enumerate(kernels)]
    source.append("\nconst hl_aot_kernel hl_aot_kernel_table[] = {\n")
    for i, k in enumerate(kernels):
        c = k.case
        self_mode, has_other, need_acc = inspect.VARIANTS[c.variant]
        block_d, even_d = k.constants["BLOCK_D"], int(k.constants["EVEN_D"])
        source.append(
            f'  {{"{k.name}", "{k.function}", cubin_{i}, sizeof cubin_{i}, {c.num_warps}, {k.shared}, {len(k.args)}, '
            f'{k.num_hidden}, "{k.function}", {HL_DTYPE[c.dtype]}, {self_mode}, {int(has_other)}, {int(need_acc)}, '
            f"{block_d}, {even_d}, {c.block_m}, {c.block_n}}},\n"
        )
    source.append(f"}};\nconst int hl_aot_kernel_count = {len(kernels)};\n\n")
    source += [definition for _, definition in launchers.values()]
    (out / "hl_aot_kernels.c").write_text("".join(source))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for the generated files")
    parser.add_argument("--dtype", nargs="+", default=["bf16", "fp16"], choices=list(HL_DTYPE))
    parser.add_argument("--variant", nargs="+", default=list(inspect.VARIANTS), choices=list(inspect.VARIANTS))
    parser.add_argument("--d", type=int, nargs="+", default=[128], help="row widths (one compilation per BLOCK_D)")
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--config", default="auto", help="'auto' or BLOCK_M,BLOCK_N,warps,stages for every kernel")
    parser.add_argument("--jobs", type=int, default=1, help="compilations at a time while ranking configurations")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: the interpreter has no ahead-of-time compilation")
    args.out.mkdir(parents=True, exist_ok=True)
    kernels = []
    for dtype in args.dtype:
        for variant in args.variant:
            for d in args.d:
                if args.config == "auto":
                    case = best_config(dtype, variant, d, args.arch, args.jobs)
                else:
                    blocks = [int(v) for v in args.config.split(",")]
                    case = inspect.Case("lean", variant, dtype, d, *blocks, arch=args.arch)
                name = f"uniform_lean_{dtype}_{variant.replace('+', '_')}_d{d}"
                compiled = compile_case(case, name)
                (args.out / f"{name}.cubin").write_bytes(compiled.cubin)
                kernels.append(compiled)
                m = compiled.metrics
                print(
                    f"{name}: {case.config} regs {m['registers']} spill {m['spill_bytes']} B, HGMMA {m['hgmma']}, "
                    f"{m['per_pair']:.1f} instr/pair, smem {compiled.shared} B",
                    flush=True,
                )
    write_sources(args.out, kernels)
    manifest = [
        {
            "name": k.name,
            "function": k.function,
            "case": dataclasses.asdict(k.case),
            "constants": k.constants,
            "args": k.args,
            "num_hidden": k.num_hidden,
            "shared": k.shared,
            "cubin_bytes": len(k.cubin),
            "metrics": k.metrics,
        }
        for k in kernels
    ]
    (args.out / "manifest.json").write_text(
        json.dumps({"triton": triton.__version__, "kernels": manifest}, indent=1) + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
