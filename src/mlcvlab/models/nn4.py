"""NN4: the course handout's four-layer network, with its hand-written gradient.

Layers 1-3: Dropout -> Linear -> ReLU -> BatchNorm; layer 4: Dropout -> Linear ->
Sigmoid (one output, binary task) or Softmax (``n_classes > 1``).

Besides the module backward, the handout asks for the gradient written out by
hand: :func:`nn4_forward` runs the network with explicit basis calls,
:func:`nn4_grad` chains the basis gradients back layer by layer, and
:func:`emp_loss_grad` returns the empirical loss and its gradient as one flat
vector in ``model.parameters()`` order — what a SyncSGD worker computes.
"""
from __future__ import annotations

from typing import List, NamedTuple, Sequence, Tuple

import numpy as np

from mlcvlab import backend
from mlcvlab.nn import basis
from mlcvlab.nn.losses import BCELoss, CrossEntropyLoss
from mlcvlab.nn.module import Kept, Module, Sequential
from mlcvlab.nn.modules import BatchNorm1d, Dropout, Linear, ReLU, Sigmoid, Softmax


class NN4(Module):
    """The handout's NN4. x: (N, in_features) or images (N, ...) flattened to in_features.

    Output: (N, 1) sigmoid probabilities when ``n_classes == 1``, else (N, n_classes)
    softmax probabilities. ``p_input`` / ``p_hidden`` are drop probabilities of the
    dropout before layer 1 and before layers 2-4.
    """

    def __init__(self, in_features: int, hidden: Sequence[int] = (512, 256, 128),
                 n_classes: int = 1, p_input: float = 0.2, p_hidden: float = 0.5, rng=None):
        super().__init__()
        hidden = tuple(int(h) for h in hidden)
        if len(hidden) != 3:
            raise ValueError(f"NN4: expected three hidden sizes (layers 1-3), got {hidden}")
        if n_classes < 1:
            raise ValueError(f"NN4: n_classes must be >= 1, got {n_classes}")
        gen = backend.rng(rng)
        sizes = (int(in_features),) + hidden
        self.in_features, self.hidden, self.n_classes = int(in_features), hidden, int(n_classes)
        self.p_input, self.p_hidden = float(p_input), float(p_hidden)
        for i in range(3):
            p = p_input if i == 0 else p_hidden
            self.add_module(f"layer{i + 1}", Sequential(
                Dropout(p, rng=gen), Linear(sizes[i], sizes[i + 1], rng=gen), ReLU(),
                BatchNorm1d(sizes[i + 1])))
        head = Sigmoid() if n_classes == 1 else Softmax()
        self.layer4 = Sequential(Dropout(p_hidden, rng=gen),
                                 Linear(hidden[-1], n_classes, rng=gen), head)
        self._in_shape = None
        self.flat()

    def _flat_input(self, x: np.ndarray) -> np.ndarray:
        if getattr(x, "ndim", 0) > 2:          # a NumPy or a device array
            x = x.reshape(x.shape[0], -1)
        return x

    def forward(self, x):
        self._in_shape = getattr(x, "shape", None)
        x = self._flat_input(x)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer.forward(x)
        return x

    def backward(self, dy):
        for layer in (self.layer4, self.layer3, self.layer2, self.layer1):
            dy = layer.backward(dy)
        return dy.reshape(self._in_shape)

    def kept_for_backward(self, in_shape, out_shape) -> Kept:
        return Kept()           # the input's shape only: its layers keep what they need

    def loss_fn(self):
        """The empirical loss NN4 is trained with: BCE (sigmoid head) or cross-entropy (softmax
        head).
        """
        return BCELoss() if self.n_classes == 1 else CrossEntropyLoss(from_probs=True)

    def emp_loss_grad(self, X: np.ndarray, y: np.ndarray) -> Tuple[float, np.ndarray]:
        return emp_loss_grad(self, X, y)


class NN4Cache(NamedTuple):
    # per layer: (dropout cache, linear cache, activation cache, bn cache or None)
    layers: List[tuple]


def _layers(model: NN4):
    return [model.layer1, model.layer2, model.layer3, model.layer4]


def nn4_forward(model: NN4, X: np.ndarray, train: bool = True) -> Tuple[np.ndarray, NN4Cache]:
    """NN4's forward written out with basis calls. Draws the dropout masks with the
    model's own Dropout keys (advancing their steps) and, in training, updates BN running
    statistics (``BatchNorm1d.update_running``), exactly as the module forward does."""
    a = model._flat_input(X)
    caches = []
    for i, layer in enumerate(_layers(model)):
        drop, lin = layer[0], layer[1]
        a, c_drop = basis.dropout(a, drop.p, train=train, rng=drop.next_key() if train else None)
        a, c_lin = basis.linear(a, lin.weight.data, lin.bias.data)
        if i < 3:
            a, c_act = basis.relu(a)
            bn = layer[3]
            if train:
                a, c_bn = basis.batchnorm(a, bn.weight.data, bn.bias.data, bn.eps)
                bn.update_running(c_bn.mean, c_bn.var, a.shape[0])
            else:
                a = basis.batchnorm_eval(a, bn.weight.data, bn.bias.data, bn.running_mean,
                                         bn.running_var, bn.eps)
                c_bn = None
        else:
            a, c_act = basis.sigmoid(a) if model.n_classes == 1 else basis.softmax(a)
            c_bn = None
        caches.append((c_drop, c_lin, c_act, c_bn))
    return a, NN4Cache(caches)


def nn4_grad(dz4: np.ndarray, cache: NN4Cache) -> List[np.ndarray]:
    """Backward through NN4 from dL/dz4 (the gradient at layer 4's pre-activation).

    Returns the parameter gradients in ``model.parameters()`` order:
    [W1, b1, gamma1, beta1, W2, b2, gamma2, beta2, W3, b3, gamma3, beta3, W4, b4].
    """
    c_drop, c_lin, _, _ = cache.layers[3]
    da, dW4, db4 = basis.linear_grad(dz4, c_lin)
    da = basis.dropout_grad(da, c_drop)
    grads = [dW4, db4]
    for c_drop, c_lin, c_act, c_bn in reversed(cache.layers[:3]):
        da, dgamma, dbeta = basis.batchnorm_grad(da, c_bn)
        da = basis.relu_grad(da, c_act)
        da, dW, db = basis.linear_grad(da, c_lin)
        da = basis.dropout_grad(da, c_drop)
        grads = [dW, db, dgamma, dbeta] + grads
    return grads


def emp_loss_grad(model: NN4, X: np.ndarray, y: np.ndarray) -> Tuple[float, np.ndarray]:
    """Empirical loss of NN4 on (X, y) and its gradient as one flat vector
    (``model.parameters()`` order, the model's dtype).

    Binary head: y in {0, 1}, BCE loss; softmax head: y int labels, cross-entropy.
    The sigmoid/softmax and the loss are differentiated together: dL/dz4 = (p - t) / N.
    """
    p, cache = nn4_forward(model, X, train=True)
    n = p.shape[0]
    if model.n_classes == 1:
        t = np.asarray(y, dtype=p.dtype).reshape(p.shape)
        loss = BCELoss()(p, t)
    else:
        t = np.zeros_like(p)
        t[np.arange(n), np.asarray(y)] = 1
        loss = CrossEntropyLoss(from_probs=True)(p, np.asarray(y))
    dz4 = (p - t) / n
    grads = nn4_grad(dz4, cache)
    flat = np.concatenate([g.ravel() for g in grads]).astype(model.dtype, copy=False)
    return loss, flat
