"""The labs' shared config checks: each bad value is named with its key and valid range."""
import pytest

from mlcvlab.labs.checks import Checker


def test_checker_names_key_range_and_value():
    c = Checker("toy", {"lr": float("nan"), "n": 2.5, "p": 1.0, "ks": [1, 0], "hidden": [4, 4],
                        "mode": "x", "eps": 0.0})
    with pytest.raises(ValueError, match=r"toy lab: config key 'lr' must be a finite number "
                                         r"in \(0, inf\), got nan \(set it with --set lr="):
        c.number("lr", 0, lo_open=True)
    with pytest.raises(ValueError, match="'n' must be an integer in \\[1, inf\\)"):
        c.integer("n", 1)
    with pytest.raises(ValueError, match="'p' must be a finite number in \\[0, 1\\)"):
        c.probability("p")
    assert c.probability("p", allow_one=True) == 1.0
    with pytest.raises(ValueError, match="'ks' must be a non-empty list of integers"):
        c.integers("ks", 1)
    with pytest.raises(ValueError, match="'hidden' must be 3 integers"):
        c.integers("hidden", 1, length=3)
    with pytest.raises(ValueError, match="one of \\['a', 'b'\\]"):
        c.choice("mode", ["a", "b"])
    with pytest.raises(ValueError, match="'eps'"):
        c.number("eps", 0, lo_open=True)
    assert c.integers("hidden", 1, length=2) == [4, 4]
