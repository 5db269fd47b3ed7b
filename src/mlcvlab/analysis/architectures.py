"""Layer specs of classic ImageNet architectures, for :func:`mlcvlab.analysis.analyze`.

* AlexNet (Krizhevsky et al. 2012, Sec. 3.5 and Fig. 2), input 227×227×3 (the
  paper's text says 224, but 227 is the size for which conv1 (11×11, stride 4,
  no padding) gives the 55×55 maps of Fig. 2). The network was split over two
  GPUs: conv2, conv4 and conv5 only see the kernel maps on their own GPU
  (``groups=2``); conv3 and the FC layers connect across GPUs. ``grouped=False``
  gives the single-GPU variant, in which every conv sees all input channels.
* VGG19 (Simonyan & Zisserman 2015, configuration E), 224×224×3.
* ResNet-18/50/152 (He et al. 2016, Table 1), 224×224×3, as in torchvision:
  bias-free convs each followed by batch norm, the stride in the 3×3 conv of a
  bottleneck, 1×1 projection shortcuts (with batch norm) where the shape changes.
* The Inception module of GoogLeNet (Szegedy et al. 2015, Fig. 2), naive and
  with dimension reduction; filter counts default to inception (3a) of Table 1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

from mlcvlab.analysis.layers import FC, BatchNorm, Concat, Conv, GlobalAvgPool, Pool, Residual, Spec

ALEXNET_INPUT = (3, 227, 227)
IMAGENET_INPUT = (3, 224, 224)


def alexnet(grouped: bool = True) -> List[Spec]:
    """AlexNet's 5 conv + 3 FC layers (max pools 3×3 stride 2; LRN has no parameters, omitted)."""
    g = 2 if grouped else 1
    return [
        Conv(3, 96, 11, stride=4, name="conv1"),
        Pool(3, 2, name="pool1"),
        Conv(96, 256, 5, pad=2, groups=g, name="conv2"),
        Pool(3, 2, name="pool2"),
        Conv(256, 384, 3, pad=1, name="conv3"),
        Conv(384, 384, 3, pad=1, groups=g, name="conv4"),
        Conv(384, 256, 3, pad=1, groups=g, name="conv5"),
        Pool(3, 2, name="pool5"),
        FC(256 * 6 * 6, 4096, name="fc6"),
        FC(4096, 4096, name="fc7"),
        FC(4096, 1000, name="fc8"),
    ]


VGG19_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


def vgg19() -> List[Spec]:
    """VGG19 (configuration E): 16 conv3×3 (pad 1), 5 max pools 2×2, FC 4096-4096-1000."""
    specs: List[Spec] = []
    c, block, idx = 3, 1, 1
    for v in VGG19_CONFIG:
        if v == "M":
            specs.append(Pool(2, 2, name=f"pool{block}"))
            block, idx = block + 1, 1
        else:
            specs.append(Conv(c, v, 3, pad=1, name=f"conv{block}_{idx}"))
            c, idx = v, idx + 1
    specs += [FC(512 * 7 * 7, 4096, name="fc6"), FC(4096, 4096, name="fc7"),
              FC(4096, 1000, name="fc8")]
    return specs


def _conv_bn(in_c: int, out_c: int, k: int, stride: int, name: str) -> Tuple[Spec, Spec]:
    return (Conv(in_c, out_c, k, stride, pad=k // 2, bias=False, name=name),
            BatchNorm(out_c, name=f"{name}.bn"))


def _basic(in_c: int, c: int, stride: int, name: str) -> Residual:
    main = _conv_bn(in_c, c, 3, stride, f"{name}.conv1") + _conv_bn(c, c, 3, 1, f"{name}.conv2")
    short = _conv_bn(in_c, c, 1, stride, f"{name}.down") if stride != 1 or in_c != c else ()
    return Residual(main, short, name=name)


def _bottleneck(in_c: int, c: int, stride: int, name: str) -> Residual:
    main = (_conv_bn(in_c, c, 1, 1, f"{name}.conv1") + _conv_bn(c, c, 3, stride, f"{name}.conv2")
            + _conv_bn(c, 4 * c, 1, 1, f"{name}.conv3"))
    short = _conv_bn(in_c, 4 * c, 1, stride, f"{name}.down") if stride != 1 or in_c != 4 * c else ()
    return Residual(main, short, name=name)


RESNET_BLOCKS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
                 50: ("bottleneck", (3, 4, 6, 3)), 101: ("bottleneck", (3, 4, 23, 3)),
                 152: ("bottleneck", (3, 8, 36, 3))}


def resnet(depth: int, num_classes: int = 1000) -> List[Spec]:
    """ImageNet ResNet-``depth`` (18, 34, 50, 101 or 152) for a 224×224×3 input."""
    if depth not in RESNET_BLOCKS:
        raise ValueError(f"resnet: depth must be one of {sorted(RESNET_BLOCKS)}, got {depth}")
    kind, counts = RESNET_BLOCKS[depth]
    block, expansion = (_basic, 1) if kind == "basic" else (_bottleneck, 4)
    specs: List[Spec] = list(_conv_bn(3, 64, 7, 2, "conv1")) + [Pool(3, 2, pad=1, name="maxpool")]
    in_c = 64
    for stage, (width, n) in enumerate(zip((64, 128, 256, 512), counts), start=1):
        for i in range(n):
            stride = 2 if stage > 1 and i == 0 else 1
            specs.append(block(in_c, width, stride, f"layer{stage}.{i}"))
            in_c = width * expansion
    return specs + [GlobalAvgPool(name="avgpool"), FC(in_c, num_classes, name="fc")]


@dataclass(frozen=True)
class InceptionConfig:
    """Filter counts of one Inception module; defaults are GoogLeNet's inception (3a).

    n1x1: 1×1 branch; n3x3_reduce → n3x3; n5x5_reduce → n5x5;
    pool_proj: 1×1 conv after the 3×3 max pool.
    """

    n1x1: int = 64
    n3x3_reduce: int = 96
    n3x3: int = 128
    n5x5_reduce: int = 16
    n5x5: int = 32
    pool_proj: int = 32


def inception_naive(in_c: int = 256, cfg: InceptionConfig = InceptionConfig()) -> List[Spec]:
    """Naive module: 1×1, 3×3, 5×5 convs and a 3×3 max pool on the input, concatenated."""
    return [Concat((
        (Conv(in_c, cfg.n1x1, 1, name="1x1"),),
        (Conv(in_c, cfg.n3x3, 3, pad=1, name="3x3"),),
        (Conv(in_c, cfg.n5x5, 5, pad=2, name="5x5"),),
        (Pool(3, 1, pad=1, name="pool3x3"),),
    ), name="inception_naive")]


def inception_reduced(in_c: int = 256, cfg: InceptionConfig = InceptionConfig()) -> List[Spec]:
    """Module with dimension reduction: 1×1 convs before the 3×3 and 5×5, and after the pool."""
    return [Concat((
        (Conv(in_c, cfg.n1x1, 1, name="1x1"),),
        (Conv(in_c, cfg.n3x3_reduce, 1, name="3x3_reduce"),
         Conv(cfg.n3x3_reduce, cfg.n3x3, 3, pad=1, name="3x3")),
        (Conv(in_c, cfg.n5x5_reduce, 1, name="5x5_reduce"),
         Conv(cfg.n5x5_reduce, cfg.n5x5, 5, pad=2, name="5x5")),
        (Pool(3, 1, pad=1, name="pool3x3"), Conv(in_c, cfg.pool_proj, 1, name="pool_proj")),
    ), name="inception_reduced")]
