"""The backend registry: a backend registered through the public API is listed, chosen by name or by "auto", and
called by every entry point, with no edit to the dispatcher."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import hyperloss
from hyperloss import backends
from hyperloss.backends import chunked
from tests.helpers import check_align, check_uniform, features


class CountingBackend:
    """A new backend: the chunked backend's math, counting its calls."""

    name = "counting"
    description = "test double over the chunked backend"
    devices = ("cpu",)

    def __init__(self, rank: int | None = None, available: tuple[bool, str] = (True, "")) -> None:
        self.rank, self.state, self.calls = rank, available, []

    def available(self) -> tuple[bool, str]:
        return self.state

    def runs_on(self, device_type: str) -> bool:
        return device_type == "cpu"

    def auto_rank(self, device_type: str) -> int | None:
        return self.rank

    def uniform_lse(self, x, queue, t, intra_batch, grad_x, grad_queue, precision=None):
        self.calls.append("uniform_lse")
        return chunked.uniform_lse(x, queue, t, intra_batch, grad_x, grad_queue)

    def align(self, x, y, alpha, grad_x, grad_y=False):
        self.calls.append("align")
        return chunked.CHUNKED.align(x, y, alpha, grad_x, grad_y)


@pytest.fixture
def registered(request):
    backend = CountingBackend(*getattr(request, "param", ()))
    backends.register(backend)
    yield backend
    backends.unregister(backend.name)


def test_a_registered_backend_is_listed_and_runs_by_name(registered):
    row = next(b for b in hyperloss.backends() if b.name == "counting")
    assert row.available and row.devices == ("cpu",) and row.description
    x = features(30, 5, seed=1, device="cpu")
    check_uniform("counting", x, 2.0)
    check_uniform("counting", x, 2.0, features(7, 5, seed=2, device="cpu"), intra_batch=False)
    check_align("counting", x, features(30, 5, seed=3, device="cpu"), 1.5)
    assert registered.calls == ["uniform_lse", "uniform_lse", "align"]
    modules = hyperloss.AlignUniformLoss(backend="counting")(x, x.flip(0))
    assert torch.isfinite(modules) and len(registered.calls) == 6
    assert "counting" not in backends.usable("cuda")


@pytest.mark.parametrize("registered", [(-1,)], indirect=True)
def test_auto_takes_the_lowest_rank(registered):
    assert backends.resolve("auto", "cpu") == "counting"
    hyperloss.uniform_loss(features(10, 3, seed=4, device="cpu"))
    assert registered.calls == ["uniform_lse"]


def test_unregistering_restores_the_choice():
    before = backends.resolve("auto", "cpu")
    backends.register(CountingBackend(-1))
    assert backends.resolve("auto", "cpu") == "counting"
    backends.unregister("counting")
    assert backends.resolve("auto", "cpu") == before
    with pytest.raises(ValueError, match="unknown backend 'counting'"):
        hyperloss.uniform_loss(features(10, 3, seed=4, device="cpu"), backend="counting")


@pytest.mark.parametrize("registered", [(None, (False, "no such hardware"))], indirect=True)
def test_an_unavailable_backend_says_why(registered):
    with pytest.raises(ValueError, match="'counting' is not available: no such hardware"):
        hyperloss.uniform_loss(features(10, 3, seed=4, device="cpu"), backend="counting")
    row = next(b for b in hyperloss.backends() if b.name == "counting")
    assert not row.available and row.reason == "no such hardware"


def test_register_rejects_what_is_not_a_backend(registered):
    with pytest.raises(TypeError, match="Backend protocol"):
        backends.register(object())
    with pytest.raises(ValueError, match="registered already"):
        backends.register(CountingBackend())
    impostor = CountingBackend()
    impostor.name = "auto"
    with pytest.raises(ValueError, match="other than 'auto'"):
        backends.register(impostor)


def test_old_name_reference_is_the_chunked_backend():
    assert backends.get("reference") is backends.get("chunked")
    assert backends.resolve("reference", "cpu") == "chunked"
    x = features(12, 4, seed=5, device="cpu")
    assert hyperloss.uniform_loss(x, backend="reference").item() == hyperloss.uniform_loss(x, backend="chunked").item()


def test_every_shipped_backend_has_the_protocol():
    for name in backends.names():
        assert isinstance(backends.get(name), backends.Backend), name


def test_cuda_uniform_kernels_names_what_the_cuda_backend_runs():
    """hl_cuda_uniform_kernels through Python: "none" without CUDA kernels in the library (or without a device); on
    a GPU "triton-aot" or "cuda", and "cuda" whenever HYPERLOSS_TRITON_AOT=0 is in the environment (read once per
    process)."""
    from hyperloss import _lib
    from hyperloss.backends import native

    kernels = native.cuda_uniform_kernels()
    if native.LOAD_ERROR is not None or not _lib.lib.hl_has_cuda():
        assert kernels == "none"
        return
    assert kernels in ("triton-aot", "cuda", "none")
    if kernels == "none":  # a CUDA library on a machine without a device
        return
    code = "from hyperloss.backends import native; print(native.cuda_uniform_kernels())"
    env = {**os.environ, "HYPERLOSS_TRITON_AOT": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "cuda"
