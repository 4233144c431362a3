"""Fixtures: every test taking ``backend`` runs once per backend that runs on tensors of ``tests.helpers.DEVICE``
here (``hyperloss.backends.usable``): so on a GPU the op tests follow the GPU, and a registered backend joins."""

import pytest

from tests.helpers import BACKENDS


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param
