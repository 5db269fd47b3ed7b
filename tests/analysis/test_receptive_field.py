"""Receptive field: formula N*F - N + 1 vs brute-force dependency propagation."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlcvlab.analysis import receptive_field, receptive_field_bruteforce, stacked_receptive_field


@given(n=st.integers(1, 6), f=st.integers(1, 7))
@settings(max_examples=40, deadline=None)
def test_stacked_formula_equals_bruteforce(n, f):
    assert receptive_field_bruteforce([f] * n) == stacked_receptive_field(n, f) == n * f - n + 1


@given(layers=st.lists(st.tuples(st.integers(1, 5), st.integers(1, 3)), min_size=1, max_size=4))
@settings(max_examples=40, deadline=None)
def test_general_formula_with_strides_equals_bruteforce(layers):
    kernels, strides = [k for k, _ in layers], [s for _, s in layers]
    assert receptive_field_bruteforce(kernels, strides) == receptive_field(kernels, strides)[0]


def test_known_values():
    assert stacked_receptive_field(3, 3) == 7          # three 3x3 = one 7x7
    assert receptive_field([3, 3], [1, 1]) == (5, 1)
    assert receptive_field([2, 3], [2, 1]) == (6, 2)   # pool 2/2 then 3x3: 2 + 2*2


def test_bad_arguments():
    with pytest.raises(ValueError, match="stacked_receptive_field"):
        stacked_receptive_field(0, 3)
    with pytest.raises(ValueError, match="one stride per kernel"):
        receptive_field([3, 3], [1])
