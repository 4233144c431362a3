"""Distributed uniformity, ``python bench/bench_distributed.py --n 8192 --d 128 --world 2``: `world` Gloo processes
on this CPU (cores / world threads each) time hyperloss.distributed.uniform_loss forward + backward on N rows split
evenly, next to hyperloss.uniform_loss on all in one process; with the bytes each rank receives. Times: the mean of
--reps calls after a warm-up (Timer.timeit: the same count on every rank, as the collectives need). Writes
bench/results/distributed-<cpu>-<date>[-2, -3, ...].json."""

import argparse
import json
import os
import tempfile
from datetime import date, timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.benchmark import Timer

import hyperloss
from hyperloss import distributed as hdist
from hyperloss.bench import fmt, report


def _mean_ms(loss_fn, n: int, d: int, reps: int, rank: int = 0, world: int = 1) -> tuple[int, float]:
    """Rows of this rank, and the mean ms of a forward + backward call on them."""
    x = torch.nn.functional.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(0)), dim=1)
    x = x.tensor_split(world)[rank].clone().requires_grad_()

    def step() -> None:
        loss_fn(x, 2.0).backward()
        x.grad = None

    step()  # warm-up
    timer = Timer("step()", globals={"step": step}, num_threads=torch.get_num_threads())
    return x.shape[0], timer.timeit(reps).mean * 1e3


def _rank(rank: int, args: argparse.Namespace, tmp: str) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.world))
    init, timeout = f"file://{tmp}/init", timedelta(seconds=600)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=args.world, timeout=timeout)
    try:
        rows, ms = _mean_ms(hdist.uniform_loss, args.n, args.d, args.reps, rank, args.world)
        Path(tmp, f"rank{rank}.json").write_text(json.dumps({"rank": rank, "rows": rows, "mean_ms": ms}))
    finally:
        dist.destroy_process_group()  # exiting with a live Gloo group can abort in torch's teardown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for option, default in (("--n", 8192), ("--d", 128), ("--world", 2), ("--reps", 5)):
        parser.add_argument(option, type=int, default=default)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    single_ms = _mean_ms(hyperloss.uniform_loss, args.n, args.d, args.reps)[1]
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_rank, args=(args, tmp), nprocs=args.world, join=True)
        ranks = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(args.world)]
    # Bytes received per rank: the all-gathers of the row counts and checked arguments (9 float64 per rank), of every
    # rank's (padded) rows and of the one-number log-sum-exp, and the gradient exchange (Gloo: an all-reduce of
    # world x rows_max x D, a ring moving about 2 (w-1)/w of it).
    rows_bytes, others = (args.world - 1) * max(r["rows"] for r in ranks) * args.d * 4, args.world - 1
    comm = {"all_gather_arguments": others * 9 * 8, "all_gather_features": rows_bytes, "all_gather_lse": others * 8}
    comm["gradient_exchange"] = 2 * rows_bytes
    ranks_ms, threads = ", ".join(f"{r['mean_ms']:.1f}" for r in ranks), torch.get_num_threads()
    print(f"uniformity fwd+bwd, N={args.n}, D={args.d}, float32, CPU Gloo: mean ms per call, {args.world} ranks")
    print(f"  single process ({threads} threads): {single_ms:.1f}; per rank: {ranks_ms}")
    print(f"  received per rank: {sum(comm.values()) / 1e6:.2f} MB ({comm} bytes)")
    cpu, today = report.cpu_model(), date.today().isoformat()
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"{report.new_run_name(f'distributed-{fmt.slug(cpu)}-{today}', args.out)}.json"
    result = {"device": cpu, "torch": torch.__version__, "date": today, "n": args.n, "d": args.d, "world": args.world}
    result |= {"single_process_ms": single_ms, "single_process_threads": threads, "ranks": ranks}
    out.write_text(json.dumps(result | {"communication_bytes_per_rank": comm}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
