#!/usr/bin/env python
"""Hold the labs' standard runs against the published numbers (issue #17) and print the
Markdown table of LAB_RESULTS.md's "Against the papers" section:

    python tools/against_papers.py lab_runs/     # reads <folder>/<lab>/results.json

For each claim: the published number with its citation, ours with its 95% interval and
seeds (computed from the run's saved per-seed values by the labs' own functions), the data
the run used, and the verdict of :func:`mlcvlab.labs.stats.against_published`:
*reproduced*, *not reproduced* or *not separable at this budget*. A lab folder that is
missing is reported as not run; nothing is copied from an earlier run.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mlcvlab.labs import bn_dropout, cyclical, stats  # noqa: E402

COMMAND = "MLCVLAB_DATA=<folder> mlcvlab lab run {lab} --out lab_runs/{lab}"


def _ci(lo: Optional[float], hi: Optional[float], digits: int = 3) -> str:
    return "no interval" if lo is None else f"[{lo:.{digits}g}, {hi:.{digits}g}]"


def _row(claim: str, published: str, ours: str, verdict: str, data: str, lab: str
         ) -> Dict[str, str]:
    return {"claim": claim, "published": published, "ours": ours, "verdict": verdict,
            "data": data, "command": COMMAND.format(lab=lab)}


def _fewer_steps(claim: str, pub: str, comps: List[Dict[str, Any]], censored: List[str],
                 a_missed: bool, names: tuple, unit: str, data: str, lab: str
                 ) -> List[Dict[str, str]]:
    """The row of a "reaches the target in fewer steps" claim (a direction: a - b < 0). When
    the pair was not compared because some seed never reached the target (censored): *not
    reproduced* if the arm claimed to be faster is the one that missed, else *not separable
    at this budget*."""
    if not comps:
        verdict = "not reproduced" if a_missed else "not separable at this budget"
        return [_row(claim, pub, "; ".join(censored) or f"{names[0]} / {names[1]} not run",
                     verdict, data, lab)]
    c = comps[0]
    return [_row(claim, pub, f"{names[0]} {c['a_mean']:.0f} vs {names[1]} {c['b_mean']:.0f} "
                 f"{unit}, difference {c['diff']:+.0f} (95% CI {_ci(*c['ci95'], digits=4)}, "
                 f"{c['n_seeds']} seeds; resolution one epoch)",
                 stats.against_published("direction", c["ci95"], -1), data, lab)]


def lenet5_error(r: Dict[str, Any]) -> List[Dict[str, str]]:
    """LeNet-5's test error on MNIST: bn-dropout's plain arm, t-interval over seeds."""
    s = stats.summarize([x["test_error_pct"] for x in r["per_seed"]["plain"]])
    lo, hi = s["ci95"]
    return [_row("LeNet-5 test error on MNIST (bn-dropout, plain arm)",
                 "0.95% (LeCun et al. 1998: LeNet-5 trained without distortions)",
                 f"{s['mean']:.2f}% (95% CI {_ci(lo, hi)}, {s['n']} seeds, {r['epochs']} "
                 f"epochs)", stats.against_published("value", s["ci95"], 0.95),
                 r["used"], "bn-dropout")]


def bn_steps(r: Dict[str, Any]) -> List[Dict[str, str]]:
    """Ioffe & Szegedy: BN reaches a given accuracy in fewer steps (bn vs plain, 98.5%)."""
    target = r.get("target_pct", 98.5) / 100
    out = bn_dropout.steps_to_target(r["curves"], target,
                                     math.ceil(r["n_train"] / r["batch_size"]))
    claim = f"batch norm reaches {100 * target:g}% validation accuracy in fewer steps"
    pub = "fewer steps with BN (Ioffe & Szegedy 2015, Sec. 4.1, Fig. 1a; direction only)"
    comps = [c for c in out["speed_comparisons"] if (c["a"], c["b"]) == ("bn", "plain")]
    missed = any(v is None for v in out["steps_to_target"].get("bn", []))
    return _fewer_steps(claim, pub, comps, out["speed_censored"], missed, ("BN", "plain"),
                        "steps", r["used"], "bn-dropout")


def dropout_error(r: Dict[str, Any]) -> List[Dict[str, str]]:
    """Srivastava et al.: dropout lowers a ReLU MLP's MNIST test error, 1.60% -> 1.25%."""
    rows = []
    for c in r["comparisons"]:
        if c.get("kind") != "dropout" or c.get("dataset", "mnist") != "mnist":
            continue
        lo, hi = c["ci95"]     # test accuracy, dropout minus plain -> error points
        ci = [None, None] if lo is None else [-100 * hi, -100 * lo]
        rows.append(_row(f"dropout lowers the test error ({c['optimizer']}, optimizers lab)",
                         "1.60% -> 1.25%, i.e. -0.35 points (Srivastava et al. 2014, Table 2; "
                         "2-3 layers of 800-1024 units, far longer training)",
                         f"{-100 * c['diff']:+.2f} points (95% CI {_ci(*ci)}, "
                         f"{c['n_seeds']} seeds, {r.get('mnist_epochs')} epochs)",
                         stats.against_published("effect", ci, -0.35),
                         r.get("mnist_used", "?"), "optimizers"))
    return rows


def clr_iterations(r: Dict[str, Any]) -> List[Dict[str, str]]:
    """Smith: CLR reaches the fixed policy's accuracy in fewer iterations."""
    out = cyclical.speed_to_fixed_best(r["policy_runs"], r["n_train"], r["batch_size"])
    claim = "cyclical LR reaches the fixed LR's best accuracy in fewer iterations"
    pub = ("fewer iterations with CLR (Smith 2017, Table 1: CIFAR-10 81.4% after 25,000 "
           "iterations vs 70,000 for the fixed policy; direction only here)")
    label = cyclical.POLICY_LABELS["clr"]
    comps = [c for c in out["speed_comparisons"] if c["a"] == label]
    why = [t for t in out["speed_censored"] if t.startswith(label)]
    return _fewer_steps(claim, pub, comps, why, bool(why), ("CLR", "fixed"), "iterations",
                        r["dataset_used"], "cyclical")


def nn4_equal(r: Dict[str, Any]) -> List[Dict[str, str]]:
    """The handout: synchronous SGD over K workers at a fixed global batch is the same
    algorithm, so K = 2 and K = 4 reach K = 1's test accuracy."""
    rows = []
    for c in r["comparisons"]:
        if c["metric"] != "test accuracy":
            continue
        rows.append(_row(f"NN4: {c['a']} reaches {c['b']}'s test accuracy (sync SGD)",
                         "no difference (the handout: synchronous SGD at a fixed global batch "
                         "is the same algorithm)",
                         f"{100 * c['diff']:+.2f} points (95% CI "
                         f"{_ci(*(100 * x for x in c['ci95']))}, {c['n_seeds']} seeds)",
                         stats.against_published("equal", c["ci95"]), r["used"], "nn4"))
    return rows


CLAIMS: List[tuple] = [("bn-dropout", lenet5_error), ("optimizers", dropout_error),
                       ("bn-dropout", bn_steps), ("cyclical", clr_iterations),
                       ("nn4", nn4_equal)]


def table(folder: Path, claims=CLAIMS) -> List[Dict[str, str]]:
    """Every claim's rows, from ``folder/<lab>/results.json`` (a missing run is a row too)."""
    rows: List[Dict[str, str]] = []
    for lab, fn in claims:
        path = folder / lab / "results.json"
        if not path.exists():
            rows.append(_row(fn.__doc__.split("\n")[0], "-", f"not run ({path} missing)",
                             "not run", "-", lab))
            continue
        rows += fn(json.loads(path.read_text()))
    return rows


def markdown(rows: List[Dict[str, str]]) -> str:
    cols = ["claim", "published", "ours", "verdict", "data", "command"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(str(r[c]).replace("|", "/") for c in cols) + " |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python tools/against_papers.py LAB_RUNS_FOLDER", file=sys.stderr)
        return 2
    print(markdown(table(Path(argv[0]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
