"""What keeps two threads of one process from doing twice the work (BENCHMARKS.md, session 10).

    python benchmarks/bench_gil.py products              # matmul vs np.dot on two threads
    python benchmarks/bench_gil.py steps lenet5,resnet20 --batch 64
    python benchmarks/bench_gil.py directions            # each conv direction, im2col vs Winograd

``products``: each product alone, then two threads running it at once (BLAS at one thread each),
with ``np.matmul`` and with ``np.dot``: the speed-up says whether the call let the other thread
run (NumPy's matmul keeps the GIL for a product of at most 500 values). ``steps``: one training
step of ``mlcvlab bench``'s model on a batch alone, as two threads of one process (two model
copies, the batch split off) and as two processes at once: the gap between the last two is what
the process itself costs (the GIL and its hand-overs). ``directions``: ResNet-20's 3x3 layers
(batch 64, one thread's part), forward and backward timed apart on each algorithm (im2col,
Winograd F(2x2, 3x3), F(4x4, 3x3)): the data of ``conv.winograd_tile``'s rule.
"""
import argparse
import subprocess
import sys
import threading
import time

import numpy as np
from threadpoolctl import threadpool_limits

from mlcvlab import backend, bench
from mlcvlab.nn import conv, threadsplit

PRODUCTS = [((6, 57344), (57344, 25)), ((20, 8960), (8960, 24)), ((20, 8960), (8960, 30)),
            ((16, 8960), (8960, 150))]


def _two_threads(fn, n: int) -> float:
    """Speed-up of two threads each running fn n times over one thread running it n times."""
    def loop():
        for _ in range(n):
            fn()
    t = time.perf_counter()
    loop()
    alone = time.perf_counter() - t
    pair = [threading.Thread(target=loop) for _ in range(2)]
    t = time.perf_counter()
    for p in pair:
        p.start()
    for p in pair:
        p.join()
    return 2 * alone / (time.perf_counter() - t)


def products() -> None:
    rng = np.random.default_rng(0)
    with threadpool_limits(1, user_api="blas"):
        for (m, k), (_, n) in PRODUCTS:
            a, b_t = (rng.standard_normal(s, dtype=np.float32) for s in ((m, k), (n, k)))
            t = time.perf_counter()
            for _ in range(20):
                a @ b_t.T
            ms = (time.perf_counter() - t) / 20 * 1e3
            reps = max(20, int(300 / ms))
            print(f"({m}, {k}) @ ({k}, {n}): {m * n} values, {ms:.2f} ms alone; two threads: "
                  f"matmul {_two_threads(lambda: np.matmul(a, b_t.T), reps):.2f}x, "
                  f"np.dot {_two_threads(lambda: np.dot(a, b_t.T), reps):.2f}x", flush=True)


def _step(name: str, batch: int):
    threadsplit.set_enabled(False)
    train, _ = bench.ours_steps(name, batch)
    train()
    return train


def steps(names, batch: int, n: int) -> None:
    with threadpool_limits(1, user_api="blas"):
        for name in names:
            alone = _step(name, batch)
            t = time.perf_counter()
            for _ in range(n):
                alone()
            one = (time.perf_counter() - t) / n * 1e3
            a, b = _step(name, batch), _step(name, batch)
            pair = [threading.Thread(target=lambda f=f: [f() for _ in range(n)]) for f in (a, b)]
            t = time.perf_counter()
            for p in pair:
                p.start()
            for p in pair:
                p.join()
            threads = (time.perf_counter() - t) / n * 1e3
            cmd = [sys.executable, __file__, "alone", name, "--batch", str(batch), "--n", str(n)]
            procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(2)]
            each = [float(p.communicate()[0].split()[-1]) for p in procs]
            print(f"{name} batch {batch}, ms per step: alone {one:.2f}; two threads {threads:.2f} "
                  f"per pair of steps; two processes {each[0]:.2f} and {each[1]:.2f} each",
                  flush=True)


def alone(name: str, batch: int, n: int) -> None:
    """One process's part of ``steps``: prints its ms per step last."""
    with threadpool_limits(1, user_api="blas"):
        fn = _step(name, batch)
        t = time.perf_counter()
        for _ in range(n):
            fn()
        print(f"{(time.perf_counter() - t) / n * 1e3:.3f}")


RESNET20_LAYERS = "16,16,32;32,32,16;64,64,8"
# MiniGoogLeNet's 3x3 stride-1 layers with the most channels at each size
MINIGOOGLENET_LAYERS = "96,32,32;160,96,15;336,160,7"


def directions(rounds: int, layers: str = RESNET20_LAYERS) -> None:
    """layers: "C,F,H;..." (input channels, output channels, image size), batch 64."""
    rng = np.random.default_rng(0)
    with threadpool_limits(1, user_api="blas"):
        for C, F, H in (tuple(int(v) for v in layer.split(",")) for layer in layers.split(";")):
            x = rng.standard_normal((64, C, H, H), dtype=np.float32)
            dy = rng.standard_normal((64, F, H, H), dtype=np.float32)
            W = (rng.standard_normal((F, C, 3, 3)) * 0.1).astype(np.float32)
            times = {}
            previous = conv.get_algorithm()
            try:
                for r in range(rounds):
                    algs = ("im2col", "winograd", "winograd4")
                    for alg in algs[r % 3:] + algs[:r % 3]:
                        conv.set_algorithm(alg)
                        y, cache = conv.conv2d(x, W, None, 1, 1)
                        conv.conv2d_grad(dy, cache)
                        t0 = time.perf_counter()
                        for _ in range(3):
                            y, cache = conv.conv2d(x, W, None, 1, 1)
                        t1 = time.perf_counter()
                        for _ in range(3):
                            conv.conv2d_grad(dy, cache)
                        t2 = time.perf_counter()
                        times.setdefault(alg, []).append(((t1 - t0) / 3e-3, (t2 - t1) / 3e-3))
            finally:
                conv.set_algorithm(previous)
            for alg, v in times.items():
                f, b = np.median(np.array(v), axis=0)
                print(f"{C}->{F}, {H}x{H}, batch 64, {alg}: forward {f:.2f} ms, "
                      f"backward {b:.2f} ms",
                      flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["products", "steps", "directions", "alone"])
    p.add_argument("models", nargs="?", default="lenet5,resnet20")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--n", type=int, default=0, help="steps per measurement (default: 300 "
                   "for LeNet-5, 12 for ResNet-20)")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--layers", default=RESNET20_LAYERS,
                   help=f"directions: 'C,F,H;...' (default ResNet-20's; MiniGoogLeNet's widest: "
                   f"{MINIGOOGLENET_LAYERS!r})")
    args = p.parse_args()
    backend.keep_freed_memory()
    if args.what == "products":
        products()
    elif args.what == "directions":
        directions(args.rounds, args.layers)
    elif args.what == "alone":
        alone(args.models, args.batch, args.n or (300 if args.models == "lenet5" else 12))
    else:
        for name in args.models.split(","):
            steps([name], args.batch, args.n or (300 if name == "lenet5" else 12))


if __name__ == "__main__":
    main()
