"""The training loop: epochs of (forward, loss, backward, optimizer step), with
per-epoch History, evaluation, schedules and callbacks."""
from __future__ import annotations

import time
from typing import Any, Dict, Iterable, List, Sequence, Tuple

import numpy as np

from mlcvlab.train.callbacks import Callback, NaNGuard, ProgressBar
from mlcvlab.train.history import History


def _labels_for(loss, pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Targets shaped for the loss: a (N, 1) sigmoid head takes (N, 1) float targets."""
    if pred.ndim == 2 and pred.shape[1] == 1 and y.ndim == 1:
        return y.reshape(-1, 1).astype(pred.dtype)
    return y


def _correct(pred: np.ndarray, y: np.ndarray) -> int:
    if pred.ndim == 2 and pred.shape[1] > 1:
        return int(np.sum(pred.argmax(axis=1) == y))
    scores = pred.reshape(-1)
    yv = y.reshape(-1)
    if yv.min() < 0:                      # labels in {-1, +1}, scores around 0
        return int(np.sum(np.sign(scores) == yv))
    threshold = 0.5 if scores.min() >= 0 and scores.max() <= 1 else 0.0
    return int(np.sum((scores > threshold) == (yv > 0.5)))


def _on_device(model) -> bool:
    return getattr(model, "device", "cpu") != "cpu"


def _model_input(model, xb: np.ndarray):
    """A host batch as the model's input: its dtype, and on the model's device (one copy per
    batch; the labels stay on the host)."""
    x = xb.astype(model.dtype, copy=False)
    if not _on_device(model):
        return x
    from mlcvlab.gpu.device import to_device
    return to_device(x)


def _host(a) -> np.ndarray:
    if isinstance(a, np.ndarray):
        return a
    from mlcvlab.gpu.device import to_host
    return to_host(a)


def loss_and_grad(loss, model, pred, labels):
    """(loss value, dL/dpred) for the model's output ``pred``, wherever the two live.

    A model on the GPU with a loss on the CPU (any loss: MSE, BCE, ... have no GPU twin; a
    lab's own CrossEntropyLoss()) gets its prediction copied to the host for the loss and the
    gradient copied back: (N, classes) values each way, small next to the step. A loss moved
    with ``loss.to("cuda")`` computes on the device."""
    if _on_device(model) and getattr(loss, "device", "cpu") == "cpu":
        from mlcvlab.gpu.device import to_device
        value = loss(_host(pred), labels)
        return value, to_device(loss.backward())
    value = loss(pred, labels)
    return value, loss.backward()


def _correct_on_device(pred, y: np.ndarray):
    """The number of right argmax predictions of device scores (N, C), as a device scalar:
    it is added up over the epoch on the device and read once, at the epoch's end, so a
    training step still waits for the device only to read its loss."""
    from mlcvlab.gpu.device import array_module, to_device
    xp = array_module()
    return xp.sum(pred.argmax(axis=1) == to_device(y))


def _module_generators(model) -> List[np.random.Generator]:
    """The NumPy generators of the model's layers that draw from one, in module order (the
    layers of mlcvlab draw none: Dropout's masks are counter-based, their state is in the
    model's buffers; a user's own random layer may keep one as ``rng``)."""
    return [m.rng for m in model.modules()
            if isinstance(getattr(m, "rng", None), np.random.Generator)]


def evaluate(model, loss, batches: Iterable[Tuple[np.ndarray, np.ndarray]],
             classification: bool = True) -> Dict[str, float]:
    """Mean loss (and accuracy) of ``model`` in eval mode over (x, y) batches."""
    was_training = model.training
    model.eval()
    total, n, correct = 0.0, 0, 0
    try:
        for xb, yb in batches:
            pred = model(_model_input(model, xb))
            if _on_device(model) and getattr(loss, "device", "cpu") == "cpu":
                pred = _host(pred)                     # a CPU loss: see loss_and_grad
            total += loss(pred, _labels_for(loss, pred, yb)) * len(xb)
            n += len(xb)
            if classification:
                correct += _correct(_host(pred), yb)
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("evaluate: got no batches (is the dataset empty?)")
    out = {"loss": total / n}
    if classification:
        out["acc"] = correct / n
    return out


def array_batches(X: np.ndarray, y: np.ndarray, batch_size: int = 1024):
    """Sequential (x, y) batches over arrays, for evaluation."""
    for i in range(0, len(X), batch_size):
        yield X[i:i + batch_size], y[i:i + batch_size]


class Trainer:
    """Fits ``model`` with ``loss`` and ``optimizer``.

    schedulers: objects with ``step()`` called after every batch (learning rate,
    batch size). step_fn: optional callable ``(trainer, xb, yb) -> (loss, timings)``
    replacing the single-process step (data-parallel SGD plugs in here); timings
    is a dict of seconds (compute, communication, update) summed per epoch.
    A model moved with ``model.to("cuda")`` trains on the GPU: each batch is copied there,
    the loss value is read back once per step (the training accuracy is summed on the device
    and read once per epoch); the loss may stay on the CPU (:func:`loss_and_grad`).
    Training calls ``model.set_input_grad(False)``: the gradient of the input
    images is never computed (``set_input_grad(True)`` brings it back).
    """

    def __init__(self, model, loss, optimizer, schedulers: Sequence[Any] = (),
                 callbacks: Sequence[Callback] = (), progress: bool = False,
                 classification: bool = True, step_fn=None, nan_guard: bool = True):
        self.model, self.loss, self.optimizer = model, loss, optimizer
        self.schedulers = list(schedulers)
        self.callbacks: List[Callback] = list(callbacks)
        if nan_guard and not any(isinstance(c, NaNGuard) for c in self.callbacks):
            self.callbacks.append(NaNGuard())
        if progress:
            self.callbacks.append(ProgressBar())
        self.classification = classification
        self.step_fn = step_fn
        self.history = History()
        self.epoch = 0
        self.stop_training = False
        self.batches_per_epoch = None
        self.train_loader = None

    # ------------------------------------------------------------------ steps
    def train_step(self, xb: np.ndarray, yb: np.ndarray) -> Tuple[float, Dict[str, float]]:
        """One optimizer step on one batch; returns the batch loss and timings."""
        if self.step_fn is not None:
            return self.step_fn(self, xb, yb)
        t0 = time.perf_counter()
        model = self.model
        if model.input_grad:        # the input is data: its gradient is never used
            model.set_input_grad(False)
        model.zero_grad()
        pred = model(_model_input(model, xb))
        value, dpred = loss_and_grad(self.loss, model, pred, _labels_for(self.loss, pred, yb))
        model.backward(dpred)
        t1 = time.perf_counter()
        self.optimizer.step()
        t2 = time.perf_counter()
        timings = {"compute_seconds": t1 - t0, "update_seconds": t2 - t1}
        if self.classification:     # running train accuracy (as Keras reports it)
            timings["correct"] = (_correct_on_device(pred, yb) if _on_device(model)
                                  else _correct(pred, yb))
        return value, timings

    def _run_epoch(self, loader) -> Dict[str, Any]:
        self.model.train()
        total, n = 0.0, 0
        timings: Dict[str, float] = {}
        start, cpu_start = time.perf_counter(), time.process_time()
        for b, (xb, yb) in enumerate(loader):
            value, t = self.train_step(xb, yb)
            total += value * len(xb)
            n += len(xb)
            for k, v in t.items():
                timings[k] = timings.get(k, 0.0) + v
            for s in self.schedulers:
                s.step()
            for c in self.callbacks:
                c.on_batch_end(self, b, value)
        if n == 0:
            raise ValueError("Trainer.fit: the training loader gave no batches "
                             "(batch_size larger than the dataset with drop_last=True?)")
        record = {"epoch": self.epoch, "train_loss": total / n,
                  "seconds": time.perf_counter() - start,
                  "cpu_seconds": time.process_time() - cpu_start}
        correct = timings.pop("correct", None)
        record["train_acc"] = float(correct) / n if correct is not None else None
        record.update(timings)
        return record

    # ------------------------------------------------------------------ fit
    def fit(self, train_loader, epochs: int, val_loader=None) -> History:
        """Train for ``epochs`` more epochs; returns the History of the whole run."""
        if not isinstance(epochs, (int, np.integer)) or epochs < 0:
            raise ValueError(f"Trainer.fit: epochs must be a non-negative integer, got {epochs!r}")
        self.train_loader = train_loader
        self.stop_training = False
        for c in self.callbacks:
            c.on_train_begin(self)
        for _ in range(int(epochs)):
            self.epoch += 1
            try:
                self.batches_per_epoch = len(train_loader)
            except TypeError:
                self.batches_per_epoch = None
            for c in self.callbacks:
                c.on_epoch_begin(self, self.epoch)
            lr = getattr(self.optimizer, "lr", None)
            batch_size = getattr(train_loader, "batch_size", None)
            record = self._run_epoch(train_loader)
            record["lr"] = lr
            record["batch_size"] = batch_size
            if val_loader is not None:
                metrics = evaluate(self.model, self.loss, val_loader, self.classification)
                record["val_loss"] = metrics["loss"]
                record["val_acc"] = metrics.get("acc")
            else:
                record["val_loss"] = record["val_acc"] = None
            self.history.append(record)
            for c in self.callbacks:
                c.on_epoch_end(self, self.history[-1])
            if self.stop_training:
                break
        for c in self.callbacks:
            c.on_train_end(self)
        return self.history

    # ------------------------------------------------------------------ inference
    def predict(self, X: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """The model's outputs on ``X`` in evaluation mode, batch by batch (the mode it was in
        is restored): (N, classes) scores, or (N, 1) for a sigmoid head."""
        was_training = self.model.training
        self.model.eval()
        try:
            outs = [_host(self.model(_model_input(self.model, X[i:i + batch_size])))
                    for i in range(0, len(X), batch_size)]
        finally:
            self.model.train(was_training)
        if not outs:
            raise ValueError("Trainer.predict: X holds no samples")
        return np.concatenate(outs)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_state(self) -> Dict[str, Any]:
        state = {
            "model": self.model.state_dict(),
            "optimizer": (self.optimizer.state_dict() if hasattr(self.optimizer, "state_dict")
                          else None),
            "schedulers": [s.state_dict() if hasattr(s, "state_dict") else None
                           for s in self.schedulers],
            "history": list(self.history.records),
            "epoch": self.epoch,
            "loader": None,
            "module_rngs": [g.bit_generator.state for g in _module_generators(self.model)],
            "step_fn": None,
        }
        if self.step_fn is not None and hasattr(self.step_fn, "state_dict"):
            state["step_fn"] = self.step_fn.state_dict()   # the worker count
        loader = self.train_loader
        if loader is not None and hasattr(loader, "state_dict"):
            state["loader"] = loader.state_dict()
        return state

    def load_checkpoint_state(self, state: Dict[str, Any]) -> None:
        """Restore a state from :meth:`checkpoint_state` so ``fit`` continues the same run."""
        self.model.load_state_dict(state["model"])
        if state.get("optimizer") is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        for s, st in zip(self.schedulers, state.get("schedulers") or []):
            if st is not None:
                s.load_state_dict(st)
        self.history = History(state["history"])
        self.epoch = int(state["epoch"])
        self._loader_state = state.get("loader")
        gens = _module_generators(self.model)
        saved = state.get("module_rngs") or []
        if len(saved) != len(gens):
            older = " (or by an mlcvlab whose Dropout drew from NumPy generators)" \
                if not gens else ""
            raise ValueError(f"checkpoint has {len(saved)} module generators, the model has "
                             f"{len(gens)}: it was written for a different model{older}; "
                             "start a new run")
        for g, st in zip(gens, saved):
            g.bit_generator.state = st
        step_state = state.get("step_fn")
        if step_state is not None:
            if self.step_fn is None or not hasattr(self.step_fn, "load_state_dict"):
                raise ValueError(f"the checkpoint was written by a {step_state.get('workers')}-"
                                 "worker data-parallel run; resume it with the same --workers "
                                 "and --dist")
            self.step_fn.load_state_dict(step_state)
        elif self.step_fn is not None and hasattr(self.step_fn, "load_state_dict"):
            raise ValueError("the checkpoint was written by a single-process run; resume it "
                             "without --workers/--dist")

    def restore_loader(self, loader) -> None:
        st = getattr(self, "_loader_state", None)
        if st is not None and hasattr(loader, "load_state_dict"):
            loader.load_state_dict(st)
