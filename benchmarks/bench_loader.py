"""DataLoader throughput on CIFAR-shaped data with the standard augmentation.

Data: N random uint8 images (N, 3, 32, 32), converted once to float32 in [0, 1].
Pipeline: RandomCrop(32, padding=4) + RandomHorizontalFlip + Normalize + Cutout(16), batch 128.

Rows:
* mlcvlab DataLoader, vectorized transforms, prefetch=0 (no thread) and prefetch=2;
* a plain NumPy loop doing the same per image (pad, crop, flip, normalize, cutout);
* "overlap": the loader feeding a consumer that spends a fixed time per batch on NumPy work
  (a stand-in for the training step), with and without the prefetch thread.

    python benchmarks/bench_loader.py [--n 10240] [--repeats 3]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from mlcvlab.data import DataLoader
from mlcvlab.data.transforms import (Compose, Cutout, Normalize, RandomCrop,
                                     RandomHorizontalFlip)

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def pipeline(seed: int = 0) -> Compose:
    return Compose([RandomCrop(32, padding=4, rng=seed), RandomHorizontalFlip(rng=seed + 1),
                    Normalize(MEAN, STD), Cutout(16, rng=seed + 2)])


def per_image_loop(X: np.ndarray, batch_size: int, rng: np.random.Generator):
    """The same augmentation written the obvious way: one image at a time."""
    mean = np.asarray(MEAN, np.float32)[:, None, None]
    std = np.asarray(STD, np.float32)[:, None, None]
    order = rng.permutation(len(X))
    for start in range(0, len(X), batch_size):
        batch = []
        for i in order[start:start + batch_size]:
            img = np.pad(X[i], ((0, 0), (4, 4), (4, 4)))
            top, left = rng.integers(0, 9, size=2)
            img = img[:, top:top + 32, left:left + 32]
            if rng.random() < 0.5:
                img = img[:, :, ::-1]
            img = (img - mean) / std
            cy, cx = rng.integers(0, 32, size=2)
            img[:, max(cy - 8, 0):cy + 8, max(cx - 8, 0):cx + 8] = 0
            batch.append(img)
        yield np.ascontiguousarray(np.stack(batch), dtype=np.float32)


def images_per_second(make_iter, n: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in make_iter():
            pass
        best = min(best, time.perf_counter() - t0)
    return n / best


def overlap_seconds(loader: DataLoader, work: np.ndarray) -> float:
    t0 = time.perf_counter()
    for xb, _ in loader:
        for _ in range(3):           # a fixed amount of "training" per batch
            work @ work
    return time.perf_counter() - t0


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10240)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    gen = np.random.default_rng(0)
    X = gen.integers(0, 256, (args.n, 3, 32, 32), dtype=np.uint8).astype(np.float32) / 255
    y = gen.integers(0, 10, args.n)
    rows = []
    for prefetch in (0, 2):
        loader = DataLoader(X, y, 128, seed=0, transform=pipeline(), prefetch=prefetch)
        rows.append((f"mlcvlab DataLoader, vectorized, prefetch={prefetch}",
                     images_per_second(lambda: loader, args.n, args.repeats)))
    loop_rng = np.random.default_rng(0)
    rows.append(("plain NumPy per-image loop",
                 images_per_second(lambda: per_image_loop(X, 128, loop_rng), args.n,
                                   args.repeats)))
    print(f"CIFAR-shaped float32 (N={args.n}, 3x32x32), crop+flip+normalize+cutout, batch 128")
    print(f"{'loader':<44} {'images/s':>10} {'vs loop':>8}")
    for name, ips in rows:
        print(f"{name:<44} {ips:>10.0f} {ips / rows[-1][1]:>7.1f}x")

    work = gen.random((384, 384))
    print("\noverlap with a consumer doing fixed NumPy work per batch (seconds per epoch):")
    for prefetch in (0, 2):
        loader = DataLoader(X, y, 128, seed=0, transform=pipeline(), prefetch=prefetch)
        best = min(overlap_seconds(loader, work) for _ in range(args.repeats))
        print(f"  prefetch={prefetch}: {best:.3f} s")


if __name__ == "__main__":
    main()
