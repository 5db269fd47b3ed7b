"""Config checks shared by the labs: every user-settable value is checked before any work,
and a bad one raises a ValueError that names the lab, the key, the valid range and the value
(``--set lr=nan`` or ``--set fd_eps=0`` fail at once, not deep inside a run).

    check = Checker("bagging", config)
    check.integer("steps", 1)                      # an integer >= 1
    check.number("lr", 0, lo_open=True)            # a finite number > 0
    check.probability("p_dropout")                 # in [0, 1)
    check.integers("ks", 1, config["models_per_pool"])
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import numpy as np


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
            and math.isfinite(float(v)))


def _range(lo: Optional[float], hi: Optional[float], lo_open: bool, hi_open: bool) -> str:
    left = "-inf" if lo is None else f"{lo:g}"
    right = "inf" if hi is None else f"{hi:g}"
    return (f"{'(' if lo_open or lo is None else '['}{left}, {right}"
            f"{')' if hi_open or hi is None else ']'}")


class Checker:
    """Checks values of one lab's ``config``; each method raises on the first bad value."""

    def __init__(self, lab: str, config: Dict[str, Any]):
        self.lab, self.config = lab, config

    def fail(self, key: str, what: str) -> None:
        raise ValueError(f"{self.lab} lab: config key {key!r} must be {what}, got "
                         f"{self.config.get(key)!r} (set it with --set {key}=...)")

    def number(self, key: str, lo: Optional[float] = None, hi: Optional[float] = None,
               lo_open: bool = False, hi_open: bool = False, integer: bool = False) -> float:
        v = self.config[key]
        ok = _is_number(v) and (not integer or float(v) == int(v))
        if ok and lo is not None:
            ok = v > lo if lo_open else v >= lo
        if ok and hi is not None:
            ok = v < hi if hi_open else v <= hi
        if not ok:
            kind = "an integer" if integer else "a finite number"
            self.fail(key, f"{kind} in {_range(lo, hi, lo_open, hi_open)}")
        return v

    def integer(self, key: str, lo: Optional[int] = None, hi: Optional[int] = None) -> int:
        return int(self.number(key, lo, hi, integer=True))

    def probability(self, key: str, allow_one: bool = False) -> float:
        """A drop (or keep) probability in [0, 1) (or [0, 1])."""
        return self.number(key, 0.0, 1.0, hi_open=not allow_one)

    def integers(self, key: str, lo: Optional[int] = None, hi: Optional[int] = None,
                 length: Optional[int] = None) -> List[int]:
        """A non-empty list of integers in [lo, hi] (of ``length`` items, if given)."""
        vs = self.config[key]
        ok = isinstance(vs, (list, tuple)) and len(vs) > 0 and all(
            _is_number(v) and float(v) == int(v) and (lo is None or v >= lo)
            and (hi is None or v <= hi) for v in vs)
        if ok and length is not None:
            ok = len(vs) == length
        if not ok:
            size = f"{length} " if length is not None else "a non-empty list of "
            self.fail(key, f"{size}integers in {_range(lo, hi, False, False)}")
        return [int(v) for v in vs]

    def numbers(self, key: str, lo: Optional[float] = None, hi: Optional[float] = None,
                lo_open: bool = False) -> List[float]:
        """A non-empty list of finite numbers in the range."""
        vs = self.config[key]
        ok = isinstance(vs, (list, tuple)) and len(vs) > 0 and all(
            _is_number(v) and (lo is None or (v > lo if lo_open else v >= lo))
            and (hi is None or v <= hi) for v in vs)
        if not ok:
            self.fail(key, f"a non-empty list of finite numbers in "
                           f"{_range(lo, hi, lo_open, False)}")
        return [float(v) for v in vs]

    def choice(self, key: str, options) -> Any:
        if self.config[key] not in options:
            self.fail(key, f"one of {list(options)}")
        return self.config[key]
