"""Train a small encoder with the alignment + uniformity loss in one process.

    python examples/train_single.py --steps 300 --batch 256

An MLP maps 8 x 8 digit images (scikit-learn's digits when scikit-learn is installed, else random data with the
same shape: noisy copies of 10 random prototypes) to 16-d features on the unit sphere. Each step draws a batch,
makes two noisy augmentations of every image (random pixel dropout plus Gaussian noise), and minimizes
``hyperloss.AlignUniformLoss`` (Wang & Isola 2020: align(x, y) + (uniform(x) + uniform(y)) / 2 with alpha = 2,
t = 2). Every ``--log-every`` steps it prints the training loss and the alignment and uniformity terms on a fixed
held-out set: uniformity falls as the features spread over the sphere (alignment gives some ground at first).
A few hundred steps take a few seconds on a CPU (``--threads 1`` is fastest for a model this small).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import hyperloss


def load_images(seed: int) -> tuple[torch.Tensor, str]:
    """(N, 64) float32 images scaled to [0, 1], and where they come from."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        g = torch.Generator().manual_seed(seed)
        prototypes = torch.rand(10, 64, generator=g)
        labels = torch.randint(0, 10, (1797,), generator=g)
        images = (prototypes[labels] + 0.25 * torch.randn(1797, 64, generator=g)).clamp(0, 1)
        return images, "random data (10 noisy prototypes; pip install scikit-learn for the digits)"
    images = torch.from_numpy(load_digits().data).float() / 16.0
    return images, "scikit-learn digits"


def augment(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A noisy view: each pixel dropped with probability 0.2, then Gaussian noise of standard deviation 0.1."""
    keep = torch.rand(images.shape, generator=generator, device=images.device) > 0.2
    noise = torch.randn(images.shape, generator=generator, device=images.device)
    return images * keep + 0.1 * noise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=256, help="images per step (two views each)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--feature-dim", type=int, default=16)
    parser.add_argument("--log-every", type=int, default=0, help="print every N steps (default: steps / 10)")
    parser.add_argument("--backend", default="auto", help="hyperloss backend (see python -m hyperloss)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's default)")
    args = parser.parse_args()
    if args.steps < 0 or args.batch < 2:
        parser.error("--steps must be >= 0 and --batch >= 2")
    log_every = args.log_every or max(1, args.steps // 10)
    device = torch.device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    torch.manual_seed(args.seed)
    images, source = load_images(args.seed)
    images = images.to(device)
    held_out = images[torch.randperm(len(images), device=device)[:512]]
    g = torch.Generator(device=device).manual_seed(args.seed + 1)
    held_out_views = augment(held_out, g), augment(held_out, g)  # fixed: the printed terms are comparable

    encoder = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, args.feature_dim)).to(device)
    optimizer = torch.optim.Adam(encoder.parameters(), lr=args.lr)
    criterion = hyperloss.AlignUniformLoss(align_weight=1.0, uniform_weight=1.0, alpha=2, t=2, backend=args.backend)

    def embed(x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(encoder(x), dim=1)

    print(f"{len(images)} images ({source}), device {device}, batch {args.batch}, {args.steps} steps", flush=True)
    start = time.perf_counter()
    for step in range(args.steps + 1):
        batch = images[torch.randint(0, len(images), (args.batch,), device=device)]
        za, zb = embed(augment(batch)), embed(augment(batch))
        loss = criterion(za, zb)
        if step % log_every == 0 or step == args.steps:
            with torch.no_grad():  # the two terms, on the held-out views
                ea, eb = embed(held_out_views[0]), embed(held_out_views[1])
                align = hyperloss.align_loss(ea, eb, alpha=2, backend=args.backend)
                uniform = (
                    hyperloss.uniform_loss(ea, t=2, backend=args.backend)
                    + hyperloss.uniform_loss(eb, t=2, backend=args.backend)
                ) / 2
            print(
                f"step {step:5d}  loss {loss.item():+.4f}  align {align.item():.4f}  uniform {uniform.item():+.4f}",
                flush=True,
            )
        if step == args.steps:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"done in {time.perf_counter() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
