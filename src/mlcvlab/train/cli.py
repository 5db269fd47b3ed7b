"""``mlcvlab train``, ``mlcvlab eval`` and ``mlcvlab summary``."""
from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
from typing import Any, Dict

import numpy as np

from mlcvlab.io import atomic_save_npz, atomic_write_text, load_npz

OPTIMIZERS = ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "rmsprop-nesterov", "adadelta",
              "adam", "adamw"]
DEFAULT_LR = {"sgd": 0.1, "momentum": 0.05, "nesterov": 0.05, "adagrad": 0.01, "rmsprop": 0.001,
              "rmsprop-nesterov": 0.001, "adadelta": 1.0, "adam": 0.001, "adamw": 0.001}
SCHEDULES = ["none", "exponential", "cyclic"]
DEFAULT_DATASET = "mnist10k"


def build_optimizer(name: str, params, lr: float, weight_decay: float = 0.0, momentum: float = 0.9):
    """An optimizer of ``mlcvlab.optim`` by its CLI name."""
    from mlcvlab import optim
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")
    wd = {"weight_decay": weight_decay}
    if name == "sgd":
        return optim.SGD(params, lr=lr, **wd)
    if name == "momentum":
        return optim.SGD(params, lr=lr, momentum=momentum, **wd)
    if name == "nesterov":
        return optim.SGD(params, lr=lr, momentum=momentum, nesterov=True, **wd)
    if name == "adagrad":
        return optim.AdaGrad(params, lr=lr, **wd)
    if name == "rmsprop":
        return optim.RMSProp(params, lr=lr, **wd)
    if name == "rmsprop-nesterov":
        return optim.RMSProp(params, lr=lr, momentum=momentum, nesterov=True, **wd)
    if name == "adadelta":
        return optim.AdaDelta(params, lr=lr, **wd)
    if name == "adam":
        return optim.Adam(params, lr=lr, **wd)
    return optim.AdamW(params, lr=lr, weight_decay=weight_decay or 0.01)


def build_schedule(name: str, optimizer, steps_per_epoch: int, lr: float):
    from mlcvlab import optim
    if name == "none":
        return []
    if name == "exponential":
        # lr decays by 10x over 20 epochs of batches
        return [optim.ExponentialDecay(optimizer, gamma=0.1 ** (1.0 / (20 * steps_per_epoch)))]
    if name == "cyclic":
        return [optim.CyclicLR(optimizer, base_lr=lr / 10, max_lr=lr, step_size=2 * steps_per_epoch,
                               mode="triangular2")]
    raise ValueError(f"unknown schedule {name!r}; choose one of {SCHEDULES}")


def build_model(name: str, in_shape, n_classes: int, seed: int):
    """A model by name for inputs of shape ``in_shape`` (C, H, W) and ``n_classes``."""
    from mlcvlab import models
    in_features = int(np.prod(in_shape))
    if name == "nn4":
        return models.NN4(in_features, n_classes=n_classes, rng=seed)
    if name == "mlp":
        return models.mlp([in_features, 512, 256, n_classes], rng=seed)
    builder = models.MODELS.get(name)
    kwargs = {"num_classes": n_classes, "in_channels": in_shape[0], "rng": seed}
    if builder is not None:   # pass only what this model's constructor takes
        accepted = inspect.signature(builder).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
            kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    return models.get_model(name, **kwargs)


def loss_for(model):
    from mlcvlab import nn
    if hasattr(model, "loss_fn"):
        return model.loss_fn()
    return nn.CrossEntropyLoss()


# ---------------------------------------------------------------------------------- train
def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="nn4", help="nn4, mlp, lenet5, resnet20, ... (default nn4)")
    p.add_argument("--dataset", default=None, help=f"dataset name (default {DEFAULT_DATASET})")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64, help="global batch, split across workers")
    p.add_argument("--optimizer", default="sgd", choices=OPTIMIZERS)
    p.add_argument("--lr", type=float, default=None, help="learning rate (default per optimizer)")
    p.add_argument("--momentum", type=float, default=0.9,
                   help="for momentum/nesterov/rmsprop-nesterov")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--schedule", default="none", choices=SCHEDULES)
    p.add_argument("--workers", type=int, default=1, help="data-parallel workers K")
    p.add_argument("--dist", default="local", choices=["local", "mpi", "cuda"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/latest", help="run folder (default runs/latest)")
    p.add_argument("--resume", default=None, metavar="DIR", help="continue the run saved in DIR")
    p.add_argument("--data-root", default=None, help="folder with dataset files")
    p.add_argument("--threads", type=int, default=None,
                   help="BLAS threads per process (default $MLCVLAB_THREADS or 1)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def _load_data(name: str, root):
    from mlcvlab import data
    X_train, y_train = data.load(name, split="train", root=root)
    X_test, y_test = data.load(name, split="test", root=root)
    return (np.asarray(X_train, dtype=np.float32), np.asarray(y_train, dtype=np.int64),
            np.asarray(X_test, dtype=np.float32), np.asarray(y_test, dtype=np.int64))


def _check_train_args(args) -> None:
    if args.epochs < 0:
        raise ValueError(f"--epochs must be >= 0, got {args.epochs}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.batch_size % args.workers:
        raise ValueError(f"--batch-size {args.batch_size} must be divisible by --workers "
                         f"{args.workers} (the global batch is split evenly)")


def run_train(args) -> int:
    if getattr(args, "dist", "local") == "mpi" and not getattr(args, "_mpi_guarded", False):
        # under mpiexec an exception on one rank would leave the others waiting in a
        # collective: abort every rank (exit code 1) instead of hanging
        from mlcvlab.parallel.mpi import abort_on_error
        args._mpi_guarded = True
        with abort_on_error():
            return run_train(args)
    from mlcvlab import backend
    from mlcvlab.data import DataLoader
    from mlcvlab.train import Checkpoint, Trainer, array_batches, evaluate, load_checkpoint

    config: Dict[str, Any]
    if args.resume:
        with open(os.path.join(args.resume, "config.json")) as f:
            config = json.load(f)
        config["epochs"] = args.epochs if args.epochs is not None else config["epochs"]
        out = args.resume
    else:
        _check_train_args(args)
        config = {k: getattr(args, k) for k in ("model", "dataset", "epochs", "batch_size",
                                                "optimizer", "lr", "momentum", "weight_decay",
                                                "schedule", "workers", "dist", "seed")}
        config["dataset"] = config["dataset"] or DEFAULT_DATASET
        config["lr"] = config["lr"] if config["lr"] is not None else DEFAULT_LR[config["optimizer"]]
        out = args.out
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    backend.seed(config["seed"])
    X_train, y_train, X_test, y_test = _load_data(config["dataset"], args.data_root)
    n_classes = int(max(y_train.max(), y_test.max()) + 1)
    model = build_model(config["model"], X_train.shape[1:], n_classes, config["seed"])
    optimizer = build_optimizer(config["optimizer"], model.parameters(), config["lr"],
                                config["weight_decay"], config["momentum"])
    loader = DataLoader(X_train, y_train, batch_size=config["batch_size"], shuffle=True,
                        seed=config["seed"])
    schedulers = build_schedule(config["schedule"], optimizer, len(loader), config["lr"])
    step_fn = None
    if config["workers"] > 1 or config["dist"] != "local":
        from mlcvlab.parallel import make_step_fn
        step_fn = make_step_fn(config["dist"], config["workers"], model, seed=config["seed"])
    is_root = step_fn is None or getattr(step_fn, "is_root", True)
    if not is_root:
        log = lambda *a: None   # noqa: E731 - only rank 0 prints
    callbacks = [Checkpoint(out)] if is_root else []
    trainer = Trainer(model, loss_for(model), optimizer, schedulers=schedulers, callbacks=callbacks,
                      progress=not args.quiet and is_root, step_fn=step_fn)
    if args.resume:
        trainer.load_checkpoint_state(load_checkpoint(args.resume))
        trainer.restore_loader(loader)
    remaining = config["epochs"] - trainer.epoch
    log(f"training {config['model']} on {config['dataset']} ({len(X_train)} train / {len(X_test)} "
        f"test) for {remaining} epochs with {config['optimizer']} lr={config['lr']}, "
        f"batch {config['batch_size']}, {config['workers']} worker(s), seed {config['seed']}")
    test_batches = list(array_batches(X_test, y_test))
    start = time.perf_counter()

    class _Log:
        def __getattr__(self, name):
            return lambda *a, **k: None

        def on_epoch_end(self, tr, r):
            log(f"epoch {r['epoch']:3d}  train_loss {r['train_loss']:.4f}"
                f"  val_loss {r['val_loss']:.4f}"
                f"  val_acc {r['val_acc']:.4f}  {r['seconds']:.2f}s")

    if is_root:
        trainer.callbacks.append(_Log())
    history = trainer.fit(loader, max(remaining, 0), val_loader=test_batches)
    seconds = time.perf_counter() - start
    final = evaluate(model, loss_for(model), test_batches)
    if is_root:
        _write_run(out, config, model, history, final, seconds)
        log(f"final test accuracy {final['acc']:.4f} (test loss {final['loss']:.4f}) after "
            f"{seconds:.1f}s; run written to {out}")
    return 0


def _write_run(out: str, config, model, history, final, seconds) -> None:
    os.makedirs(out, exist_ok=True)
    history.to_json(os.path.join(out, "history.json"))
    history.to_csv(os.path.join(out, "metrics.csv"))
    history.plot(os.path.join(out, "curves.png"), title=f"{config['model']} on {config['dataset']}")
    atomic_save_npz(os.path.join(out, "model.npz"), dict(model.state_dict()))
    cfg = dict(config, test_acc=final["acc"], test_loss=final["loss"], train_seconds=seconds)
    atomic_write_text(os.path.join(out, "config.json"), json.dumps(cfg, indent=2))


# ---------------------------------------------------------------------------------- eval
def run_eval(args) -> int:
    from mlcvlab.train import array_batches, evaluate
    cfg_path = os.path.join(args.run, "config.json")
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"{cfg_path} not found: pass a folder written by 'mlcvlab train'")
    with open(cfg_path) as f:
        config = json.load(f)
    dataset = args.dataset or config["dataset"]
    _, y_train, X_test, y_test = _load_data(dataset, args.data_root)
    n_classes = int(max(y_train.max(), y_test.max()) + 1)
    model = build_model(config["model"], X_test.shape[1:], n_classes, config["seed"])
    model.load_state_dict(load_npz(os.path.join(args.run, "model.npz")))
    metrics = evaluate(model, loss_for(model), array_batches(X_test, y_test))
    print(f"{config['model']} on {dataset} test: accuracy {metrics['acc']:.4f}, "
          f"loss {metrics['loss']:.4f}")
    return 0


# ---------------------------------------------------------------------------------- summary
def run_summary(args) -> int:
    from mlcvlab.analysis import format_summary, summarize
    shape = tuple(int(s) for s in args.input_shape.split("x")) if args.input_shape else None
    name = args.model
    if shape is None:
        shape = {"nn4": (1, 28, 28), "mlp": (1, 28, 28), "lenet5": (1, 28, 28),
                 "minigooglenet": (1, 28, 28)}.get(name, (3, 32, 32))
    model = build_model(name, shape, args.classes, 0)
    print(format_summary(summarize(model, shape)))
    return 0


def register(sub) -> None:
    p = sub.add_parser("train", help="train a model and write a run folder")
    _add_train_args(p)
    p.set_defaults(func=run_train)

    p = sub.add_parser("eval", help="evaluate a trained run folder on the test split")
    p.add_argument("run", help="run folder written by 'mlcvlab train'")
    p.add_argument("--dataset", default=None)
    p.add_argument("--data-root", default=None)
    p.set_defaults(func=run_eval)

    p = sub.add_parser("summary", help="per-layer shapes, parameters, activations, multiply-adds")
    p.add_argument("model", help="nn4, mlp, lenet5, resnet20/32/44/56, resnet18, minigooglenet")
    p.add_argument("--input-shape", default=None, help="CxHxW, e.g. 3x32x32")
    p.add_argument("--classes", type=int, default=10)
    p.set_defaults(func=run_summary)
