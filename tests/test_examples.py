"""The single-process example trains: it runs end to end and lowers the uniformity term.

(The DDP example has its own test in test_distributed.py.)
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_train_single_example_lowers_uniformity():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("HYPERLOSS_BACKEND", None)
    run = subprocess.run(  # this checkout's hyperloss, wherever the installed one points
        [
            sys.executable,
            str(ROOT / "examples" / "train_single.py"),
            *("--steps", "30", "--batch", "128", "--log-every", "10", "--device", "cpu", "--threads", "1"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    steps = [line.split() for line in run.stdout.splitlines() if line.startswith("step")]
    # "step N  loss L  align A  uniform U"
    assert [int(s[1]) for s in steps] == [0, 10, 20, 30], run.stdout
    align = [float(s[s.index("align") + 1]) for s in steps]
    uniform = [float(s[s.index("uniform") + 1]) for s in steps]
    assert all(math.isfinite(v) for v in align + uniform), run.stdout
    assert all(0 <= a <= 4 for a in align) and all(u <= 0 for u in uniform), run.stdout  # unit rows: ||.||^2 <= 4
    assert uniform[-1] < uniform[0] - 0.5, run.stdout
