"""Lab ``nn4``: the handout's NN4 trained with SyncSGD for K = 1, 2, 4 workers.

NN4 (Dropout -> Linear -> ReLU -> BatchNorm, three times, then Dropout -> Linear ->
softmax) is trained on MNIST (the embedded ``mnist10k`` when MNIST is not on disk)
with :class:`mlcvlab.optim.sync_sgd.SyncSGD`: every round takes a global batch B,
divides it into K mini-batches of B/K, averages the K gradients computed at the
same weights and steps W <- W - δ·∇L̂. The workers are the ``local`` communicator
(exact synchronous semantics in one process), with the same seed and the same
batches for every K, so differences between K come only from what depends on the
mini-batch: batch-norm statistics over B/K samples and each worker's dropout masks.
"""
from __future__ import annotations

from typing import Any, Dict

import numpy as np

from mlcvlab.labs.registry import lab
from mlcvlab.labs.report import Report, new_figure

QUICK = {"dataset": "mnist", "workers": [1, 2, 4], "hidden": [64, 32, 32], "epochs": 3,
         "batch_size": 64, "lr": 0.1, "p_input": 0.2, "p_hidden": 0.5, "n_train": 1024,
         "n_test": 500, "seed": 0}
FULL = {"dataset": "mnist", "workers": [1, 2, 4], "hidden": [512, 256, 128], "epochs": 20,
        "batch_size": 256, "lr": 0.1, "p_input": 0.2, "p_hidden": 0.5, "n_train": 0,
        "n_test": 0, "seed": 0}


def load_data(config: Dict[str, Any]):
    """Flattened train/test arrays (N, 784) float32 and int labels; the dataset used and note."""
    from mlcvlab.data.datasets import load, resolve_dataset
    used, note = resolve_dataset(config["dataset"])
    out, gen = [], np.random.default_rng(config["seed"])
    for split, n in (("train", config["n_train"]), ("test", config["n_test"])):
        X, y = load(used, split)
        if n and n < len(X):           # a random subset: the files may be sorted by class
            idx = np.sort(gen.choice(len(X), size=n, replace=False))
            X, y = X[idx], y[idx]
        out += [X.reshape(len(X), -1).astype(np.float32), np.asarray(y, dtype=np.int64)]
    return (*out, used, note)


def train_k(k: int, data, config: Dict[str, Any], progress) -> Dict[str, Any]:
    """Train NN4 with SyncSGD on K = k workers; per-epoch loss and accuracy curves."""
    from mlcvlab.models import NN4
    from mlcvlab.optim.sync_sgd import SyncSGD
    from mlcvlab.train import array_batches, evaluate
    X, y, Xt, yt = data
    classes = int(max(y.max(), yt.max()) + 1)
    model = NN4(X.shape[1], hidden=config["hidden"], n_classes=classes, p_input=config["p_input"],
                p_hidden=config["p_hidden"], rng=config["seed"])
    sync = SyncSGD(model, lr=config["lr"], workers=k, seed=config["seed"])
    gen = np.random.default_rng(config["seed"])        # the same batches for every K
    B = config["batch_size"]
    curve = []
    for epoch in progress(range(1, config["epochs"] + 1), desc=f"K={k}"):
        order = gen.permutation(len(X))
        losses = [sync.step(X[order[i:i + B]], y[order[i:i + B]])
                  for i in range(0, len(X) - B + 1, B)]
        train = evaluate(model, model.loss_fn(), array_batches(X, y))
        test = evaluate(model, model.loss_fn(), array_batches(Xt, yt))
        curve.append({"K": k, "epoch": epoch, "round_loss": float(np.mean(losses)),
                      "train_loss": train["loss"], "train_acc": train["acc"],
                      "test_loss": test["loss"], "test_acc": test["acc"]})
    return {"K": k, "per_worker_batch": B // k, "rounds": len(losses) * config["epochs"],
            "final_train_loss": curve[-1]["train_loss"], "final_train_acc": curve[-1]["train_acc"],
            "test_acc": curve[-1]["test_acc"], "test_loss": curve[-1]["test_loss"],
            "curve": curve}


def _figure(runs):
    fig, (ax1, ax2) = new_figure(ncols=2, figsize=(10, 4))
    for r in runs:
        ep = [c["epoch"] for c in r["curve"]]
        ax1.plot(ep, [c["round_loss"] for c in r["curve"]], "o-", label=f"K={r['K']}")
        ax2.plot(ep, [c["test_acc"] for c in r["curve"]], "o-", label=f"K={r['K']} test")
        ax2.plot(ep, [c["train_acc"] for c in r["curve"]], "x--", label=f"K={r['K']} train")
    ax1.set_xlabel("epoch"), ax1.set_ylabel("training loss (mean over rounds)"), ax1.legend()
    ax2.set_xlabel("epoch"), ax2.set_ylabel("accuracy"), ax2.legend(fontsize=7)
    return fig


STUDY = "NN4 (the course handout's network) trained with synchronous SGD over K = 1, 2, 4 workers"


@lab(name="nn4", study=STUDY, quick=QUICK, full=FULL, expected_seconds={"quick": 20, "full": 1200})
def run(config, out_dir, progress):
    ks = [int(k) for k in config["workers"]]
    if not ks or any(k < 1 or config["batch_size"] % k for k in ks):
        raise ValueError(f"nn4 lab: workers must be integers >= 1 dividing batch_size "
                         f"{config['batch_size']}, got {config['workers']}")
    *data, used, note = load_data(config)
    runs = [train_k(k, data, config, progress) for k in ks]
    accs = [r["test_acc"] for r in runs]
    best, worst = runs[int(np.argmax(accs))], runs[int(np.argmin(accs))]
    results = {"runs": runs, "used": used, "n_train": len(data[0]), "n_test": len(data[2]),
               "best_K": best["K"], "best_acc": best["test_acc"], "worst_K": worst["K"],
               "worst_acc": worst["test_acc"], "spread_points": 100 * (max(accs) - min(accs)),
               "k1_acc": runs[0]["test_acc"], "k1": runs[0]["K"], "kmax": runs[-1]["K"],
               "kmax_acc": runs[-1]["test_acc"], "kmax_batch": runs[-1]["per_worker_batch"],
               "batch": config["batch_size"]}
    results["direction"] = ("lower" if results["kmax_acc"] < results["k1_acc"] else
                            "higher" if results["kmax_acc"] > results["k1_acc"] else "the same")
    rep = Report(out_dir, "NN4 with synchronous SGD", results)
    if note:
        rep.note_substitution(config["dataset"], used)
    rep.setup(config)
    rep.text("Each round: a global batch of {batch} samples split into K mini-batches, the K "
             "gradients of the empirical loss at the same weights averaged, W ← W − δ·∇L̂. "
             "{n_train} training / {n_test} test images; the same seed and batches for every K.")
    rows = [{k: r[k] for k in ("K", "per_worker_batch", "rounds", "final_train_loss",
                               "final_train_acc", "test_loss", "test_acc")} for r in runs]
    rep.table("test_accuracy", rows, "Final accuracy per number of workers")
    rep.table("curves", [c for r in runs for c in r["curve"]], "Per-epoch curves")
    rep.figure("curves", _figure(runs), "Training loss and accuracy per epoch for each K")
    rep.conclusions([
        "Test accuracy is {k1_acc:.4f} with K = {k1} and {kmax_acc:.4f} with K = {kmax} "
        "({direction}); the spread over K is {spread_points:.2f} points (best K = {best_K}: "
        "{best_acc:.4f}, worst K = {worst_K}: {worst_acc:.4f}).",
        "With the global batch fixed, K only changes what each worker sees: batch-norm "
        "statistics over {kmax_batch} samples per worker at K = {kmax} instead of {batch}, and "
        "independent dropout masks per worker; without batch norm and dropout every K would give "
        "the same trajectory up to rounding.",
    ])
    rep.write()
    return results
