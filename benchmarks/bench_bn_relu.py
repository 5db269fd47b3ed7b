"""BatchNorm2d + ReLU fused (``Sequential`` on the CPU) against the two layers one after the
other, in one process, interleaved: ``modules.FUSE_BN_RELU`` toggled between samples.

    python benchmarks/bench_bn_relu.py --pairs --repeats 21
    python benchmarks/bench_bn_relu.py --model resnet20 --repeats 15

``--pairs``: Sequential(BatchNorm2d, ReLU) at ResNet-20's three map shapes (batch 128): training
forward, backward and evaluation forward. ``--model``: whole training and evaluation steps of a
model (resnet20, resnet44, lenet5bn: LeNet-5 with batch norm), with the CPU time spent in the
batch-norm and ReLU functions of ``nn.basis`` counted apart (the part the fusion changes; the
whole step's ratio is noisier). CPU time (``time.process_time``) is what this process ran, so
other jobs on the host move it less than wall time. 1 thread (BLAS and our kernels); float32.
Prints medians and, per round, unfused / fused (> 1: fused faster) as median [min, max] and
how many rounds the fused path won.
"""
import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

from mlcvlab import backend, bench, models, nn, optim
from mlcvlab.nn import basis, modules

SHAPES = [(128, 16, 32, 32), (128, 32, 16, 16), (128, 64, 8, 8)]
TIMED = ("batchnorm", "batchnorm_relu", "relu", "relu_grad", "batchnorm_grad_fused",
         "batchnorm_eval")


def _report(label: str, times: dict) -> None:
    u, f = np.array(times[False]), np.array(times[True])
    r = u / f
    print(f"  {label:24s} unfused {np.median(u):8.3f} ms  fused {np.median(f):8.3f} ms  "
          f"unfused/fused {np.median(r):.2f} [{r.min():.2f}, {r.max():.2f}]  "
          f"fused faster {int((r > 1).sum())}/{len(r)}")


def _interleaved(fn, repeats: int, calls: int, clock=None) -> dict:
    """{fused: [ms per call]} over ``repeats`` rounds, the order alternating every round; fn
    may return its own seconds (then those count, else the CPU time around the calls)."""
    times = {True: [], False: []}
    for r in range(repeats):
        for fuse in ((False, True) if r % 2 == 0 else (True, False)):
            modules.FUSE_BN_RELU = fuse
            fn()
            c0 = time.process_time()
            own = [fn() for _ in range(calls)]
            spent = sum(own) if own[0] is not None else time.process_time() - c0
            times[fuse].append(spent / calls * 1e3)
    modules.FUSE_BN_RELU = True
    return times


def pairs(repeats: int) -> None:
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        x, dy = (rng.standard_normal(shape, dtype=np.float32) for _ in range(2))
        m = nn.Sequential(nn.BatchNorm2d(shape[1]), nn.ReLU())

        def forward():
            m.train()
            m.forward(x)

        def backward():
            forward()
            c0 = time.process_time()
            m.backward(dy)
            return time.process_time() - c0

        def evaluate():
            m.eval()
            m.forward(x)
        print(f"BatchNorm2d + ReLU, x {shape}:")
        for label, fn in (("training forward", forward), ("training backward", backward),
                          ("evaluation", evaluate)):
            _report(label, _interleaved(fn, repeats, 10))


def model(name: str, repeats: int) -> None:
    spent = [0.0, 0]                             # seconds in the timed functions, call depth
    for fname in TIMED:
        f = getattr(basis, fname)

        def timed(*a, _f=f, **k):
            spent[1] += 1
            c0 = time.process_time()
            try:
                return _f(*a, **k)
            finally:
                spent[1] -= 1
                if spent[1] == 0:                # a fallback calling another: count once
                    spent[0] += time.process_time() - c0
        setattr(basis, fname, timed)
    if name == "lenet5bn":
        net, (x, y) = models.lenet5(batchnorm=True, rng=0), bench._data("lenet5", 128)
    else:
        net, (x, y) = bench.build_ours(name), bench._data(name, 128)
    net.set_input_grad(False)
    loss = nn.CrossEntropyLoss()
    opt = optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

    def train():
        net.train()
        net.zero_grad()
        loss(net.forward(x), y)
        net.backward(loss.backward())
        opt.step()

    def evaluate():
        net.eval()
        net.forward(x)
    for phase, step in (("training step", train), ("evaluation step", evaluate)):
        step()
        t0 = time.perf_counter()
        step()
        calls = max(1, round(0.5 / (time.perf_counter() - t0)))
        part = {True: [], False: []}

        def counted():
            spent[0] = 0.0
            step()
            part[modules.FUSE_BN_RELU].append(spent[0])
        whole = _interleaved(counted, repeats, calls)
        for fuse in (True, False):              # per sample: the mean of its timed calls
            p = part[fuse]
            per_round = len(p) // repeats
            part[fuse] = [1e3 * float(np.mean(p[i * per_round + 1:(i + 1) * per_round]))
                          for i in range(repeats)]
        print(f"{name} {phase} ({calls} steps per sample):")
        _report("whole step, CPU", whole)
        _report("batch norm + ReLU, CPU", part)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", action="store_true", help="the layer pair at ResNet-20's shapes")
    ap.add_argument("--model", choices=["resnet20", "resnet44", "lenet5bn"], action="append",
                    default=[], help="whole steps of this model (repeatable)")
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    if not args.pairs and not args.model:
        ap.error("choose --pairs and/or --model NAME")
    backend.keep_freed_memory()                  # as the mlcvlab command and the bench
    with threadpool_limits(1):
        if args.pairs:
            pairs(args.repeats)
        for name in args.model:
            model(name, args.repeats)


if __name__ == "__main__":
    main()
