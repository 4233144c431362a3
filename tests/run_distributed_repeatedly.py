"""Runs the distributed tests many times in a row and reports how many runs passed (by hand, not in CI).

    python tests/run_distributed_repeatedly.py              # 30 runs of tests/test_distributed.py
    python tests/run_distributed_repeatedly.py --runs 100 -k stalled

Each run is a fresh ``python -m pytest`` process on this checkout (its hyperloss first on the path), with a
wall-clock limit; the output of every failed run is kept under --log-dir. Exits 0 only when every run passed.
Spawned Gloo processes are where flakiness shows (a SIGABRT in torch's teardown, a hang): one run of the module
proves little, many in a row do.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--timeout", type=float, default=600, help="seconds allowed per run")
    parser.add_argument("--tests", default="tests/test_distributed.py", help="pytest target, relative to the repo")
    parser.add_argument("-k", dest="keyword", help="pytest -k expression")
    parser.add_argument("--log-dir", help="where failed runs' output goes (default: a new temporary folder)")
    parser.add_argument("--stop-on-failure", action="store_true")
    args = parser.parse_args()

    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="hyperloss-distributed-runs-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", args.tests]
    if args.keyword:
        command += ["-k", args.keyword]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    print(f"{args.runs} runs of: {' '.join(command[1:])}   (cwd {ROOT}; failed runs' output in {log_dir})", flush=True)

    passed, durations, failures = 0, [], []
    for run in range(1, args.runs + 1):
        start = time.monotonic()
        # Its own session, so that a run that hangs is killed together with the ranks it spawned.
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            output = process.communicate(timeout=args.timeout)[0]
            ok = process.returncode == 0
            verdict = "passed" if ok else f"FAILED (exit {process.returncode})"
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output = process.communicate()[0]
            ok, verdict = False, f"TIMED OUT after {args.timeout:.0f} s"
        output = output.decode(errors="replace")
        seconds = time.monotonic() - start
        durations.append(seconds)
        summary = next((line for line in reversed(output.splitlines()) if line.strip()), "")
        if ok:
            passed += 1
        else:
            log = log_dir / f"run{run:03d}.log"
            log.write_text(output)
            failures.append((run, verdict, str(log)))
        print(f"run {run:3d}/{args.runs}: {verdict:<22} {seconds:6.1f} s   {summary}", flush=True)
        if not ok and args.stop_on_failure:
            break

    total = len(durations)
    print(
        f"\npassed {passed} of {total} runs; per run median {statistics.median(durations):.1f} s, "
        f"min {min(durations):.1f} s, max {max(durations):.1f} s, total {sum(durations) / 60:.1f} min"
    )
    for run, verdict, log in failures:
        print(f"  run {run}: {verdict}, output in {log}")
    return 0 if passed == total == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
