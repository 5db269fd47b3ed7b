"""Datasets (readers, checksums, cache, embedded real subsets), the DataLoader, batch
transforms and the synthetic datasets of the labs.

    from mlcvlab.data import load, DataLoader, transforms as T
    X, y = load("mnist10k", "train")                 # (8000, 1, 28, 28) float32, (8000,) int64
    loader = DataLoader(X, y, batch_size=128, seed=0,
                        transform=T.Compose([T.RandomCrop(28, padding=2, rng=0)]))
    for xb, yb in loader: ...
"""
from . import synthetic, transforms
from .datasets import (as_cifar_shape, load, load_or_substitute, resolve_dataset,
                       search_dirs)
from .embedded import stratified_split, train_val_split
from .loader import DataLoader
from .transforms import (BatchAugment, Compose, Cutout, Normalize, RandomCrop,
                         RandomHorizontalFlip)

__all__ = ["load", "load_or_substitute", "resolve_dataset", "as_cifar_shape", "search_dirs",
           "stratified_split", "train_val_split", "DataLoader", "transforms", "synthetic",
           "RandomCrop",
           "RandomHorizontalFlip", "Normalize", "Cutout", "BatchAugment", "Compose"]
