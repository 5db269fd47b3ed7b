"""Fixtures of the tests of mlcvlab.nn."""
import pytest

from mlcvlab.nn import conv


@pytest.fixture
def algorithm():
    """conv.set_algorithm, with the process-wide choice restored after the test."""
    previous = conv.get_algorithm()
    yield conv.set_algorithm
    conv.set_algorithm(previous)
