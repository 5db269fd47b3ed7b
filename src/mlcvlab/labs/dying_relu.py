"""Lab ``dying-relu``: deep, narrow ReLU nets collapse to a constant (Lu et al. 2019).

Lu, Shin, Su & Karniadakis, "Dying ReLU and Initialization: Theory and Numerical
Examples" (Commun. Comput. Phys. 2020, arXiv:1903.06733) train deep width-2 ReLU
networks on 1-D targets such as |x| and x·sin(5x), 3000 training points drawn from
U[-√7, √7], mini-batches of 64, with symmetric (He-type) initialization, and find
that many independent runs end as a constant function. This lab reruns that
experiment many times, then repeats it with Leaky ReLU (slope 0.01).

Thousands of tiny networks are trained at once: every weight carries a leading
run axis (W_l: (R, out, in), b_l: (R, out)), so one NumPy call advances all R
runs. ``tests/labs/test_dying_relu.py`` checks that one run of this vectorized
code equals the library's ``Sequential`` of ``Linear``/``ReLU`` trained with
``mlcvlab.optim.Adam`` and ``MSELoss`` on the same batches.

Collapse criterion (stated in the report): a trained network has collapsed when
its output is a constant function on a uniform test grid of [-√7, √7], i.e. the
standard deviation of its output over the grid is below ``collapse_tol`` times
the standard deviation of the target on the same grid. A looser criterion is
reported next to it: the network explains less than ``r2_threshold`` of the
target's variance on the grid (R² below it), which also counts networks stuck at
a nearly constant "mean state".
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np

from mlcvlab.data.synthetic import DYING_RELU_TARGETS, dying_relu_1d
from mlcvlab.labs import stats
from mlcvlab.labs.checks import Checker
from mlcvlab.labs.registry import lab
from mlcvlab.labs.report import Report, new_figure, write_csv
from mlcvlab.nn import init

Params = List[Tuple[np.ndarray, np.ndarray]]       # [(W_l (R, out, in), b_l (R, out)), ...]
HALF_WIDTH = float(np.sqrt(7.0))

# The paper's claim quoted next to the measured fraction (issue #16 asks for exactly this quote).
PAPER_CLAIM = 0.90
PAPER_QUOTE = ("Lu et al. (2019, arXiv:1903.06733) report that a 10-layer ReLU network of width 2 "
               "trained on f(x) = |x| with symmetric initialization collapses to a constant "
               "function in \">90%\" of independent runs.")

_COMMON = {"depth": 10, "width": 2, "n_train": 3000, "batch_size": 64, "lr": 1e-3,
           "leaky_slope": 0.01, "grid_points": 1001, "collapse_tol": 1e-3, "r2_threshold": 0.1,
           "init": "he_normal", "examples": 6}


# -- the vectorized networks ---------------------------------------------------------------------
def init_nets(runs: int, depth: int, width: int, rng: np.random.Generator) -> Params:
    """He-normal weights N(0, 2/fan_in) and zero biases for ``runs`` nets, float64.

    Layer sizes 1 -> width -> ... -> width -> 1: ``depth`` Linear layers, the first
    depth - 1 followed by the activation. Returns [(W (R, out, in), b (R, out)), ...].
    """
    if depth < 2 or width < 1 or runs < 1:
        raise ValueError(f"dying-relu init_nets: need depth >= 2, width >= 1, runs >= 1, "
                         f"got depth={depth}, width={width}, runs={runs}")
    sizes = [1] + [width] * (depth - 1) + [1]
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        std = np.sqrt(2.0 / init.fans((fan_out, fan_in))[0])
        W = init.normal((runs, fan_out, fan_in), rng, std=std).astype(np.float64)
        params.append((W, np.zeros((runs, fan_out))))
    return params


def forward(params: Params, x: np.ndarray, slope: float):
    """x: (R, B) inputs -> (out (R, B), cache); slope 0 is ReLU, > 0 Leaky ReLU.

    Activations are kept as (R, units, B) so that batch sums run over the last,
    contiguous axis. cache: per layer (its input h (R, in, B), the derivative of its
    activation (R, out, B), None for the linear output layer).
    """
    h = x[:, None, :]
    cache = []
    for i, (W, b) in enumerate(params):
        z = np.matmul(W, h)
        z += b[..., None]
        if i == len(params) - 1:
            cache.append((h, None))
            return z[:, 0, :], cache
        positive = z > 0
        cache.append((h, np.where(positive, 1.0, slope)))
        h = z * cache[-1][1]
    raise AssertionError("unreachable: params is not empty")


def mse_backward(params: Params, cache, dout: np.ndarray) -> Params:
    """dout: (R, B) = dL/dout -> [(dW (R, out, in), db (R, out)), ...] for every layer."""
    grads = [None] * len(params)
    dz = dout[:, None, :]
    for i in range(len(params) - 1, -1, -1):
        h, _ = cache[i]
        grads[i] = (np.matmul(dz, h.transpose(0, 2, 1)), dz.sum(axis=2))
        if i > 0:
            dz = np.matmul(params[i][0].transpose(0, 2, 1), dz)
            dz *= cache[i - 1][1]
    return grads


class VectorAdam:
    """Adam with the update of ``mlcvlab.optim.Adam`` applied to every run at once."""

    def __init__(self, params: Params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.lr, self.betas, self.eps, self.t = lr, betas, eps, 0
        self.m = [np.zeros_like(a) for pair in params for a in pair]
        self.v = [np.zeros_like(a) for pair in params for a in pair]

    def step(self, params: Params, grads: Params) -> None:
        self.t += 1
        b1, b2 = self.betas
        flat_p = [a for pair in params for a in pair]
        flat_g = [g for pair in grads for g in pair]
        for w, g, m, v in zip(flat_p, flat_g, self.m, self.v):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            w -= self.lr / (1 - b1 ** self.t) * m / (np.sqrt(v) / np.sqrt(1 - b2 ** self.t)
                                                      + self.eps)


def epoch_order(rng: np.random.Generator, runs: int, n: int) -> np.ndarray:
    """A fresh random order of the n training points for each run: (R, n) int indices."""
    return rng.permuted(np.broadcast_to(np.arange(n), (runs, n)), axis=1)


def train_nets(params: Params, X: np.ndarray, Y: np.ndarray, rng: np.random.Generator,
               epochs: int, batch_size: int, lr: float, slope: float,
               progress: Callable = lambda it, **kw: it) -> Params:
    """Mini-batch Adam on the MSE, every run on its own data. X, Y: (R, n). Updates params.

    Each epoch draws one :func:`epoch_order` from ``rng`` and walks it in batches of
    ``batch_size`` (the last batch is smaller when batch_size does not divide n).
    """
    runs, n = X.shape
    opt = VectorAdam(params, lr)
    for _ in progress(range(epochs), desc=f"train (slope {slope:g})"):
        order = epoch_order(rng, runs, n)
        Xs, Ys = np.take_along_axis(X, order, 1), np.take_along_axis(Y, order, 1)
        for start in range(0, n, batch_size):
            xb, yb = Xs[:, start:start + batch_size], Ys[:, start:start + batch_size]
            out, cache = forward(params, xb, slope)
            grads = mse_backward(params, cache, 2.0 * (out - yb) / xb.shape[1])
            opt.step(params, grads)
    return params


# -- measuring collapse ----------------------------------------------------------------------------
def wilson_interval(k: int, n: int, z: float = 1.96) -> Tuple[float, float]:
    """95% Wilson score interval for a proportion k / n."""
    if n <= 0:
        raise ValueError(f"wilson_interval: need n > 0 trials, got n={n}")
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return float(max(0.0, center - half)), float(min(1.0, center + half))


def grid_stats(params: Params, target: str, grid_points: int,
               slope: float) -> Dict[str, np.ndarray]:
    """Output std, R² and dead-layer flags of every run on the test grid. Arrays of shape (R,)."""
    runs = params[0][0].shape[0]
    grid = np.linspace(-HALF_WIDTH, HALF_WIDTH, grid_points)
    t = DYING_RELU_TARGETS[target](grid)
    out, cache = forward(params, np.broadcast_to(grid, (runs, grid_points)), slope)
    # a hidden layer is dead when all its units have a zero activation derivative on the grid
    dead = np.zeros(runs, dtype=bool)
    for _, deriv in cache[:-1]:
        dead |= np.all(deriv == 0, axis=(1, 2))
    mse = np.mean((out - t) ** 2, axis=1)
    return {"std_ratio": out.std(axis=1) / t.std(), "r2": 1.0 - mse / t.var(), "dead_layer": dead}


def _fraction(flags: np.ndarray) -> Dict[str, Any]:
    """Count, fraction and 95% Wilson interval of the runs flagged."""
    k, n = int(flags.sum()), int(flags.size)
    lo, hi = stats.binomial_interval(k, n)["ci95"]
    return {"count": k, "runs": n, "fraction": k / n, "ci_low": lo, "ci_high": hi}


def run_setting(config: Dict[str, Any], target: str, slope: float, seed_seqs: Sequence,
                progress: Callable) -> Dict[str, Any]:
    """Train config["runs"] nets per seed on one target with one activation; collapse
    statistics pooled over the seeds (every run is an independent draw of data and weights).

    ``seed_seqs``: one SeedSequence per seed. The same sequence is passed for ReLU and Leaky
    ReLU, so both activations see the same data, initial weights and batch order (paired).
    """
    finals, inits, per_seed, params0 = [], [], [], None
    tol, r2_min = config["collapse_tol"], config["r2_threshold"]
    for seq in seed_seqs:
        rng = np.random.default_rng(seq)
        runs, n = config["runs"], config["n_train"]
        x, y = dying_relu_1d(runs * n, target, rng)
        X, Y = x.reshape(runs, n), y.reshape(runs, n)
        params = init_nets(runs, config["depth"], config["width"], rng)
        inits.append(grid_stats(params, target, config["grid_points"], slope))
        train_nets(params, X, Y, rng, config["epochs"], config["batch_size"], config["lr"],
                   slope, progress)
        finals.append(grid_stats(params, target, config["grid_points"], slope))
        per_seed.append(float(np.mean(finals[-1]["std_ratio"] < tol)))
        params0 = params if params0 is None else params0
    final = {k: np.concatenate([f[k] for f in finals]) for k in finals[0]}
    at_init = {k: np.concatenate([f[k] for f in inits]) for k in inits[0]}
    return {"target": target, "activation": "ReLU" if slope == 0 else f"LeakyReLU({slope:g})",
            "slope": slope, "strict": _fraction(final["std_ratio"] < tol),
            "loose": _fraction(final["r2"] < r2_min),
            "dead_layer": _fraction(final["dead_layer"]),
            "born_dead": _fraction(at_init["std_ratio"] < tol),
            "per_seed_fraction": per_seed,
            "median_r2": float(np.median(final["r2"])), "r2": final["r2"],
            "std_ratio": final["std_ratio"], "params": params0}


# -- the lab -----------------------------------------------------------------------------------
def _key(s: Dict[str, Any]) -> str:
    return f"{s['target']}_{'relu' if s['slope'] == 0 else 'leaky'}"


def _flatten_setting(res: Dict[str, Any]) -> Dict[str, Any]:
    """Result keys like ``abs_relu_strict_fraction`` for the report templates."""
    key = _key(res)
    flat = {f"{key}_median_r2": res["median_r2"]}
    for crit in ("strict", "loose", "dead_layer", "born_dead"):
        for field in ("count", "runs", "fraction", "ci_low", "ci_high"):
            flat[f"{key}_{crit}_{field}"] = res[crit][field]
    return flat


def paper_verdict(ci_low: float, ci_high: float, claim: float = PAPER_CLAIM) -> str:
    """Where the 95% interval of a collapse fraction lies relative to the paper's ">90%":
    "above 90% (consistent with the paper)", "below 90% (not consistent with the paper)", or
    "not separable from 90%" when the interval contains 0.9."""
    if ci_low > claim:
        return f"above {claim:.0%}: consistent with the paper"
    if ci_high < claim:
        return f"below {claim:.0%}: lower than the paper's \">{claim:.0%}\""
    return f"not separable from {claim:.0%} (the interval contains it)"


def _table_rows(settings: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    rows = []
    for s in settings:
        st, lo = s["strict"], s["loose"]
        rows.append({"target": s["target"], "activation": s["activation"], "runs": st["runs"],
                     "collapsed (constant)": st["count"], "fraction": st["fraction"],
                     "95% CI low": st["ci_low"], "95% CI high": st["ci_high"],
                     "paper": "> 0.90" if (s["slope"] == 0 and s["target"] == "abs") else "",
                     "R2 < threshold": lo["count"], "fraction (R2)": lo["fraction"],
                     "R2 CI low": lo["ci_low"], "R2 CI high": lo["ci_high"],
                     "dead layer": s["dead_layer"]["count"],
                     "constant at init": s["born_dead"]["count"], "median R2": s["median_r2"]})
    return rows


ARM_COLOURS = {"ReLU": "C0", "Leaky": "C1"}


def _arm(s: Dict[str, Any]) -> str:
    return "ReLU" if s["slope"] == 0 else "Leaky"


def _bar_figure(rep: Report, settings: Sequence[Dict[str, Any]], targets: Sequence[str]) -> None:
    fig, axes = new_figure(ncols=2, figsize=(11, 4.2), sharey=True)
    pos = np.arange(len(targets))
    for ax, crit, name in zip(axes, ("strict", "loose"),
                              ("collapsed: constant output", "looser: R² below threshold")):
        for off, arm in ((-0.2, "ReLU"), (0.2, "Leaky")):
            sub = [next(s for s in settings if s["target"] == t and _arm(s) == arm)
                   for t in targets]
            frac = np.array([s[crit]["fraction"] for s in sub])
            err = np.array([[max(0.0, f - s[crit]["ci_low"]), max(0.0, s[crit]["ci_high"] - f)]
                            for f, s in zip(frac, sub)]).T
            ax.bar(pos + off, frac, width=0.4, yerr=err, capsize=4, color=ARM_COLOURS[arm],
                   label=sub[0]["activation"])
        ax.axhline(PAPER_CLAIM, color="k", ls="--", lw=1,
                   label="Lu et al.: > 90% (ReLU, |x|)")
        ax.set_xticks(pos, [f"target {t}" for t in targets])
        ax.set(ylabel="fraction of runs (0-1)", ylim=(0, 1.3), title=name)
        ax.set_yticks(np.linspace(0, 1, 6))
        ax.legend(fontsize=8, loc="upper center", ncol=2)
    fig.suptitle("Fraction of runs that collapsed, with 95% Wilson intervals")
    rep.figure("collapse_fraction", fig,
               "Fraction of {total_runs} runs per setting that collapsed, with 95% Wilson "
               "intervals; dashed: the paper's 90%.")


def _examples_figure(rep: Report, config: Dict[str, Any], setting: Dict[str, Any]) -> None:
    """Trained functions of the first few runs next to the target."""
    grid = np.linspace(-HALF_WIDTH, HALF_WIDTH, config["grid_points"])
    take = min(config["examples"], setting["params"][0][0].shape[0])
    if take == 0:
        return
    sub = [(W[:take], b[:take]) for W, b in setting["params"]]
    out, _ = forward(sub, np.broadcast_to(grid, (take, grid.size)), setting["slope"])
    fig, ax = new_figure(figsize=(7, 4))
    ax.plot(grid, DYING_RELU_TARGETS[setting["target"]](grid), "k--", lw=2, label="target")
    for r in range(take):
        state = "collapsed" if setting["std_ratio"][r] < config["collapse_tol"] else "not collapsed"
        ax.plot(grid, out[r], lw=1, label=f"run {r} ({state})")
    ax.set(xlabel="input x (dimensionless)", ylabel="network output (dimensionless)",
           title=f"{setting['activation']}, target {setting['target']}: first {take} runs")
    ax.legend(fontsize=7)
    name = f"examples_{_key(setting)}"
    rep.figure(name, fig, f"First runs of {setting['activation']} on target "
                          f"{setting['target']} after training.")


def _comparisons(settings: Sequence[Dict[str, Any]], targets: Sequence[str]) -> List[Dict]:
    """ReLU vs Leaky ReLU per target and criterion: two proportions (Newcombe's interval)."""
    out = []
    for t in targets:
        relu = next(s for s in settings if s["target"] == t and s["slope"] == 0)
        leaky = next(s for s in settings if s["target"] == t and s["slope"] != 0)
        for crit, words in (("strict", "collapse fraction (constant output)"),
                            ("loose", "fraction with R² below the threshold")):
            c = stats.compare_rates("ReLU", relu[crit]["count"], relu[crit]["runs"],
                                    leaky["activation"], leaky[crit]["count"],
                                    leaky[crit]["runs"], metric=f"target {t}, {words}",
                                    replicate="run")   # fractions of independent runs
            out.append(c)
    return out


def _conclusions(r: Dict[str, Any], targets: Sequence[str]) -> List[str]:
    lines = []
    for t in targets:
        for arm, name in (("relu", "ReLU"), ("leaky", "Leaky ReLU")):
            lines.append(
                f"Target {t}, {name}: {{{t}_{arm}_strict_fraction:.1%}} of {{total_runs}} runs "
                f"collapsed to a constant (95% Wilson CI {{{t}_{arm}_strict_ci_low:.1%}}-"
                f"{{{t}_{arm}_strict_ci_high:.1%}}); Lu et al.: \">90%\" for ReLU on |x|. "
                f"Against 90%: {{{t}_{arm}_paper_verdict}}. "
                f"{{{t}_{arm}_born_dead_fraction:.1%}} were already constant at initialization.")
        lines.append(f"{{{t}_verdict_sentence}}")
    return lines


def _check_config(config: Dict[str, Any]) -> None:
    """Every user-settable value, checked before any work; errors name the key."""
    check = Checker("dying-relu", config)
    for key, lo in (("depth", 2), ("width", 1), ("n_train", 1), ("batch_size", 1), ("runs", 1),
                    ("epochs", 1), ("grid_points", 2), ("examples", 0)):
        check.integer(key, lo)
    check.number("lr", 0, lo_open=True)
    check.number("leaky_slope", 0, 1, lo_open=True)
    check.number("collapse_tol", 0, lo_open=True)
    check.number("r2_threshold", hi=1)
    if config["init"] != "he_normal":
        raise ValueError(f"dying-relu: config key 'init' must be 'he_normal' (the symmetric "
                         f"initialization of the study; no other is implemented), got "
                         f"{config['init']!r}")
    if not config["targets"]:
        raise ValueError("dying-relu: config key 'targets' is empty; choose from "
                         f"{sorted(DYING_RELU_TARGETS)}")
    for t in config["targets"]:
        if t not in DYING_RELU_TARGETS:
            raise ValueError(f"dying-relu: unknown target {t!r} in config key 'targets'; choose "
                             f"from {sorted(DYING_RELU_TARGETS)} (--set targets=abs,xsin5x)")
    stats.seeds_of(config)


def _write_report(out_dir, config: Dict[str, Any], r: Dict[str, Any],
                  settings: Sequence[Dict[str, Any]]) -> None:
    rep = Report(out_dir, "Dying ReLU: deep width-2 networks collapse (Lu et al. 2019)", r)
    rep.setup(config)
    rep.text("Each run: a fresh draw of {n_train} training points x ~ U[-sqrt(7), sqrt(7)] with "
             "the noiseless target, a network 1 -> {width} x ({depth} - 1 hidden layers) -> 1 "
             "({depth} Linear layers), He-normal weights N(0, 2/fan_in) and zero biases, Adam "
             "(lr {lr}) on the MSE with mini-batches of {batch_size} for {epochs} epochs. "
             "{runs} independent runs per seed, seeds {seeds_used}: {total_runs} runs per target "
             "and activation, all trained at once with a leading run axis on every weight. For "
             "one seed, ReLU and Leaky ReLU (slope {leaky_slope}) get the same data, initial "
             "weights and batch order.")
    rep.text("**Collapse criterion.** A trained network has collapsed when it is a constant "
             "function on a uniform grid of {grid_points} points in [-sqrt(7), sqrt(7)]: the "
             "standard deviation of its output over the grid is below {collapse_tol} times the "
             "standard deviation of the target on the grid. The looser criterion counts runs "
             "whose R² on the grid is below {r2_threshold} (a nearly constant 'mean state'). "
             "Intervals of a fraction are 95% Wilson score intervals over the {total_runs} "
             "independent runs. 'dead layer' counts runs with a "
             "hidden layer whose units are all inactive on the whole grid (this forces a "
             "constant output). 'constant at init' applies the same tolerance before "
             "training: for Leaky ReLU it means the output varies by less than the tolerance "
             "(each negative unit scales by {leaky_slope}), not that it is exactly constant.")
    rep.section("Published result")
    rep.text("{paper_quote} The measured fractions below are set next to that 90% by their 95% "
             "interval: above, below, or not separable from it.")
    rep.table("collapse", _table_rows(settings), "Collapse counts over {total_runs} runs per "
              "setting")
    write_csv(out_dir / "runs.csv", [{"target": s["target"], "activation": s["activation"],
                                      "run": i, "std_ratio": float(s["std_ratio"][i]),
                                      "r2": float(s["r2"][i])}
                                     for s in settings for i in range(s["r2"].size)])
    rep.text("Per-run output std ratio and R² are in `runs.csv`.")
    _bar_figure(rep, settings, config["targets"])
    for s in settings:
        _examples_figure(rep, config, s)
    rep.comparisons(r["comparisons"], heading="ReLU vs Leaky ReLU (two proportions, Newcombe's "
                    "interval; n_seeds = independent runs per arm)")
    rep.text("The interval treats the two arms as independent samples, although for one seed they "
             "share data, initial weights and batch order.")
    rep.explanation("a dead hidden layer (all units inactive for every input) makes the output "
                    "constant and passes no gradient, so training cannot revive it; Leaky ReLU "
                    "keeps a gradient of slope {leaky_slope} on negative inputs (Lu et al. 2019, "
                    "Sec. 3-4).".replace("{leaky_slope}", str(config["leaky_slope"])))
    rep.conclusions(_conclusions(r, config["targets"]))
    rep.write()


@lab(name="dying-relu",
     study="Lu, Shin, Su & Karniadakis (2019): dying ReLU, 10-layer width-2 nets collapse",
     quick=dict(_COMMON, runs=100, epochs=4, targets=["abs"], seeds=1),
     standard=dict(_COMMON, runs=250, epochs=50, targets=["abs", "xsin5x"], seeds=4),
     full=dict(_COMMON, runs=250, epochs=100, targets=["abs", "xsin5x"], seeds=4),
     expected_seconds={"quick": 3, "standard": 300, "full": 600})
def run(config: Dict[str, Any], out_dir, progress) -> Dict[str, Any]:
    _check_config(config)
    seeds = stats.seeds_of(config)
    targets = list(config["targets"])
    # one SeedSequence per (seed, target), shared by ReLU and Leaky ReLU: paired arms
    seqs = {t: [np.random.SeedSequence([s, i]) for s in seeds] for i, t in enumerate(targets)}
    settings = []
    for t in targets:
        for slope in (0.0, config["leaky_slope"]):
            settings.append(run_setting(config, t, slope, seqs[t], progress))
    results: Dict[str, Any] = {k: config[k] for k in _COMMON}
    total = int(config["runs"]) * len(seeds)
    results.update(runs=config["runs"], epochs=config["epochs"], targets=targets,
                   seeds_used=seeds, total_runs=total, paper_quote=PAPER_QUOTE,
                   paper_claim=PAPER_CLAIM)
    for s in settings:
        results.update(_flatten_setting(s))
        k = _key(s)
        results[f"{k}_paper_verdict"] = paper_verdict(s["strict"]["ci_low"],
                                                      s["strict"]["ci_high"])
        results[f"{k}_per_seed_fraction"] = s["per_seed_fraction"]
    results["comparisons"] = _comparisons(settings, targets)
    for t, c in zip(targets, results["comparisons"][::2]):
        results[f"{t}_verdict_sentence"] = stats.sentence(c)
    results["table"] = _table_rows(settings)
    _write_report(out_dir, config, results, settings)
    return results
