"""``hyperloss-metrics``: the uniformity (and, with ``--pairs``, the alignment) of embeddings in a file, as JSON.

    hyperloss-metrics EMB.npy [--pairs OTHER.npy] [--t 2] [--alpha 2] [--normalize] [--device D]
                      [--per-sample OUT.npy] [--weights W.npy] [--dtype float32|float64]

Exit codes: 0 done; 2 a bad file, shape, dtype or argument (one line on stderr); 130 interrupted (Ctrl-C: no
--per-sample file is left behind, complete or not).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ._sources import open_rows
from ._streamed import alignment, uniformity

_PROG = "hyperloss-metrics"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="Exact alignment and uniformity (Wang & Isola 2020) of an (N, D) embedding file (.npy or .pt), "
        "over all pairs, in O(tile) memory. Prints JSON.",
    )
    parser.add_argument("embeddings", type=Path, help="(N, D) float array: .npy (memory-mapped) or .pt")
    parser.add_argument("--pairs", type=Path, help="(N, D) positive pairs of the rows of EMB: adds the alignment")
    parser.add_argument("--t", type=float, default=2.0, help="uniformity temperature (default 2)")
    parser.add_argument("--alpha", type=float, default=2.0, help="alignment exponent (default 2)")
    parser.add_argument("--normalize", action="store_true", help="L2-normalize every row first")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: the GPU when present)")
    parser.add_argument("--per-sample", type=Path, metavar="OUT.npy", help="write each row's uniformity score")
    parser.add_argument("--weights", type=Path, metavar="W.npy", help="per-row weights (1-D, >= 0)")
    parser.add_argument("--dtype", choices=("float32", "float64"), help="compute precision (default: the data's)")
    parser.add_argument("--tile-rows", type=int, help="rows per tile (default: by memory)")
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar (default: on a terminal)"
    )
    return parser


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no NaN


def run(args: argparse.Namespace) -> dict[str, object]:
    """Computes what the command line asks for.

    Args:
        args: the parsed command line.

    Returns:
        The JSON object to print (NaN and infinite values as None).

    Raises:
        OSError, TypeError, ValueError: for bad files or arguments (ValueError also for a non-finite row).
    """
    start = time.perf_counter()
    # Opened here, so that errors name the files.
    embeddings = open_rows(str(args.embeddings), args.embeddings, min_rows=2)
    n, d, dtype = embeddings.n, embeddings.d, str(embeddings.dtype).removeprefix("torch.")
    pairs = None
    if args.pairs is not None:
        pairs = open_rows(str(args.pairs), args.pairs)
        if (pairs.n, pairs.d) != (n, d):
            raise ValueError(f"{args.pairs} has shape {(pairs.n, pairs.d)} but {args.embeddings} has {(n, d)}")
    options = dict(
        normalize=args.normalize,
        device=args.device,
        progress=args.progress,
        dtype=args.dtype,
        tile_rows=args.tile_rows,
        weights=None if args.weights is None else str(args.weights),
        nonfinite="raise",
    )
    result: dict[str, object] = {"file": str(args.embeddings), "rows": n, "features": d, "dtype": dtype}
    result.update(t=args.t, normalize=args.normalize)
    if args.per_sample is not None:
        value, _ = uniformity(embeddings, args.t, per_sample=str(args.per_sample), **options)
        result.update(uniformity=_finite_or_none(value), per_sample=str(args.per_sample))
    else:
        result["uniformity"] = _finite_or_none(uniformity(embeddings, args.t, **options))
    if pairs is not None:
        value = alignment(embeddings, pairs, args.alpha, **options)
        result.update(pairs=str(args.pairs), alpha=args.alpha, alignment=_finite_or_none(value))
    if args.weights is not None:
        result["weights"] = str(args.weights)
    result["seconds"] = round(time.perf_counter() - start, 3)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """The ``hyperloss-metrics`` command.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit code: 0 done, 2 bad input, 130 interrupted.
    """
    args = _parser().parse_args(argv)
    try:
        result = run(args)
    except KeyboardInterrupt:
        print(f"{_PROG}: interrupted", file=sys.stderr)
        return 130
    except (OSError, TypeError, ValueError, ImportError, RuntimeError) as error:
        message = " ".join(str(error).split())  # one line
        print(f"{_PROG}: error: {message}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
