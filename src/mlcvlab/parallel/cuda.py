"""``--dist cuda``: K data-parallel workers on GPUs in one process, numba CUDA kernels.

Worker k runs on GPU ``k mod G`` of the G devices in ``numba.cuda.gpus`` (with one
device the K workers share it). Per step:

1. the weights (P,) are on every device; worker k copies its shard of the batch
   over and runs the forward and backward of the model layer by layer with the
   kernels of :mod:`mlcvlab.parallel.cuda_kernels` (tiled shared-memory matmul,
   bias, ReLU, sigmoid, softmax, batch norm, dropout mask), writing its gradient
   into row k of a (K, P) device buffer;
2. :class:`CudaCommunicator` averages the K rows with the reduction kernel on
   device 0 (rows of other devices are copied there first);
3. the fused SGD kernel updates the weights on device 0 (other optimizers: the
   mean gradient is copied to the host and the optimizer steps there), and the
   new weights are copied back to the host model and to the other devices.

Models: NN4 and MLPs from :func:`mlcvlab.models.mlp` (Flatten, Dropout, Linear,
ReLU, Sigmoid, Softmax, BatchNorm1d), float32. Dropout masks are drawn on the
device by ``dropout_mask_kernel``, the counter-based generator of
:mod:`mlcvlab.nn.philox` keyed as on the CPU (the layer's seed and step, stream = the
worker), so worker k draws the masks of worker k of the CPU data-parallel step, and with
one worker those of the plain Trainer step (``mlcvlab train --dist local --workers 1``):
a CUDA step equals the CPU step up to float rounding. Each Dropout's step advances once
per CUDA step, as on the CPU.
The backward stops at the first layer with parameters: the gradient of the input data
is never computed (as the CPU path after ``set_input_grad(False)``).
Batch norm: per-worker batch statistics; running statistics averaged across
workers on the host, as in :mod:`mlcvlab.parallel.step`.
numba is imported when a step is built: without a GPU (and without the
simulator, ``NUMBA_ENABLE_CUDASIM=1``) that raises a clear "no CUDA device" error.
"""
from __future__ import annotations

import time
from typing import Dict, List, Tuple

import numpy as np

from mlcvlab.parallel.comm import Communicator
from mlcvlab.parallel.step import shard_bounds


def load_cuda():
    """numba.cuda and the kernels module, or a RuntimeError saying there is no device."""
    from mlcvlab.gpu.device import speed_up_simulator
    speed_up_simulator()
    try:
        from numba import cuda
    except ImportError as err:    # pragma: no cover - numba is a dependency
        raise RuntimeError("--dist cuda needs numba: pip install numba") from err
    try:
        available = cuda.is_available() and len(cuda.gpus) > 0
    except Exception:             # noqa: BLE001 - driver errors of any kind mean "no device"
        available = False
    if not available:
        raise RuntimeError("--dist cuda: no CUDA device found: numba.cuda.is_available() is "
                           "False. Install an NVIDIA driver and numba-cuda (pip install "
                           "numba-cuda) on a machine with an NVIDIA GPU, or run without "
                           "--device cuda (--dist local or --dist mpi); "
                           "NUMBA_ENABLE_CUDASIM=1 runs the kernels on the CPU simulator")
    from mlcvlab.parallel import cuda_kernels
    return cuda, cuda_kernels


class CudaCommunicator(Communicator):
    """Averages K per-worker gradient rows with the reduction kernel on device 0.

    ``allreduce_mean(buf)``: buf a (K, P) device array on device 0 (the rows
    other devices computed are copied into it first); every row becomes the mean.
    """

    name = "cuda"

    def __init__(self, size: int):
        self.cuda, self.kernels = load_cuda()
        self.rank, self.size = 0, int(size)
        self.devices = list(self.cuda.gpus)

    @property
    def local_ranks(self) -> List[int]:
        return list(range(self.size))

    def device_of(self, rank: int):
        return self.devices[rank % len(self.devices)]

    def allreduce_mean(self, buf, weights=None) -> None:
        """Every row of buf (K, P) becomes the mean of the K rows, each row k first scaled by
        weights[k] (default 1; K n_k / B for unequal shards)."""
        if buf.shape[0] != self.size:
            raise ValueError(f"CudaCommunicator.allreduce_mean: expected ({self.size}, P) rows, "
                             f"got shape {buf.shape}")
        wts = np.ones(self.size, np.float32) if weights is None else np.asarray(weights, np.float32)
        k = self.kernels
        with self.devices[0]:
            k.reduce_mean_kernel[k.grid1(buf.shape[1])](buf, self.cuda.to_device(wts))

    def broadcast(self, buf, root: int = 0) -> None:
        """All workers of this process read the same host weights: nothing moves."""


def _leaf_layers(model) -> list:
    """The model's layers in forward order (NN4 and mlp() list them in that order)."""
    from mlcvlab.nn.modules import (BatchNorm1d, Dropout, Flatten, Linear, ReLU, Sigmoid,
                                    Softmax)
    supported = (Flatten, Dropout, Linear, ReLU, Sigmoid, Softmax, BatchNorm1d)
    leaves = [m for m in model.modules() if not list(m.children())]
    for m in leaves:
        if not isinstance(m, supported):
            raise ValueError(f"--dist cuda supports NN4 and MLPs (Linear, ReLU, Sigmoid, Softmax, "
                             f"BatchNorm1d, Dropout, Flatten); got a {type(m).__name__} layer. "
                             f"Use --dist local or --dist mpi for this model")
    return [m for m in leaves if not isinstance(m, Flatten)]


class CudaDataParallelStep:
    """A ``Trainer`` step_fn with K workers on the GPUs (see the module docstring).

    seed: not used (the dropout masks are keyed by each Dropout layer's own seed, as in
    DataParallelStep); accepted so that callers need not change."""

    def __init__(self, model, workers: int, seed: int = 0):
        if model.dtype != np.float32:
            raise TypeError(f"--dist cuda: the kernels are float32, the model is {model.dtype}; "
                            f"use model.astype(np.float32)")
        self.comm = CudaCommunicator(workers)
        self.cuda, self.k = self.comm.cuda, self.comm.kernels
        self.model, self.size, self.is_root = model, int(workers), True
        self.layers = _leaf_layers(model)
        self.flat = model.flat()
        self._slice = {id(p): sl for p, sl in zip(self.flat.params, self.flat.slices)}
        from mlcvlab.nn.modules import Dropout
        self._dropouts = [m for m in model.modules() if isinstance(m, Dropout)]
        with self.comm.devices[0]:
            self.G = self.cuda.device_array((self.size, self.flat.size), dtype=np.float32)
        self._momentum = None

    def state_dict(self) -> dict:
        """The worker count (the dropout state is in the model's buffers; see
        DataParallelStep.state_dict)."""
        return {"workers": self.size}

    def load_state_dict(self, state: dict) -> None:
        if int(state["workers"]) != self.size:
            raise ValueError(f"the checkpoint was written with {state['workers']} workers, this "
                             f"run has {self.size}: resume with --workers {state['workers']}")

    # -------------------------------------------------------------- one worker
    def _view(self, w, param):
        sl = self._slice[id(param)]
        return w[sl.start:sl.stop].reshape(param.data.shape)

    def _mask(self, layer, rank: int, shape):
        """The scaled keep mask (device, float32) of worker ``rank`` at the layer's current
        step: the mask ``mlcvlab.nn.philox.dropout_mask`` gives on the CPU."""
        from mlcvlab.nn import philox
        k = self.k
        words = philox.key_words(philox.DropoutKey(int(layer.mask_seed), rank,
                                                   int(layer.mask_step)))
        m = self.cuda.device_array(shape, dtype=np.float32)
        size = int(np.prod(shape))
        k.dropout_mask_kernel[k.grid1((size + 3) // 4)](
            m.ravel(), np.uint32(philox.keep_threshold(layer.p)),
            np.float32(philox.mask_scale(layer.p)), *words)
        return m

    def _forward(self, w, a, rank: int) -> Tuple[object, list]:
        """Forward of one worker; returns the output and the per-layer caches."""
        from mlcvlab.nn.modules import BatchNorm1d, Dropout, Linear, ReLU, Sigmoid
        cuda, k = self.cuda, self.k
        caches = []
        for layer in self.layers:
            n, d = a.shape
            if isinstance(layer, Dropout):
                if layer.p == 0:
                    caches.append(None)
                    continue
                m = self._mask(layer, rank, (n, d))
                y = cuda.device_array((n, d), dtype=np.float32)
                k.mask_kernel[k.grid1(n * d)](a.ravel(), m.ravel(), y.ravel())
                caches.append(m)
            elif isinstance(layer, Linear):
                W = self._view(w, layer.weight)
                y = cuda.device_array((n, W.shape[0]), dtype=np.float32)
                k.matmul_kernel[k.grid2(n, W.shape[0])](a, W, y, False, True)
                if layer.bias is not None:
                    k.add_bias_kernel[k.grid2(n, W.shape[0])](y, self._view(w, layer.bias))
                caches.append(a)
            elif isinstance(layer, BatchNorm1d):
                y, xhat = (cuda.device_array((n, d), dtype=np.float32) for _ in range(2))
                stats = [cuda.device_array(d, dtype=np.float32) for _ in range(3)]
                k.bn_forward_kernel[k.grid1(d)](a, self._view(w, layer.weight),
                                                self._view(w, layer.bias),
                                                np.float32(layer.eps), y, xhat,
                                                *stats)
                caches.append((xhat, *stats))
            else:   # ReLU, Sigmoid, Softmax
                y = cuda.device_array((n, d), dtype=np.float32)
                if isinstance(layer, ReLU):
                    k.relu_kernel[k.grid1(n * d)](a.ravel(), y.ravel())
                elif isinstance(layer, Sigmoid):
                    k.sigmoid_kernel[k.grid1(n * d)](a.ravel(), y.ravel())
                else:
                    k.softmax_kernel[k.grid1(n)](a, y)
                caches.append(a if isinstance(layer, ReLU) else y)
            a = y
        return a, caches

    def _head(self, out, y: np.ndarray):
        """Probabilities P (device), dL/d(pre-activation) (device), the loss (host float) and
        how many trailing layers the backward skips (the sigmoid/softmax head)."""
        from mlcvlab.nn.modules import Linear
        cuda, k = self.cuda, self.k
        skip = 1
        if isinstance(self.layers[-1], Linear):        # logits: softmax cross-entropy
            P = cuda.device_array(out.shape, dtype=np.float32)
            k.softmax_kernel[k.grid1(out.shape[0])](out, P)
            skip = 0
        else:
            P = out
        n, c = P.shape
        yd = cuda.to_device(np.ascontiguousarray(y, dtype=np.float32 if c == 1 else np.int64))
        dz = cuda.device_array((n, c), dtype=np.float32)
        k.prob_minus_target_kernel[k.grid2(n, c)](P, yd, dz)
        p = P.copy_to_host()
        eps = np.finfo(np.float32).eps
        if c == 1:
            t, q = y.reshape(-1).astype(np.float32), np.clip(p.reshape(-1), eps, 1 - eps)
            loss = -np.mean(t * np.log(q) + (1 - t) * np.log1p(-q))
        else:
            loss = -np.mean(np.log(np.maximum(p[np.arange(n), y], eps)))
        return dz, float(loss), skip

    def _backward(self, w, g, dy, caches, skip: int) -> None:
        """Backward of one worker from dy, writing parameter gradients into g (P,).

        The model's input is data: as the CPU path after ``set_input_grad(False)``, the
        backward stops at the first layer with parameters, which computes only its
        parameter gradients (a Linear skips its dx GEMM; layers before it, such as an
        input Dropout, are not run backward)."""
        from mlcvlab.nn.modules import BatchNorm1d, Dropout, Linear, ReLU, Sigmoid
        cuda, k = self.cuda, self.k
        end = len(self.layers) - skip
        first = next((i for i, m in enumerate(self.layers[:end])
                      if isinstance(m, (Linear, BatchNorm1d))), 0)
        layers, caches = self.layers[first:end], caches[first:end]
        for layer, cache in zip(reversed(layers), reversed(caches)):
            n, d = dy.shape
            if isinstance(layer, Dropout):
                if cache is None:
                    continue
                dx = cuda.device_array((n, d), dtype=np.float32)
                k.mask_kernel[k.grid1(n * d)](dy.ravel(), cache.ravel(), dx.ravel())
            elif isinstance(layer, Linear):
                W, x = self._view(w, layer.weight), cache
                dW = self._view(g, layer.weight)
                k.matmul_kernel[k.grid2(*dW.shape)](dy, x, dW, True, False)
                if layer.bias is not None:
                    k.colsum_kernel[k.grid1(d)](dy, self._view(g, layer.bias))
                if layer is layers[0]:       # the first layer: dL/d(data) is never used
                    return
                dx = cuda.device_array((n, W.shape[1]), dtype=np.float32)
                k.matmul_kernel[k.grid2(n, W.shape[1])](dy, W, dx, False, False)
            elif isinstance(layer, BatchNorm1d):
                xhat, _, _, inv_std = cache
                dx = cuda.device_array((n, d), dtype=np.float32)
                k.bn_backward_kernel[k.grid1(d)](dy, xhat, self._view(w, layer.weight), inv_std, dx,
                                                 self._view(g, layer.weight),
                                                 self._view(g, layer.bias))
            else:
                dx = cuda.device_array((n, d), dtype=np.float32)
                kern = k.relu_grad_kernel if isinstance(layer, ReLU) else k.sigmoid_grad_kernel
                if not isinstance(layer, (ReLU, Sigmoid)):
                    raise ValueError(f"--dist cuda: {type(layer).__name__} is only supported as "
                                     f"the output layer")
                kern[k.grid1(n * d)](cache.ravel(), dy.ravel(), dx.ravel())
            dy = dx

    def _bn_running(self, caches, n: int) -> List[Tuple[np.ndarray, np.ndarray]]:
        """Running (mean, var) each BN layer would have after this worker's batch
        (mlcvlab.nn.basis.batchnorm_update_running on copies; the layer is updated once, with
        the mean over workers, in _set_running)."""
        from mlcvlab.nn.basis import batchnorm_update_running
        from mlcvlab.nn.modules import BatchNorm1d
        out = []
        for layer, cache in zip(self.layers, caches):
            if isinstance(layer, BatchNorm1d):
                mean, var = cache[1].copy_to_host(), cache[2].copy_to_host()
                running = layer.running_mean.copy(), layer.running_var.copy()
                batchnorm_update_running(*running, mean, var, n, layer.next_momentum())
                out.append(running)
        return out

    # -------------------------------------------------------------- the step
    def _compute(self, xb, yb) -> Tuple[float, list, np.ndarray]:
        """Forward and backward of every worker into the rows of G.

        Returns the mean loss, each worker's BN running statistics and the row
        weights K n_k / B (all 1.0 for equal shards)."""
        x = np.ascontiguousarray(xb.reshape(len(xb), -1), dtype=np.float32)
        bounds = shard_bounds("--dist cuda", len(x), self.size)
        wts = np.diff(bounds) * self.size / len(x)
        losses, running, weights = [], [], {}
        main = self.comm.devices[0]
        for r in range(self.size):
            dev = self.comm.device_of(r)
            with dev:
                if dev.id not in weights:
                    weights[dev.id] = self.cuda.to_device(self.flat.data)
                lo, hi = bounds[r], bounds[r + 1]
                out, caches = self._forward(weights[dev.id], self.cuda.to_device(x[lo:hi]), r)
                dz, loss, skip = self._head(out, yb[lo:hi])
                on_main = dev.id == main.id
                g = self.G[r] if on_main else self.cuda.device_array(self.flat.size, np.float32)
                self._backward(weights[dev.id], g, dz, caches, skip)
                if not on_main:      # peer copy through the host
                    host = g.copy_to_host()
                    with main:
                        self.G[r].copy_to_device(host)
                losses.append(loss * wts[r])
                running.append(self._bn_running(caches, hi - lo))
        self.cuda.synchronize()
        return float(np.mean(losses)), running, wts

    def _set_running(self, running: list) -> None:
        """BN running statistics: the mean over workers, summed in worker order."""
        from mlcvlab.nn.modules import BatchNorm1d
        bns = [m for m in self.layers if isinstance(m, BatchNorm1d)]
        for i, bn in enumerate(bns):
            mean, var = running[0][i][0].copy(), running[0][i][1].copy()
            for r in range(1, self.size):
                mean += running[r][i][0]
                var += running[r][i][1]
            bn.running_mean[...] = mean / self.size
            bn.running_var[...] = var / self.size
            bn.num_batches_tracked += 1

    def _fused(self, optimizer) -> bool:
        from mlcvlab.optim.sgd import SGD
        return (type(optimizer) is SGD and not optimizer.decay_mask
                and getattr(optimizer, "_whole", True)     # one group over the whole buffer
                and not getattr(optimizer, "_post_step", None))

    def _update(self, optimizer) -> None:
        """The fused SGD kernel on device 0, or the host optimizer on the mean gradient."""
        cuda, k = self.cuda, self.k
        if not self._fused(optimizer):
            self.G[0].copy_to_host(self.flat.grad)
            optimizer.step()
            return
        with self.comm.devices[0]:
            w = cuda.to_device(self.flat.data)
            buf = cuda.to_device(optimizer.state.get("momentum_buffer", np.zeros(1, np.float32)))
            k.sgd_update_kernel[k.grid1(w.shape[0])](
                w, self.G[0], buf, np.float32(optimizer.lr), np.float32(optimizer.momentum),
                np.float32(optimizer.weight_decay), optimizer.nesterov)
            w.copy_to_host(self.flat.data)
            self.G[0].copy_to_host(self.flat.grad)
            if "momentum_buffer" in optimizer.state:
                buf.copy_to_host(optimizer.state["momentum_buffer"])
        optimizer.t += 1

    def step(self, xb: np.ndarray, yb: np.ndarray, optimizer) -> Tuple[float, Dict[str, float]]:
        """One synchronous step on the global batch; returns (mean loss, timings)."""
        t0 = time.perf_counter()
        loss, running, wts = self._compute(xb, yb)
        t1 = time.perf_counter()
        self.comm.allreduce_mean(self.G, wts)
        self.cuda.synchronize()
        t2 = time.perf_counter()
        self._set_running(running)
        for d in self._dropouts:                   # once per step, as on the CPU
            d.mask_step[...] = int(d.mask_step) + 1
        self._update(optimizer)
        t3 = time.perf_counter()
        nbytes = self.flat.size * 4 if self.size > 1 else 0
        return loss, {"compute_seconds": t1 - t0, "communication_seconds": t2 - t1,
                      "update_seconds": t3 - t2, "bytes_communicated": float(nbytes)}

    def __call__(self, trainer, xb: np.ndarray, yb: np.ndarray) -> Tuple[float, Dict[str, float]]:
        return self.step(xb, yb, trainer.optimizer)
