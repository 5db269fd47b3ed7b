"""Winograd F(2x2, 3x3) vs im2col for 3x3 stride-1 convolutions, layer by layer.

For each layer shape (ResNet-20's three 3x3 layers, MiniGoogLeNet's 3x3 ones) times the
forward alone and forward + backward (dx and dW) of ``conv.conv2d`` with the algorithm
forced to "im2col" and to "winograd", interleaved in one process (``bench.time_interleaved``:
round-robin samples, a pause before each), and prints per shape the median time of each and
the median and range of the per-round ratio im2col / Winograd (> 1: Winograd faster).

With ``--resnet-step 16,32`` it instead times a whole ResNet-20 training step (forward,
backward, SGD; CIFAR-shaped random data) with im2col and with "auto" under each listed
``conv.WINOGRAD_MIN_CHANNELS``, interleaved, and prints the median and ratio range of each.

Run:  python benchmarks/bench_winograd.py [--threads 1] [--repeats 7] [--batch-size 128]
                                          [--shapes resnet,googlenet] [--dtype float32]
                                          [--resnet-step 16,32]
"""
from __future__ import annotations

import argparse
import statistics

import numpy as np
from threadpoolctl import threadpool_limits

from mlcvlab.bench import time_interleaved
from mlcvlab.nn import conv

# (name, C, F, H=W); padding 1 everywhere (the layers of these models are "same")
SHAPES = {
    "resnet": [("resnet20 stem", 3, 16, 32), ("resnet20 stage1", 16, 16, 32),
               ("resnet20 stage2", 32, 32, 16), ("resnet20 stage3", 64, 64, 8)],
    "googlenet": [("minigoogle stem", 3, 96, 32), ("minigoogle inc1", 96, 32, 32),
                  ("minigoogle inc2", 64, 48, 32), ("minigoogle inc4", 160, 64, 15),
                  ("minigoogle inc6", 160, 96, 15), ("minigoogle inc9", 336, 160, 7)],
}


def _fns(x, W, dy, algorithm):
    def forward():
        conv.set_algorithm(algorithm)
        conv.conv2d(x, W, None, 1, 1)

    def step():
        conv.set_algorithm(algorithm)
        _, cache = conv.conv2d(x, W, None, 1, 1)
        conv.conv2d_grad(dy, cache)
    return forward, step


def measure(name, C, F, H, batch, repeats, dtype, target_seconds):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, C, H, H)).astype(dtype)
    W = (rng.standard_normal((F, C, 3, 3)) / np.sqrt(9 * C)).astype(dtype)
    dy = rng.standard_normal((batch, F, H, H)).astype(dtype)
    fns = {}
    for alg in ("im2col", "winograd"):
        fns[alg + " fwd"], fns[alg + " f+b"] = _fns(x, W, dy, alg)
    s = time_interleaved(fns, repeats, target_seconds, max_steps=50, settle_seconds=0.05)
    row = {"name": name, "shape": f"{batch}x{C}x{H}x{H} -> {F}"}
    for kind in ("fwd", "f+b"):
        a, b = s["im2col " + kind], s["winograd " + kind]
        ratios = [p / q for p, q in zip(a, b)]
        row[kind] = (statistics.median(a) * 1e3, statistics.median(b) * 1e3,
                     statistics.median(ratios), min(ratios), max(ratios))
    return row


def resnet_step(thresholds, batch, repeats):
    """Median ms and im2col / this ratios of a ResNet-20 training step per configuration."""
    from mlcvlab.models import resnet_cifar
    from mlcvlab.nn import CrossEntropyLoss
    from mlcvlab.optim import SGD
    rng = np.random.default_rng(0)
    X = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    model = resnet_cifar(20, rng=0)
    model.flat()
    model.set_input_grad(False)
    opt, loss_fn = SGD(model.parameters(), lr=0.01, momentum=0.9), CrossEntropyLoss()
    default = conv.WINOGRAD_MIN_CHANNELS

    def make(algorithm, threshold):
        def step():
            conv.set_algorithm(algorithm)
            conv.WINOGRAD_MIN_CHANNELS = threshold
            model.train()
            loss_fn(model(X), y)
            opt.zero_grad()
            model.backward(loss_fn.backward())
            opt.step()
        return step
    fns = {"im2col": make("im2col", default)}
    fns.update({f"auto, >= {t} channels": make("auto", t) for t in thresholds})
    try:
        s = time_interleaved(fns, repeats, 0.5, max_steps=5, settle_seconds=0.1)
    finally:
        conv.WINOGRAD_MIN_CHANNELS = default
    for key, v in s.items():
        r = [a / b for a, b in zip(s["im2col"], v)]
        print(f"{key:24s} {statistics.median(v) * 1e3:8.0f} ms  im2col / this "
              f"{statistics.median(r):.2f} [{min(r):.2f}, {max(r):.2f}]", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--shapes", default="resnet,googlenet")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--target-seconds", type=float, default=0.15)
    ap.add_argument("--resnet-step", default=None, metavar="THRESHOLDS",
                    help="time the ResNet-20 training step under these channel thresholds")
    args = ap.parse_args(argv)
    previous = conv.get_algorithm()
    if args.resnet_step:
        print(f"ResNet-20 training step, threads {args.threads}, batch {args.batch_size}, "
              f"{args.repeats} interleaved rounds")
        try:
            with threadpool_limits(args.threads):
                resnet_step([int(t) for t in args.resnet_step.split(",")], args.batch_size,
                            args.repeats)
        finally:
            conv.set_algorithm(previous)
        return 0
    print(f"threads {args.threads}, batch {args.batch_size}, {args.dtype}, {args.repeats} "
          f"interleaved rounds; times in ms (median), ratio = im2col / winograd "
          f"(median [min, max] over rounds)")
    print(f"{'layer':18s} {'shape':22s} {'fwd im2col':>10s} {'fwd wino':>9s} {'ratio':>20s}"
          f" {'f+b im2col':>11s} {'f+b wino':>9s} {'ratio':>20s}")
    try:
        with threadpool_limits(args.threads):
            for group in args.shapes.split(","):
                for name, C, F, H in SHAPES[group]:
                    r = measure(name, C, F, H, args.batch_size, args.repeats,
                                np.dtype(args.dtype), args.target_seconds)
                    cells = []
                    for kind in ("fwd", "f+b"):
                        a, b, med, lo, hi = r[kind]
                        cells.append(f"{a:10.1f} {b:9.1f} {med:6.2f} [{lo:.2f}, {hi:.2f}]")
                    print(f"{r['name']:18s} {r['shape']:22s} {cells[0]:>41s} {cells[1]:>42s}",
                          flush=True)
    finally:
        conv.set_algorithm(previous)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
