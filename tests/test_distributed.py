"""hyperloss.distributed on 2 and 3 Gloo processes against the single-process losses on the concatenated batch,
and its errors: arguments that differ across ranks, second derivatives, a missing process group, a stalled rank.

Every worker destroys its process group in ``finally`` (a process that exits holding a Gloo group, above all one
with a timed-out collective, can abort in torch's teardown). The error tests write each rank's outcomes to a file
and assert in the parent. ``tests/run_distributed_repeatedly.py`` runs this module many times in a row.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import hyperloss
from hyperloss import distributed as hdist
from tests.helpers import TOLERANCES

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs Gloo")

# (value, gradient relative to its max): the tests' one tolerance model (tests/helpers.py).
TOL = {torch.float64: TOLERANCES["float64"][:2], torch.float32: TOLERANCES["float32"][:2]}


def _init(rank: int, world: int, init_file: str, timeout_s: float = 60) -> None:
    torch.set_num_threads(1)  # several ranks share this machine's cores
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s)
    )


def _write_json(path: Path, data: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)  # the parent never reads a half-written file


def _rows(sizes: list[int], rank: int) -> slice:
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def _close(got: torch.Tensor, want: torch.Tensor, rel: float, what: str) -> None:
    scale = max(float(want.abs().max()), 1e-3) if want.numel() else 1.0
    err = float((got.double() - want.double()).abs().max()) if want.numel() else 0.0
    assert err <= rel * scale, f"{what}: {err:.3g} > {rel:.3g} * {scale:.3g}"


def _check_uniform(rank, sizes, dtype, queue_rows, intra_batch, backend):
    d = 13
    g = torch.Generator().manual_seed(sum(sizes) * 7 + queue_rows)
    x_global = torch.nn.functional.normalize(torch.randn(sum(sizes), d, generator=g, dtype=torch.float64), dim=1)
    queue = torch.randn(queue_rows, d, generator=g, dtype=torch.float64) * 0.5 if queue_rows else None
    x_global = x_global.to(dtype)
    queue = None if queue is None else queue.to(dtype).requires_grad_()
    x_local = x_global[_rows(sizes, rank)].clone().requires_grad_()
    t = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)  # a trainable temperature
    got = hdist.uniform_loss(x_local, t, queue=queue, intra_batch=intra_batch, backend=backend)
    inputs = [x_local] + ([queue] if queue is not None else [])
    *got_grads, got_dt = torch.autograd.grad(got, [*inputs, t])

    x_ref = x_global.clone().requires_grad_()
    q_ref = None if queue is None else queue.detach().clone().requires_grad_()
    t_ref = t.detach().clone().requires_grad_()
    want = hyperloss.uniform_loss(x_ref, t_ref, queue=q_ref, intra_batch=intra_batch, backend=backend)
    *want_grads, want_dt = torch.autograd.grad(want, [x_ref] + ([q_ref] if q_ref is not None else []) + [t_ref])
    value_tol, grad_tol = TOL[dtype]
    case = f"uniform rank={rank} sizes={sizes} {dtype} queue={queue_rows} intra={intra_batch}"
    assert abs(got.item() - want.item()) <= value_tol * (1 + abs(want.item())), f"{case}: {got.item()} {want.item()}"
    _close(got_grads[0], want_grads[0][_rows(sizes, rank)], grad_tol, case + " d/dx")
    if queue is not None:
        _close(got_grads[1], want_grads[1], grad_tol, case + " d/dqueue")
    _close(got_dt, want_dt, grad_tol, case + " d/dt")
    with torch.no_grad():  # evaluation: the same value, no gradient work or exchange
        plain = hdist.uniform_loss(x_local, 2.0, queue=queue, intra_batch=intra_batch, backend=backend)
    assert abs(plain.item() - want.item()) <= value_tol * (1 + abs(want.item())), f"{case} under no_grad"


def _weights(sizes: list[int], seed: int, zero_rank: int | None) -> torch.Tensor:
    """Weights of the global batch over a few orders of magnitude, every fifth one 0 (from the fourth), and every
    weight of ``zero_rank``'s rows 0."""
    g = torch.Generator().manual_seed(seed)
    w = torch.exp(-4 * torch.rand(sum(sizes), generator=g, dtype=torch.float64))
    w[3::5] = 0.0
    if zero_rank is not None:
        w[_rows(sizes, zero_rank)] = 0.0
    return w


def _check_weighted(
    rank, sizes, dtype, queue_rows, intra_batch, backend, zero_rank=None, weights_given=True, weights=None, qw=True
):
    """The weighted loss (this rank's weights, the queue's weights alike on every rank) against the single-process
    weighted loss on the concatenated batch: value and gradients for x, the queue, t and both weights (``weights``:
    the global batch's, else drawn by ``_weights``; ``qw``: whether the queue has weights)."""
    d = 9
    if zero_rank is not None and sum(sizes) - sizes[zero_rank] < (1 if queue_rows else 2):
        zero_rank = None  # the global batch would have no pair of positive weight
    g = torch.Generator().manual_seed(sum(sizes) * 5 + queue_rows)
    x_global = torch.nn.functional.normalize(torch.randn(sum(sizes), d, generator=g, dtype=torch.float64), dim=1)
    queue = torch.randn(queue_rows, d, generator=g, dtype=torch.float64) * 0.5 if queue_rows else None
    inputs = {
        "x": x_global.to(dtype),
        "queue": None if queue is None else queue.to(dtype),
        "weights": weights
        if weights is not None
        else _weights(sizes, sum(sizes), zero_rank)
        if weights_given
        else None,
        "queue_weights": torch.rand(queue_rows, generator=g, dtype=torch.float64) + 0.1 if queue_rows and qw else None,
        "t": torch.tensor(2.0, dtype=torch.float64),
    }
    local_rows = {"x", "weights"}  # the others are the same on every rank

    def loss(fn, mine):
        leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items() if v is not None}
        if mine:
            leaves.update(
                {k: leaves[k][_rows(sizes, rank)].detach().requires_grad_() for k in local_rows & leaves.keys()}
            )
        value = fn(
            leaves["x"],
            leaves["t"],
            queue=leaves.get("queue"),
            intra_batch=intra_batch,
            weights=leaves.get("weights"),
            queue_weights=leaves.get("queue_weights"),
            backend=backend,
        )
        grads = dict(zip(leaves, torch.autograd.grad(value, list(leaves.values())), strict=True))
        return value, {k: v[_rows(sizes, rank)] if k in local_rows and not mine else v for k, v in grads.items()}

    got, got_grads = loss(hdist.uniform_loss, True)
    want, want_grads = loss(hyperloss.uniform_loss, False)
    value_tol, grad_tol = TOL[dtype]
    case = f"weighted rank={rank} sizes={sizes} {dtype} queue={queue_rows} intra={intra_batch} zero={zero_rank}"
    assert abs(got.item() - want.item()) <= value_tol * (1 + abs(want.item())), f"{case}: {got.item()} {want.item()}"
    for name, want_grad in want_grads.items():
        _close(got_grads[name], want_grad, grad_tol, f"{case} d/d{name}")


def _check_align(rank, sizes, dtype, backend):
    g = torch.Generator().manual_seed(sum(sizes))
    x_global = torch.randn(sum(sizes), 6, generator=g, dtype=dtype)
    y_global = torch.randn(sum(sizes), 6, generator=g, dtype=dtype)
    x_local = x_global[_rows(sizes, rank)].clone().requires_grad_()
    y_local = y_global[_rows(sizes, rank)].clone().requires_grad_()
    got = hdist.align_loss(x_local, y_local, 1.5, backend=backend)
    gx, gy = torch.autograd.grad(got, (x_local, y_local))
    x_ref, y_ref = x_global.clone().requires_grad_(), y_global.clone().requires_grad_()
    want = hyperloss.align_loss(x_ref, y_ref, 1.5, backend=backend)
    wx, wy = torch.autograd.grad(want, (x_ref, y_ref))
    value_tol, grad_tol = TOL[dtype]
    assert abs(got.item() - want.item()) <= value_tol * (1 + abs(want.item()))
    _close(gx, wx[_rows(sizes, rank)], grad_tol, f"align d/dx sizes={sizes}")
    _close(gy, wy[_rows(sizes, rank)], grad_tol, f"align d/dy sizes={sizes}")


def _check_ddp(rank, world, sizes):
    """Under DDP (which averages parameter gradients over ranks) the parameter gradient is the single-process
    one divided by the world size; scaling the loss by the world size gives it exactly."""
    torch.manual_seed(0)
    encoder = torch.nn.Linear(8, 5).double()
    reference_encoder = torch.nn.Linear(8, 5).double()
    reference_encoder.load_state_dict(encoder.state_dict())
    ddp = torch.nn.parallel.DistributedDataParallel(encoder)
    g = torch.Generator().manual_seed(1)
    views = torch.randn(2, sum(sizes), 8, generator=g, dtype=torch.float64)

    def loss_of(model, a, b, distributed):
        za = torch.nn.functional.normalize(model(a), dim=1)
        zb = torch.nn.functional.normalize(model(b), dim=1)
        align = hdist.align_loss if distributed else hyperloss.align_loss
        uniform = hdist.uniform_loss if distributed else hyperloss.uniform_loss
        return align(za, zb) + (uniform(za) + uniform(zb)) / 2

    local = [v[_rows(sizes, rank)] for v in views]
    for scale in (1.0, float(world)):
        ddp.zero_grad()
        (scale * loss_of(ddp, *local, True)).backward()
        reference_encoder.zero_grad()
        loss_of(reference_encoder, *views, False).backward()
        for p, q in zip(ddp.module.parameters(), reference_encoder.parameters(), strict=True):
            _close(p.grad * world / scale, q.grad, 1e-9, f"DDP parameter gradient, loss x {scale}")


def _worker(rank: int, world: int, init_file: str, size_sets: list[list[int]], backends: list[str]) -> None:
    _init(rank, world, init_file)
    try:
        for backend in backends:
            for sizes in size_sets:
                for dtype in (torch.float64, torch.float32):
                    _check_uniform(rank, sizes, dtype, 0, True, backend)
                    _check_uniform(rank, sizes, dtype, 11, True, backend)
                    _check_uniform(rank, sizes, dtype, 11, False, backend)
                    _check_align(rank, sizes, dtype, backend)
                _check_weighted(rank, sizes, torch.float64, 0, True, backend, zero_rank=0)
                _check_weighted(rank, sizes, torch.float32, 11, True, backend, zero_rank=world - 1)
                _check_weighted(rank, sizes, torch.float64, 11, False, backend, zero_rank=1, qw=False)
                _check_weighted(rank, sizes, torch.float64, 11, True, backend, weights_given=False)
            if world == 2:  # rank 1's pairs (rows 1-5 among themselves) weigh 0: one positive row, no positive partner
                _check_weighted(
                    rank, [3, 3], torch.float64, 0, True, backend, weights=torch.tensor([1.0, 0, 0, 1, 0, 0])
                )
        _check_ddp(rank, world, size_sets[0])
    finally:
        dist.destroy_process_group()


def _backends() -> list[str]:
    return [b.name for b in hyperloss.backends() if b.available and b.name in ("cpu", "reference")]


@pytest.mark.parametrize(
    ("world", "size_sets"),
    [
        (2, [[7, 12], [0, 9], [1, 1], [40, 3]]),
        (3, [[5, 11, 1], [4, 4, 4], [2, 0, 30]]),
    ],
)
def test_matches_single_process(tmp_path, world, size_sets):
    mp.spawn(_worker, args=(world, str(tmp_path / "init"), size_sets, _backends()), nprocs=world, join=True)


def _stalling_worker(rank: int, world: int, init_file: str, result_file: str) -> None:
    # A generous timeout to start (processes may start seconds apart on a loaded machine), then a group with a
    # short one, made by both ranks at about the same time, for the collective that rank 1 never joins.
    _init(rank, world, init_file)
    result = Path(result_file)
    try:
        dist.barrier()
        group = dist.new_group(timeout=timedelta(seconds=2))
        if rank == 1:  # never joins the collective; leaves only once rank 0 has given up (or after 60 s)
            deadline = time.monotonic() + 60
            while not result.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            return
        start = time.monotonic()
        try:
            hdist.uniform_loss(torch.randn(4, 3), group=group)
            outcome = {"kind": "returned"}
        except Exception as error:  # the group's timeout surfaces here
            outcome = {"kind": type(error).__name__, "message": str(error)[:500]}
        outcome["seconds"] = time.monotonic() - start
        _write_json(result, outcome)
    finally:
        dist.destroy_process_group()  # every group, also the timed-out one: exiting with it can abort the process


def test_stalled_rank_raises_instead_of_hanging(tmp_path):
    result = tmp_path / "result.json"
    start = time.monotonic()
    mp.spawn(_stalling_worker, args=(2, str(tmp_path / "init"), str(result)), nprocs=2, join=True)
    outcome = json.loads(result.read_text())
    assert outcome["kind"] != "returned", outcome
    assert outcome["seconds"] < 15, outcome  # the 2 s timeout, not a hang
    assert time.monotonic() - start < 90


# Arguments that differ across ranks: (world 3) the call on each rank, and what the ValueError must say.
ODD = 2  # the rank that passes something else, unless the case says otherwise


def _x(rank: int, d: int = 6, dtype: torch.dtype = torch.float32, requires_grad: bool = False) -> torch.Tensor:
    x = torch.randn(3, d, generator=torch.Generator().manual_seed(rank), dtype=dtype)
    return x.requires_grad_(requires_grad)


def _queue(k: int = 5, d: int = 6, seed: int = 100) -> torch.Tensor:
    return torch.randn(k, d, generator=torch.Generator().manual_seed(seed))


def _align_d(rank: int) -> torch.Tensor:
    d = 7 if rank == ODD else 6
    return hdist.align_loss(_x(rank, d), _x(rank + 10, d))


def _align_dtype(rank: int) -> torch.Tensor:
    dtype = torch.float64 if rank == ODD else torch.float32
    return hdist.align_loss(_x(rank, dtype=dtype), _x(rank + 10, dtype=dtype))


MISMATCHES: dict[str, tuple[Callable[[int], torch.Tensor], list[str]]] = {
    "D": (
        lambda r: hdist.uniform_loss(_x(r, d=7 if r == ODD else 6)),
        ["uniform_loss", "feature dimension D: 6 on ranks 0-1; 7 on rank 2"],
    ),
    "dtype": (
        lambda r: hdist.uniform_loss(_x(r, dtype=torch.float64 if r == ODD else torch.float32)),
        ["dtype: float32 on ranks 0-1; float64 on rank 2"],
    ),
    "K": (
        lambda r: hdist.uniform_loss(_x(r), queue=_queue(k=6 if r == ODD else 5)),
        ["queue rows K: 5 on ranks 0-1; 6 on rank 2"],
    ),
    "queue on one rank only": (
        lambda r: hdist.uniform_loss(_x(r), queue=_queue() if r == 1 else None),
        ["queue rows K: no queue on ranks 0, 2; 5 on rank 1"],
    ),
    "intra_batch": (
        lambda r: hdist.uniform_loss(_x(r), queue=_queue(), intra_batch=r != ODD),
        ["intra_batch: True on ranks 0-1; False on rank 2"],
    ),
    "t": (lambda r: hdist.uniform_loss(_x(r), t=2.5 if r == ODD else 2), ["t: 2.0 on ranks 0-1; 2.5 on rank 2"]),
    "x_local requires grad on one rank": (
        lambda r: hdist.uniform_loss(_x(r, requires_grad=r == 0)),
        ["x_local requires grad: True on rank 0; False on ranks 1-2"],
    ),
    "queue requires grad on one rank": (
        lambda r: hdist.uniform_loss(_x(r), queue=_queue().requires_grad_(r == ODD)),
        ["queue requires grad: False on ranks 0-1; True on rank 2"],
    ),
    "queue contents": (
        lambda r: hdist.uniform_loss(_x(r), queue=_queue(seed=101 if r == ODD else 100)),
        ["queue contents (checksum)", "on ranks 0-1", "on rank 2"],
    ),
    "queue row order": (
        lambda r: hdist.uniform_loss(_x(r), queue=_queue().flip(0) if r == ODD else _queue()),
        ["queue contents (checksum)"],
    ),
    "several at once": (
        lambda r: hdist.uniform_loss(_x(r, dtype=torch.float64 if r == ODD else torch.float32), t=3 if r else 2),
        ["dtype: float32 on ranks 0-1; float64 on rank 2", "t: 2.0 on rank 0; 3.0 on ranks 1-2"],
    ),
    "weights on some ranks only": (
        lambda r: hdist.uniform_loss(_x(r), weights=None if r == ODD else torch.ones(3)),
        ["weights: given on ranks 0-1; none on rank 2"],
    ),
    "queue_weights on one rank only": (
        lambda r: hdist.uniform_loss(_x(r), queue=_queue(), queue_weights=torch.ones(5) if r == 0 else None),
        ["queue_weights: given on rank 0; none on ranks 1-2"],
    ),
    "weights require grad on one rank": (
        lambda r: hdist.uniform_loss(_x(r), weights=torch.ones(3).requires_grad_(r == ODD)),
        ["weights require grad: False on ranks 0-1; True on rank 2"],
    ),
    "queue_weights values": (
        lambda r: hdist.uniform_loss(_x(r), queue=_queue(), queue_weights=torch.full((5,), 2.0 if r == ODD else 1.0)),
        ["queue_weights values (checksum)", "on ranks 0-1", "on rank 2"],
    ),
    "negative weights on one rank": (
        lambda r: hdist.uniform_loss(_x(r), weights=torch.tensor([1.0, -1.0 if r == 1 else 1.0, 1.0])),
        ["weights must be >= 0 (got negative entries) on rank 1"],
    ),
    "NaN weights on two ranks": (
        lambda r: hdist.uniform_loss(_x(r), weights=torch.tensor([1.0, math.nan if r else 1.0, 1.0])),
        ["weights must be finite (got NaN or inf entries) on ranks 1-2"],
    ),
    "no pair of positive weight in the global batch": (
        lambda r: hdist.uniform_loss(_x(r), weights=torch.tensor([float(r == 1), 0.0, 0.0])),
        ["in the global batch, the pair weights sum to 0"],
    ),
    "align D": (_align_d, ["align_loss", "feature dimension D: 6 on ranks 0-1; 7 on rank 2"]),
    "align dtype": (_align_dtype, ["align_loss", "dtype: float32 on ranks 0-1; float64 on rank 2"]),
    "alpha": (
        lambda r: hdist.align_loss(_x(r), _x(r + 10), alpha=1 if r == ODD else 2),
        ["alpha: 2.0 on ranks 0-1; 1.0 on rank 2"],
    ),
    # Not mismatches, but also errors every rank must raise together.
    "no pairs": (lambda r: hdist.uniform_loss(_x(r)[: int(r == ODD)]), ["no pairs"]),
    "empty align": (lambda r: hdist.align_loss(_x(r)[:0], _x(r)[:0]), ["empty"]),
}


def _create_graph_uniform(rank: int) -> None:
    x, queue = _x(rank, requires_grad=True), _queue().requires_grad_()
    torch.autograd.grad(hdist.uniform_loss(x, queue=queue), (x, queue), create_graph=True)


def _create_graph_align(rank: int) -> None:
    x = _x(rank, requires_grad=True)
    torch.autograd.grad(hdist.align_loss(x, _x(rank + 10)), x, create_graph=True)


def _errors_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """Runs every case in one process group, one after the other (each error must leave the group usable), and
    writes each case's outcome to rank<r>.json after every case."""
    _init(rank, world, init_file, timeout_s=30)
    results: dict[str, dict] = {}

    def record(case: str, call: Callable[[int], object]) -> None:
        start = time.monotonic()
        try:
            value = call(rank)
            outcome = {"kind": "returned", "value": float(value) if isinstance(value, torch.Tensor) else None}
        except Exception as error:
            outcome = {"kind": type(error).__name__, "message": str(error)}
        results[case] = {**outcome, "seconds": time.monotonic() - start}
        _write_json(Path(out_dir) / f"rank{rank}.json", results)

    try:
        for case, (call, _) in MISMATCHES.items():
            record(case, call)
        record("after the errors", lambda r: hdist.uniform_loss(_x(r), queue=_queue()))
        record("create_graph uniform", _create_graph_uniform)
        record("create_graph align", _create_graph_align)
    finally:
        dist.destroy_process_group()


def test_errors_raise_on_every_rank(tmp_path):
    world = 3
    mp.spawn(_errors_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    for case, (_, expected) in MISMATCHES.items():
        outcomes = [res.get(case, {"kind": "never reached"}) for res in results]
        assert all(o["kind"] == "ValueError" for o in outcomes), (case, outcomes)
        assert len({o["message"] for o in outcomes}) == 1, (case, outcomes)  # the same message on every rank
        message = outcomes[0]["message"]
        assert all(part in message for part in expected), (case, message)
        fields = len([p for p in expected if ":" in p])  # the message names these fields and no other
        assert message.count(" | ") == max(fields, 1) - 1, (case, message)
        assert all(o["seconds"] < 10 for o in outcomes), (case, outcomes)  # at once, not at the group's timeout
    after = [res["after the errors"] for res in results]
    assert all(o["kind"] == "returned" for o in after), after
    assert len({o["value"] for o in after}) == 1, after
    for case in ("create_graph uniform", "create_graph align"):
        outcomes = [res[case] for res in results]
        assert all(o["kind"] == "RuntimeError" and "second derivatives" in o["message"] for o in outcomes), outcomes


def test_queue_checksum_depends_on_values_only():
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        for d in (6, 7):
            q = torch.randn(50, d, generator=g).to(dtype)
            want = int(hdist._queue_checksum(q))
            assert 0 <= want < 2**31 - 1
            layouts = [q.t().contiguous().t(), torch.cat([q, q], 1)[:, :d], torch.cat([q[:1], q])[1:]]
            assert all(int(hdist._queue_checksum(v)) == want for v in layouts), dtype
            changed = q.clone()
            changed.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[q.element_size()]).view(-1)[123] ^= 1
            assert int(hdist._queue_checksum(changed)) != want, dtype
            assert int(hdist._queue_checksum(q[[1, 0, *range(2, 50)]])) != want, dtype  # rows swapped


def test_needs_a_process_group(monkeypatch):
    if dist.is_initialized():
        pytest.skip("a process group is already initialized")

    def must_not_run(*args):
        raise AssertionError("computed without a process group")

    monkeypatch.setattr(hdist._DistributedUniform, "apply", must_not_run)
    monkeypatch.setattr(hdist._DistributedAlign, "apply", must_not_run)
    x = torch.randn(4, 3)
    for call in (
        lambda: hdist.uniform_loss(x),
        lambda: hdist.align_loss(x, x + 1),
        lambda: hdist.align_loss(x, x[:2]),  # the group is checked first, also with bad arguments
    ):
        with pytest.raises(RuntimeError, match=r"initialized torch\.distributed process group"):
            call()


@pytest.mark.parametrize(("n", "k", "world"), [(10, 0, 0), (10, 0, -1), (-1, 0, 2), (10, -1, 2)])
def test_balanced_row_ranges_rejects_bad_sizes(n, k, world):
    with pytest.raises(ValueError, match="must be >="):
        hdist.balanced_row_ranges(n, k, True, world)


def test_balanced_row_ranges_split_pairs_evenly():
    for n, k, intra, world in [(1000, 0, True, 3), (1000, 50, True, 4), (10, 7, False, 3), (3, 0, True, 8)]:
        ranges = hdist.balanced_row_ranges(n, k, intra, world)
        assert ranges[0][0] == 0 and ranges[-1][1] == n and len(ranges) == world
        assert all(a <= b for a, b in ranges) and all(ranges[i][1] == ranges[i + 1][0] for i in range(world - 1))
        counts = [sum((n - 1 - i) * intra + k for i in range(a, b)) for a, b in ranges]
        assert sum(counts) == (n * (n - 1) // 2 if intra else 0) + n * k
        if n >= 100:
            assert max(counts) - min(counts) <= n + k, counts  # within one row's pairs


def test_ddp_example_trains(tmp_path):
    """The example script runs end to end on 2 Gloo processes and lowers the uniformity loss."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    script = root / "examples" / "ddp_train.py"
    run = subprocess.run(  # this checkout's hyperloss, wherever the installed one points
        [sys.executable, str(script), "--world", "2", "--steps", "20", "--local-batch", "64"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    out = run.stdout
    uniform = [float(line.split("uniform")[1]) for line in out.splitlines() if line.startswith("step")]
    assert len(uniform) >= 2 and uniform[-1] < uniform[0], out
