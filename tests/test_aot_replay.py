"""The C API's ahead-of-time plan replayed on the CPU: every launch of ``hl_uniform_lse_cuda``'s AOT path, in order,
with the Triton interpreter instead of the cubins (issue #13). A GPU-free check of the C glue around the kernels:
which kernel each step runs, its grid, every argument it binds (pointers as offsets into one workspace), the
workspace carve and the size query, the split of few rows against many and the merge of its segments, which
buffers the combine and the gradient finish read. The plan comes from the AOT build itself
(``test_aot --plan ...``: the code that plans a real call), the kernels' constants from its ``manifest.json``.

Not covered here (test_cuda on a GPU covers them): the CUDA preparation kernels (this test computes x', norms,
biases and constants in Python, uncentered, as they would be for rows near the origin), the cubins' machine code,
bfloat16 (the interpreter has no bfloat16: float16 builds only), concurrency between programs.

Needs an AOT build (float16 in ``HYPERLOSS_AOT_DTYPES``, the default) named by ``HYPERLOSS_AOT_BUILD`` and
``TRITON_INTERPRET=1``; skipped otherwise, and a case whose block width the build lacks is skipped. ``make ctest``
(so CI) runs it on its float16 D = 64 build, ``make aot-check`` on every width::

    TRITON_INTERPRET=1 HYPERLOSS_AOT_BUILD=build pytest tests/test_aot_replay.py
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import torch

BUILD = os.environ.get("HYPERLOSS_AOT_BUILD")
if os.environ.get("TRITON_INTERPRET") != "1" or not BUILD:
    pytest.skip("needs TRITON_INTERPRET=1 and HYPERLOSS_AOT_BUILD (an AOT build directory)", allow_module_level=True)
pytest.importorskip("triton", reason="triton is not installed")

from hyperloss.triton import uniform  # noqa: E402

HL_FLOAT16, HL_PRECISION_IEEE = 2, 1  # csrc/include/hyperloss/hyperloss.h
POINTER_DTYPES = {
    "*fp16": torch.float16,
    "*fp32": torch.float32,
    "*fp64": torch.float64,
    "*i32": torch.int32,
}


@pytest.fixture(scope="module")
def build() -> tuple[Path, dict]:
    root = Path(BUILD)
    manifest = root / "triton_aot" / "manifest.json"
    if not (root / "test_aot").exists() or not manifest.exists():
        pytest.skip(f"{root} has no test_aot or triton_aot/manifest.json")
    kernels = {k["name"]: k for k in json.loads(manifest.read_text())["kernels"]}
    return root, kernels


def test_machine_code_of_the_build(build):
    """Every row sweep of the build (manifest.json: the generator reads the SASS of the lean and fallback kernels): no
    register spills and no local loads; every lean sweep runs its dots on wgmma (HGMMA) in the hot loop."""
    _, kernels = build
    sweeps = {name: k for name, k in kernels.items() if k["kind"] in ("lean", "fallback")}
    if not all(k["metrics"] for k in sweeps.values()):
        pytest.skip("the build's Triton ships no cuobjdump: no machine-code metrics in manifest.json")
    for name, kernel in sweeps.items():
        m = kernel["metrics"]
        assert m["spill_bytes"] == 0 and m["local_loads"] == 0, (name, m)
        if kernel["kind"] == "lean":
            assert m["hgmma"] > 0 and m["loop_dots"] > 0, (name, m)


def _plan(root: Path, rows_a: int, rows_b: int, cols: int, intra: bool, grad_a: bool, grad_b: bool) -> dict:
    argv = [HL_FLOAT16, HL_PRECISION_IEEE, rows_a, rows_b, cols, int(intra), int(grad_a), int(grad_b)]
    out = subprocess.run(
        [str(root / "test_aot"), "--plan", *map(str, argv)], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    return json.loads(out)


def _replay(build, x: torch.Tensor, q: torch.Tensor | None, t: float, intra: bool, grad_a: bool, grad_b: bool):
    """lse, grad_a, grad_b (float64) as the plan computes them, and the plan."""
    root, kernels = build
    rows_a, cols = x.shape
    rows_b = 0 if q is None else q.shape[0]
    width = max(16, 1 << (cols - 1).bit_length())  # BLOCK_D
    built = {k["case"]["block_d"] for k in kernels.values() if k["case"].get("block_d")}
    if width not in built:  # `make ctest` builds one width (CI's time); `make aot-check` every one
        pytest.skip(f"this build has no kernels of block width {width} (HYPERLOSS_AOT_D: {sorted(built)})")
    plan = _plan(root, rows_a, rows_b, cols, intra, grad_a, grad_b)
    assert plan["plan"], "no AOT plan for a float16 call (is float16 in HYPERLOSS_AOT_DTYPES?)"
    assert plan["query"] >= plan["bytes"], plan
    # 0xFF everywhere: a read of what no step wrote gives NaN (float) or -1 (flags) and shows in the results.
    workspace = torch.full((plan["bytes"],), 0xFF, dtype=torch.uint8)
    width = plan["width"]

    def view(offset: int, dtype: torch.dtype, count: int | None = None) -> torch.Tensor:
        size = torch.tensor([], dtype=dtype).element_size()
        count = (workspace.numel() - offset) // size if count is None else count
        return workspace[offset : offset + count * size].view(dtype)

    def put(offset: int, value: torch.Tensor) -> None:
        view(offset, value.dtype, value.numel()).copy_(value.reshape(-1))

    def operand(rows: torch.Tensor, side: str) -> None:  # operand_rows_kernel, uncentered (E = 0)
        n = rows.shape[0]
        padded = 0 if n == 0 else -(-n // uniform._ROW_PAD) * uniform._ROW_PAD
        x16 = torch.zeros(padded, width, dtype=torch.float16)
        x16[:n, :cols] = rows.to(torch.float16)
        norms = torch.full((padded,), math.inf, dtype=torch.float64)
        norms[:n] = (x16[:n].double() ** 2).sum(1)
        put(plan["ws"][f"x_{side}"], x16)
        put(plan["ws"][f"norms_{side}"], norms)
        put(plan["ws"][f"bias_{side}"], (-0.5 * norms).float())

    operand(x, "a")
    if rows_b:
        operand(q, "b")
    pairs = (rows_a * (rows_a - 1) / 2 if intra else 0) + rows_a * rows_b
    consts = [t, t * 1.4426950408889634, math.log(2.0), pairs]  # constants_kernel
    put(plan["ws"]["consts"], torch.tensor(consts, dtype=torch.float64))
    put(plan["ws"]["info"], torch.tensor([0.0, 1.0], dtype=torch.float64))
    grads = {}
    for step in plan["steps"]:
        meta = kernels[step["name"]]
        kwargs = dict(meta["constants"])
        for name, (ty, value) in step["args"].items():
            kwargs[name] = view(value, POINTER_DTYPES[ty]) if ty.startswith("*") else value
        getattr(uniform, meta["function"])[tuple(step["grid"])](**kwargs)
        if meta["function"] == "_grad_kernel":  # strip_columns_kernel
            side = "b" if step["side_b"] else "a"
            rows = rows_b if step["side_b"] else rows_a
            acc = view(plan["ws"][f"acc_{side}"], torch.float32, rows * width).reshape(rows, width)
            grads[side] = acc[:, :cols].double().clone()
    lse = float(view(plan["ws"]["lse"], torch.float64, 1)[0])  # results_kernel
    return lse, grads.get("a"), grads.get("b"), plan


def _reference(x, q, t, intra):
    """lse over the pairs and its gradients in float64, by direct differences, on the float16-rounded rows."""
    x = x.to(torch.float16).double().requires_grad_()
    q = None if q is None else q.to(torch.float16).double().requires_grad_()
    scores = []
    if intra:
        i, j = torch.triu_indices(x.shape[0], x.shape[0], 1)
        scores.append(-t * ((x[i] - x[j]) ** 2).sum(1))
    if q is not None:
        scores.append(-t * ((x[:, None, :] - q[None, :, :]) ** 2).sum(-1).reshape(-1))
    lse = torch.logsumexp(torch.cat(scores), 0)
    lse.backward()
    return float(lse.detach()), x.grad, None if q is None else q.grad


def _rows(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)


def _check(build, x, q, t, intra, grad_a, grad_b, split_a=1, split_b=1):
    lse, ga, gb, plan = _replay(build, x, q, t, intra, grad_a, grad_b)
    assert plan["split_a"][0] == split_a and plan["split_b"][0] == split_b, plan
    want, wa, wb = _reference(x, q, t, intra)
    assert abs(lse - want) <= 1e-6 * (1 + abs(want)), (lse, want)
    # The E.X product takes p as a float16 operand: the Triton backend's float16 gradient tolerance.
    for got, ref, wanted in ((ga, wa, grad_a), (gb, wb, grad_b)):
        if wanted:
            assert float((got - ref).abs().max()) <= 1e-2 * float(ref.abs().max()), float((got - ref).abs().max())


@pytest.mark.parametrize("intra", [True, False])
@pytest.mark.parametrize("grads", [(True, True), (False, False), (True, False), (False, True)])
def test_rows_against_a_long_queue(build, intra, grads):
    """100 rows against 3000: x's sweep in 3 segments of 1024 columns (the last short), merged."""
    _check(build, _rows(100, 64, 1), _rows(3000, 64, 2), 2.0, intra, *grads, split_a=3)


def test_short_queue_gradient(build):
    """The queue's 20 rows against x's 3000 for its gradient: B's sweep in 3 segments."""
    _check(build, _rows(3000, 48, 3), _rows(20, 48, 4), 2.0, True, True, True, split_b=3)


def test_flagged_segments(build):
    """Queue rows far from x in the last segments: their sums underflow the fixed shift, the fallback recomputes
    those segments' rows (and two far rows of x everywhere); the merge then adds slots of different references."""
    near = _rows(3000, 40, 13)
    far = _rows(2200, 40, 14) * 0.1 + torch.linspace(2.0, 4.0, 2200, dtype=torch.float64)[:, None]
    x = torch.cat([_rows(60, 40, 15), far[:2] + 0.3])
    _check(build, x, torch.cat([near, far]), 2.0, True, True, True, split_a=6)


@pytest.mark.parametrize("cols", [1, 128, 200])
def test_widths(build, cols):
    """Block widths 16 (a merge grid of one column block), 128 (the split fallback's 32-column tiles), 256."""
    _check(build, _rows(40, cols, 16), _rows(2100, cols, 17), 2.0, True, True, False, split_a=3)


def test_unsplit(build):
    """No queue, and a queue that needs no split: the plans of before the split, same glue."""
    _check(build, _rows(130, 33, 5), None, 2.0, True, True, False)
    _check(build, _rows(97, 70, 6), _rows(45, 70, 7), 2.0, True, True, True)
