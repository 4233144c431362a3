"""bench/gpu_check.sh fits one device command: its --dry-run prints the plan within 9 minutes (CI runs it)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.sh"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_dry_run_fits_nine_minutes():
    result = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, timeout=60, check=True)
    total = int(re.search(r"total budget (\d+)s", result.stdout).group(1))
    steps = int(re.search(r"total of the step limits: (\d+)s", result.stdout).group(1))
    assert steps <= total <= 540, result.stdout
    assert "headline Triton benchmarks" in result.stdout
    files = re.search(r"\((\d+) <= 8\)", result.stdout)
    assert files and int(files.group(1)) <= 8
