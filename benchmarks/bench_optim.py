"""Seconds per optimizer step on ResNet-20-sized parameters: mlcvlab.optim vs torch.optim.

ResNet-20 for CIFAR-10 (He et al. 2016, option-A shortcuts): 19 3x3 convs,
18 batch norms (gamma, beta), one Linear(64, 10); 59 tensors, 269,722 floats,
float32. Ours updates one flat vector; torch runs foreach=True (one kernel per
op over the tensor list) and fused=True (one fused kernel) where it has it.

Run:  python benchmarks/bench_optim.py [--steps 200] [--repeats 5]
Prints one table per thread setting (1 thread, then torch's default count).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from mlcvlab import optim
from mlcvlab.nn.parameter import Parameter


def resnet20_shapes() -> list:
    """Parameter shapes of ResNet-20 (CIFAR, option A), in model order."""
    shapes = [(16, 3, 3, 3), (16,), (16,)]
    c_in = 16
    for c in (16, 32, 64):
        for _ in range(3):
            shapes += [(c, c_in, 3, 3), (c,), (c,), (c, c, 3, 3), (c,), (c,)]
            c_in = c
    return shapes + [(10, 64), (10,)]


# name: (our factory, torch class, torch kwargs, whether torch has fused=True on CPU)
OPTIMIZERS = {
    "SGD": (lambda p: optim.SGD(p, lr=0.1), torch.optim.SGD, dict(lr=0.1), True),
    "SGD momentum+wd": (lambda p: optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-4),
                        torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=1e-4), True),
    "SGD nesterov": (lambda p: optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
                     torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True), True),
    "AdaGrad": (lambda p: optim.AdaGrad(p, lr=0.01), torch.optim.Adagrad, dict(lr=0.01), True),
    "RMSProp": (lambda p: optim.RMSProp(p, lr=0.01), torch.optim.RMSprop, dict(lr=0.01), False),
    "RMSProp momentum": (lambda p: optim.RMSProp(p, lr=0.01, momentum=0.9),
                         torch.optim.RMSprop, dict(lr=0.01, momentum=0.9), False),
    "AdaDelta": (lambda p: optim.AdaDelta(p), torch.optim.Adadelta, dict(), False),
    "Adam": (lambda p: optim.Adam(p, lr=1e-3), torch.optim.Adam, dict(lr=1e-3), True),
    "AdamW": (lambda p: optim.AdamW(p, lr=1e-3), torch.optim.AdamW, dict(lr=1e-3), True),
}


def _time(step, steps: int, repeats: int) -> float:
    """Best-of-repeats mean seconds per call of step()."""
    for _ in range(10):
        step()
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        best = min(best, (time.perf_counter() - t0) / steps)
    return best


def _ours(factory, rng) -> float:
    params = [Parameter(rng.standard_normal(s).astype(np.float32)) for s in resnet20_shapes()]
    opt = factory(params)
    opt.flat.grad[:] = rng.standard_normal(opt.flat.size).astype(np.float32) * 1e-3
    return opt


def _torch(cls, kwargs, mode, rng):
    params = []
    for s in resnet20_shapes():
        p = torch.from_numpy(rng.standard_normal(s).astype(np.float32)).requires_grad_()
        p.grad = torch.from_numpy(rng.standard_normal(s).astype(np.float32) * 1e-3)
        params.append(p)
    return cls(params, **kwargs, **{mode: True})


def run(steps: int, repeats: int, threads: int) -> None:
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    total = sum(int(np.prod(s)) for s in resnet20_shapes())
    print(f"\n{len(resnet20_shapes())} tensors, {total} float32 values; torch threads = "
          f"{torch.get_num_threads()} (NumPy element-wise ops are single-threaded)")
    print(f"{'optimizer':<18} {'ours us':>9} {'foreach us':>11} {'fused us':>9} "
          f"{'ours/foreach':>13} {'ours/fused':>11}")
    for name, (factory, cls, kwargs, has_fused) in OPTIMIZERS.items():
        ours = _time(_ours(factory, rng).step, steps, repeats)
        with torch.no_grad():
            foreach = _time(_torch(cls, kwargs, "foreach", rng).step, steps, repeats)
            fused = (_time(_torch(cls, kwargs, "fused", rng).step, steps, repeats)
                     if has_fused else float("nan"))
        print(f"{name:<18} {ours * 1e6:>9.1f} {foreach * 1e6:>11.1f} {fused * 1e6:>9.1f} "
              f"{ours / foreach:>13.2f} {ours / fused:>11.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    default_threads = torch.get_num_threads()
    for threads in sorted({1, default_threads}):
        run(args.steps, args.repeats, threads)


if __name__ == "__main__":
    main()
