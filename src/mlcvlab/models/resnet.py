"""Residual networks for 32 x 32 images (He et al. 2016, "Deep Residual Learning").

* :func:`resnet_cifar` -- the paper's CIFAR-10 networks (Sec. 4.2): 6n + 2 layers.
* :func:`resnet18` -- ResNet-18 adapted to CIFAR (3x3 stem, no stem pooling), as
  used by the cutout paper (DeVries & Taylor 2017) and the kuangliu/pytorch-cifar code.
"""
from __future__ import annotations

from typing import List

from mlcvlab import backend
from mlcvlab.models.blocks import Residual, ZeroPadShortcut, conv_bn_relu, init_conv_weights
from mlcvlab.nn import (BatchNorm2d, Conv2d, GlobalAvgPool2d, Linear, Module, ReLU, Sequential,
                        init)

CIFAR_DEPTHS = (20, 32, 44, 56)


def basic_block(in_channels: int, out_channels: int, stride: int, shortcut: str,
                rng=None) -> Sequential:
    """Two 3x3 conv-BN layers plus a shortcut, then ReLU: relu(F(x) + shortcut(x)).

    x: (N, in_channels, H, W) -> (N, out_channels, ceil(H/stride), ceil(W/stride)).
    When the shape changes the shortcut is option "A" (subsample + zero-pad
    channels, no parameters) or "B" (1x1 conv with stride + BN); otherwise identity.
    """
    body = Sequential(
        *conv_bn_relu(in_channels, out_channels, 3, stride, 1, rng=rng),
        Conv2d(out_channels, out_channels, 3, 1, 1, bias=False, rng=rng),
        BatchNorm2d(out_channels),
    )
    proj = None
    if stride != 1 or in_channels != out_channels:
        if shortcut == "A":
            proj = ZeroPadShortcut(in_channels, out_channels, stride)
        else:
            proj = Sequential(Conv2d(in_channels, out_channels, 1, stride, bias=False, rng=rng),
                              BatchNorm2d(out_channels))
    return Sequential(Residual(body, proj), ReLU())


def _stages(widths, blocks_per_stage, in_channels: int, shortcut: str, rng) -> List[Module]:
    """Stages of basic blocks; every stage after the first halves H and W."""
    layers: List[Module] = []
    for i, width in enumerate(widths):
        for j in range(blocks_per_stage[i]):
            stride = 2 if (i > 0 and j == 0) else 1
            layers.append(basic_block(in_channels, width, stride, shortcut, rng=rng))
            in_channels = width
    return layers


def _check_classes(fn: str, num_classes) -> int:
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"{fn}: num_classes must be a positive integer, got {num_classes!r}")
    return int(num_classes)


def resnet_cifar(depth: int, num_classes: int = 10, in_channels: int = 3, rng=None) -> Sequential:
    """The CIFAR-10 ResNet of He et al. (2016), Sec. 4.2, with depth = 6n + 2.

    x: (N, in_channels, 32, 32) -> logits (N, num_classes). A 3x3 conv with 16
    filters, then three stages of n basic blocks with 16, 32, 64 filters on
    32x32, 16x16, 8x8 maps (the first conv of stages 2 and 3 has stride 2), global
    average pooling and a fully connected layer: 6n + 2 weighted layers.
    Shortcuts are identities, and option A (stride-2 subsampling with zero-padded
    extra channels) where the shape changes, as in the paper's CIFAR experiments,
    so ResNet-20 has 0.27M parameters. Convs have no bias (BN follows each);
    conv weights are He-normal (He et al. 2015), as the paper's [13].
    """
    if depth not in CIFAR_DEPTHS:
        raise ValueError(
            f"resnet_cifar: depth must be one of {CIFAR_DEPTHS} (6n + 2), got {depth!r}"
        )
    num_classes = _check_classes("resnet_cifar", num_classes)
    n = (depth - 2) // 6
    gen = backend.rng(rng)
    model = Sequential(
        *conv_bn_relu(in_channels, 16, 3, 1, 1, rng=gen),
        *_stages((16, 32, 64), (n, n, n), 16, "A", gen),
        GlobalAvgPool2d(),
        Linear(64, num_classes, rng=gen),
    )
    return init_conv_weights(model, init.he_normal, gen)


def resnet18(num_classes: int = 10, in_channels: int = 3, rng=None) -> Sequential:
    """ResNet-18 for CIFAR: x (N, in_channels, 32, 32) -> logits (N, num_classes).

    The ImageNet ResNet-18 (He et al. 2016, Table 1) with a 3x3 stride-1 stem and
    no stem max pool, as in the cutout paper and kuangliu/pytorch-cifar: stages of
    2 basic blocks with 64, 128, 256, 512 filters, projection shortcuts (option B:
    1x1 conv + BN) where the shape changes, global average pooling, FC.
    11.17M parameters for 10 classes.
    """
    num_classes = _check_classes("resnet18", num_classes)
    gen = backend.rng(rng)
    model = Sequential(
        *conv_bn_relu(in_channels, 64, 3, 1, 1, rng=gen),
        *_stages((64, 128, 256, 512), (2, 2, 2, 2), 64, "B", gen),
        GlobalAvgPool2d(),
        Linear(512, num_classes, rng=gen),
    )
    return init_conv_weights(model, init.he_normal, gen)


__all__ = ["resnet_cifar", "resnet18", "basic_block", "CIFAR_DEPTHS"]
