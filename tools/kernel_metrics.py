"""The C API's hand-written CUDA sweep against the ahead-of-time compiled Triton kernel, on their sm_90 machine code.

    python tools/kernel_metrics.py --aot DIR [--out FILE.md]

Compiles csrc/cuda/uniform.cu for sm_90 with nvcc (-lineinfo) and reads each ``sweep_kernel`` instantiation the way
``hyperloss.triton.inspect`` reads the Triton kernels (``triton_aot.cubin_metrics``: registers, spills, local loads,
HGMMA / HMMA, instructions per pair = largest-loop instructions x threads / (BLOCK_M x BLOCK_N), here 256 threads
and 64 x 64 pairs a tile). That static count takes each loop body once; the hand-written tile loop holds inner loops
(the Gram product over D, the E.X product on CUDA cores) that run many times per tile, so the bfloat16 sweep's loops
are listed too (from ``nvdisasm -g``: source line of each backward branch, instructions exclusive of nested loops,
and the opcodes that give the unroll factor), from which csrc/cuda/aot/README.md derives the dynamic count.
DIR: a tools/triton_aot.py output (its manifest.json holds the Triton kernels' metrics).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from triton_aot import cubin_metrics, inspect

ROOT = Path(__file__).resolve().parents[1]
# The hand-written sweep's tile: 256 threads, 64 x 64 pairs (csrc/cuda/uniform.cu: kThreads, kTile).
THREADS, TILE = 256, 64
GRAM = {"0": "simt", "1": "half", "2": "bf16", "3": "tf32"}
TYPES = {"13__nv_bfloat16": "bf16", "6__half": "fp16", "f": "fp32", "d": "fp64"}
MARKERS = ("LDG", "STS", "LDS", "FFMA", "HMMA", "HGMMA", "MUFU", "FMNMX")


def compile_cuda(out_dir: Path, nvcc: str) -> Path:
    """csrc/cuda/uniform.cu as an sm_90 cubin (with line information)."""
    include = out_dir / "include" / "hyperloss"
    include.mkdir(parents=True, exist_ok=True)
    template = (ROOT / "csrc/include/hyperloss/version.h.in").read_text()
    (include / "version.h").write_text(re.sub(r"@[A-Za-z_]+@", "0", template))
    cubin = out_dir / "uniform_sm90.cubin"
    subprocess.run(
        [nvcc, "-std=c++17", "-O3", "-arch=sm_90", "-cubin", "-lineinfo", f"-I{ROOT / 'csrc/include'}",
         f"-I{out_dir / 'include'}", "-o", str(cubin), str(ROOT / "csrc/cuda/uniform.cu")],
        check=True,
    )  # fmt: skip
    return cubin


def sweep_functions(cubin: Path) -> dict[str, str]:
    """(input dtype/gram) -> mangled name of each sweep_kernel instantiation."""
    usage = subprocess.run([inspect._tool("cuobjdump"), "-res-usage", str(cubin)], capture_output=True, text=True)
    out = {}
    for name in re.findall(r"Function (\S*sweep_kernel\S*?):", usage.stdout):
        match = re.search(r"sweep_kernelI(13__nv_bfloat16|6__half|f|d)(?:f|d)LNS1_4GramE(\d)E", name)
        if match:
            out[f"{TYPES[match.group(1)]}/{GRAM[match.group(2)]}"] = name
    return out


def loops(cubin: Path, function: str) -> list[dict]:
    """Every loop (backward branch) of ``function``: its span, source line, instruction count, the count exclusive
    of nested loops, and marker opcodes (unroll factors)."""
    text = subprocess.run(
        [inspect._tool("nvdisasm"), "-g", "-c", str(cubin)], capture_output=True, text=True, check=True
    ).stdout
    start = text.index(f".text.{function}:")
    end = text.find("//----", start)
    labels, pending, instructions, line = {}, [], [], None
    for row in text[start : end if end > 0 else None].splitlines():
        if re.match(r"^\.L_x_\d+:", row):
            pending.append(row.rstrip(":"))
        elif "//##" in row and (m := re.search(r"uniform\.cu\", line (\d+)", row)):
            line = int(m.group(1))
        elif m := re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", row):
            address = int(m.group(1), 16)
            instructions.append((address, m.group(2).strip(), line))
            labels.update(dict.fromkeys(pending, address))
            pending = []
    spans = []
    for address, text_, line_ in instructions:
        op = re.sub(r"^@!?U?P[T0-9]+\s+", "", text_).split()[0]
        target = re.search(r"(\.L_x_\d+)", text_)
        if op.startswith("BRA") and not op.startswith("BRA.DIV") and target and labels[target.group(1)] < address:
            spans.append((labels[target.group(1)], address, line_))
    out = []
    for s, e, line_ in sorted(spans):
        inner = [(s2, e2) for s2, e2, _ in spans if s <= s2 and e2 <= e and (s2, e2) != (s, e)]
        body = [(a, t) for a, t, _ in instructions if s <= a <= e and not t.startswith("NOP")]
        own = [t for a, t in body if not any(s2 <= a <= e2 for s2, e2 in inner)]
        ops = Counter(re.sub(r"^@!?U?P[T0-9]+\s+", "", t).split()[0].split(".")[0] for t in own)
        out.append({
            "start": s, "end": e, "line": line_, "instructions": len(body), "exclusive": len(own),
            "depth": sum(1 for s2, e2, _ in spans if s2 <= s and e <= e2 and (s2, e2) != (s, e)),
            "markers": {k: ops[k] for k in MARKERS if ops[k]},
        })  # fmt: skip
    return out


def markdown(cuda: dict[str, dict], bf16_loops: list[dict], aot: dict) -> str:
    lines = [
        "# The C API's CUDA sweep and the ahead-of-time Triton kernel on sm_90",
        "",
        "`python tools/kernel_metrics.py` (nvcc for csrc/cuda/uniform.cu; Triton "
        f"{aot['triton']} for the lean kernel, tools/triton_aot.py). Per pair = largest-loop instructions x "
        "threads / (BLOCK_M x BLOCK_N) (hyperloss.triton.inspect's definition, each loop body counted once).",
        "",
        "| kernel | config | regs | spill B | LDL | HGMMA | HMMA | loop instr | instr/pair |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, m in cuda.items():
        lines.append(
            f"| CUDA sweep_kernel {key} | (64,64,8 warps) | {m['registers']} | {m['spill_bytes']} | "
            f"{m['local_loads']} | {m['hgmma']} | {m['hmma']} | {m['loop_instructions']} | {m['per_pair']:.1f} |"
        )
    for k in aot["kernels"]:
        if k.get("kind", "lean") != "lean" or not k["metrics"]:  # only the lean sweeps, where measured
            continue
        m, c = k["metrics"], k["case"]
        config = f"({c['block_m']},{c['block_n']},{c['num_warps']},{c['num_stages']})"
        lines.append(
            f"| Triton AOT {k['name']} | {config} | {m['registers']} | {m['spill_bytes']} | {m['local_loads']} | "
            f"{m['hgmma']} | {m['hmma']} | {m['loop_instructions']} | {m['per_pair']:.1f} |"
        )
    lines += [
        "",
        "Loops of the CUDA bf16 sweep (`sweep_kernel<__nv_bfloat16, float, Gram::kBf16>`), outermost first: source "
        "line of the backward branch in csrc/cuda/uniform.cu, instructions in the body, those not in a nested "
        "loop, and marker opcodes of that exclusive part (their count per source iteration gives the unroll).",
        "",
        "| depth | branch line | body instr | exclusive | markers |",
        "|---:|---:|---:|---:|---|",
    ]
    for loop in bf16_loops:
        markers = ", ".join(f"{k} {v}" for k, v in loop["markers"].items())
        lines.append(f"| {loop['depth']} | {loop['line']} | {loop['instructions']} | {loop['exclusive']} | {markers} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--aot", type=Path, required=True, help="a tools/triton_aot.py output directory")
    parser.add_argument("--nvcc", default=os.environ.get("CUDACXX") or shutil.which("nvcc") or "nvcc")
    parser.add_argument("--out", type=Path, help="write the tables as Markdown to this file")
    args = parser.parse_args(argv)
    aot = json.loads((args.aot / "manifest.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        cubin = compile_cuda(Path(tmp), args.nvcc)
        functions = sweep_functions(cubin)
        cuda = {key: cubin_metrics(str(cubin), name, THREADS, TILE, TILE) for key, name in sorted(functions.items())}
        bf16_loops = loops(cubin, functions["bf16/bf16"])
    text = markdown(cuda, bf16_loops, aot)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
