"""Train a small encoder with DistributedDataParallel on the CPU (Gloo), using the global-batch losses.

    python examples/ddp_train.py --world 2 --steps 50

Each process draws its own half of a batch of two augmented views of random "images" (points on a sphere
plus noise), encodes them, and minimizes align + uniform over the whole global batch. The loss is multiplied by
the world size so that DDP's gradient averaging yields the exact global-batch gradient
(see hyperloss.distributed). Prints, on rank 0, the loss and the alignment/uniformity of held-out data.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import hyperloss
from hyperloss import distributed as hdist


def make_views(n: int, dim: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two noisy views of the same n source points."""
    source = torch.randn(n, dim, generator=generator)
    return (
        source + 0.1 * torch.randn(n, dim, generator=generator),
        source + 0.1 * torch.randn(n, dim, generator=generator),
    )


def train(rank: int, args: argparse.Namespace, init_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=args.world, timeout=timedelta(seconds=120)
    )
    try:
        run(rank, args)
    finally:
        # Always leave the group explicitly: a process that exits still holding a Gloo group (above all after a
        # failed collective) can abort in torch's teardown. DDP and its reducer are freed first, when run()
        # returns: a reducer torn down after the group can deadlock against Gloo's threads (pytorch/pytorch#56297).
        dist.destroy_process_group()


def run(rank: int, args: argparse.Namespace) -> None:
    torch.manual_seed(0)  # the same initial weights on every rank
    encoder = nn.Sequential(nn.Linear(args.input_dim, 64), nn.ReLU(), nn.Linear(64, args.feature_dim))
    model = nn.parallel.DistributedDataParallel(encoder)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    data = torch.Generator().manual_seed(1000 + rank)  # each rank its own data
    held_out = make_views(512, args.input_dim, torch.Generator().manual_seed(7))

    for step in range(args.steps + 1):
        a, b = make_views(args.local_batch, args.input_dim, data)
        za = nn.functional.normalize(model(a), dim=1)
        zb = nn.functional.normalize(model(b), dim=1)
        # Collective calls: every rank makes them, in the same order, with the same t (checked: a rank passing
        # another t, dtype or feature size makes every rank raise ValueError).
        loss = hdist.align_loss(za, zb) + (hdist.uniform_loss(za, t=2) + hdist.uniform_loss(zb, t=2)) / 2
        optimizer.zero_grad()
        (loss * args.world).backward()
        optimizer.step()
        if rank == 0 and step % max(1, args.steps // 5) == 0:
            with torch.no_grad():
                ea = nn.functional.normalize(encoder(held_out[0]), dim=1)
                eb = nn.functional.normalize(encoder(held_out[1]), dim=1)
                print(
                    f"step {step:4d}  loss {loss.item():+.4f}  held-out align {hyperloss.align_loss(ea, eb).item():.4f}"
                    f"  uniform {hyperloss.uniform_loss(ea).item():+.4f}",
                    flush=True,
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=int, default=2, help="number of processes")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--local-batch", type=int, default=256, help="rows per process and step")
    parser.add_argument("--input-dim", type=int, default=32)
    parser.add_argument("--feature-dim", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(train, args=(args, os.path.join(tmp, "init")), nprocs=args.world, join=True)


if __name__ == "__main__":
    main()
