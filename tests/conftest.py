"""Shared fixtures: every test starts from the same library seed."""
import numpy as np
import pytest

from mlcvlab import backend


@pytest.fixture(autouse=True)
def _seed():
    backend.seed(1234)
    backend.set_default_dtype(np.float32)
    yield


@pytest.fixture
def rng():
    return np.random.default_rng(0)
