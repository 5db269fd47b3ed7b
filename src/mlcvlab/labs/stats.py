"""The statistics of the labs: repeated seeds, 95% intervals, and verdicts computed from them.

A lab that compares two arms (with vs without dropout, SGD vs Adam, M = 2 vs M = 8) runs
each arm over the same seeds, *paired by seed*: for one seed, every arm starts from the same
initial weights and sees the same data order, so the difference between two arms on one
seed is free of the seed-to-seed noise they share. This module turns those per-seed numbers
into the only statements a report may make about them:

* :func:`summarize` — an arm's mean with a 95% t-interval over seeds;
* :func:`binomial_interval` — the Wilson interval of one error rate, where only one run exists;
* :func:`compare` — the difference of two arms (paired by seed, or Welch's for unpaired
  samples) with its 95% interval and a verdict: ``"a better"``, ``"b better"`` or
  ``"not separable"`` (the interval contains 0, or fewer than 2 seeds give no interval);
* :func:`compare_rates` — the same for two single error rates (two proportions);
* :func:`sentence` — the report sentence of a comparison, its words taken from the verdict.

A comparison is a plain dict (JSON as is) with the keys that ``results.json`` promises:
``{"a", "b", "metric", "diff", "ci95": [lo, hi], "n_seeds", "verdict"}`` plus
``a_mean``, ``b_mean`` and ``higher_is_better``. ``diff`` is always mean(a) - mean(b).
"""
from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

VERDICTS = ("a better", "b better", "not separable")
COMPARISON_KEYS = ("a", "b", "metric", "diff", "ci95", "n_seeds", "verdict")
CONFIDENCE = 0.95
MIN_SEEDS_ZERO_SPREAD = 5   # below this, identical per-seed differences give no verdict


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (Lentz's method)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                   -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` (possibly fractional) degrees of freedom."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(df: float, confidence: float = CONFIDENCE) -> float:
    """The two-sided Student-t quantile for ``df`` degrees of freedom (2.776 for df = 4,
    95 %), by bisection on :func:`t_cdf` (no SciPy in the core)."""
    if not df > 0:
        raise ValueError(f"t_quantile: needs df > 0, got {df}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"t_quantile: confidence must be in (0, 1), got {confidence}")
    target = 0.5 + confidence / 2
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < target:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < target:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def _values(name: str, values: Sequence[float]) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{name}: got no values (run at least one seed)")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: values must be finite, got {arr.tolist()} (a run diverged? "
                         "report it as diverged instead of averaging it)")
    return arr


def summarize(values: Sequence[float], confidence: float = CONFIDENCE) -> Dict[str, Any]:
    """Mean, sample standard deviation and t-interval of one arm's per-seed values.

    With one value there is no interval: ``ci95`` is ``[None, None]``.
    """
    arr = _values("summarize", values)
    n = int(arr.size)
    mean = float(arr.mean())
    if n < 2:
        return {"mean": mean, "sd": None, "ci95": [None, None], "n": n, "values": arr.tolist()}
    sd = float(arr.std(ddof=1))
    half = t_quantile(n - 1, confidence) * sd / math.sqrt(n)
    return {"mean": mean, "sd": sd, "ci95": [mean - half, mean + half], "n": n,
            "values": arr.tolist()}


def binomial_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> Dict[str, Any]:
    """The Wilson score interval of a proportion (e.g. one test error rate: errors / images).

    On 2,000 test images an error of 2 % has the interval [1.45 %, 2.76 %].
    """
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"binomial_interval: need 0 <= successes <= n and n >= 1, "
                         f"got successes={successes}, n={n}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return {"rate": p, "ci95": [max(0.0, centre - half), min(1.0, centre + half)], "n": n}


def _verdict(lo: Optional[float], hi: Optional[float], higher_is_better: bool) -> str:
    if lo is None or hi is None or (lo <= 0 <= hi):
        return "not separable"
    a_higher = lo > 0
    return "a better" if a_higher == higher_is_better else "b better"


def compare(a: str, a_values: Sequence[float], b: str, b_values: Sequence[float], metric: str,
            higher_is_better: bool, paired: bool = True, confidence: float = CONFIDENCE,
            replicate: str = "seed") -> Dict[str, Any]:
    """Arm ``a`` against arm ``b`` on ``metric``: the mean difference a - b, its 95% interval
    and the verdict.

    paired=True: ``a_values[i]`` and ``b_values[i]`` come from the same seed (same initial
    weights and data order); the interval is the t-interval of the per-seed differences.
    paired=False: Welch's interval for two independent samples. Fewer than 2 seeds give no
    interval and the verdict "not separable". When every seed gives exactly the same
    difference, the t-interval has zero width, which is no evidence with few seeds (a coarse
    metric, e.g. accuracy on a small test set, often repeats): below
    :data:`MIN_SEEDS_ZERO_SPREAD` seeds the verdict is then "not separable", with a note.
    replicate: what one value is ("seed", "repeat", "run"), for the report's sentence.
    """
    av, bv = _values(f"compare {a!r}", a_values), _values(f"compare {b!r}", b_values)
    if paired and av.size != bv.size:
        raise ValueError(f"compare({a!r}, {b!r}): paired arms need one value per seed each, got "
                         f"{av.size} and {bv.size} (pass paired=False for independent samples)")
    diff = float(av.mean() - bv.mean())
    lo = hi = None
    note = None
    if paired and av.size >= 2:
        d = av - bv
        half = t_quantile(d.size - 1, confidence) * float(d.std(ddof=1)) / math.sqrt(d.size)
        lo, hi = diff - half, diff + half
        if half == 0.0 and diff != 0.0 and d.size < MIN_SEEDS_ZERO_SPREAD:
            note = (f"every {replicate} gave the same difference: a zero-width interval from "
                    f"{d.size} {replicate}s is no evidence")
    elif not paired and av.size >= 2 and bv.size >= 2:
        va, vb = float(av.var(ddof=1)) / av.size, float(bv.var(ddof=1)) / bv.size
        se = math.sqrt(va + vb)
        if se == 0.0:
            lo = hi = diff
        else:   # Welch-Satterthwaite degrees of freedom
            df = (va + vb) ** 2 / (va ** 2 / (av.size - 1) + vb ** 2 / (bv.size - 1))
            half = t_quantile(df, confidence) * se
            lo, hi = diff - half, diff + half
    n_seeds = int(min(av.size, bv.size))
    out = {"a": a, "b": b, "metric": metric, "diff": diff,
           "ci95": [lo, hi], "n_seeds": n_seeds,
           "verdict": "not separable" if note else _verdict(lo, hi, higher_is_better),
           "a_mean": float(av.mean()), "b_mean": float(bv.mean()),
           "higher_is_better": bool(higher_is_better), "paired": bool(paired),
           "replicate": replicate}
    if note:
        out["note"] = note
    return out


def compare_rates(a: str, a_errors: int, a_n: int, b: str, b_errors: int, b_n: int,
                  metric: str = "error rate", confidence: float = CONFIDENCE,
                  replicate: Optional[str] = None) -> Dict[str, Any]:
    """Two rates, each a count of events out of n: the difference of two proportions with
    Newcombe's hybrid Wilson interval (Newcombe 1998, method 10). Lower is better.

    replicate None: the n are items of one run each (e.g. test images), ``n_seeds`` is 1.
    replicate "run" (or "seed"): the n are independent runs (e.g. the fraction of 1000 runs
    that collapsed), ``n_seeds`` is min(a_n, b_n)."""
    ra, rb = binomial_interval(a_errors, a_n, confidence), binomial_interval(b_errors, b_n,
                                                                            confidence)
    pa, pb = ra["rate"], rb["rate"]
    (la, ua), (lb, ub) = ra["ci95"], rb["ci95"]
    diff = pa - pb
    lo = diff - math.sqrt((pa - la) ** 2 + (ub - pb) ** 2)
    hi = diff + math.sqrt((ua - pa) ** 2 + (pb - lb) ** 2)
    return {"a": a, "b": b, "metric": metric, "diff": diff, "ci95": [lo, hi],
            "n_seeds": 1 if replicate is None else int(min(a_n, b_n)),
            "verdict": _verdict(lo, hi, higher_is_better=False), "a_mean": pa, "b_mean": pb,
            "higher_is_better": False, "paired": False, "replicate": replicate or "run",
            "rates": True}


def check_comparison(c: Dict[str, Any], where: str = "comparison") -> None:
    """Raise a ValueError naming what is missing or wrong in a comparison dict."""
    missing = [k for k in COMPARISON_KEYS if k not in c]
    if missing:
        raise ValueError(f"{where}: missing keys {missing} (build it with mlcvlab.labs.stats."
                         "compare)")
    if c["verdict"] not in VERDICTS:
        raise ValueError(f"{where}: verdict {c['verdict']!r} is not one of {VERDICTS}")
    if not (isinstance(c["ci95"], (list, tuple)) and len(c["ci95"]) == 2):
        raise ValueError(f"{where}: ci95 must be [lo, hi], got {c['ci95']!r}")


def _num(x: Optional[float], digits: int) -> str:
    return "n/a" if x is None else f"{x:.{digits}g}"


def sentence(c: Dict[str, Any], digits: int = 3, unit: str = "") -> str:
    """The report sentence of one comparison; every comparison in a report is written by this.

    E.g. "dropout vs no dropout, test accuracy: 0.9812 vs 0.9795, difference +0.0017
    (95% CI [-0.0008, +0.0042], 5 seeds): not separable."
    """
    check_comparison(c)
    lo, hi = c["ci95"]
    u = f" {unit}" if unit else ""
    rep = c.get("replicate", "seed")
    if lo is None:
        interval = f"no interval from {c['n_seeds']} {rep}"
    elif c.get("rates") and c.get("n_seeds") == 1:
        interval = f"95% CI [{lo:+.{digits}g}, {hi:+.{digits}g}]{u}, one run each"
    else:
        interval = (f"95% CI [{lo:+.{digits}g}, {hi:+.{digits}g}]{u}, {c['n_seeds']} "
                    f"{rep}{'s' if c['n_seeds'] != 1 else ''}")
    if c["verdict"] == "a better":
        words = f"{c['a']} is better"
    elif c["verdict"] == "b better":
        words = f"{c['b']} is better"
    else:
        words = "not separable"
    a_mean, b_mean = c.get("a_mean"), c.get("b_mean")
    means = (f"{_num(a_mean, digits + 1)} vs {_num(b_mean, digits + 1)}{u}, "
             if a_mean is not None and b_mean is not None else "")
    note = f" ({c['note']})" if c.get("note") else ""
    return (f"{c['a']} vs {c['b']}, {c['metric']}: {means}difference {c['diff']:+.{digits}g}{u} "
            f"({interval}): {words}{note}.")


def seeds_of(config: Dict[str, Any]) -> List[int]:
    """The seeds a lab runs: ``config["seeds"]`` (a count n gives base_seed .. base_seed+n-1,
    a list is used as is), else the one ``config["seed"]``."""
    base = int(config.get("seed", 0))
    seeds = config.get("seeds")
    if seeds is None:
        return [base]
    if isinstance(seeds, (list, tuple)):
        out = [int(s) for s in seeds]
    else:
        if int(seeds) < 1:
            raise ValueError(f"seeds must be >= 1, got {seeds}")
        out = [base + i for i in range(int(seeds))]
    if len(set(out)) != len(out):
        raise ValueError(f"seeds must be distinct, got {out}")
    return out


def over_seeds(run_arm: Callable[[int], Dict[str, float]], seeds: Sequence[int],
               progress: Optional[Callable] = None, desc: str = "seeds") -> Dict[str, List[float]]:
    """Run ``run_arm(seed) -> {metric: value}`` for each seed; {metric: [value per seed]}."""
    it = progress(seeds, desc=desc, total=len(seeds)) if progress else seeds
    out: Dict[str, List[float]] = {}
    for s in it:
        for k, v in run_arm(int(s)).items():
            out.setdefault(k, []).append(float(v))
    return out


def steps_to_reach(curve: Sequence[float], target: float, steps_per_point: float = 1.0
                   ) -> Optional[float]:
    """How many steps a run took to reach ``target`` on a curve sampled every
    ``steps_per_point`` steps (e.g. a validation accuracy per epoch and the steps of an
    epoch): ``(i + 1) * steps_per_point`` for the first point ``i`` with
    ``curve[i] >= target``, or ``None`` when the run never reached it (a censored run: the
    caller must say so rather than count it). The resolution is one point of the curve."""
    for i, v in enumerate(curve):
        if v is not None and np.isfinite(v) and v >= target:
            return (i + 1) * float(steps_per_point)
    return None


# How a measured interval stands against a published claim (issue #17):
PUBLISHED_KINDS = ("value", "effect", "direction", "equal")
REPRODUCTION_VERDICTS = ("reproduced", "not reproduced", "not separable at this budget")


def against_published(kind: str, ci95: Sequence[Optional[float]], published: float = 0.0
                      ) -> str:
    """The verdict of a measured 95% interval against a published claim.

    ``kind`` says what the paper claims:

    * ``"value"``: a number (e.g. LeNet-5's 0.95% test error). *reproduced* when the interval
      of our mean covers it, else *not reproduced*.
    * ``"effect"``: a signed difference (e.g. dropout lowers the error by 0.35 points:
      ``published = -0.35``). *reproduced* when the interval of our paired difference covers
      the published size and excludes 0; *not separable at this budget* when it covers both
      the published size and 0; *not reproduced* when it excludes the published size.
    * ``"direction"``: a sign only (e.g. batch norm needs fewer steps: ``published = -1``).
      *reproduced* when the interval excludes 0 on the published side, *not reproduced*
      when it excludes 0 on the other side, else *not separable at this budget*.
    * ``"equal"``: no difference (e.g. K workers reach the accuracy of one). *reproduced*
      when the interval covers 0, else *not reproduced* (read it with the interval's width:
      a wide interval that covers 0 is weak evidence of equality).

    An interval that could not be computed (fewer than 2 seeds) gives *not separable at this
    budget*.
    """
    if kind not in PUBLISHED_KINDS:
        raise ValueError(f"kind must be one of {PUBLISHED_KINDS}, got {kind!r}")
    lo, hi = ci95
    if lo is None or hi is None:
        return "not separable at this budget"
    if kind == "value":
        return "reproduced" if lo <= published <= hi else "not reproduced"
    if kind == "equal":
        return "reproduced" if lo <= 0.0 <= hi else "not reproduced"
    if kind == "direction":
        if published == 0:
            raise ValueError("a 'direction' claim needs published = +1 or -1")
        if (lo > 0 and published > 0) or (hi < 0 and published < 0):
            return "reproduced"
        if lo > 0 or hi < 0:
            return "not reproduced"
        return "not separable at this budget"
    covers = lo <= published <= hi
    if not covers:
        return "not reproduced"
    return "not separable at this budget" if lo <= 0.0 <= hi else "reproduced"
