"""The batch split over threads (mlcvlab.nn.threadsplit) against the per-layer threads.

    python benchmarks/bench_threadsplit.py lenet5,resnet20 --batch 128 --rounds 7
    python benchmarks/bench_threadsplit.py --hardware     # what two threads get on this host

Per round, each variant (split off, split on) runs a few training (or evaluation) steps of
``mlcvlab bench``'s model on its random batch after one untimed step, interleaved, at the
given BLAS thread count; prints the median per-step wall and CPU milliseconds and the median
(range) of the per-round speed-ups. ``--hardware``: a 512^2 SGEMM loop and a 32 MB
multiply-in-place stream, alone against two threads at once (BLAS at one thread): how much of
2x the host's cores and memory give two threads.
"""
import argparse
import threading
import time

import numpy as np
from threadpoolctl import threadpool_limits

from mlcvlab import bench
from mlcvlab.nn import threadsplit

STEPS = {"lenet5": 20, "mlp": 20}      # per round and variant; 3 for the others


def ab(name: str, batch: int, rounds: int, threads: int) -> None:
    train, evaluate = bench.ours_steps(name, batch)
    steps = STEPS.get(name, 3)
    with threadpool_limits(threads, user_api="blas"):
        for phase, fn in (("train", train), ("eval", evaluate)):
            times = {False: [], True: []}
            for _ in range(rounds):
                for split in (False, True):
                    threadsplit.set_enabled(split)
                    fn()
                    w0, c0 = time.perf_counter(), time.process_time()
                    for _ in range(steps):
                        fn()
                    times[split].append(((time.perf_counter() - w0) / steps * 1e3,
                                         (time.process_time() - c0) / steps * 1e3))
            off, on = np.array(times[False]), np.array(times[True])
            ratio = off[:, 0] / on[:, 0]
            print(f"{name} batch {batch} {phase}, {threads} threads: unsplit "
                  f"{np.median(off[:, 0]):.2f} ms (CPU {np.median(off[:, 1]):.2f}), split "
                  f"{np.median(on[:, 0]):.2f} ms (CPU {np.median(on[:, 1]):.2f}); speed-up "
                  f"{np.median(ratio):.2f} ({ratio.min():.2f}-{ratio.max():.2f})", flush=True)
    threadsplit.set_enabled(True)


def hardware(rounds: int) -> None:
    rng = np.random.default_rng(0)
    a, b = (rng.random((512, 512), dtype=np.float32) for _ in range(2))
    big = rng.random(8_000_000, dtype=np.float32)

    def gemm():
        for _ in range(40):
            a @ b

    def stream():
        for _ in range(20):
            np.multiply(big, np.float32(1.0001), out=big)

    with threadpool_limits(1, user_api="blas"):
        for name, fn in (("SGEMM 512^2", gemm), ("32 MB stream", stream)):
            fn()
            for _ in range(rounds):
                t = time.perf_counter()
                fn()
                alone = time.perf_counter() - t
                pair = [threading.Thread(target=fn) for _ in range(2)]
                t = time.perf_counter()
                for p in pair:
                    p.start()
                for p in pair:
                    p.join()
                both = time.perf_counter() - t
                print(f"{name}: alone {alone * 1e3:.0f} ms, two threads at once "
                      f"{both * 1e3:.0f} ms: {2 * alone / both:.2f}x", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="?", default="lenet5,resnet20")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--hardware", action="store_true")
    args = p.parse_args()
    if args.hardware:
        hardware(args.rounds)
        return
    for name in args.models.split(","):
        ab(name, args.batch, args.rounds, args.threads)


if __name__ == "__main__":
    main()
