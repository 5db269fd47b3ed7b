"""DataLoader: shuffled mini-batches over in-memory arrays, with a prefetching thread.

Determinism: the shuffle order of every epoch comes from the loader's generator (``seed``),
and augmentation comes from the transforms' own generators, consumed batch after batch in
order. Prefetching never changes the result: the batches a background thread prepares ahead
are *speculative*; before preparing a batch the thread saves the transforms' generator
states, and when a prepared batch turns out not to be wanted (``batch_size`` changed, the
epoch was abandoned, or ``state_dict`` is asked mid-epoch) those states are restored. So a
seeded run gives the same batches bit for bit with ``prefetch=0`` or ``prefetch=2``, however
the threads are timed. (Plain-function transforms have no generator we can see; if they draw
random numbers from somewhere else, that source is not rolled back.)

``batch_size`` may be changed at any time (``CyclicBatchSize`` does it after each batch); the
change takes effect at the next batch drawn. Already-prepared batches of the old size are
discarded and prepared again, so a change costs at most one batch of lost overlap.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Dict, List, Optional

import numpy as np

from ..backend import SeedLike, rng as make_rng
from .transforms import generators_of

_END = object()


class DataLoader:
    """Iterate over (xb, yb) mini-batches of (X, y).

    X: (N, ...) array (e.g. (N, C, H, W) images), y: (N,) labels. Each ``iter(loader)`` is
    one epoch: every sample exactly once, in a fresh random order when ``shuffle``; the last
    short batch is dropped when ``drop_last``. ``transform`` is called on whole batches as
    ``transform(xb, yb) -> (xb, yb)`` (see :mod:`mlcvlab.data.transforms`), in a background
    thread that prepares up to ``prefetch`` batches ahead (0: no thread). Yields xb as a
    C-contiguous float32 array (converted with ``astype``, no rescaling), yb as given.
    ``len(loader)`` is the number of batches per epoch at the current ``batch_size``.
    """

    def __init__(self, X, y, batch_size: int = 1, shuffle: bool = True, drop_last: bool = False,
                 transform=None, seed: SeedLike = None, prefetch: int = 2):
        X, y = np.asarray(X), np.asarray(y)
        if X.ndim < 1 or len(X) == 0:
            raise ValueError(f"DataLoader: X must hold at least one sample, got shape {X.shape}")
        if y.ndim < 1 or len(y) != len(X):
            raise ValueError(f"DataLoader: len(X) == len(y) required, got X {X.shape} and "
                             f"y {y.shape}")
        if transform is not None and not callable(transform):
            raise TypeError(f"DataLoader: transform must be callable, got "
                            f"{type(transform).__name__}")
        if not isinstance(prefetch, (int, np.integer)) or prefetch < 0:
            raise ValueError(f"DataLoader: prefetch must be an int >= 0, got {prefetch!r}")
        self.X, self.y = X, y
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        self.transform, self.prefetch = transform, int(prefetch)
        self.rng = make_rng(seed)
        self.batch_size = batch_size
        self._active: Optional[_Epoch] = None

    # -------------------------------------------------------------- batch size, length
    @property
    def batch_size(self) -> int:
        return self._batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"DataLoader: batch_size must be an int >= 1, got {value!r}")
        self._batch_size = int(value)

    def __len__(self) -> int:
        n, b = len(self.X), self._batch_size
        return n // b if self.drop_last else -(-n // b)

    # -------------------------------------------------------------- iteration
    def __iter__(self):
        if self._active is not None:
            self._active.close()
        order = self.rng.permutation(len(self.X)) if self.shuffle else np.arange(len(self.X))
        self._active = _Epoch(self, order)
        return self._active

    def make_batch(self, idx: np.ndarray):
        """The (xb, yb) batch of samples ``idx``, transformed."""
        xb = np.asarray(self.X[idx], dtype=np.float32)
        yb = self.y[idx]
        if self.transform is not None:
            xb, yb = self.transform(xb, yb)
        return np.ascontiguousarray(xb, dtype=np.float32), yb

    # -------------------------------------------------------------- checkpointing
    def _generators(self) -> List[np.random.Generator]:
        return list(generators_of(self.transform))

    def state_dict(self) -> Dict[str, Any]:
        """Generator states and batch size, so a resumed run repeats the same batches.
        Taken mid-epoch, the transform states are those before the next undrawn batch."""
        if self._active is not None:
            self._active.close()  # rolls speculative batches back
        return {"rng": self.rng.bit_generator.state, "batch_size": self._batch_size,
                "transforms": [g.bit_generator.state for g in self._generators()]}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.batch_size = state["batch_size"]
        generators = self._generators()
        if len(generators) != len(state["transforms"]):
            raise ValueError(f"DataLoader.load_state_dict: state has {len(state['transforms'])} "
                             f"transform generators, this loader has {len(generators)}")
        for g, s in zip(generators, state["transforms"]):
            g.bit_generator.state = s

    def __repr__(self) -> str:
        return (f"DataLoader(N={len(self.X)}, batch_size={self._batch_size}, "
                f"shuffle={self.shuffle}, drop_last={self.drop_last}, "
                f"transform={self.transform!r}, prefetch={self.prefetch})")


class _Epoch:
    """One pass over ``order``; hands out batches, prepared ahead by a worker thread."""

    def __init__(self, loader: DataLoader, order: np.ndarray):
        self.loader, self.order = loader, order
        self.pos = 0                 # first sample (in ``order``) not yet handed out
        self.worker: Optional[threading.Thread] = None
        self.saved: Dict[int, list] = {}   # start position -> transform states before it

    def __iter__(self):
        return self

    # The batch that starts at ``pos`` for the current batch size, or None at the end.
    def _next_size(self, pos: int, batch_size: int) -> int:
        size = min(batch_size, len(self.order) - pos)
        return 0 if size <= 0 or (self.loader.drop_last and size < batch_size) else size

    def __next__(self):
        size = self._next_size(self.pos, self.loader.batch_size)
        if size == 0:
            self.close()
            raise StopIteration
        if self.loader.prefetch == 0:
            batch = self.loader.make_batch(self.order[self.pos:self.pos + size])
        else:
            batch = self._from_worker(size)
        self.pos += size
        return batch

    # -------------------------------------------------------------- worker
    def _from_worker(self, size: int):
        if self.worker is None:
            self._start()
        item = self.queue.get()
        if isinstance(item, BaseException):
            self.close()
            raise item
        if item is _END:   # the worker planned fewer batches (batch_size grew since): redo
            self.close()
            self._start()
            return self._from_worker(size)
        start, got, batch = item
        if start != self.pos or got != size:   # prepared for another batch size: redo
            self.close()
            self._start()
            return self._from_worker(size)
        self.saved.pop(start, None)
        return batch

    def _start(self) -> None:
        self.stop = threading.Event()
        self.queue: "queue.Queue" = queue.Queue(maxsize=self.loader.prefetch)
        self.worker = threading.Thread(target=self._work, args=(self.pos, self.loader.batch_size),
                                       daemon=True, name="mlcvlab-DataLoader")
        self.worker.start()

    def _work(self, pos: int, batch_size: int) -> None:
        generators = self.loader._generators()
        try:
            while not self.stop.is_set():
                size = self._next_size(pos, batch_size)
                if size == 0:
                    break
                self.saved[pos] = [g.bit_generator.state for g in generators]
                batch = self.loader.make_batch(self.order[pos:pos + size])
                if not self._put((pos, size, batch)):
                    return
                pos += size
        except Exception as err:  # handed to the consumer, raised there
            self._put(err)
            return
        self._put(_END)

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def close(self) -> None:
        """Stop the worker and roll the transforms back to before the first undrawn batch."""
        if self.worker is None:
            return
        self.stop.set()
        self.worker.join()
        self.worker = None
        states = self.saved.get(self.pos)
        if states is not None:
            for g, s in zip(self.loader._generators(), states):
                g.bit_generator.state = s
        self.saved.clear()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
