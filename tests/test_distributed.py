"""hyperloss.distributed on 2 and 3 Gloo processes against the single-process losses on the concatenated batch."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import hyperloss
from hyperloss import distributed as hdist

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs Gloo")

TOL = {torch.float64: (1e-10, 1e-9), torch.float32: (2e-5, 2e-4)}  # (value, gradient relative to its max)


def _init(rank: int, world: int, init_file: str, timeout_s: float = 60) -> None:
    torch.set_num_threads(1)  # several ranks share this machine's cores
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s)
    )


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
    got = hdist.uniform_loss(x_local, 2.0, queue=queue, intra_batch=intra_batch, backend=backend)
    inputs = [x_local] + ([queue] if queue is not None else [])
    got_grads = torch.autograd.grad(got, inputs)

    x_ref = x_global.clone().requires_grad_()
    q_ref = None if queue is None else queue.detach().clone().requires_grad_()
    want = hyperloss.uniform_loss(x_ref, 2.0, queue=q_ref, intra_batch=intra_batch, backend=backend)
    want_grads = torch.autograd.grad(want, [x_ref] + ([q_ref] if q_ref is not None else []))
    value_tol, grad_tol = TOL[dtype]
    case = f"uniform rank={rank} sizes={sizes} {dtype} queue={queue_rows} intra={intra_batch}"
    assert abs(got.item() - want.item()) <= value_tol * (1 + abs(want.item())), f"{case}: {got.item()} {want.item()}"
    _close(got_grads[0], want_grads[0][_rows(sizes, rank)], grad_tol, case + " d/dx")
    if queue is not None:
        _close(got_grads[1], want_grads[1], grad_tol, case + " d/dqueue")


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
    _init(rank, world, init_file, timeout_s=3)
    if rank == 1:  # never joins the collective, then leaves
        time.sleep(12)
        return
    x = torch.randn(4, 3)
    start = time.monotonic()
    try:
        hdist.uniform_loss(x)
        outcome = "returned"
    except Exception as error:  # the process group's timeout (or the peer's disconnect) surfaces here
        outcome = f"raised {type(error).__name__} after {time.monotonic() - start:.1f}s"
    with open(result_file, "w") as f:
        f.write(outcome)


def test_stalled_rank_raises_instead_of_hanging(tmp_path):
    result = tmp_path / "result"
    start = time.monotonic()
    mp.spawn(_stalling_worker, args=(2, str(tmp_path / "init"), str(result)), nprocs=2, join=True)
    outcome = result.read_text()
    assert outcome.startswith("raised"), outcome
    assert float(outcome.split("after ")[1].rstrip("s")) < 11, outcome
    assert time.monotonic() - start < 60


def test_needs_a_process_group():
    if dist.is_initialized():
        pytest.skip("a process group is already initialized")
    with pytest.raises(RuntimeError, match=r"initialized torch\.distributed process group"):
        hdist.uniform_loss(torch.randn(4, 3))


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
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "ddp_train.py"
    out = subprocess.run(
        [sys.executable, str(script), "--world", "2", "--steps", "20", "--local-batch", "64"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    uniform = [float(line.split("uniform")[1]) for line in out.splitlines() if line.startswith("step")]
    assert len(uniform) >= 2 and uniform[-1] < uniform[0], out
