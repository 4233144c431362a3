"""The floor of a case: its counted work at the device's ceilings (matmul, exp and copy rates), and the ceilings.
Uniformity, one symmetric pass over the N(N-1)/2 pairs: the Gram entry costs 2D flop per pair and one exp; the
gradient adds two products of 2D flop per pair. Alignment is memory bound: read x and y, and with the backward
write both gradients. The terms can overlap in a fused kernel, so the floor is the slowest one, not their sum."""

import torch
from torch.utils.benchmark import Timer

from .cases import DTYPES

# An NVIDIA H100 80GB HBM3's figures, per second (copy: bytes read + written): used on a GPU for the exp rate
# (measuring it needs a dedicated kernel; torch.exp is memory bound) and for a ceiling whose measurement failed.
H100_CEILINGS = {"matmul_bf16": 774e12, "matmul_fp16": 774e12, "matmul_fp32_highest": 50.7e12, "copy": 2.97e12}
H100_CEILINGS |= {"matmul_fp32_high": 406e12, "matmul_fp32_medium": 774e12, "exp": 4.0e12}  # exp2 in Triton


def work(op: str, mode: str, n: int, d: int, dtype: str) -> dict[str, float]:
    """The unavoidable work of one call: matrix-product flop, exponentials, compulsory bytes moved."""
    nd_bytes, backward = n * d * DTYPES[dtype].itemsize, mode == "fwdbwd"
    if op == "align":
        return {"flop": 0.0, "exps": 0.0, "bytes": nd_bytes * (4 if backward else 2)}
    pairs = n * (n - 1) / 2
    return {"flop": 2 * d * pairs * (3 if backward else 1), "exps": pairs, "bytes": nd_bytes * (2 if backward else 1)}


def ceilings_needed(op: str, dtype: str, precision: str) -> tuple[str, ...]:
    """The ceilings ``op``'s floor depends on; fp32's matmul rate depends on the matmul precision setting."""
    matmul = f"matmul_{dtype}_{precision}" if dtype == "fp32" else f"matmul_{dtype}"
    return (matmul, "exp", "copy") if op == "uniform" else ("copy",)


def floor_seconds(work: dict, ceilings: dict, dtype: str, precision: str) -> tuple[float, str] | None:
    """The floor of a call and its binding term ("matmul", "exp" or "memory"); None when no term has a ceiling."""
    matmul = ceilings_needed("uniform", dtype, precision)[0]
    terms = {"matmul": (work["flop"], matmul), "exp": (work["exps"], "exp"), "memory": (work["bytes"], "copy")}
    floors = [(amount / ceilings[key], term) for term, (amount, key) in terms.items() if amount and ceilings.get(key)]
    return max(floors, default=None)


def measure_ceilings(device_type: str, keys: tuple[str, ...], small: bool) -> dict:
    """Runs in a child: the device's description and the rates of ``keys`` (square products, a device copy), each
    the median of repeated short runs (``torch.utils.benchmark``) with their spread (half-IQR over the median)."""
    device, info, measured = torch.device(device_type), {"torch_threads": torch.get_num_threads()}, {}
    if device_type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info |= {"name": p.name, "memory_bytes": p.total_memory, "capability": f"{p.major}.{p.minor}"}
        info |= {"multiprocessors": p.multi_processor_count, "cuda": torch.version.cuda}
    size = {"cuda": 8192, "cpu": 2048}[device_type] // (4 if small else 1)
    copy_bytes = {"cuda": 1 << 30, "cpu": 1 << 28}[device_type] >> (4 if small else 0)
    for key in (k for k in keys if k != "exp"):  # the exp rate needs a dedicated kernel: not measured
        if key == "copy":
            src = torch.empty(copy_bytes // 4, device=device)
            stmt, amount, tensors = "dst.copy_(src)", 2 * copy_bytes, {"src": src, "dst": torch.empty_like(src)}
        else:  # matmul_<dtype>[_<precision>]
            _, dtype, *precision = key.split("_")
            torch.set_float32_matmul_precision(precision[0] if precision else "highest")
            a, b = (torch.randn(size, size, device=device).to(DTYPES[dtype]) for _ in range(2))
            stmt, amount, tensors = "a @ b", 2 * size**3, {"a": a, "b": b}
        timer = Timer(stmt, globals=tensors, num_threads=torch.get_num_threads())
        m = timer.blocked_autorange(min_run_time=0.1 if small else 1.0)
        measured[key] = {"value": amount / m.median, "spread": round(m.iqr / 2 / m.median, 4), "repeats": len(m.times)}
    return {"status": "ok", "info": info, "measured": measured, "sizes": {"matmul": size, "copy_bytes": copy_bytes}}


def ceiling_table(device_type: str, device_name: str, keys: list[str], measured: dict[str, dict]) -> dict[str, dict]:
    """Each ceiling with its source: measured here, else on a GPU the H100 figure (and the output says so)."""
    source = "not measured: NVIDIA H100 80GB HBM3 figure (hyperloss.bench.roofline.H100_CEILINGS)"
    source += "" if "H100" in device_name else ", not this GPU"
    gpu_defaults = {k: {"value": H100_CEILINGS[k], "source": source} for k in keys if k in H100_CEILINGS}
    return (gpu_defaults if device_type == "cuda" else {}) | {k: measured[k] | {"source": "measured"} for k in measured}
