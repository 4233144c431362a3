"""``python -m hyperloss``: the environment report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

import hyperloss
from hyperloss import __main__ as cli
from hyperloss import backends

ROOT = Path(__file__).resolve().parents[1]


def run_module(env_updates: dict[str, str | None]) -> subprocess.CompletedProcess:
    """``python -m hyperloss`` on this checkout's package, with the environment changed as given (None: unset)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    for key, value in env_updates.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return subprocess.run(
        [sys.executable, "-m", "hyperloss"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def test_python_m_hyperloss_reports_versions_backends_and_auto():
    run = run_module({"HYPERLOSS_BACKEND": None})
    assert run.returncode == 0, run.stderr[-4000:]
    lines = run.stdout.splitlines()
    assert lines[0].startswith(f"hyperloss {hyperloss.__version__} ("), lines[0]
    assert lines[0].endswith(f"{os.sep}hyperloss)") and str(ROOT) in lines[0], "not this checkout's package"
    by_key = {line.split()[0]: line for line in lines if line and not line.startswith(" ")}
    assert by_key["Python"].startswith(f"Python    {sys.version_info.major}.{sys.version_info.minor}.")
    assert by_key["torch"].startswith(f"torch     {torch.__version__} ")
    for key in ("triton", "jax", "CPU", "CUDA"):
        assert key in by_key, run.stdout
    assert "torch threads" in by_key["CPU"]

    # Every backend with its availability, as hyperloss.backends() says here (same environment).
    start = lines.index("backends (hyperloss.backends()):")
    rows = {line.split()[0]: line.split()[1] for line in lines[start + 1 :] if line.startswith("  ")}
    for b in hyperloss.backends():
        assert rows[b.name] == ("available" if b.available else "unavailable"), run.stdout

    # What "auto" picks.
    auto = lines.index('backend="auto" picks:')
    assert lines[auto + 1].split() == ["CPU", "tensors", backends.resolve("auto", torch.device("cpu"))]
    cuda = backends.resolve("auto", torch.device("cuda")) if torch.cuda.is_available() else "(no CUDA device)"
    assert lines[auto + 2].split()[:2] == ["CUDA", "tensors"] and lines[auto + 2].endswith(cuda)
    assert "HYPERLOSS_BACKEND is not set" in lines


def test_hyperloss_backend_variable_is_reported(monkeypatch):
    monkeypatch.setenv("HYPERLOSS_BACKEND", "reference")
    lines = cli.summary()
    assert 'backend="auto" picks (with HYPERLOSS_BACKEND):' in lines
    assert "  CPU tensors   chunked" in lines
    assert "HYPERLOSS_BACKEND='reference' (overrides backend=\"auto\")" in lines


def test_bad_hyperloss_backend_is_reported_not_raised(monkeypatch, capsys):
    monkeypatch.setenv("HYPERLOSS_BACKEND", "no-such-backend")
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert "CPU tensors   error: unknown HYPERLOSS_BACKEND 'no-such-backend'" in out
    assert "HYPERLOSS_BACKEND='no-such-backend'" in out
