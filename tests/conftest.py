"""Fixtures: every test taking ``backend`` runs once per backend that runs on CPU tensors here."""

import pytest

from tests.helpers import CPU_BACKENDS


@pytest.fixture(params=CPU_BACKENDS)
def backend(request) -> str:
    return request.param
