"""One split of the batch over the threads for a whole forward and backward pass.

Until now each layer split its own work over the threads (``kernels.parallel_map``: the
convolution its batch, batch norm its channels, ReLU its rows) and paid a thread hand-off per
layer, 0.2-0.6 ms to wake the worker on this host's virtual CPUs; convolutions too small to
pay it (LeNet-5's) ran on one thread, so a 2-core machine ran LeNet-5 on one core and
ResNet-20 at a utilisation of ~1.6 cores (BENCHMARKS.md, session 9). Here the batch is split
once, at the outermost :class:`~mlcvlab.nn.module.Sequential`: part k of the batch runs through
the whole model on thread k, every layer on one thread with BLAS on one thread, and the threads
meet once per forward and once per backward.

Each part needs its own caches (what a forward keeps for its backward) and its own parameter
gradients, so parts 1..k-1 run on **replicas**: copies of the module tree that share the
model's parameter *values* (the very arrays) and its buffers, with gradient arrays of their
own. Part 0 runs on the model itself. After the backward the replicas' gradients are added
into the model's (one vector add when the model's parameters live in one flat buffer), so
``model.backward`` leaves in ``Parameter.grad`` the gradient of the whole batch, to float
rounding (the sums over samples are added in another order), and accumulates as ever.

Batch norm in training couples the samples through its batch statistics: in a split pass
each part computes its per-channel float64 statistics, the parts exchange them (:class:`Team`,
a barrier between the threads) and every part normalizes with the whole batch's mean and
variance, in the forward (one meeting: each part's sums and squared deviations from its own
mean, combined as Chan, Golub and LeVeque's parallel variance; two meetings until session 16)
and in the backward (one: the sums of dy and dy * x_hat). Part 0 alone folds the statistics
into the running ones (the buffers are shared).

A model splits only when every module in it can run on parts of the batch in its current mode
(``Module.splits_over_batch``: a convolution can; 2-D batch norm can, as above; dropout in
training cannot, its mask counter is shared; a layer that declares nothing cannot), it has a
convolution (a model of GEMMs alone, an MLP, is already spread over the cores by BLAS), the
input is a 4-D batch on the CPU of at least ``MIN_VALUES`` values and ``MIN_PART_SAMPLES``
samples per thread, more than one thread is allowed (``kernels.num_threads``) and no layer's
``forward`` or ``backward`` is replaced on the instance (the traces of the memory lab and
``summarize`` wrap them). The rule is deterministic: the same model and batch split the same
way on every run. ``disabled()`` turns splitting off, for A/B timing and for code that reads
the layers' caches.
"""
from __future__ import annotations

import contextlib
import copy
import threading
from collections import OrderedDict
from typing import Dict, Iterator, List, NamedTuple, Optional, Tuple

import numpy as np

from mlcvlab.nn import kernels
from mlcvlab.nn.parameter import Parameter

# A batch splits only when every part gets at least MIN_PART_SAMPLES samples and the input
# has at least MIN_VALUES values (tiny images never). Measured at 2 threads, split / unsplit
# step time, interleaved (BENCHMARKS.md, session 9): LeNet-5 training 0.93x at batch 64
# (32 per part), 1.11x at 96, 1.24x at 128; ResNet-20 training 0.88x at batch 32, 1.08x
# at 64, 1.06-1.09x at 128 (its unsplit path already spreads large convolutions over the
# threads, LeNet-5's does not).
MIN_PART_SAMPLES = 48
MIN_VALUES = 2**15

_state = threading.local()
_enabled = True


def set_enabled(flag: bool) -> bool:
    """Turn the split on or off for the whole process; returns the previous setting."""
    global _enabled
    previous, _enabled = _enabled, bool(flag)
    return previous


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """No split inside the ``with`` block (every layer splits its own work, as before)."""
    previous = set_enabled(False)
    try:
        yield
    finally:
        set_enabled(previous)


def enabled() -> bool:
    return _enabled


# --------------------------------------------------------------------------- the rule
def _own_answer(module) -> bool:
    """``module.splits_over_batch()``, trusted only from the class that defines its forward
    (a subclass that rewrites forward without saying otherwise does not split) and only when
    neither forward nor backward is replaced on the instance."""
    if "forward" in module.__dict__ or "backward" in module.__dict__:
        return False
    owner = next(c for c in type(module).__mro__ if "forward" in c.__dict__)
    if "splits_over_batch" not in owner.__dict__:
        return False
    return bool(module.splits_over_batch())


def splittable(model) -> bool:
    """Whether every module of ``model`` treats the samples independently now and one of them
    is a convolution (the rule in the module docstring, without the batch)."""
    from mlcvlab.nn.modules import Conv2d
    has_conv = False
    for m in model.modules():
        if not _own_answer(m):
            return False
        has_conv = has_conv or isinstance(m, Conv2d)
    return has_conv


def parts_for(model, x) -> Optional[List[slice]]:
    """The batch parts of ``x`` for ``model.forward``, one per thread, or None (no split)."""
    if not _enabled or getattr(_state, "depth", 0) or model.device != "cpu":
        return None
    if type(x) is not np.ndarray or x.ndim != 4 or x.size < MIN_VALUES:
        return None
    threads = kernels.num_threads()             # 1 inside a part of any parallel_map
    if threads < 2 or x.shape[0] < MIN_PART_SAMPLES * threads or not splittable(model):
        return None
    return kernels.split(x.shape[0], threads)


@contextlib.contextmanager
def nested() -> Iterator[None]:
    """Marks a forward in progress in this thread: the Sequentials inside it do not split."""
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        yield
    finally:
        _state.depth -= 1


# --------------------------------------------------------------------------- the parts meet
class Team:
    """The parts of one split pass: where batch norm exchanges its per-part statistics.

    ``allreduce(a)`` returns the sum of every part's ``a`` (float64, same shape), added in
    part order by each part itself, so all parts get the same bits; ``allgather(a)`` every
    part's ``a`` itself, stacked in part order. A part that fails breaks the barrier, so the
    others stop waiting (``threading.BrokenBarrierError``) instead of hanging;
    :func:`_run_parts` then raises the failed part's own error.
    """

    def __init__(self, size: int, batch: int):
        self.size, self.batch = size, batch
        self._barrier = threading.Barrier(size)
        # Two sets of slots, used in turn: a part that is one allreduce ahead writes into the
        # other set, and it cannot get two ahead (that needs every part at the next barrier),
        # so one barrier per allreduce suffices.
        self._slots: List[List[Optional[np.ndarray]]] = [[None] * size, [None] * size]
        self._calls = [0] * size

    def _exchange(self, a: np.ndarray) -> List[np.ndarray]:
        """Every part's ``a``, in part order, once every part has put its own (to be read
        before this part's next meeting)."""
        rank = _state.rank
        slots = self._slots[self._calls[rank] % 2]
        self._calls[rank] += 1
        slots[rank] = a
        self._barrier.wait()                    # every part has put its array
        return slots

    def allreduce(self, a: np.ndarray) -> np.ndarray:
        slots = self._exchange(a)
        total = slots[0].copy()
        for other in slots[1:]:
            total += other
        return total

    def allgather(self, a: np.ndarray) -> np.ndarray:
        """Every part's ``a`` (same shape), stacked in part order: (parts,) + a.shape."""
        return np.stack(self._exchange(a))

    def abort(self) -> None:
        self._barrier.abort()


def team() -> Optional[Team]:
    """The team of the split pass this thread is running a part of, or None."""
    return getattr(_state, "team", None)


def rank() -> int:
    """Which part of a split pass this thread runs (0 outside one)."""
    return getattr(_state, "rank", 0) if team() is not None else 0


def _run_parts(fn, count: int, batch: int) -> list:
    """[fn(i) for i in range(count)], part i on thread i, each in the team of this pass; the
    error of a part that fails (not the broken barrier it leaves the others)."""
    crew = Team(count, batch)

    def run(i: int):
        _state.team, _state.rank = crew, i
        try:
            return fn(i), None
        except BaseException as err:            # noqa: B902 (re-raised below, in this thread)
            crew.abort()
            return None, err
        finally:
            _state.team = None

    results = kernels.parallel_map(run, list(range(count)))
    errors = [e for _, e in results if e is not None]
    if errors:
        real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
        raise (real or errors)[0]
    return [r for r, _ in results]


# --------------------------------------------------------------------------- replicas
class Replica:
    """A copy of a model's module tree for one part of the batch: the same parameter values
    and buffers (shared arrays), its own caches and its own gradients, all views of one
    vector ``grad`` ordered as ``model.parameters()``."""

    def __init__(self, model):
        main = model.parameters()
        self.grad = np.zeros(sum(p.size for p in main), dtype=model.dtype)
        self._params: Dict[int, Parameter] = {}
        offset = 0
        for p in main:
            rp = Parameter.__new__(Parameter)
            rp.data, rp.decay, rp.name, rp._flat = p.data, p.decay, p.name, None
            rp.grad = self.grad[offset:offset + p.size].reshape(p.shape)
            offset += p.size
            self._params[id(p)] = rp
        self.main_params = main
        self.params = [self._params[id(p)] for p in main]
        self.pairs: List[Tuple[object, object, frozenset]] = []
        self.root = self._copy(model, {})

    def _copy(self, m, memo: dict):
        if id(m) in memo:                       # a module used twice stays one module
            return memo[id(m)]
        r = copy.copy(m)                        # the attributes, by reference
        memo[id(m)] = r
        children = OrderedDict((k, self._copy(c, memo)) for k, c in m._modules.items())
        params = OrderedDict((k, None if p is None else self._params[id(p)])
                             for k, p in m._parameters.items())
        object.__setattr__(r, "_modules", children)
        object.__setattr__(r, "_parameters", params)
        object.__setattr__(r, "_flat", None)
        for k, v in list(children.items()) + list(params.items()):
            object.__setattr__(r, k, v)
        skip = frozenset(("_modules", "_parameters", "_flat", "_split", "_replicas")) \
            | set(children) | set(params)
        self.pairs.append((m, r, skip))
        return r

    def current(self, model) -> bool:
        """Whether this replica still mirrors ``model``: the same parameters, still viewing
        the same arrays (``flatten`` or ``astype`` rebinds them), the same modules."""
        main = model.parameters()
        return (len(main) == len(self.main_params)
                and all(p is q and rp.data is p.data
                        for p, q, rp in zip(main, self.main_params, self.params))
                and len(self.pairs) == sum(1 for _ in model.modules()))

    def sync(self) -> None:
        """Copy every module's settings (training mode, input_grad, options a user changed)
        onto its replica; the structure and the gradients stay the replica's own."""
        for m, r, skip in self.pairs:
            rd = r.__dict__
            for k, v in m.__dict__.items():
                if k not in skip:
                    rd[k] = v

    def zero_grad(self) -> None:
        for p in self.params:
            p.zero_grad()

    def add_grads_into(self, model) -> None:
        """model's gradients += this replica's (the pending zeros of both written first)."""
        for p in self.params:
            p.grad                              # noqa: B018 (writes a pending zero)
        flat = self.main_params[0]._flat if self.main_params else None
        if flat is not None and flat.covers(self.main_params):
            grad = flat.grad
            grad += self.grad
            return
        for p, rp in zip(self.main_params, self.params):
            p.grad += rp.grad


def replicas(model, count: int) -> List[Replica]:
    """``count`` replicas of ``model``, kept on the model and rebuilt when it changed."""
    kept = model.__dict__.get("_replicas") or []
    if len(kept) < count or not all(r.current(model) for r in kept[:count]):
        kept = [Replica(model) for _ in range(count)]
        object.__setattr__(model, "_replicas", kept)
    for r in kept[:count]:
        r.sync()
    return kept[:count]


# --------------------------------------------------------------------------- forward, backward
class SplitPass(NamedTuple):
    """What a split training forward leaves for its backward."""
    parts: List[slice]
    replicas: List[Replica]
    batch: int


def _roots(model, reps: List[Replica]) -> list:
    return [model] + [r.root for r in reps]


def forward(model, x: np.ndarray, parts: List[slice]) -> np.ndarray:
    """``model.forward(x)`` with part k of the batch on thread k (model a Sequential)."""
    reps = replicas(model, len(parts) - 1)
    roots = _roots(model, reps)

    def run(i: int) -> np.ndarray:
        with nested():
            return roots[i]._forward_layers(x[parts[i]])

    outs = _run_parts(run, len(parts), x.shape[0])
    kept = SplitPass(parts, reps, x.shape[0]) if model.training else None
    object.__setattr__(model, "_split", kept)
    return np.concatenate(outs)


def backward(model, dy: np.ndarray):
    """``model.backward(dy)`` after a split forward: each part's backward on its thread, then
    the replicas' gradients added into the model's."""
    kept: SplitPass = model.__dict__["_split"]
    object.__setattr__(model, "_split", None)
    if type(dy) is not np.ndarray or dy.ndim < 1 or dy.shape[0] != kept.batch:
        raise ValueError(f"{type(model).__name__}.backward: dy must be an array with the "
                         f"forward's batch of {kept.batch} on axis 0, got "
                         f"{getattr(dy, 'shape', type(dy).__name__)}")
    for r in kept.replicas:
        r.zero_grad()
    roots = _roots(model, kept.replicas)

    def run(i: int):
        return roots[i]._backward_layers(dy[kept.parts[i]])

    dxs = _run_parts(run, len(kept.parts), kept.batch)
    for r in kept.replicas:
        r.add_grads_into(model)
    return None if dxs[0] is None else np.concatenate(dxs)


def replica_modules(model) -> List[object]:
    """The replicas' modules holding the caches of ``model``'s last split training forward
    (empty when it did not split): for code that adds up what the caches keep."""
    kept = model.__dict__.get("_split")
    if kept is None:
        return []
    return [r for rep in kept.replicas for _, r, _ in rep.pairs]
