"""``mlcvlab train``, ``mlcvlab eval`` and ``mlcvlab summary``."""
from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import sys
import time
from typing import Any, Dict, Optional

import numpy as np

from mlcvlab.io import atomic_save_npz, atomic_write_text, load_npz

from mlcvlab.optim.registry import OPTIMIZERS as _OPTIMIZER_REGISTRY  # noqa: E402

OPTIMIZERS = list(_OPTIMIZER_REGISTRY)
DEFAULT_LR = {name: spec[1] for name, spec in _OPTIMIZER_REGISTRY.items()}
SCHEDULES = ["none", "exponential", "cyclic"]
DEFAULT_DATASET = "mnist10k"


USES_MOMENTUM = tuple(n for n, spec in _OPTIMIZER_REGISTRY.items() if "momentum" in spec[2])


def build_optimizer(name: str, params, lr: float, weight_decay: float = 0.0,
                    momentum: Optional[float] = None):
    """An optimizer of ``mlcvlab.optim`` by its CLI name (``mlcvlab.optim.build``)."""
    from mlcvlab import optim
    if momentum is not None and name not in USES_MOMENTUM:
        momentum = None
    return optim.build(name, params, lr=lr, weight_decay=weight_decay, momentum=momentum)


def build_schedule(name: str, optimizer, steps_per_epoch: int, lr: float, epochs: int = 20):
    """``exponential``: the lr falls 10x over the run's ``epochs``; ``cyclic``: triangular2
    cycles of 4 epochs between lr/10 and lr."""
    from mlcvlab import optim
    if name == "none":
        return []
    if name == "exponential":
        steps = max(1, epochs * steps_per_epoch)
        return [optim.ExponentialDecay(optimizer, gamma=0.1 ** (1.0 / steps))]
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
    """The model's loss, on the model's device when it has a GPU twin there (else on the
    host: the Trainer copies the prediction over, see ``train.trainer.loss_and_grad``)."""
    from mlcvlab import nn
    loss = model.loss_fn() if hasattr(model, "loss_fn") else nn.CrossEntropyLoss()
    device = getattr(model, "device", "cpu")
    if device != "cpu":
        from mlcvlab.gpu import losses as gpu_losses
        if gpu_losses.unsupported(loss) is None:
            loss.to(device)
    return loss


# ---------------------------------------------------------------------------------- train
# The settings that decide a run's trajectory: saved in config.json before the first step, and
# the ones a resumed run must keep. `epochs` is the one a resume may change.
RUN_DEFAULTS: Dict[str, Any] = {
    "model": "nn4", "dataset": DEFAULT_DATASET, "epochs": 20, "batch_size": 64,
    "optimizer": "sgd", "lr": None, "momentum": None, "weight_decay": None, "schedule": "none",
    "workers": 1, "dist": "local", "seed": 0, "val_fraction": 0.1, "drop_last": "auto",
}
RESUME_MAY_CHANGE = ("epochs",)
DEVICES = ("cpu", "cuda")
CUDA_MODELS = ("nn4", "mlp")      # the models the handout's --dist cuda workers run
DEFAULT_TIMEOUT = 300.0


def _add_train_args(p: argparse.ArgumentParser) -> None:
    # every run setting defaults to None here, so that a resume can tell a flag the user gave
    # from a default; RUN_DEFAULTS fills in the rest
    from mlcvlab.nn import conv
    p.add_argument("--model", default=None,
                   help=f"one of {', '.join(_model_names())} (default nn4)")
    p.add_argument("--dataset", default=None,
                   help=f"digits, mnist10k, fashion10k (embedded), mnist, fashion_mnist, cifar10 "
                        f"(from --data-root or $MLCVLAB_DATA) (default {DEFAULT_DATASET})")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs (default 20; with --resume, the run's own count)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="global batch, split across workers (default 64)")
    p.add_argument("--optimizer", default=None, choices=OPTIMIZERS, help="default sgd")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate (default per optimizer: " +
                        ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items()) + ")")
    p.add_argument("--momentum", type=float, default=None,
                   help="for momentum/nesterov/rmsprop-nesterov (default 0.9)")
    p.add_argument("--weight-decay", type=float, default=None,
                   help="L2 weight decay (default 0; 0.01 for adamw, decoupled)")
    p.add_argument("--schedule", default=None, choices=SCHEDULES,
                   help="none (default), exponential (lr falls 10x over the run), cyclic")
    p.add_argument("--workers", type=int, default=None,
                   help="data-parallel workers K (default 1; under --dist mpi, the ranks)")
    p.add_argument("--dist", default=None, choices=["local", "mpi", "cuda"],
                   help="default local; cuda: the handout's K data-parallel workers on GPUs in "
                        f"one process (models {', '.join(CUDA_MODELS)})")
    p.add_argument("--device", default=None, choices=DEVICES,
                   help="cpu (default) or cuda: the model on a GPU (model.to('cuda'): every "
                        "layer's GPU twin); with --dist mpi one GPU per rank, NCCL between "
                        "them. Fails at once without a GPU. Not part of the run's settings: "
                        "a run may resume on the other device")
    p.add_argument("--seed", type=int, default=None, help="default 0")
    p.add_argument("--val-fraction", type=float, default=None,
                   help="share of the training data held out (stratified, seeded) for the "
                        "validation curve; 0 for none (default 0.1). The test split is "
                        "evaluated once, at the end")
    p.add_argument("--drop-last", default=None, choices=["auto", "yes", "no"],
                   help="drop an epoch's last, smaller batch: auto (default) drops it only when "
                        "it cannot be trained (fewer samples than workers, or one sample per "
                        "worker into batch norm) and says so")
    p.add_argument("--out", default=None,
                   help="run folder (default runs/<date>-<time>-<model>-<dataset>, with the "
                        "link runs/latest pointing at the newest)")
    p.add_argument("--resume", default=None, metavar="DIR",
                   help="continue the run saved in DIR from its last checkpoint")
    p.add_argument("--data-root", default=None, help="folder with dataset files")
    p.add_argument("--threads", type=int, default=None,
                   help="BLAS threads per process (default $MLCVLAB_THREADS or 1)")
    p.add_argument("--conv-algorithm", default=None,
                   choices=conv.ALGORITHMS,
                   help="how 3x3 convolutions run (mlcvlab.nn.conv.set_algorithm): auto "
                        "(default: im2col, Winograd F(2x2) or a direct kernel, a direct "
                        "convolution's float32 rounding), fast (also Winograd F(4x4) where "
                        "faster: steps up to ~1.1x faster, ~10x the rounding), or one "
                        "forced. Not part of the run's settings: a run may resume with another")
    p.add_argument("--timeout", type=float, default=None,
                   help=f"seconds an MPI rank waits for the others before the job ends with a "
                        f"message naming the missing rank (default {DEFAULT_TIMEOUT:g})")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def _load_data(name: str, root):
    from mlcvlab import data
    X_train, y_train = data.load(name, split="train", root=root)
    X_test, y_test = data.load(name, split="test", root=root)
    return (np.asarray(X_train, dtype=np.float32), np.asarray(y_train, dtype=np.int64),
            np.asarray(X_test, dtype=np.float32), np.asarray(y_test, dtype=np.int64))


def _finite(name: str, value: float, low: float, high: float = math.inf,
            low_open: bool = False, high_open: bool = True) -> None:
    ok = math.isfinite(value) and (value > low if low_open else value >= low) and \
        (value < high if high_open else value <= high)
    if not ok:
        lo = "(" if low_open else "["
        hi = ")" if high_open or high == math.inf else "]"
        raise ValueError(f"{name} must be a finite number in {lo}{low:g}, {high:g}{hi}, "
                         f"got {value}")


def check_run_config(config: Dict[str, Any]) -> None:
    """Range-check every run setting, naming the flag, before any data is loaded."""
    if config["model"] not in ("nn4", "mlp") and config["model"] not in _model_names():
        raise ValueError(f"--model {config['model']!r} is not a model; choose one of "
                         f"nn4, mlp, {', '.join(_model_names())}")
    for flag, key, low in (("--epochs", "epochs", 0), ("--batch-size", "batch_size", 1),
                           ("--workers", "workers", 1), ("--seed", "seed", 0)):
        if not isinstance(config[key], int) or config[key] < low:
            raise ValueError(f"{flag} must be an integer >= {low}, got {config[key]}")
    _finite("--lr", config["lr"], 0.0, low_open=True)
    if config["momentum"] is not None:
        _finite("--momentum", config["momentum"], 0.0, 1.0)
    _finite("--weight-decay", config["weight_decay"], 0.0)
    _finite("--val-fraction", config["val_fraction"], 0.0, 1.0)
    if config["batch_size"] % config["workers"]:
        raise ValueError(f"--batch-size {config['batch_size']} must be divisible by --workers "
                         f"{config['workers']} (the global batch is split evenly)")
    if config["dist"] == "mpi" and config["workers"] < 2:
        raise ValueError("--dist mpi needs --workers K >= 2 (and mpiexec -n K)")


def _model_names():
    from mlcvlab import models
    return sorted(models.MODELS)


def new_run_config(args) -> Dict[str, Any]:
    """The run's config from the flags and RUN_DEFAULTS (optimizer-dependent defaults filled)."""
    given = {k: getattr(args, k) for k in RUN_DEFAULTS if getattr(args, k) is not None}
    config = dict(RUN_DEFAULTS, **given)
    opt = config["optimizer"]
    if config["lr"] is None:
        config["lr"] = DEFAULT_LR[opt]
    if opt in USES_MOMENTUM:
        config["momentum"] = 0.9 if config["momentum"] is None else config["momentum"]
    elif config["momentum"] is not None:
        raise ValueError(f"--momentum is not used by --optimizer {opt}: use --optimizer momentum, "
                         "nesterov or rmsprop-nesterov")
    if config["weight_decay"] is None:
        config["weight_decay"] = 0.01 if opt == "adamw" else 0.0
    return config


def read_run_config(folder: str) -> Dict[str, Any]:
    """config.json of a run folder, with errors that name the file."""
    path = os.path.join(folder, "config.json")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--resume {folder}: no such run folder")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: {folder} is not a run folder written by "
                                "'mlcvlab train' (or it was written by a version that saved "
                                "config.json only at the end)")
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); restore it or train again") from None
    missing = [k for k in RUN_DEFAULTS if k not in config]
    if not isinstance(config, dict) or missing:
        raise ValueError(f"{path} lacks the settings {missing}: it was not written by this "
                         "version of 'mlcvlab train'")
    return config


def resume_config(args) -> Dict[str, Any]:
    """The saved config of ``--resume DIR``; a flag that would change the run is an error."""
    folder = args.resume
    config = read_run_config(folder)
    if args.out is not None and os.path.abspath(args.out) != os.path.abspath(folder):
        raise ValueError(f"--out {args.out} differs from --resume {folder}: a resumed run "
                         "continues in its own folder (copy the folder first to branch off)")
    conflicts = []
    for key in RUN_DEFAULTS:
        value = getattr(args, key)
        if value is None or key in RESUME_MAY_CHANGE:
            continue
        saved = config[key]
        same = (math.isclose(value, saved, rel_tol=0, abs_tol=0)
                if isinstance(value, float) and isinstance(saved, (int, float)) else value == saved)
        if not same:
            conflicts.append(f"--{key.replace('_', '-')} {value} (the run has {saved})")
    if conflicts:
        raise ValueError(f"--resume {folder}: {'; '.join(conflicts)}. A resumed run keeps the "
                         "settings in its config.json; drop the flag, or start a new run "
                         "with --out")
    if args.epochs is not None:
        config["epochs"] = args.epochs
    return config


def _jsonable(obj):
    from mlcvlab.labs.report import to_jsonable
    return to_jsonable(obj)


def _versions() -> Dict[str, str]:
    import platform

    import numba
    from threadpoolctl import threadpool_info

    from mlcvlab import __version__
    blas = [f"{i.get('internal_api')} {i.get('version')} ({i.get('num_threads')} threads)"
            for i in threadpool_info() if i.get("user_api") == "blas"]
    return {"mlcvlab": __version__, "numpy": np.__version__, "numba": numba.__version__,
            "python": platform.python_version(), "blas": ", ".join(blas) or "unknown"}


def _last_batch_plan(n: int, config: Dict[str, Any], model) -> bool:
    """Whether to drop an epoch's last, smaller batch; raises when it cannot be trained and
    --drop-last no was given (or when even full batches cannot be)."""
    from mlcvlab import nn
    b, k = config["batch_size"], config["workers"]
    has_bn1d = any(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    if has_bn1d and b // k < 2:
        raise ValueError(f"--batch-size {b} over {k} worker(s) gives {b // k} sample per worker: "
                         "batch norm needs at least 2 samples per batch; use a larger batch")
    rest = n % b
    if config["drop_last"] == "yes" and n < b:
        raise ValueError(f"--batch-size {b} with --drop-last yes leaves no batches of the {n} "
                         "training samples; use a smaller --batch-size")
    if rest == 0:
        return False
    trainable = rest >= k and not (has_bn1d and rest // k < 2)
    if config["drop_last"] == "yes":
        return True
    if config["drop_last"] == "no" and not trainable:
        raise ValueError(f"{n} training samples in batches of {b} leave a last batch of {rest}, "
                         f"which {k} worker(s){' with batch norm' if has_bn1d else ''} cannot "
                         "train on; use --drop-last auto or yes, or another --batch-size")
    if n < b and not trainable:
        raise ValueError(f"--batch-size {b} is larger than the {n} training samples, and one "
                         f"batch of {n} cannot be trained; use a smaller --batch-size")
    return config["drop_last"] == "auto" and not trainable


def _probe_model(model, X: np.ndarray, config: Dict[str, Any]) -> None:
    """One forward pass on two samples, so a model/dataset mismatch fails before training."""
    model.eval()
    try:
        out = model(X[:2].astype(model.dtype, copy=False))
    except (ValueError, TypeError, IndexError) as err:
        raise ValueError(f"--model {config['model']} cannot take the {config['dataset']} images "
                         f"of shape {tuple(X.shape[1:])}: {err}") from None
    finally:
        model.train()
    if out.shape[0] != 2:
        raise ValueError(f"--model {config['model']} gave {out.shape[0]} outputs for 2 inputs")


def run_device(args, config: Dict[str, Any]) -> str:
    """The device of this run ("cpu" or "cuda"), checked before any data is loaded.

    ``--device cuda``: the model on a GPU (``model.to("cuda")``); with --dist mpi one GPU per
    rank (local rank mod the node's GPUs, selected here, before anything is allocated) and
    NCCL between them; with --workers K (--dist local) K shards in turn on one GPU. It needs a
    GPU (a RuntimeError saying how to get one). --dist cuda is the handout's in-process GPU
    workers, a path of its own: it runs nn4 and mlp, and needs a GPU too.
    """
    device = getattr(args, "device", None) or "cpu"
    if device == "cuda" and config["dist"] == "cuda":
        raise ValueError("--device cuda and --dist cuda are two GPU paths: --device cuda "
                         "(any model; with --dist mpi one GPU per rank) or --dist cuda (the "
                         f"handout's workers, models {', '.join(CUDA_MODELS)}); give one")
    if device == "cuda":
        from mlcvlab.gpu.device import array_module
        array_module()
        if config["dist"] == "mpi":
            from mlcvlab.parallel.nccl import select_device_for_rank
            select_device_for_rank()
    if config["dist"] == "cuda":
        if config["model"] not in CUDA_MODELS:
            raise ValueError(f"--dist cuda runs the models {', '.join(CUDA_MODELS)}; --model "
                             f"{config['model']} runs on a GPU with --device cuda")
        from mlcvlab.parallel.cuda import load_cuda
        load_cuda()
    return device


def run_train(args) -> int:
    from mlcvlab.nn import conv
    previous = conv.set_algorithm(getattr(args, "conv_algorithm", None) or "auto")
    try:
        return _run_train(args)
    finally:
        conv.set_algorithm(previous)


def _run_train(args) -> int:
    if getattr(args, "dist", None) == "mpi" and not getattr(args, "_mpi_guarded", False):
        # under mpiexec an exception on one rank would leave the others waiting in a
        # collective: abort every rank (exit code 1) instead of hanging
        from mlcvlab.parallel.mpi import abort_on_error
        args._mpi_guarded = True
        with abort_on_error():
            return _run_train(args)
    from mlcvlab import backend
    from mlcvlab.data import DataLoader, train_val_split
    from mlcvlab.io import check_writable_dir, remove_orphan_temporaries
    from mlcvlab.train import Checkpoint, Trainer, array_batches, evaluate, load_checkpoint
    from mlcvlab.train.callbacks import ProgressBar, format_record
    from mlcvlab.train.checkpoint import checkpoint_paths

    if args.timeout is not None and not (math.isfinite(args.timeout) and args.timeout > 0):
        raise ValueError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    resuming = args.resume is not None
    if not resuming and args.dist == "mpi" and args.workers is None:
        args.workers = _mpi_size()        # mpiexec -n K mlcvlab train --dist mpi
    config = resume_config(args) if resuming else new_run_config(args)
    check_run_config(config)
    device = run_device(args, config)
    out = args.resume if resuming else (args.out or _new_run_folder(config))
    is_mpi_worker = config["dist"] == "mpi" and _mpi_rank() != 0
    if not is_mpi_worker:
        check_writable_dir(out, "run folder (--out)")
        remove_orphan_temporaries(out)
    log = (lambda *a: None) if args.quiet or is_mpi_worker else \
        (lambda *a: print(*a, flush=True))

    backend.seed(config["seed"])
    X_all, y_all, X_test, y_test = _load_data(config["dataset"], args.data_root)
    if config["val_fraction"] > 0:
        X_train, y_train, X_val, y_val = train_val_split(X_all, y_all, config["val_fraction"],
                                                         seed=config["seed"])
    else:
        X_train, y_train, X_val, y_val = X_all, y_all, None, None
    n_classes = int(max(y_all.max(), y_test.max()) + 1)
    model = build_model(config["model"], X_train.shape[1:], n_classes, config["seed"])
    _probe_model(model, X_train, config)
    if device == "cuda":
        model.to("cuda")                 # before the optimizer, which keeps its state there
    drop_last = _last_batch_plan(len(X_train), config, model)
    optimizer = build_optimizer(config["optimizer"], model.parameters(), config["lr"],
                                config["weight_decay"], config["momentum"])
    loader = DataLoader(X_train, y_train, batch_size=config["batch_size"], shuffle=True,
                        seed=config["seed"], drop_last=drop_last)
    schedulers = build_schedule(config["schedule"], optimizer, len(loader), config["lr"],
                                config["epochs"])
    step_fn = None
    if config["workers"] > 1 or config["dist"] != "local":
        from mlcvlab.parallel import make_step_fn
        timeout = args.timeout if args.timeout is not None else DEFAULT_TIMEOUT
        step_fn = make_step_fn(config["dist"], config["workers"], model, seed=config["seed"],
                               timeout=timeout if config["dist"] == "mpi" else None)
    is_root = step_fn is None or getattr(step_fn, "is_root", True)
    if is_root:
        record = dict(config, status="running", n_train=len(X_train),
                      n_val=0 if X_val is None else len(X_val), n_test=len(X_test),
                      drop_last_batch=drop_last, threads=args.threads, device=device,
                      conv_algorithm=getattr(args, "conv_algorithm", None) or "auto",
                      versions=_versions(),
                      optimizer_used=_jsonable({"class": type(optimizer).__name__,
                                                **optimizer.hyperparameters()}))
        atomic_write_text(os.path.join(out, "config.json"), json.dumps(record, indent=2))
        if args.out is None and not resuming:
            _point_latest(out)
    comm = getattr(getattr(step_fn, "comm", None), "mpi", getattr(step_fn, "comm", None))
    if is_root and hasattr(comm, "on_abort"):    # a rank timed out: say so in the run folder
        comm.on_abort = lambda message: _record_stop(out, RuntimeError(message))
    callbacks = [Checkpoint(out, write=is_root)]
    if is_root and not args.quiet:      # a live bar where one can be drawn; _Log prints lines
        callbacks.append(ProgressBar(plain_lines=False))
    trainer = Trainer(model, loss_for(model), optimizer, schedulers=schedulers,
                      callbacks=callbacks, step_fn=step_fn)
    if resuming:
        if checkpoint_paths(out) or os.path.exists(os.path.join(out, "checkpoint.npz.new")):
            trainer.load_checkpoint_state(load_checkpoint(out))
            trainer.restore_loader(loader)
        else:
            log(f"{out} has no checkpoint yet (the run stopped during its first epoch): "
                "starting it from the beginning")
    remaining = max(config["epochs"] - trainer.epoch, 0)
    if drop_last and is_root:
        log(f"note: the last batch of each epoch ({len(X_train) % config['batch_size']} "
            f"samples) is dropped: it cannot be split over {config['workers']} worker(s) "
            "or fed to batch norm (--drop-last)")
    log(f"{'resuming' if resuming else 'training'} {config['model']} on {config['dataset']} "
        f"({len(X_train)} train / {0 if X_val is None else len(X_val)} validation / "
        f"{len(X_test)} test) for {remaining} epochs with {config['optimizer']} "
        f"lr={config['lr']}, batch {config['batch_size']}, {config['workers']} worker(s), "
        f"seed {config['seed']}")
    val_batches = None if X_val is None else list(array_batches(X_val, y_val))

    class _Log:
        def __getattr__(self, name):
            return lambda *a, **k: None

        def on_epoch_end(self, tr, r):
            log(format_record(r))
            tr.history.to_json(os.path.join(out, "history.json"))

    if is_root:
        trainer.callbacks.append(_Log())
    try:
        history = trainer.fit(loader, remaining, val_loader=val_batches)
        final = evaluate(model, loss_for(model),  # once, at the end
                         array_batches(X_test, y_test))
    except BaseException as err:
        if is_root:
            _record_stop(out, err)
        raise
    if is_root:
        _write_run(out, config, model, history, final)
        seconds = sum(r["seconds"] for r in history)
        log(f"final test accuracy {final['acc']:.4f} (test loss {final['loss']:.4f}) after "
            f"{seconds:.1f}s of training; run written to {out}")
    return 0


def _new_run_folder(config: Dict[str, Any], root: str = "runs") -> str:
    """runs/<YYYYmmdd-HHMMSS>-<model>-<dataset> (a suffix if taken): a second run never
    overwrites the first. Under MPI every rank computes the same name from rank 0's clock."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if config["dist"] == "mpi":
        from mlcvlab.parallel.mpi import _mpi
        stamp = _mpi().COMM_WORLD.bcast(stamp, root=0)
    base = os.path.join(root, f"{stamp}-{config['model']}-{config['dataset']}")
    path, i = base, 1
    while os.path.exists(path):
        i += 1
        path = f"{base}-{i}"
    return path


def _point_latest(out: str, root: str = "runs") -> None:
    """Make ``runs/latest`` a link to the newest run folder (atomically); an old real
    ``runs/latest`` folder is left alone."""
    latest = os.path.join(root, "latest")
    if os.path.abspath(os.path.dirname(os.path.abspath(out))) != os.path.abspath(root):
        return
    if os.path.exists(latest) and not os.path.islink(latest):
        return
    tmp = os.path.join(root, f".tmp-{os.getpid()}-latest")
    try:
        os.symlink(os.path.basename(os.path.abspath(out)), tmp)
        os.replace(tmp, latest)
    except OSError:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def _mpi_rank() -> int:
    from mlcvlab.parallel.mpi import _mpi
    return _mpi().COMM_WORLD.Get_rank()


def _mpi_size() -> int:
    from mlcvlab.parallel.mpi import _mpi
    return _mpi().COMM_WORLD.Get_size()


def _record_stop(out: str, err: BaseException) -> None:
    """config.json's status becomes "interrupted" (Ctrl-C) or "failed", with the error: the
    reason stays with the run, also when the console loses it (an MPI abort can end the job
    before mpiexec has passed rank 0's last words on). The checkpoints are untouched, so
    ``--resume`` continues from the last one. Best effort: a full disk must not hide err."""
    path = os.path.join(out, "config.json")
    try:
        with open(path) as f:
            record = json.load(f)
        interrupted = isinstance(err, KeyboardInterrupt)
        record.update(status="interrupted" if interrupted else "failed",
                      error=f"{type(err).__name__}: {err}")
        atomic_write_text(path, json.dumps(record, indent=2))
    except Exception:                      # noqa: BLE001 - the original error matters more
        pass


def _write_run(out: str, config, model, history, final) -> None:
    """The finished run: history, curves, weights, and results.json (the test result, once)."""
    history.to_json(os.path.join(out, "history.json"))
    history.to_csv(os.path.join(out, "metrics.csv"))
    history.plot(os.path.join(out, "curves.png"), title=f"{config['model']} on {config['dataset']}")
    atomic_save_npz(os.path.join(out, "model.npz"), dict(model.state_dict()))
    vals = [(r["val_acc"], r["epoch"]) for r in history if r.get("val_acc") is not None]
    best_acc, best_epoch = max(vals, key=lambda t: (t[0], -t[1])) if vals else (None, None)
    results = {"test_accuracy": final["acc"], "test_loss": final["loss"],
               "epochs": len(history), "best_val_accuracy": best_acc,
               "best_val_epoch": best_epoch,
               "train_seconds": sum(r["seconds"] for r in history),
               "train_cpu_seconds": sum(r.get("cpu_seconds") or 0.0 for r in history)}
    atomic_write_text(os.path.join(out, "results.json"), json.dumps(results, indent=2))
    path = os.path.join(out, "config.json")
    with open(path) as f:
        record = json.load(f)
    record.update(epochs=config["epochs"], status="finished")
    atomic_write_text(path, json.dumps(record, indent=2))
    # Once more at the end: a rank of an MPI job killed with mpiexec can outlive it for a
    # moment, so the start's cleanup had to leave its temporaries (a live writer's); it is dead
    # by now.
    from mlcvlab.io import remove_orphan_temporaries
    remove_orphan_temporaries(out)


# ---------------------------------------------------------------------------------- eval
def run_eval(args) -> int:
    """Evaluate a run's model on a split: accuracy, loss, per-class accuracy and the confusion
    matrix (printed, and written as CSV and PNG next to the run)."""
    from mlcvlab.data import train_val_split
    from mlcvlab.train import array_batches, evaluate
    cfg_path = os.path.join(args.run, "config.json")
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"{cfg_path} not found: pass a folder written by 'mlcvlab train'")
    config = read_run_config(args.run)
    dataset = args.dataset or config["dataset"]
    if dataset != config["dataset"]:
        print(f"warning: the model was trained on {config['dataset']}; evaluating it on "
              f"{dataset}, a different dataset: its accuracy says little about either",
              file=sys.stderr)
    X_all, y_all, X_test, y_test = _load_data(dataset, args.data_root)
    if args.split == "test":
        X, y = X_test, y_test
    else:
        frac = config.get("val_fraction") or 0.0
        if args.split == "val" and frac <= 0:
            raise ValueError(f"--split val: the run held out no validation split "
                             f"(--val-fraction {frac})")
        if frac > 0:
            Xt, yt, Xv, yv = train_val_split(X_all, y_all, frac, seed=config["seed"])
        else:
            Xt, yt, Xv, yv = X_all, y_all, None, None
        X, y = (Xt, yt) if args.split == "train" else (Xv, yv)
    n_classes = int(max(y_all.max(), y_test.max()) + 1)
    model = build_model(config["model"], X.shape[1:], n_classes, config["seed"])
    model.load_state_dict(load_npz(os.path.join(args.run, "model.npz")))
    loss = loss_for(model)
    metrics = evaluate(model, loss, array_batches(X, y))
    print(f"{config['model']} on {dataset} ({args.split}, {len(y)} images): accuracy "
          f"{metrics['acc']:.4f}, loss {metrics['loss']:.4f}")
    preds = _predict_classes(model, X)
    if preds is not None:
        _confusion_report(args.run, dataset, args.split, y, preds, n_classes)
    return 0


def _predict_classes(model, X: np.ndarray):
    model.eval()
    out = []
    for i in range(0, len(X), 1024):
        p = model(X[i:i + 1024].astype(model.dtype, copy=False))
        if p.ndim != 2 or p.shape[1] < 2:
            return None
        out.append(p.argmax(axis=1))
    return np.concatenate(out)


def _confusion_report(folder: str, dataset: str, split: str, y: np.ndarray, pred: np.ndarray,
                      n_classes: int) -> None:
    """Per-class accuracy (printed) and the confusion matrix (CSV and PNG in the run folder)."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y, pred), 1)
    print("class  images  accuracy")
    for c in range(n_classes):
        total = cm[c].sum()
        acc = cm[c, c] / total if total else float("nan")
        print(f"{c:5d}  {total:6d}  {acc:8.4f}")
    stem = os.path.join(folder, f"confusion_{dataset}_{split}")
    rows = ["true\\predicted," + ",".join(str(c) for c in range(n_classes))]
    rows += [f"{c}," + ",".join(str(v) for v in cm[c]) for c in range(n_classes)]
    atomic_write_text(stem + ".csv", "\n".join(rows) + "\n")
    from matplotlib.figure import Figure

    from mlcvlab.io import atomic_writer
    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.subplots()
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax, label="images")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_xticks(range(n_classes))
    ax.set_yticks(range(n_classes))
    ax.set_title(f"confusion matrix: {dataset} {split} ({len(y)} images)")
    atomic_writer(stem + ".png", lambda f: fig.savefig(f, dpi=100, format="png"))
    print(f"confusion matrix written to {stem}.csv and {stem}.png")


# ---------------------------------------------------------------------------------- summary
def run_summary(args) -> int:
    from mlcvlab.analysis import format_summary, summarize
    shape = None
    if args.input_shape:
        try:
            shape = tuple(int(s) for s in args.input_shape.lower().replace(",", "x").split("x"))
        except ValueError:
            shape = ()
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"--input-shape must be CxHxW, e.g. 3x32x32, got "
                             f"{args.input_shape!r}")
    name = args.model
    assumed = shape is None
    if shape is None:
        shape = {"nn4": (1, 28, 28), "mlp": (1, 28, 28), "lenet5": (1, 28, 28),
                 "minigooglenet": (1, 28, 28)}.get(name, (3, 32, 32))
    model = build_model(name, shape, args.classes, 0)
    print(f"{name} on input {'x'.join(map(str, shape))} (C x H x W"
          f"{', assumed: pass --input-shape to change it' if assumed else ''}), "
          f"{args.classes} classes")
    print(format_summary(summarize(model, shape)))
    return 0


def register(sub) -> None:
    p = sub.add_parser("train", help="train a model and write a run folder")
    _add_train_args(p)
    p.set_defaults(func=run_train)

    p = sub.add_parser("eval", help="evaluate a trained run folder on the test split")
    p.add_argument("run", help="run folder written by 'mlcvlab train'")
    p.add_argument("--dataset", default=None, help="default: the run's own dataset")
    p.add_argument("--split", default="test", choices=["train", "val", "test"],
                   help="which split to evaluate (default test; val and train are the run's "
                        "own held-out and training parts)")
    p.add_argument("--data-root", default=None)
    p.set_defaults(func=run_eval)

    p = sub.add_parser("summary", help="per-layer shapes, parameters, activations, multiply-adds")
    p.add_argument("model", help="nn4, mlp, lenet5, resnet20/32/44/56, resnet18, minigooglenet")
    p.add_argument("--input-shape", default=None, help="CxHxW, e.g. 3x32x32")
    p.add_argument("--classes", type=int, default=10)
    p.set_defaults(func=run_summary)
