"""One convolution under several ``conv.set_algorithm`` choices, forward and backward apart.

The measurement behind the per-layer rules of ``mlcvlab.nn.conv`` (``direct_pays``,
``winograd_tile``): for each layer shape, the algorithms alternate round by round in this
process (the order reversed every other round), each sample the best of two calls; printed:
the median time of each and the median of the per-round ratios (first algorithm's time /
this one's, > 1: faster than the first) with the range of the middle 80 % of rounds.

    python benchmarks/bench_conv_rule.py --threads 2 --batch 128 --rounds 9 \\
        --algorithms auto,direct 32x32x16 64x64x8

A shape is CxFxH (C input channels, F output channels, H x H input, 3x3, stride 1, padding
1), CxFxHxK for a K x K kernel (padding K // 2), CxFxHxKxP for padding P, CxFxHxKxPxS
for stride S. The forward runs with a fused ReLU (as a
Conv-BN-ReLU in evaluation); the backward is ``conv2d_grad``, with the input gradient unless
``--no-input-grad`` (a network's first layer).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

from mlcvlab.nn import conv


def _time(fn) -> float:
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(C: int, F: int, H: int, K: int, P: int, S: int, batch: int, rounds: int,
            algorithms, rng, input_grad: bool = True):
    """{(algorithm, "forward" | "backward"): [seconds per round]} for one layer shape."""
    x = rng.standard_normal((batch, C, H, H), dtype=np.float32)
    W = rng.standard_normal((F, C, K, K), dtype=np.float32) / np.float32(np.sqrt(C * K * K))
    Ho = (H + 2 * P - K) // S + 1
    dy = rng.standard_normal((batch, F, Ho, Ho), dtype=np.float32)
    times = {(a, d): [] for a in algorithms for d in ("forward", "backward")}
    for r in range(rounds):
        for a in (algorithms if r % 2 == 0 else algorithms[::-1]):
            previous = conv.set_algorithm(a)
            try:
                y, cache = conv.conv2d(x, W, None, S, P, then_relu=True)
                times[(a, "forward")].append(
                    _time(lambda: conv.conv2d(x, W, None, S, P, then_relu=True)))
                times[(a, "backward")].append(
                    _time(lambda: conv.conv2d_grad(dy, cache, input_grad)))
            finally:
                conv.set_algorithm(previous)
    return times


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("shapes", nargs="+", help="CxFxH, CxFxHxK, CxFxHxKxP or CxFxHxKxPxS")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--algorithms", default="auto,direct")
    ap.add_argument("--no-input-grad", action="store_true", help="backward without dx")
    args = ap.parse_args(argv)
    algorithms = args.algorithms.split(",")
    rng = np.random.default_rng(0)
    with threadpool_limits(args.threads):
        for shape in args.shapes:
            dims = [int(v) for v in shape.split("x")]
            C, F, H = dims[:3]
            K = dims[3] if len(dims) > 3 else 3
            P = dims[4] if len(dims) > 4 else K // 2
            S = dims[5] if len(dims) > 5 else 1
            times = measure(C, F, H, K, P, S, args.batch, args.rounds, algorithms, rng,
                            not args.no_input_grad)
            for d in ("forward", "backward"):
                base = np.array(times[(algorithms[0], d)])
                cells = []
                for a in algorithms:
                    t = np.array(times[(a, d)])
                    ratio = base / t
                    cells.append(f"{a} {np.median(t) * 1e3:.2f} ms x{np.median(ratio):.2f} "
                                 f"({np.percentile(ratio, 10):.2f}-{np.percentile(ratio, 90):.2f})")
                print(f"{C}->{F} {H}x{H} {K}x{K} p{P} s{S} {d:8s} " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
