"""The sweep's failure handling: time limits, out-of-memory errors and the skip rule, without real cases."""

from __future__ import annotations

import functools
import time

import torch

from hyperloss.bench import plan, runner


def _sleep(seconds: float) -> dict:
    time.sleep(seconds)
    return {"status": runner.OK}


def _allocate(nbytes: int) -> dict:
    torch.empty(nbytes, dtype=torch.uint8)
    return {"status": runner.OK}


def test_a_case_past_its_time_limit_is_killed_and_recorded() -> None:
    start = time.monotonic()
    result = runner.run_in_child(functools.partial(_sleep, 60), timeout_s=1)
    assert result["status"] == runner.TIMEOUT
    assert time.monotonic() - start < 30


def test_an_allocation_failure_is_recorded_as_out_of_memory() -> None:
    # The address-space cap makes the allocation fail at once instead of waking the kernel's OOM killer.
    result = runner.run_in_child(functools.partial(_allocate, 1 << 36), timeout_s=60, memory_cap=1 << 30)
    assert result["status"] == runner.OOM, result


def test_larger_sizes_are_skipped_after_a_failure() -> None:
    sweep = plan.build_plan("cpu", ops=["uniform"], ns=[128, 256, 512], impls=["paper", "cpu"])
    outcomes = {("paper", 256): runner.OOM}

    def execute(case: plan.Case) -> dict:
        return {"status": outcomes.get((case.impl, case.n), runner.OK)}

    rows = runner.run_sweep(sweep, execute)
    status = {(r["impl"], r["n"]): r["status"] for r in rows}
    assert status == {
        ("paper", 128): runner.OK,
        ("paper", 256): runner.OOM,
        ("paper", 512): runner.SKIPPED,
        ("cpu", 128): runner.OK,
        ("cpu", 256): runner.OK,
        ("cpu", 512): runner.OK,
    }


def test_summary_statistics() -> None:
    s = runner.summarize([4.0, 1.0, 3.0, 2.0, 100.0])
    assert s["median_ms"] == 3.0 and s["min_ms"] == 1.0 and s["max_ms"] == 100.0 and s["reps"] == 5
    assert s["q1_ms"] == 2.0 and s["q3_ms"] == 4.0


def test_ceilings_are_the_median_of_repeats_with_their_spread() -> None:
    measured = runner.probe("cpu", ("matmul_fp32_highest", "copy"), small=True)["measured"]
    for ceiling in measured.values():
        assert ceiling["value"] > 0 and ceiling["spread"] >= 0 and ceiling["repeats"] >= 1
