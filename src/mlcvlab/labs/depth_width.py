"""Lab ``depth-width``: deep vs wide MLPs on the Eggholder regression within a unit budget.

The study: fit the Eggholder function (2-D, very rugged) from 100k noisy samples
(80/20 train/test split) with ReLU MLPs of 1, 2 or 3 hidden layers whose widths
come from {16, ..., 512} with at most 512 hidden units in total; batch norm in
the 2- and 3-layer nets; SGD with Nesterov momentum, batch 1000, 2000 epochs.
It compares test RMSE against the total number of hidden units and against the
parameter count (one curve per depth, averaged over the networks with equal
totals) and training time against parameters.

The full preset is long (about 140 networks x 2000 epochs), so it is resumable:
each network trains in its own folder ``<out>/configs/<name>/``. A finished one
writes ``result.json`` (atomically) and is skipped by a rerun with the same
``--out``; an unfinished one keeps ``checkpoint.npz`` (the Trainer's
:class:`~mlcvlab.train.Checkpoint`) and resumes from it. ``epoch_budget`` caps
the epochs trained by one invocation, so the study can be run in pieces.
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
from mlcvlab.labs.registry import lab
from mlcvlab.labs.report import Report, new_figure
from mlcvlab.models import mlp
from mlcvlab.nn import MSELoss
from mlcvlab.optim import SGD
from mlcvlab.train import Checkpoint, Trainer, array_batches, evaluate, load_checkpoint
from mlcvlab.train.checkpoint import checkpoint_paths, save_checkpoint

EGGHOLDER_BOUND = 512.0

# settings that must agree between the pieces of one resumable run
_RUN_KEYS = ("n_points", "test_fraction", "noise_std", "epochs", "batch_size", "lr", "momentum",
             "seed")

_FULL = {"n_points": 100_000, "test_fraction": 0.2, "noise_std": 0.3, "depths": [1, 2, 3],
         "widths": [16, 32, 64, 128, 256, 512], "max_total": 512, "epochs": 2000,
         "batch_size": 1000, "lr": 0.01, "momentum": 0.9, "checkpoint_every": 10,
         "epoch_budget": 0}
_QUICK = {**_FULL, "n_points": 3000, "widths": [16, 32, 64], "max_total": 64, "epochs": 4,
          "batch_size": 250, "lr": 0.02, "checkpoint_every": 2}


# -- data -------------------------------------------------------------------------------------
def eggholder(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """f(x, y) = -(y+47) sin(sqrt|x/2 + y + 47|) - x sin(sqrt|x - (y+47)|); x, y: same shape."""
    return (-(y + 47) * np.sin(np.sqrt(np.abs(x / 2 + y + 47)))
            - x * np.sin(np.sqrt(np.abs(x - (y + 47)))))


def make_data(n_points: int, noise_std: float, test_fraction: float, seed: int) -> Dict[str, Any]:
    """Uniform points in [-512, 512]^2 with Eggholder targets plus N(0, noise_std^2) noise.

    Returns X_train (n_train, 2) and X_test inputs scaled to [-1, 1] (float32),
    y_train / y_test (n,) targets standardized by the training mean and std
    (float32), and ``y_mean`` / ``y_std`` to map errors back to function units.
    """
    if n_points < 10 or not 0 < test_fraction < 1:
        raise ValueError(f"depth-width make_data: need n_points >= 10 and 0 < test_fraction < 1, "
                         f"got n_points={n_points}, test_fraction={test_fraction}")
    gen = np.random.default_rng([seed, 0])
    pts = gen.uniform(-EGGHOLDER_BOUND, EGGHOLDER_BOUND, size=(n_points, 2))
    target = eggholder(pts[:, 0], pts[:, 1]) + gen.normal(0.0, noise_std, n_points)
    n_test = int(round(test_fraction * n_points))
    order = gen.permutation(n_points)
    test, train = order[:n_test], order[n_test:]
    mean, std = float(target[train].mean()), float(target[train].std())
    z = ((target - mean) / std).astype(np.float32)
    X = (pts / EGGHOLDER_BOUND).astype(np.float32)
    return {"X_train": X[train], "y_train": z[train], "X_test": X[test], "y_test": z[test],
            "y_mean": mean, "y_std": std,
            "target_range": [float(target.min()), float(target.max())]}


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


def build_model(hidden: Sequence[int], seed: int):
    """ReLU MLP 2 -> hidden... -> 1; batch norm after each hidden Linear when depth >= 2."""
    return mlp([2, *hidden, 1], batchnorm=len(hidden) >= 2, flatten=False,
               rng=np.random.default_rng([seed, 1, *hidden]))


# -- training one network (resumable) -------------------------------------------------------------
def _rmse(model, X, y, y_std) -> float:
    mse = evaluate(model, MSELoss(), array_batches(X, y, 10_000), classification=False)["loss"]
    return float(math.sqrt(mse) * y_std)


def train_config(hidden: Sequence[int], data: Dict[str, Any], config: Dict[str, Any],
                 folder: Path, max_epochs: Optional[int] = None) -> Tuple[Optional[dict], int]:
    """Train one network in ``folder``, resuming from its checkpoint if there is one.

    Trains at most ``max_epochs`` epochs in this call (None: to the end). Returns
    (result, epochs trained now); result is None while the network is unfinished
    (its checkpoint.npz is then up to date), else the dict also saved as result.json.
    """
    folder.mkdir(parents=True, exist_ok=True)
    result_path = folder / "result.json"
    if result_path.exists():
        return json.loads(result_path.read_text()), 0
    if max_epochs is not None and max_epochs <= 0:
        return None, 0                      # no budget left in this invocation
    model = build_model(hidden, config["seed"])
    opt = SGD(model.parameters(), lr=config["lr"], momentum=config["momentum"], nesterov=True)
    loader = EpochShuffledBatches(data["X_train"], data["y_train"], config["batch_size"],
                                  seed=hash_seed(config["seed"], hidden))
    ckpt = Checkpoint(str(folder), every=config["checkpoint_every"])
    trainer = Trainer(model, MSELoss(), opt, callbacks=[ckpt], classification=False)
    if checkpoint_paths(str(folder)):
        trainer.load_checkpoint_state(load_checkpoint(str(folder)))
        trainer.restore_loader(loader)
    remaining = config["epochs"] - trainer.epoch
    todo = remaining if max_epochs is None else max(0, min(remaining, max_epochs))
    trainer.fit(loader, todo)
    if trainer.epoch < config["epochs"]:
        save_checkpoint(str(folder), trainer.checkpoint_state())   # save the epochs since the last one
        return None, todo
    result = {"name": config_name(hidden), "depth": len(hidden), "widths": list(hidden),
              "total_units": int(sum(hidden)), "params": int(model.num_parameters()),
              "test_rmse": _rmse(model, data["X_test"], data["y_test"], data["y_std"]),
              "train_rmse": _rmse(model, data["X_train"], data["y_train"], data["y_std"]),
              "train_seconds": float(sum(trainer.history.column("seconds"))),
              "epochs": trainer.epoch, "final_train_loss": trainer.history[-1]["train_loss"]}
    atomic_write_text(str(result_path), json.dumps(result, indent=2))
    for path in checkpoint_paths(str(folder)):
        os.remove(path)                     # the result supersedes them
    return result, todo


def hash_seed(seed: int, hidden: Sequence[int]) -> int:
    """A per-network shuffling seed derived from the run seed and the widths."""
    return int(np.random.default_rng([seed, 2, *hidden]).integers(2**31))


def _warm_up(seed: int) -> None:
    """One throwaway SGD step, so compiling the optimizer kernel is not timed as training."""
    model = build_model((4, 4), seed)
    opt = SGD(model.parameters(), lr=0.0, momentum=0.9, nesterov=True)
    x = np.zeros((4, 2), np.float32)
    loss = MSELoss()
    loss(model(x), np.zeros((4, 1), np.float32))
    model.backward(loss.backward())
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
def curves(rows: List[dict]) -> List[dict]:
    """Per (depth, total hidden units): mean test RMSE, mean params, mean seconds, count."""
    out = []
    for d in sorted({r["depth"] for r in rows}):
        for total in sorted({r["total_units"] for r in rows if r["depth"] == d}):
            grp = [r for r in rows if r["depth"] == d and r["total_units"] == total]
            out.append({"depth": d, "total_units": total, "networks": len(grp),
                        "mean_params": float(np.mean([r["params"] for r in grp])),
                        "mean_test_rmse": float(np.mean([r["test_rmse"] for r in grp])),
                        "min_test_rmse": float(min(r["test_rmse"] for r in grp)),
                        "mean_train_seconds": float(np.mean([r["train_seconds"] for r in grp]))})
    return out


def _by_depth(values: Dict[int, float]) -> str:
    """'1 layer: 12.30, 2 layers: 10.10' from {depth: rmse}."""
    return ", ".join(f"{d} layer{'s' if d > 1 else ''}: {v:.2f}" for d, v in values.items())


def summarize(rows: List[dict], n_configs: int) -> Dict[str, Any]:
    """Headline numbers: best network, best per depth, comparison at a common total, time fit."""
    res: Dict[str, Any] = {"finished": len(rows), "n_configs": n_configs,
                           "complete": len(rows) == n_configs}
    if not rows:
        return res
    best = min(rows, key=lambda r: r["test_rmse"])
    res.update(best_name=best["name"], best_rmse=best["test_rmse"], best_params=best["params"])
    per_depth = {d: min(r["test_rmse"] for r in rows if r["depth"] == d)
                 for d in sorted({r["depth"] for r in rows})}
    res["best_per_depth"] = {str(d): v for d, v in per_depth.items()}
    res["best_per_depth_text"] = _by_depth(per_depth)
    curve = curves(rows)
    depths = sorted({c["depth"] for c in curve})
    common = set.intersection(*({c["total_units"] for c in curve if c["depth"] == d}
                                for d in depths))
    if common:
        t = max(common)
        at = {c["depth"]: c["mean_test_rmse"] for c in curve if c["total_units"] == t}
        gap = at[depths[-1]] - at[depths[0]]
        res.update(common_total=t, common_rmse={str(d): at[d] for d in depths},
                   common_rmse_text=_by_depth(at),
                   deepest_vs_shallowest=gap, deep_word="lower" if gap < 0 else "not lower")
    params = np.array([r["params"] for r in rows], float)
    secs = np.array([r["train_seconds"] for r in rows], float)
    if len(rows) >= 3 and params.std() > 0 and secs.std() > 0:
        res["time_param_corr"] = float(np.corrcoef(params, secs)[0, 1])
        res["seconds_per_kparam"] = float(np.polyfit(params / 1e3, secs, 1)[0])
    return res


# -- report ---------------------------------------------------------------------------------------
def _figures(rep: Report, rows: List[dict], curve: List[dict]) -> None:
    depths = sorted({r["depth"] for r in rows})
    for key, xlabel, name in (("total_units", "total hidden units", "rmse_vs_units"),
                              ("mean_params", "parameters", "rmse_vs_params")):
        fig, ax = new_figure(figsize=(6, 4))
        for d in depths:
            pts = [c for c in curve if c["depth"] == d]
            line, = ax.plot([c[key] for c in pts], [c["mean_test_rmse"] for c in pts], "o-",
                            label=f"{d} hidden layer{'s' if d > 1 else ''}")
            if key == "mean_params":
                own = [r for r in rows if r["depth"] == d]
                ax.scatter([r["params"] for r in own], [r["test_rmse"] for r in own], s=8,
                           alpha=0.35, color=line.get_color())
        ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel + (" (dots: single networks, line: mean per total)"
                                if key == "mean_params" else ""))
        ax.set_ylabel("test RMSE (function units)")
        ax.legend()
        rep.figure(name, fig, f"Test RMSE vs {xlabel}, mean over the networks with equal total "
                   "hidden units, per depth.")
    fig, ax = new_figure(figsize=(6, 4))
    for d in depths:
        own = [r for r in rows if r["depth"] == d]
        ax.scatter([r["params"] for r in own], [r["train_seconds"] for r in own], s=12,
                   label=f"{d} hidden layer{'s' if d > 1 else ''}")
    ax.set_xlabel("parameters")
    ax.set_ylabel("training time (s)")
    ax.legend()
    rep.figure("time_vs_params", fig, "Training time vs parameter count, one dot per network.")


def _write_report(out_dir: Path, config: Dict[str, Any], results: Dict[str, Any]) -> None:
    rep = Report(out_dir, "Depth vs width on the Eggholder regression", results)
    if not results["complete"]:
        rep.note("Partial run: {} of {} networks finished; rerun with the same --out to continue "
                 "(finished networks are skipped, an unfinished one resumes from its "
                 "checkpoint).".format(results["finished"], results["n_configs"]))
    rep.setup(config)
    rep.text("Data: {n_points:,} points uniform in [-512, 512]^2, target Eggholder(x, y) + "
             "N(0, {noise_std}^2) noise (targets span {target_range}); {n_train:,} train / "
             "{n_test:,} test. Inputs are scaled to [-1, 1] and targets standardized with the "
             "training mean and std (std {y_std:.1f}); RMSE is reported in function units. "
             "Networks: ReLU MLPs with {depths} hidden layers, widths from {widths}, at most "
             "{max_total} hidden units in total ({n_configs} networks), batch norm after each "
             "hidden Linear for 2+ layers; SGD lr {lr}, Nesterov momentum {momentum}, batch "
             "{batch_size}, {epochs} epochs, MSE loss.")
    if results["finished"] == 0:
        rep.text("No network has finished yet, so there are no results to show.")
        rep.write()
        return
    rep.table("networks", results["rows"], "Every finished network",
              ["name", "depth", "total_units", "params", "test_rmse", "train_rmse",
               "train_seconds", "epochs"])
    rep.table("curves", results["curve"], "Mean over networks with equal total hidden units")
    _figures(rep, results["rows"], results["curve"])
    lines = ["The lowest test RMSE is {best_rmse:.2f} ({best_name}, {best_params:,} parameters).",
             "Best test RMSE per depth: {best_per_depth_text}."]
    if "common_total" in results:
        lines.append("At {common_total} total hidden units (the largest total every depth "
                     "reaches), the mean test RMSE is {common_rmse_text}: the deepest "
                     "networks' error is {deep_word} than the shallowest ones' (difference "
                     "{deepest_vs_shallowest:+.2f}).")
    if "time_param_corr" in results:
        lines.append("Training time grows by {seconds_per_kparam:.3g} s per 1,000 parameters "
                     "(least-squares slope; correlation {time_param_corr:.2f}).")
    rep.conclusions(lines)
    rep.write()


@lab(name="depth-width",
     study="Deep vs wide ReLU MLPs within a 512-unit budget on the noisy Eggholder function",
     quick=_QUICK, full=_FULL, expected_seconds={"quick": 6, "full": 200_000})
def run(config: Dict[str, Any], out_dir, progress) -> Dict[str, Any]:
    """Train (or resume, or skip) every network, then aggregate and write the report."""
    out_dir = Path(out_dir)
    _check_run_settings(out_dir, config)
    data = make_data(config["n_points"], config["noise_std"], config["test_fraction"],
                     config["seed"])
    configs = configurations(config["depths"], config["widths"], config["max_total"])
    budget = config["epoch_budget"] or None
    _warm_up(config["seed"])
    rows: List[dict] = []
    for hidden in progress(configs, desc="networks"):
        result, used = train_config(hidden, data, config, out_dir / "configs" / config_name(hidden),
                                    max_epochs=budget)
        if budget is not None:
            budget -= used
        if result is not None:
            rows.append(result)
    results = summarize(rows, len(configs))
    results.update(rows=rows, curve=curves(rows), n_train=len(data["y_train"]),
                   n_test=len(data["y_test"]), y_std=data["y_std"],
                   target_range=[round(v, 1) for v in data["target_range"]],
                   **{k: config[k] for k in ("n_points", "noise_std", "depths", "widths",
                                              "max_total", "lr", "momentum", "batch_size",
                                              "epochs")})
    _write_report(out_dir, config, results)
    return results
