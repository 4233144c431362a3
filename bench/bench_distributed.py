"""Distributed uniformity benchmark: per-rank time and communication volume against the single-process run.

    python bench/bench_distributed.py --n 8192 --d 128 --world 2

Spawns `world` Gloo processes on this machine (CPU) and times hyperloss.distributed.uniform_loss forward +
backward on the global batch of N rows split evenly, next to hyperloss.uniform_loss on the whole batch in one
process. Each rank uses cores / world threads, the single process all cores, so the comparison is per machine.
Writes bench/results/distributed-<host-cpu>-<date>.json (-2, -3, ... for a later run the same day).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import hyperloss
from hyperloss import distributed as hdist


def _features(n: int, d: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)


def _time(fn, reps: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _rank(rank: int, args: argparse.Namespace, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.world))
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=args.world, timeout=timedelta(seconds=600)
    )
    try:
        x = _features(args.n, args.d)
        local = x.tensor_split(args.world)[rank].clone().requires_grad_()

        def step():
            loss = hdist.uniform_loss(local, 2.0)
            loss.backward()
            local.grad = None

        times = _time(step, args.reps)
        result = {"rank": rank, "rows": local.shape[0], "times": times}
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()  # exiting with a live Gloo group can abort in torch's teardown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args()

    x = _features(args.n, args.d).requires_grad_()

    def single():
        hyperloss.uniform_loss(x, 2.0).backward()
        x.grad = None

    single_times = _time(single, args.reps)
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_rank, args=(args, os.path.join(tmp, "init"), tmp), nprocs=args.world, join=True)
        ranks = [json.loads((Path(tmp) / f"rank{r}.json").read_text()) for r in range(args.world)]

    element = 4  # float32
    rows_max = max(r["rows"] for r in ranks)
    # Per rank, bytes received: the all-gather of the row counts and checked arguments (9 float64 per rank), the
    # all-gather of every rank's (padded) rows, the one-number log-sum-exp all-gather, and the gradient exchange
    # (Gloo: an all-reduce of world x rows_max x D).
    gather = (args.world - 1) * rows_max * args.d * element
    gradient = 2 * (args.world - 1) * rows_max * args.d * element  # ring all-reduce: about 2 (w-1)/w of the buffer x w
    comm = {
        "all_gather_arguments": (args.world - 1) * 9 * 8,
        "all_gather_features": gather,
        "all_gather_lse": (args.world - 1) * 8,
        "gradient_exchange": gradient,
    }

    single_ms = statistics.median(single_times) * 1e3
    print(f"uniformity fwd+bwd, N={args.n}, D={args.d}, float32, {hyperloss.__name__} backend auto, CPU Gloo")
    print(f"  single process ({torch.get_num_threads()} threads): {single_ms:8.1f} ms")
    for r in ranks:
        print(f"  rank {r['rank']} of {args.world} ({r['rows']} rows): {statistics.median(r['times']) * 1e3:8.1f} ms")
    parts = ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in comm.items())
    print(f"  communication per rank: {sum(comm.values()) / 1e6:.2f} MB ({parts})")

    cpu = "cpu"
    if os.path.exists("/proc/cpuinfo"):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    slug = "".join(c if c.isalnum() else "-" for c in cpu.lower()).strip("-")
    out = base = Path(args.out) / f"distributed-{slug}-{date.today().isoformat()}.json"
    k = 1
    while out.exists():  # a later run the same day: -2, -3, ... (no run overwrites another)
        k += 1
        out = base.with_name(f"{base.stem}-{k}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "device": cpu,
                "torch": torch.__version__,
                "date": date.today().isoformat(),
                "n": args.n,
                "d": args.d,
                "world": args.world,
                "single_process_ms": single_ms,
                "single_process_threads": torch.get_num_threads(),
                "ranks": [
                    {"rank": r["rank"], "rows": r["rows"], "median_ms": statistics.median(r["times"]) * 1e3}
                    for r in ranks
                ],
                "communication_bytes_per_rank": comm,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
