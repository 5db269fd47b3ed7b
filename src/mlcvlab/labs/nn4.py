"""Lab ``nn4``: the handout's NN4 trained with SyncSGD for K = 1, 2, 4 workers, over seeds.

NN4 (Dropout -> Linear -> ReLU -> BatchNorm, three times, then Dropout -> Linear ->
softmax) is trained on MNIST (the embedded ``mnist10k`` when MNIST is not on disk)
with :class:`mlcvlab.optim.sync_sgd.SyncSGD`: every round takes a global batch B,
divides it into K mini-batches of B/K, averages the K gradients computed at the
same weights and steps W <- W - δ·∇L̂. The workers are the ``local`` communicator
(exact synchronous semantics in one process).

Every K runs over the same ``seeds``, paired by seed: for one seed every K starts from
the same initial weights and sees the same global batches in the same order. So, for one
seed, differences between K come only from what depends on the mini-batch: batch-norm
statistics over B/K samples instead of B, and each worker's own dropout masks. Without
batch norm and dropout every K would follow the same trajectory up to float rounding.
That is what the comparisons K vs K = 1 measure, not the speed of parallel training.

A validation split (``val_fraction`` of the training images, stratified, seeded) gives the
per-epoch curves; the test split is evaluated once, after the last epoch.

``device`` "cuda" (``--device cuda``) runs the rounds on the handout's CUDA workers
(``SyncSGD(..., comm="cuda")``, what ``mlcvlab train --dist cuda`` uses): the K workers'
forward and backward, the gradient average and the SGD update are numba kernels on the GPU
(the K workers take turns on one GPU; with several, worker k uses GPU k mod G). Worker k
draws the dropout masks of worker k on the CPU, so a seed's rounds are the CPU run's up to
float rounding. The weights come back to the host after every round, where the curves and
the test split are evaluated. No time is measured or compared.
"""
from __future__ import annotations

from typing import Any, Dict, List

import numpy as np

from mlcvlab.labs import stats
from mlcvlab.labs.checks import Checker
from mlcvlab.labs.registry import lab
from mlcvlab.labs.report import Report, new_figure

QUICK = {"dataset": "mnist", "workers": [1, 2, 4], "hidden": [64, 32, 32], "epochs": 3,
         "batch_size": 64, "lr": 0.1, "p_input": 0.2, "p_hidden": 0.5, "n_train": 1024,
         "n_test": 500, "val_fraction": 0.1, "seeds": 2, "seed": 0, "device": "cpu"}
STANDARD = {**QUICK, "hidden": [256, 128, 64], "epochs": 12, "batch_size": 128,
            "n_train": 0, "n_test": 0, "seeds": 5}
FULL = {**QUICK, "hidden": [512, 256, 128], "epochs": 20, "batch_size": 256, "n_train": 0,
        "n_test": 0, "seeds": 5}


def load_data(config: Dict[str, Any]):
    """Flattened (train, val, test) arrays (N, 784) float32 with int labels; dataset and note.

    The validation split is held out of the (sub-sampled) training images, the same for
    every K and seed."""
    from mlcvlab.data import train_val_split
    from mlcvlab.data.datasets import load, resolve_dataset
    used, note = resolve_dataset(config["dataset"])
    out, gen = [], np.random.default_rng(config["seed"])
    for split, n in (("train", config["n_train"]), ("test", config["n_test"])):
        X, y = load(used, split)
        if n and n < len(X):           # a random subset: the files may be sorted by class
            idx = np.sort(gen.choice(len(X), size=n, replace=False))
            X, y = X[idx], y[idx]
        out += [X.reshape(len(X), -1).astype(np.float32), np.asarray(y, dtype=np.int64)]
    X, y, Xt, yt = out
    X, y, Xv, yv = train_val_split(X, y, config["val_fraction"], seed=config["seed"])
    return (X, y, Xv, yv, Xt, yt), used, note


def train_k(k: int, data, config: Dict[str, Any], seed: int, progress) -> Dict[str, Any]:
    """Train NN4 with SyncSGD on K = k workers from seed ``seed`` (initial weights, batch
    order, dropout streams), on the CPU or (config["device"] "cuda") the handout's CUDA
    workers; per-epoch train / validation curves and one final test."""
    from mlcvlab.models import NN4
    from mlcvlab.optim.sync_sgd import SyncSGD
    from mlcvlab.train import array_batches, evaluate
    X, y, Xv, yv, Xt, yt = data
    classes = int(max(y.max(), yv.max(), yt.max()) + 1)
    model = NN4(X.shape[1], hidden=config["hidden"], n_classes=classes, p_input=config["p_input"],
                p_hidden=config["p_hidden"], rng=seed)
    comm = "cuda" if config.get("device", "cpu") == "cuda" else "local"
    sync = SyncSGD(model, lr=config["lr"], workers=k, comm=comm, seed=seed)
    gen = np.random.default_rng([seed, 1])        # the same batches for every K
    B = config["batch_size"]
    curve = []
    for epoch in progress(range(1, config["epochs"] + 1), desc=f"seed {seed} K={k}"):
        order = gen.permutation(len(X))
        losses = [sync.step(X[order[i:i + B]], y[order[i:i + B]])
                  for i in range(0, len(X) - B + 1, B)]
        train = evaluate(model, model.loss_fn(), array_batches(X, y))
        val = evaluate(model, model.loss_fn(), array_batches(Xv, yv))
        curve.append({"seed": seed, "K": k, "epoch": epoch, "round_loss": float(np.mean(losses)),
                      "train_loss": train["loss"], "train_acc": train["acc"],
                      "val_loss": val["loss"], "val_acc": val["acc"]})
    test = evaluate(model, model.loss_fn(), array_batches(Xt, yt))      # once, at the end
    return {"seed": seed, "K": k, "per_worker_batch": B // k,
            "rounds": len(losses) * config["epochs"],
            "final_train_loss": curve[-1]["train_loss"], "final_train_acc": curve[-1]["train_acc"],
            "final_val_acc": curve[-1]["val_acc"], "test_acc": test["acc"],
            "test_loss": test["loss"], "curve": curve}


def _figure(runs, ks, epochs):
    fig, (ax1, ax2) = new_figure(ncols=2, figsize=(11, 4.2))
    ep = list(range(1, epochs + 1))
    for i, k in enumerate(ks):
        color = f"C{i}"
        mine = [r for r in runs if r["K"] == k]
        for j, (ax, key) in enumerate(((ax1, "round_loss"), (ax2, "val_acc"))):
            per_seed = np.array([[c[key] for c in r["curve"]] for r in mine])
            for row in per_seed:
                ax.plot(ep, row, "-", color=color, alpha=0.25, lw=0.8)
            ax.plot(ep, per_seed.mean(axis=0), "o-", color=color,
                    label=f"K={k} (mean of {len(mine)} seeds; thin: each seed)")
    for ax in (ax1, ax2):
        ax.set_xticks(ep)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    ax1.set_ylabel("training loss (cross-entropy, mean over the epoch's rounds)")
    ax1.set_title("Training loss per epoch")
    ax2.set_ylabel("validation accuracy (fraction)")
    ax2.set_title("Validation accuracy per epoch (held out of training)")
    fig.suptitle("NN4 with synchronous SGD, K workers, global batch fixed")
    return fig


STUDY = "NN4 (the course handout's network) trained with synchronous SGD over K = 1, 2, 4 workers"


def _validate(config: Dict[str, Any]) -> List[int]:
    """A clear ValueError for every bad config value, before any work; the worker counts."""
    check = Checker("nn4", config)
    for key, lo in (("epochs", 1), ("batch_size", 1), ("n_train", 0), ("n_test", 0)):
        check.integer(key, lo)
    ks = check.integers("workers", 1)
    if len(set(ks)) != len(ks) or any(config["batch_size"] % k for k in ks):
        check.fail("workers", f"distinct integers >= 1 dividing batch_size "
                              f"{config['batch_size']}")
    check.integers("hidden", 1, length=3)
    check.number("lr", 0, lo_open=True)
    check.probability("p_input")
    check.probability("p_hidden")
    check.number("val_fraction", 0, 1, lo_open=True, hi_open=True)
    stats.seeds_of(config)
    return [int(k) for k in ks]


@lab(name="nn4", study=STUDY, quick=QUICK, standard=STANDARD, full=FULL,
     expected_seconds={"quick": 15, "standard": 1900, "full": 7200})
def run(config, out_dir, progress):
    ks = _validate(config)
    seeds = stats.seeds_of(config)
    data, used, note = load_data(config)
    if len(data[0]) < config["batch_size"]:
        raise ValueError(f"nn4 lab: batch_size {config['batch_size']} is larger than the "
                         f"{len(data[0])} training images left after the validation split")
    runs = [train_k(k, data, config, s, progress) for s in seeds for k in ks]
    by_k = {k: [r for r in runs if r["K"] == k] for k in ks}   # in seed order
    base = ks[0]
    comps = []
    for k in ks[1:]:
        for metric, key, hib in (("test accuracy", "test_acc", True),
                                 ("final training loss", "final_train_loss", False)):
            c = stats.compare(f"K={k}", [r[key] for r in by_k[k]], f"K={base}",
                              [r[key] for r in by_k[base]], metric, higher_is_better=hib)
            c.update(K=k, K_ref=base)
            comps.append(c)
    rows = []
    for k in ks:
        s = stats.summarize([r["test_acc"] for r in by_k[k]])
        rows.append({"K": k, "per_worker_batch": config["batch_size"] // k,
                     "rounds": by_k[k][0]["rounds"], "seeds": len(seeds),
                     "test_acc_mean": s["mean"], "test_acc_ci_lo": s["ci95"][0],
                     "test_acc_ci_hi": s["ci95"][1],
                     "final_val_acc_mean": float(np.mean([r["final_val_acc"] for r in by_k[k]])),
                     "final_train_loss_mean": float(np.mean([r["final_train_loss"]
                                                             for r in by_k[k]]))})
    acc = [c for c in comps if c["metric"] == "test accuracy"]
    results = {"runs": runs, "summary_rows": rows, "comparisons": comps, "used": used,
               "seeds": seeds, "n_seeds": len(seeds), "n_train": len(data[0]),
               "n_val": len(data[2]), "n_test": len(data[4]), "batch": config["batch_size"],
               "k_ref": base, "kmax": ks[-1], "kmax_batch": config["batch_size"] // ks[-1],
               "acc_sentences": [stats.sentence(c) for c in acc],
               "n_acc_sep": sum(c["verdict"] != "not separable" for c in acc),
               "n_acc": len(acc)}
    rep = Report(out_dir, "NN4 with synchronous SGD", results)
    if note:
        rep.note_substitution(config["dataset"], used)
    rep.setup(config)
    rep.text("Each round: a global batch of {batch} samples split into K mini-batches, the K "
             "gradients of the empirical loss at the same weights averaged, W ← W − δ·∇L̂. "
             "{n_train} training / {n_val} validation (held out of training, for the curves) / "
             "{n_test} test images (evaluated once, after the last epoch). Seeds {seeds}: for "
             "one seed every K starts from the same weights and sees the same global batches, "
             "so a K vs K = {k_ref} comparison measures only what depends on the mini-batch: "
             "batch-norm statistics over B/K samples ({kmax_batch} per worker at K = {kmax} "
             "instead of {batch}) and each worker's own dropout masks. It does not measure "
             "parallel speed (the workers run one after the other in this process).")
    rep.table("test_accuracy", rows, "Test accuracy per number of workers (mean and 95% CI over "
              "{n_seeds} seeds)")
    rep.table("runs", [{k: r[k] for k in ("seed", "K", "per_worker_batch", "rounds",
                                          "final_train_loss", "final_train_acc", "final_val_acc",
                                          "test_loss", "test_acc")} for r in runs],
              "Every run (one row per seed and K)")
    rep.table("curves", [c for r in runs for c in r["curve"]], "Per-epoch curves "
              "(validation split)")
    rep.figure("curves", _figure(runs, ks, config["epochs"]),
               "Training loss and validation accuracy per epoch for each K")
    rep.comparisons(comps, "Comparisons (paired by seed)")
    bullets = ["{acc_sentences[%d]}" % i for i in range(len(acc))]
    bullets.append("{n_acc_sep} of the {n_acc} test-accuracy comparisons separate K from "
                   "K = {k_ref} at 95% confidence over {n_seeds} seeds.")
    rep.conclusions(bullets)
    rep.explanation("with the global batch fixed, K changes only the batch-norm statistics "
                    "(computed over B/K samples per worker, a noisier estimate that also acts "
                    "as a regularizer) and the dropout masks; without batch norm and dropout "
                    "every K would give the same trajectory up to float rounding, so any "
                    "effect of K here is an effect of per-worker normalization and masks.")
    rep.write()
    return results
