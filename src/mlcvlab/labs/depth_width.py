"""Lab ``depth-width``: deep vs wide MLPs on the Eggholder regression within a unit budget.

The study: fit the Eggholder function (2-D, very rugged) from 100k noisy samples
(80/20 train/test split) with ReLU MLPs of 1, 2 or 3 hidden layers whose widths
come from {16, ..., 512} with at most 512 hidden units in total; SGD with Nesterov
momentum, batch 1000, 2000 epochs. It compares depths by the *average* test RMSE over
the networks of each depth ("you will use the average RMSE"), and training time
against the parameter count.

What this lab does differently from the study's hand-out, and why:

* batch norm is used in every depth or in none (``batchnorm`` = "all" / "none"), or both
  are run as arms ("both"); the hand-out used it only in the 2- and 3-layer nets, which
  confounds depth with normalization;
* every network runs over ``seeds`` (same data, seed-dependent initial weights and batch
  order, paired by seed across networks); depths are compared by the mean test RMSE over
  their configurations, per seed, with a paired 95% interval over seeds - a mean over 6, 25
  or 112 networks is comparable, a "best of" maximum is not;
* a validation split (``val_fraction`` of the training points) is held out: the best network
  is chosen on it, the test split only reports;
* each network's test R^2 against the predict-the-mean baseline (the training mean for
  every point) is reported; a network with R^2 < 0.1 "did not learn" and is not ranked, and
  a depth whose mean R^2 is below 0.1 is not compared.

The full preset is long (about 140 networks x 2000 epochs), so it is resumable:
each network trains in its own folder ``<out>/configs/s<seed>-<bn|plain>/<name>/``. A
finished one writes ``result.json`` (atomically) and is skipped by a rerun with the same
``--out``; an unfinished one keeps ``checkpoint.npz`` (the Trainer's
:class:`~mlcvlab.train.Checkpoint`) and resumes from it. ``epoch_budget`` caps
the epochs trained by one invocation, so the study can be run in pieces.

``device`` "cuda" (``--device cuda``) trains every network on the GPU (the MSE loss stays on
the host: the prediction is copied over and back each step); checkpoints hold host arrays,
so a piece may resume on the other device (``device`` is not a run setting). The time fit is
then on wall seconds (device time); the CPU seconds are the host's share.
"""
from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from mlcvlab.io import atomic_write_text
from mlcvlab.labs import stats
from mlcvlab.labs.registry import lab
from mlcvlab.labs.report import Report, new_figure
from mlcvlab.models import mlp
from mlcvlab.nn import MSELoss
from mlcvlab.optim import SGD
from mlcvlab.train import Checkpoint, Trainer, array_batches, evaluate, load_checkpoint
from mlcvlab.train.checkpoint import checkpoint_paths, save_checkpoint

EGGHOLDER_BOUND = 512.0

# settings that must agree between the pieces of one resumable run
_RUN_KEYS = ("n_points", "test_fraction", "val_fraction", "noise_std", "epochs", "batch_size",
             "lr", "momentum", "seed")
BATCHNORM_MODES = ("all", "none", "both")
# the training time of a network on each clock: CPU seconds, wall seconds (device time on "cuda")
TIME_KEYS = {"cpu": "train_cpu_seconds", "wall": "train_seconds"}
R2_LEARNED = 0.1      # a network (or a depth, on average) with test R^2 below this did not learn

_FULL = {"n_points": 100_000, "test_fraction": 0.2, "val_fraction": 0.1, "noise_std": 0.3,
         "depths": [1, 2, 3], "widths": [16, 32, 64, 128, 256, 512], "max_total": 512,
         "batchnorm": "both", "epochs": 2000, "batch_size": 1000, "lr": 0.01, "momentum": 0.9,
         "checkpoint_every": 10, "epoch_budget": 0, "seeds": 5, "device": "cpu"}
# standard: the study's data and optimizer, 2 / 4 / 4 networks per depth (widths 64 and 128,
# at most 256 units), batch norm in every depth, 3 seeds, 40 epochs. Estimated ~48 min of CPU
# time: one epoch of each of the 10 networks took 24 CPU s in all (timed on a loaded 2-core
# machine), x 40 epochs x 3 seeds; an estimate, not a measured run.
_STANDARD = {**_FULL, "widths": [64, 128], "max_total": 256, "batchnorm": "all", "epochs": 40,
             "seeds": 3}
_QUICK = {**_FULL, "n_points": 3000, "widths": [16, 32, 64], "max_total": 64,
          "batchnorm": "all", "epochs": 4, "batch_size": 250, "lr": 0.02,
          "checkpoint_every": 2, "seeds": 2}


def check_config(config: Dict[str, Any]) -> None:
    """A ValueError naming the first config value out of its range, before any work."""
    def bad(key, valid):
        raise ValueError(f"depth-width: {key}={config[key]!r} is invalid; valid: {valid}")

    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    def finite(v):
        return isinstance(v, (int, float, np.number)) and math.isfinite(float(v))

    if not is_int(config["n_points"]) or config["n_points"] < 10:
        bad("n_points", "an integer >= 10")
    for key in ("test_fraction", "val_fraction"):
        if not finite(config[key]) or not 0 < config[key] < 1:
            bad(key, "a number in (0, 1)")
    if not finite(config["noise_std"]) or config["noise_std"] < 0:
        bad("noise_std", "a finite number >= 0")
    for key in ("depths", "widths"):
        v = config[key]
        if not isinstance(v, (list, tuple)) or not v or not all(is_int(x) and x >= 1 for x in v):
            bad(key, "a non-empty list of integers >= 1")
    for key, lo in (("max_total", 1), ("epochs", 1), ("batch_size", 1), ("checkpoint_every", 1),
                    ("epoch_budget", 0)):
        if not is_int(config[key]) or config[key] < lo:
            bad(key, f"an integer >= {lo}")
    if not finite(config["lr"]) or config["lr"] <= 0:
        bad("lr", "a finite number > 0")
    if not finite(config["momentum"]) or not 0 <= config["momentum"] < 1:
        bad("momentum", "a number in [0, 1)")
    if config["batchnorm"] not in BATCHNORM_MODES:
        bad("batchnorm", " / ".join(BATCHNORM_MODES))
    stats.seeds_of(config)          # raises on a bad seeds value


def bn_arms(mode: str) -> List[bool]:
    """The batch-norm arms of a ``batchnorm`` mode: "all" [True], "none" [False], "both"."""
    return {"all": [True], "none": [False], "both": [True, False]}[mode]


# -- data -------------------------------------------------------------------------------------
def eggholder(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """f(x, y) = -(y+47) sin(sqrt|x/2 + y + 47|) - x sin(sqrt|x - (y+47)|); x, y: same shape."""
    return (-(y + 47) * np.sin(np.sqrt(np.abs(x / 2 + y + 47)))
            - x * np.sin(np.sqrt(np.abs(x - (y + 47)))))


def make_data(n_points: int, noise_std: float, test_fraction: float, seed: int,
              val_fraction: float = 0.1) -> Dict[str, Any]:
    """Uniform points in [-512, 512]^2 with Eggholder targets plus N(0, noise_std^2) noise.

    ``test_fraction`` of the points are the test split; ``val_fraction`` of the rest are held
    out as the validation split (for choosing networks), the remainder trains. Returns
    X_train / X_val / X_test inputs scaled to [-1, 1] (float32), y_* targets standardized by
    the training mean and std (float32), and ``y_mean`` / ``y_std`` to map errors back to
    function units (the predict-the-mean baseline predicts 0 in standardized units).
    """
    if n_points < 10 or not 0 < test_fraction < 1 or not 0 < val_fraction < 1:
        raise ValueError(f"depth-width make_data: need n_points >= 10 and test_fraction, "
                         f"val_fraction in (0, 1), got n_points={n_points}, "
                         f"test_fraction={test_fraction}, val_fraction={val_fraction}")
    gen = np.random.default_rng([seed, 0])
    pts = gen.uniform(-EGGHOLDER_BOUND, EGGHOLDER_BOUND, size=(n_points, 2))
    target = eggholder(pts[:, 0], pts[:, 1]) + gen.normal(0.0, noise_std, n_points)
    n_test = int(round(test_fraction * n_points))
    order = gen.permutation(n_points)
    test, rest = order[:n_test], order[n_test:]
    n_val = int(round(val_fraction * len(rest)))
    val, train = rest[:n_val], rest[n_val:]
    if min(len(test), len(val), len(train)) == 0:
        raise ValueError(f"depth-width make_data: n_points={n_points} with test_fraction="
                         f"{test_fraction}, val_fraction={val_fraction} leaves an empty split")
    mean, std = float(target[train].mean()), float(target[train].std())
    z = ((target - mean) / std).astype(np.float32)
    X = (pts / EGGHOLDER_BOUND).astype(np.float32)
    return {"X_train": X[train], "y_train": z[train], "X_val": X[val], "y_val": z[val],
            "X_test": X[test], "y_test": z[test], "y_mean": mean, "y_std": std,
            "target_range": [float(target.min()), float(target.max())]}


def baseline_rmse(y: np.ndarray, y_std: float) -> float:
    """RMSE (function units) of predicting the training mean (0 in standardized units)."""
    return float(math.sqrt(float(np.mean(np.square(y, dtype=np.float64)))) * y_std)


class EpochShuffledBatches:
    """Mini-batches of (X, y) in an order that depends only on (seed, epoch number).

    X: (N, ...), y: (N,). Epoch e uses the permutation of ``default_rng([seed, e])``,
    so ``state_dict()`` is just the epoch count and a resumed run sees exactly the
    batches the uninterrupted run would have seen. The last short batch is kept.
    ``batch_size`` is read before every batch, so a schedule may change it mid-epoch.
    """

    def __init__(self, X: np.ndarray, y: np.ndarray, batch_size: int, seed: int):
        if len(X) != len(y) or batch_size < 1:
            raise ValueError(f"EpochShuffledBatches: need len(X) == len(y) and batch_size >= 1, "
                             f"got {len(X)}, {len(y)}, batch_size={batch_size}")
        self.X, self.y, self.batch_size, self.seed = X, y, int(batch_size), int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return math.ceil(len(self.X) / self.batch_size)

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.X))
        self.epoch += 1
        pos = 0
        while pos < len(order):           # batch_size is read per batch (CyclicBatchSize sets it)
            idx = order[pos:pos + self.batch_size]
            pos += len(idx)
            yield self.X[idx], self.y[idx]

    def state_dict(self) -> Dict[str, int]:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.epoch = int(state["epoch"])


# -- configurations ------------------------------------------------------------------------------
def configurations(depths: Sequence[int], widths: Sequence[int], max_total: int
                   ) -> List[Tuple[int, ...]]:
    """Every tuple of ``depth`` widths from ``widths`` (order matters) with sum <= max_total."""
    if not depths or min(depths) < 1 or not widths or min(widths) < 1:
        raise ValueError(f"depth-width: depths and widths must be positive, got depths={depths}, "
                         f"widths={widths}")
    out = [t for d in sorted(set(depths)) for t in itertools.product(sorted(set(widths)), repeat=d)
           if sum(t) <= max_total]
    if not out:
        raise ValueError(f"depth-width: no network fits max_total={max_total} with widths "
                         f"{widths}; raise max_total or add smaller widths")
    return out


def config_name(hidden: Sequence[int]) -> str:
    """Folder name of a network, e.g. 'd2_64-128'."""
    return f"d{len(hidden)}_" + "-".join(str(w) for w in hidden)


def arm_folder(seed: int, batchnorm: bool) -> str:
    """Folder of one seed and batch-norm arm under ``configs/``, e.g. 's0-bn'."""
    return f"s{seed}-{'bn' if batchnorm else 'plain'}"


def build_model(hidden: Sequence[int], seed: int, batchnorm: bool = True):
    """ReLU MLP 2 -> hidden... -> 1, with batch norm after each hidden Linear if ``batchnorm``.
    The Linear weights depend on (seed, widths) only, so both batch-norm arms of a seed start
    from the same weights."""
    return mlp([2, *hidden, 1], batchnorm=batchnorm, flatten=False,
               rng=np.random.default_rng([seed, 1, *hidden]))


# -- training one network (resumable) -------------------------------------------------------------
def _rmse(model, X, y, y_std) -> float:
    mse = evaluate(model, MSELoss(), array_batches(X, y, 10_000), classification=False)["loss"]
    return float(math.sqrt(mse) * y_std)


def train_config(hidden: Sequence[int], data: Dict[str, Any], config: Dict[str, Any],
                 folder: Path, max_epochs: Optional[int] = None, seed: Optional[int] = None,
                 batchnorm: bool = True) -> Tuple[Optional[dict], int]:
    """Train one network in ``folder``, resuming from its checkpoint if there is one.

    Trains at most ``max_epochs`` epochs in this call (None: to the end). Returns
    (result, epochs trained now); result is None while the network is unfinished
    (its checkpoint.npz is then up to date), else the dict also saved as result.json.
    ``seed`` (default config["seed"]) sets the initial weights and the batch order.
    """
    seed = config["seed"] if seed is None else int(seed)
    folder.mkdir(parents=True, exist_ok=True)
    result_path = folder / "result.json"
    if result_path.exists():
        return json.loads(result_path.read_text()), 0
    if max_epochs is not None and max_epochs <= 0:
        return None, 0                      # no budget left in this invocation
    model = build_model(hidden, seed, batchnorm).to(config.get("device", "cpu"))
    opt = SGD(model.parameters(), lr=config["lr"], momentum=config["momentum"], nesterov=True)
    loader = EpochShuffledBatches(data["X_train"], data["y_train"], config["batch_size"],
                                  seed=hash_seed(seed, hidden))
    ckpt = Checkpoint(str(folder), every=config["checkpoint_every"])
    trainer = Trainer(model, MSELoss(), opt, callbacks=[ckpt], classification=False)
    if checkpoint_paths(str(folder)):
        trainer.load_checkpoint_state(load_checkpoint(str(folder)))
        trainer.restore_loader(loader)
    remaining = config["epochs"] - trainer.epoch
    todo = remaining if max_epochs is None else max(0, min(remaining, max_epochs))
    try:
        with np.errstate(over="ignore", invalid="ignore"):   # NaNGuard reports a divergence
            trainer.fit(loader, todo)
            if trainer.epoch >= config["epochs"]:
                rmse = {split: _rmse(model, data[f"X_{split}"], data[f"y_{split}"],
                                     data["y_std"]) for split in ("train", "val", "test")}
    except (FloatingPointError, ValueError) as err:   # the loss or the outputs became NaN/inf
        if isinstance(err, ValueError) and "NaN or inf" not in str(err):
            raise
        result = {"name": config_name(hidden), "depth": len(hidden), "widths": list(hidden),
                  "seed": seed, "batchnorm": bool(batchnorm), "diverged": str(err),
                  "epochs": trainer.epoch}
        atomic_write_text(str(result_path), json.dumps(result, indent=2))
        for path in checkpoint_paths(str(folder)):
            os.remove(path)
        return result, todo
    if trainer.epoch < config["epochs"]:
        save_checkpoint(str(folder), trainer.checkpoint_state())   # the epochs since the last
        return None, todo
    result = {"name": config_name(hidden), "depth": len(hidden), "widths": list(hidden),
              "seed": seed, "batchnorm": bool(batchnorm), "diverged": None,
              "total_units": int(sum(hidden)), "params": int(model.num_parameters()),
              "test_rmse": rmse["test"], "val_rmse": rmse["val"], "train_rmse": rmse["train"],
              "train_seconds": float(sum(trainer.history.column("seconds"))),
              "train_cpu_seconds": float(sum(trainer.history.column("cpu_seconds"))),
              "epochs": trainer.epoch, "final_train_loss": trainer.history[-1]["train_loss"]}
    atomic_write_text(str(result_path), json.dumps(result, indent=2))
    for path in checkpoint_paths(str(folder)):
        os.remove(path)                     # the result supersedes them
    return result, todo


def hash_seed(seed: int, hidden: Sequence[int]) -> int:
    """A per-network shuffling seed derived from the run seed and the widths."""
    return int(np.random.default_rng([seed, 2, *hidden]).integers(2**31))


def _warm_up(seed: int, device: str = "cpu") -> None:
    """One throwaway SGD step on ``device``, so compiling the optimizer kernel (on "cuda": the
    GPU kernels of the layers) is not timed as training."""
    from mlcvlab.train.trainer import _model_input, loss_and_grad
    model = build_model((4, 4), seed).to(device)
    opt = SGD(model.parameters(), lr=0.0, momentum=0.9, nesterov=True)
    x = _model_input(model, np.zeros((4, 2), np.float32))
    _, dpred = loss_and_grad(MSELoss(), model, model(x), np.zeros((4, 1), np.float32))
    model.backward(dpred)
    opt.step()


def _check_run_settings(out_dir: Path, config: Dict[str, Any]) -> None:
    """Refuse to mix pieces of runs with different settings in one out dir."""
    settings = {k: config[k] for k in _RUN_KEYS}
    path = out_dir / "configs" / "settings.json"
    if path.exists():
        saved = json.loads(path.read_text())
        if saved != settings:
            diff = {k: (saved.get(k), settings[k]) for k in settings if saved.get(k) != settings[k]}
            raise ValueError(f"depth-width: {out_dir} holds networks trained with other settings "
                             f"(saved, now): {diff}; use a fresh --out or the same settings")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(str(path), json.dumps(settings, indent=2))


# -- aggregation ---------------------------------------------------------------------------------
def r2(rmse: float, baseline: float) -> float:
    """Coefficient of determination against the predict-the-mean baseline: 1 - (rmse/base)^2."""
    return float(1.0 - (rmse / baseline) ** 2)


def arm_label(depth: int, batchnorm: bool, both: bool) -> str:
    """'2 hidden layers' (one batch-norm mode) or '2 hidden layers, BN' (both as arms)."""
    text = f"{depth} hidden layer{'s' if depth > 1 else ''}"
    return text + ((", BN" if batchnorm else ", no BN") if both else "")


def curves(rows: List[dict]) -> List[dict]:
    """Per (batch norm, depth, total hidden units): means over networks and seeds."""
    out = []
    for bn in sorted({r["batchnorm"] for r in rows}, reverse=True):
        for d in sorted({r["depth"] for r in rows if r["batchnorm"] == bn}):
            own = [r for r in rows if r["depth"] == d and r["batchnorm"] == bn]
            for total in sorted({r["total_units"] for r in own}):
                grp = [r for r in own if r["total_units"] == total]
                out.append({"batchnorm": bn, "depth": d, "total_units": total,
                            "networks": len({r["name"] for r in grp}),
                            "runs": len(grp),
                            "mean_params": float(np.mean([r["params"] for r in grp])),
                            "mean_test_rmse": float(np.mean([r["test_rmse"] for r in grp])),
                            "mean_test_r2": float(np.mean([r["test_r2"] for r in grp])),
                            "mean_train_cpu_seconds": float(np.mean([r["train_cpu_seconds"]
                                                                     for r in grp]))})
    return out


def summarize(rows: List[dict], n_runs: int, seeds: Sequence[int],
              clock: str = "cpu") -> Dict[str, Any]:
    """Per-depth means with intervals over seeds, 'did not learn' flags, paired comparisons of
    the depths that learned, the best network by validation RMSE, and the time fit on
    ``clock``: "cpu" (CPU seconds) or "wall" (wall seconds: device time on "cuda", where the
    CPU seconds are the host's share), as ``<clock>_seconds_per_kparam``."""
    res: Dict[str, Any] = {"finished": len(rows), "n_runs": n_runs,
                           "complete": len(rows) == n_runs, "comparisons": [],
                           "depth_summary": [], "not_learned_depths": []}
    if not rows:
        return res
    arms = sorted({(r["batchnorm"], r["depth"]) for r in rows}, key=lambda a: (not a[0], a[1]))
    both = len({bn for bn, _ in arms}) > 1
    res["n_learned"] = sum(r["test_r2"] >= R2_LEARNED for r in rows)
    per_seed: Dict[Tuple[bool, int], Dict[int, float]] = {}
    for bn, d in arms:
        own = [r for r in rows if r["depth"] == d and r["batchnorm"] == bn]
        names = sorted({r["name"] for r in own})
        done_seeds = [s for s in seeds
                      if len([r for r in own if r["seed"] == s]) == len(names)]
        if not done_seeds:
            continue
        # the mean over this depth's configurations, one value per seed (equal weight per net)
        per_seed[bn, d] = {s: float(np.mean([r["test_rmse"] for r in own if r["seed"] == s]))
                           for s in done_seeds}
        r2_seed = [float(np.mean([r["test_r2"] for r in own if r["seed"] == s]))
                   for s in done_seeds]
        rm, rr = stats.summarize(list(per_seed[bn, d].values())), stats.summarize(r2_seed)
        learned = rr["mean"] >= R2_LEARNED
        label = arm_label(d, bn, both)
        res["depth_summary"].append({
            "arm": label, "depth": d, "batchnorm": bn, "configurations": len(names),
            "seeds": len(done_seeds), "mean_test_rmse": rm["mean"],
            "rmse_ci95_lo": rm["ci95"][0], "rmse_ci95_hi": rm["ci95"][1],
            "mean_test_r2": rr["mean"], "r2_ci95_lo": rr["ci95"][0], "r2_ci95_hi": rr["ci95"][1],
            "runs_learned": sum(r["test_r2"] >= R2_LEARNED for r in own),
            "runs": len(own), "learned": bool(learned)})
        if not learned:
            res["not_learned_depths"].append(label)
    learned_arms = [(row["batchnorm"], row["depth"]) for row in res["depth_summary"]
                    if row["learned"]]
    metric = "test RMSE, mean over the depth's configurations"
    for i, (bn_a, da) in enumerate(learned_arms):     # depths within one batch-norm mode
        for bn_b, db in learned_arms[i + 1:]:
            common = sorted(set(per_seed[bn_a, da]) & set(per_seed[bn_b, db]))
            if bn_a == bn_b and common:                 # paired: the seeds both finished
                res["comparisons"].append(stats.compare(
                    arm_label(da, bn_a, both), [per_seed[bn_a, da][s] for s in common],
                    arm_label(db, bn_b, both), [per_seed[bn_b, db][s] for s in common], metric,
                    higher_is_better=False))
    for d in sorted({d for _, d in learned_arms}):    # batch norm vs none, per depth
        if (True, d) in learned_arms and (False, d) in learned_arms:
            common = sorted(set(per_seed[True, d]) & set(per_seed[False, d]))
            if common:
                res["comparisons"].append(stats.compare(
                    arm_label(d, True, True), [per_seed[True, d][s] for s in common],
                    arm_label(d, False, True), [per_seed[False, d][s] for s in common], metric,
                    higher_is_better=False))
    res["comparison_sentences"] = [stats.sentence(c, 3) for c in res["comparisons"]]
    # the best network: the lowest mean *validation* RMSE over seeds; the test split only reports
    keyed: Dict[Tuple[str, bool], List[dict]] = {}
    for r in rows:
        keyed.setdefault((r["name"], r["batchnorm"]), []).append(r)
    best_key = min(keyed, key=lambda k: np.mean([r["val_rmse"] for r in keyed[k]]))
    grp = keyed[best_key]
    res.update(best_name=best_key[0] + ("" if not both else (" (BN)" if best_key[1]
                                                              else " (no BN)")),
               best_val_rmse=float(np.mean([r["val_rmse"] for r in grp])),
               best_test_rmse=float(np.mean([r["test_rmse"] for r in grp])),
               best_test_r2=float(np.mean([r["test_r2"] for r in grp])),
               best_params=grp[0]["params"], best_learned=bool(
                   np.mean([r["test_r2"] for r in grp]) >= R2_LEARNED))
    params = np.array([r["params"] for r in rows], float)
    secs = np.array([r[TIME_KEYS[clock]] for r in rows], float)
    if len(rows) >= 3 and params.std() > 0 and secs.std() > 0:
        res["time_param_corr"] = float(np.corrcoef(params, secs)[0, 1])
        res[f"{clock}_seconds_per_kparam"] = float(np.polyfit(params / 1e3, secs, 1)[0])
    return res


# -- report ---------------------------------------------------------------------------------------
def _colors(rows: List[dict]) -> Dict[Tuple[bool, int], str]:
    """One colour per arm (batch norm, depth), the same in every figure."""
    arms = sorted({(r["batchnorm"], r["depth"]) for r in rows}, key=lambda a: (not a[0], a[1]))
    return {a: f"C{i}" for i, a in enumerate(arms)}


def _figures(rep: Report, rows: List[dict], curve: List[dict], baseline: float,
             clock: str = "cpu") -> None:
    colors = _colors(rows)
    both = len({bn for bn, _ in colors}) > 1
    fig, axes = new_figure(ncols=2, figsize=(12, 4.2))
    for ax, key, xlabel in ((axes[0], "total_units", "total hidden units (count)"),
                            (axes[1], "mean_params", "parameters (count)")):
        for (bn, d), color in colors.items():
            pts = [c for c in curve if c["depth"] == d and c["batchnorm"] == bn]
            ax.plot([c[key] for c in pts], [c["mean_test_rmse"] for c in pts], "o-",
                    color=color, label=arm_label(d, bn, both) + " (mean per total)")
            own = [r for r in rows if r["depth"] == d and r["batchnorm"] == bn]
            ax.scatter([r["total_units" if key == "total_units" else "params"] for r in own],
                       [r["test_rmse"] for r in own], s=8, alpha=0.35, color=color)
        ax.axhline(baseline, color="grey", ls="--", label=f"predict-the-mean ({baseline:.1f})")
        ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test RMSE (Eggholder function units)")
        ax.legend(fontsize=7)
    axes[0].set_title("Test RMSE vs total hidden units")
    axes[1].set_title("Test RMSE vs parameters")
    fig.suptitle("Depth vs width: test RMSE (dots: single runs, lines: means)")
    rep.figure("rmse", fig, "Test RMSE per network and seed (dots) and the mean over networks "
               "and seeds with equal totals (lines), one colour per depth; dashed: the "
               "predict-the-mean baseline.")
    fig, ax = new_figure(figsize=(6, 4))
    for (bn, d), color in colors.items():
        own = [r for r in rows if r["depth"] == d and r["batchnorm"] == bn]
        ax.scatter([r["params"] for r in own], [r[TIME_KEYS[clock]] for r in own], s=12,
                   color=color, label=arm_label(d, bn, both))
    what = "CPU time" if clock == "cpu" else "wall time (device time)"
    ax.set_xlabel("parameters (count)")
    ax.set_ylabel(f"training {what} (s)")
    ax.set_title(f"Training {what} vs parameters")
    ax.legend()
    rep.figure("time_vs_params", fig, f"Training {what} vs parameter count, one dot per "
               "network and seed.")


def _write_report(out_dir: Path, config: Dict[str, Any], results: Dict[str, Any]) -> None:
    rep = Report(out_dir, "Depth vs width on the Eggholder regression", results)
    if results["diverged_runs"]:
        rep.note("Runs that diverged (the loss became NaN or infinite), left out: "
                 + "; ".join(results["diverged_runs"]) + ". A depth's mean over its "
                 "configurations needs all of them, so such a seed drops out of that depth's "
                 "interval and comparisons.")
    if not results["complete"]:
        rep.note("Partial run: {} of {} network runs finished; rerun with the same --out to "
                 "continue (finished networks are skipped, an unfinished one resumes from its "
                 "checkpoint).".format(results["finished"], results["n_runs"]))
    rep.setup(config)
    rep.text("Data: {n_points:,} points uniform in [-512, 512]^2, target Eggholder(x, y) + "
             "N(0, {noise_std}^2) noise (targets span {target_range}); {n_train:,} train / "
             "{n_val:,} validation (held out of the training points) / {n_test:,} test. Inputs "
             "are scaled to [-1, 1] and targets standardized with the training mean and std "
             "(std {y_std:.1f}); RMSE is reported in function units. Networks: ReLU MLPs with "
             "{depths} hidden layers, widths from {widths}, at most {max_total} hidden units in "
             "total ({n_configs} networks), batch norm after each hidden Linear: "
             "{batchnorm_text}; SGD lr {lr}, Nesterov momentum {momentum}, batch "
             "{batch_size}, {epochs} epochs, MSE loss; {n_seeds} seed(s) {seeds} (same data; "
             "the seed sets the initial weights and the batch order).")
    clock = "wall" if config.get("device", "cpu") == "cuda" else "cpu"
    if clock == "wall":
        rep.text("Every network trained on the device named under Setup (the loss and its "
                 "gradient on the host: the prediction is copied over and back each step). "
                 "train_seconds are wall seconds (device time: the Trainer reads every step's "
                 "loss) and the time fit below is on them; train_cpu_seconds are the host's "
                 "share.")
    rep.text("Predict-the-mean baseline (the training mean for every point): test RMSE "
             "{baseline_test_rmse:.2f}, validation RMSE {baseline_val_rmse:.2f}. R^2 = 1 - "
             "(RMSE / baseline RMSE)^2; a network with test R^2 < {r2_learned} did not learn.")
    if results["finished"] == 0:
        rep.text("No network run has finished without diverging, so there are no results "
                 "to show." if results["diverged_runs"] else
                 "No network has finished yet, so there are no results to show.")
        rep.write()
        return
    rep.table("networks", results["rows"], "Every finished network and seed",
              ["name", "batchnorm", "seed", "depth", "total_units", "params", "test_rmse",
               "test_r2", "learned", "val_rmse", "train_rmse", "train_cpu_seconds",
               "train_seconds", "epochs"])
    rep.table("depths", results["depth_summary"], "Per depth: the mean test RMSE over its "
              "configurations, averaged over seeds, with a 95% t-interval over seeds")
    rep.table("curves", results["curve"], "Mean over networks and seeds with equal total "
              "hidden units")
    _figures(rep, results["rows"], results["curve"], results["baseline_test_rmse"], clock)
    rep.comparisons(results["comparisons"], heading="Comparisons of depths (paired by seed)")
    lines = ["{n_learned} of {finished} network runs learned (test R^2 >= {r2_learned}); "
             "the predict-the-mean baseline's test RMSE is {baseline_test_rmse:.2f}."]
    lines += [f"{{depth_text[{i}]}}" for i in range(len(results["depth_text"]))]
    if results["comparisons"]:
        lines += [f"{{comparison_sentences[{i}]}}"
                  for i in range(len(results["comparison_sentences"]))]
    else:
        lines.append("No comparison of depths: {no_comparison_reason}")
    if results["best_learned"]:
        lines.append("Chosen on the validation split: {best_name} (validation RMSE "
                     "{best_val_rmse:.2f}, mean over seeds); its test RMSE is "
                     "{best_test_rmse:.2f} (R^2 {best_test_r2:.2f}), {best_params:,} parameters.")
    else:
        lines.append("No network is ranked: the one with the lowest validation RMSE "
                     "({best_name}, test R^2 {best_test_r2:.2f}) did not learn either.")
    if "time_param_corr" in results:
        what = "CPU time" if clock == "cpu" else "wall time on the device"
        lines.append(f"Training {what} grows by {{{clock}_seconds_per_kparam:.3g}} s per 1,000 "
                     "parameters (least-squares slope over networks and seeds; correlation "
                     "{time_param_corr:.2f}).")
    rep.conclusions(lines)
    rep.write()


def _depth_text(row: Dict[str, Any]) -> str:
    lo, hi = row["rmse_ci95_lo"], row["rmse_ci95_hi"]
    ci = (f"95% CI [{lo:.2f}, {hi:.2f}]" if lo is not None else "one seed, no interval")
    if not row["learned"]:
        return (f"{row['arm']}: did not learn (mean test R^2 {row['mean_test_r2']:.3f} < "
                f"{R2_LEARNED}; mean test RMSE {row['mean_test_rmse']:.2f}, {ci}); not ranked.")
    return (f"{row['arm']}: mean test RMSE {row['mean_test_rmse']:.2f} ({ci}) over "
            f"{row['configurations']} configurations and {row['seeds']} seed(s); mean test R^2 "
            f"{row['mean_test_r2']:.3f}; {row['runs_learned']} of {row['runs']} runs learned.")


@lab(name="depth-width",
     study="Deep vs wide ReLU MLPs within a 512-unit budget on the noisy Eggholder function",
     quick=_QUICK, standard=_STANDARD, full=_FULL,
     expected_seconds={"quick": 15, "standard": 2900, "full": 2_000_000})
def run(config: Dict[str, Any], out_dir, progress) -> Dict[str, Any]:
    """Train (or resume, or skip) every network for every seed and batch-norm arm, then
    aggregate and write the report."""
    check_config(config)
    configs = configurations(config["depths"], config["widths"], config["max_total"])
    seeds = stats.seeds_of(config)
    out_dir = Path(out_dir)
    _check_run_settings(out_dir, config)
    data = make_data(config["n_points"], config["noise_std"], config["test_fraction"],
                     config["seed"], config["val_fraction"])
    base_test = baseline_rmse(data["y_test"], data["y_std"])
    base_val = baseline_rmse(data["y_val"], data["y_std"])
    budget = config["epoch_budget"] or None
    _warm_up(config["seed"], config.get("device", "cpu"))
    jobs = [(s, bn, h) for s in seeds for bn in bn_arms(config["batchnorm"]) for h in configs]
    rows: List[dict] = []
    diverged: List[dict] = []
    for seed, bn, hidden in progress(jobs, desc="networks"):
        folder = out_dir / "configs" / arm_folder(seed, bn) / config_name(hidden)
        result, used = train_config(hidden, data, config, folder, max_epochs=budget, seed=seed,
                                    batchnorm=bn)
        if budget is not None:
            budget -= used
        if result is not None and result.get("diverged"):
            diverged.append(result)         # no RMSE; its depth loses this seed (see report)
        elif result is not None:
            result["test_r2"] = r2(result["test_rmse"], base_test)
            result["val_r2"] = r2(result["val_rmse"], base_val)
            result["learned"] = bool(result["test_r2"] >= R2_LEARNED)
            rows.append(result)
    results = summarize(rows, len(jobs) - len(diverged), seeds,
                        "wall" if config.get("device", "cpu") == "cuda" else "cpu")
    results["diverged_runs"] = [f"{r['name']} (seed {r['seed']}, "
                                f"{'BN' if r['batchnorm'] else 'no BN'}, epoch {r['epochs']})"
                                for r in diverged]
    learned = [r for r in results["depth_summary"] if r["learned"]]
    if results["not_learned_depths"]:
        why = (f"{', '.join(results['not_learned_depths'])} did not learn (mean test R^2 < "
               f"{R2_LEARNED}), and depths that did not learn are not ranked")
    else:
        why = "fewer than two depths finished"
    bn_text = {"all": "in every depth", "none": "in no depth",
               "both": "both, as arms (with and without, every depth)"}[config["batchnorm"]]
    results.update(rows=rows, curve=curves(rows), n_train=len(data["y_train"]),
                   n_val=len(data["y_val"]), n_test=len(data["y_test"]), y_std=data["y_std"],
                   n_configs=len(configs), seeds=seeds, n_seeds=len(seeds),
                   baseline_test_rmse=base_test, baseline_val_rmse=base_val,
                   r2_learned=R2_LEARNED, batchnorm_text=bn_text,
                   depth_text=[_depth_text(r) for r in results["depth_summary"]],
                   no_comparison_reason=why + "." if len(learned) < 2 or not
                   results["comparisons"] else "",
                   target_range=[round(v, 1) for v in data["target_range"]],
                   **{k: config[k] for k in ("n_points", "noise_std", "depths", "widths",
                                              "max_total", "lr", "momentum", "batch_size",
                                              "epochs", "batchnorm")})
    _write_report(out_dir, config, results)
    return results
