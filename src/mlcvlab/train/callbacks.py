"""Trainer callbacks: progress bar, checkpoint/resume, early stopping, NaN guard.

A callback overrides any of the hooks; ``trainer.stop_training = True`` ends
``fit`` after the current epoch.
"""
from __future__ import annotations

import math
import os
import sys
from typing import Any, Dict, Optional

from mlcvlab.train.checkpoint import FILENAME, load_checkpoint, save_checkpoint  # noqa: F401


class Callback:
    def on_train_begin(self, trainer) -> None: ...
    def on_epoch_begin(self, trainer, epoch: int) -> None: ...
    def on_batch_end(self, trainer, batch: int, loss: float) -> None: ...
    def on_epoch_end(self, trainer, record: Dict[str, Any]) -> None: ...
    def on_train_end(self, trainer) -> None: ...


def in_jupyter() -> bool:
    """Whether this code runs in a Jupyter kernel (an IPython ZMQ shell), not merely in a
    process that imported ipykernel."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def interactive() -> bool:
    """Whether a progress bar can be drawn: a terminal on stderr, or a Jupyter kernel."""
    return sys.stderr.isatty() or in_jupyter()


class ProgressBar(Callback):
    """Progress of each epoch: a live bar (``tqdm.auto``: a widget in Jupyter, text in a
    terminal) when :func:`interactive`, else one plain line per epoch, so a piped, ``nohup``
    or ``!mlcvlab`` run shows its progress without ``\\r`` bars in the log.

    plain_lines=False leaves the per-epoch lines to the caller (the ``mlcvlab`` command
    prints its own); force=True always draws the bar.
    """

    def __init__(self, force: bool = False, plain_lines: bool = True):
        self.enabled = force or interactive()
        self.plain_lines = plain_lines
        self._bar = None

    def on_epoch_begin(self, trainer, epoch):
        if self.enabled:
            from tqdm.auto import tqdm
            self._bar = tqdm(total=trainer.batches_per_epoch, desc=f"epoch {epoch}", leave=False,
                             unit="batch", file=sys.stderr)

    def on_batch_end(self, trainer, batch, loss):
        if self._bar is not None:
            self._bar.update(1)
            if batch % 10 == 0:
                self._bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def on_epoch_end(self, trainer, record):
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.plain_lines and (not self.enabled or in_jupyter()):
            print(format_record(record), flush=True)   # the bar vanishes; a line stays


def format_record(r: Dict[str, Any]) -> str:
    """One line for an epoch's record: losses, accuracies, wall and CPU seconds."""
    parts = [f"epoch {r['epoch']:3d}", f"train_loss {r['train_loss']:.4f}"]
    if r.get("train_acc") is not None:
        parts.append(f"train_acc {r['train_acc']:.4f}")
    if r.get("val_loss") is not None:
        parts.append(f"val_loss {r['val_loss']:.4f}")
    if r.get("val_acc") is not None:
        parts.append(f"val_acc {r['val_acc']:.4f}")
    cpu = f" ({r['cpu_seconds']:.2f} CPU s)" if r.get("cpu_seconds") is not None else ""
    parts.append(f"{r['seconds']:.2f}s{cpu}")
    return "  ".join(parts)


class NaNGuard(Callback):
    """Stop with a clear error as soon as the training loss is NaN or infinite."""

    def on_batch_end(self, trainer, batch, loss):
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"training loss became {loss} at epoch {trainer.epoch}, batch {batch}: the run "
                "diverged; lower the learning rate (currently "
                f"{getattr(trainer.optimizer, 'lr', '?')}) or check the data for NaN")


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved for ``patience`` epochs; optionally
    restore the best weights at the end (Prechelt 1998)."""

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0,
                 mode: Optional[str] = None, restore_best: bool = True):
        if patience < 0:
            raise ValueError(f"EarlyStopping: patience must be >= 0, got {patience}")
        self.monitor, self.patience, self.min_delta = monitor, int(patience), float(min_delta)
        self.mode = mode or ("max" if "acc" in monitor else "min")
        if self.mode not in ("min", "max"):
            raise ValueError(f"EarlyStopping: mode must be 'min' or 'max', got {mode!r}")
        self.restore_best = restore_best
        self.best = None
        self.best_epoch = None
        self.best_state = None
        self.wait = 0
        self.stopped_epoch = None

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_end(self, trainer, record):
        value = record.get(self.monitor)
        if value is None:
            raise ValueError(f"EarlyStopping: the history has no '{self.monitor}' (pass a "
                             f"val_loader to fit, or monitor one of {sorted(record)})")
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, record["epoch"], 0
            if self.restore_best:
                self.best_state = trainer.model.state_dict()
        else:
            self.wait += 1
            if self.wait > self.patience:
                self.stopped_epoch = record["epoch"]
                trainer.stop_training = True

    def on_train_end(self, trainer):
        if self.restore_best and self.best_state is not None:
            trainer.model.load_state_dict(self.best_state)


class Checkpoint(Callback):
    """Write ``checkpoint.npz`` in ``directory`` after every ``every`` epochs (see
    :mod:`mlcvlab.train.checkpoint`: no pickle, SHA-256-checked, the previous one kept):
    model, optimizer and schedule state, history, epoch, the data loader's and every
    dropout generator's state, so :meth:`Trainer.load_checkpoint_state` continues the same
    run bit for bit. Under MPI, give every rank the callback (the state is gathered from all
    of them) with ``write=True`` on rank 0 only."""

    FILENAME = FILENAME

    def __init__(self, directory: str, every: int = 1, write: bool = True):
        if every < 1:
            raise ValueError(f"Checkpoint: every must be >= 1, got {every}")
        self.directory, self.every, self.write = directory, int(every), bool(write)

    @property
    def path(self) -> str:
        return os.path.join(self.directory, self.FILENAME)

    def on_epoch_end(self, trainer, record):
        if record["epoch"] % self.every == 0:
            state = trainer.checkpoint_state()   # on every MPI rank: it gathers their state
            if self.write:                       # only rank 0 writes it
                save_checkpoint(self.directory, state)
