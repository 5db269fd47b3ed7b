"""Does training with Winograd (or direct) convolutions follow the im2col run? ResNet-20.

Trains ResNet-20 (1 input channel, 28x28: maps of 28, 14 and 7 pixels, so the last stage
has odd tiles) on a slice of the embedded mnist10k twice from the same seed, once with
``conv.set_algorithm("im2col")``, then with "winograd" (F(2x2, 3x3)), "winograd4"
(F(4x4, 3x3), every 3x3 stride-1 layer), "direct" (the direct kernels of
``mlcvlab.nn.direct``, every 3x3 layer, stride 1 and 2) and "auto"
(the default per-layer rule), with the same data order, and prints the training
loss of every step side by side and the largest relative difference. float32, SGD with
momentum, no augmentation.

The yardstick for "float noise" is a third run, im2col on twice the threads: the batch is
split over the threads and the parts' weight gradients summed, which rounds differently but
is not less exact; float32 runs that differ only in rounding drift apart at this rate.

Run:  python benchmarks/winograd_training_check.py [--samples 512] [--batch-size 64]
                                                   [--epochs 2] [--threads 1]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

from mlcvlab.data import DataLoader, load
from mlcvlab.models import resnet_cifar
from mlcvlab.nn import CrossEntropyLoss, conv
from mlcvlab.optim import SGD


ALGORITHMS = ("winograd", "winograd4", "direct", "auto")     # each compared with im2col


def losses(algorithm: str, X, y, batch_size: int, epochs: int, seed: int = 0):
    """The training loss of every step, and the wall seconds of the run."""
    previous = conv.set_algorithm(algorithm)
    try:
        model = resnet_cifar(20, in_channels=1, rng=seed)
        model.flat()
        model.set_input_grad(False)
        opt = SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        loss_fn = CrossEntropyLoss()
        loader = DataLoader(X, y, batch_size, shuffle=True, seed=seed)
        out = []
        t0 = time.perf_counter()
        model.train()
        for _ in range(epochs):
            for xb, yb in loader:
                out.append(loss_fn(model(xb), yb))
                opt.zero_grad()
                model.backward(loss_fn.backward())
                opt.step()
        return np.array(out), time.perf_counter() - t0
    finally:
        conv.set_algorithm(previous)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    X, y = load("mnist10k", "train")
    X, y = X[:args.samples], y[:args.samples]
    runs = {}
    with threadpool_limits(args.threads):
        for alg in ("im2col",) + ALGORITHMS:
            runs[alg] = losses(alg, X, y, args.batch_size, args.epochs)
    with threadpool_limits(2 * args.threads):
        runs["im2col x2"] = losses("im2col", X, y, args.batch_size, args.epochs)
    a = runs["im2col"][0]
    others = list(ALGORITHMS) + ["im2col x2"]
    rel = {k: np.abs(runs[k][0] - a) / np.abs(a) for k in others}
    print(f"ResNet-20, mnist10k[:{args.samples}], batch {args.batch_size}, {args.epochs} "
          f"epochs, {args.threads} thread(s) ('im2col x2': im2col on {2 * args.threads}); "
          "wall s: " + ", ".join(f"{k} {t:.1f}" for k, (_, t) in runs.items()))
    print(f"{'step':>4s} {'im2col':>10s}" + "".join(f" {k:>10s} {'rel diff':>9s}" for k in others))
    for i in range(len(a)):
        print(f"{i:4d} {a[i]:10.6f}" + "".join(f" {runs[k][0][i]:10.6f} {rel[k][i]:9.1e}"
                                             for k in others))
    print("max relative difference from im2col: " + ", ".join(
        f"{k} {rel[k].max():.2e} (step {int(rel[k].argmax())})" for k in others)
        + "; final loss: " + ", ".join(f"{k} {runs[k][0][-1]:.6f}" for k in runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
