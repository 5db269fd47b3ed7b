"""MiniGoogLeNet: the small Inception network of Zhang et al. (2017).

"Understanding deep learning requires rethinking generalization", Appendix A
(Fig. 3, "Inception (small)"), popularized by pyimagesearch as MiniGoogLeNet and
used there for the cyclical learning-rate experiments (Smith 2017).
"""
from __future__ import annotations

from mlcvlab import backend
from mlcvlab.models.blocks import Concat, conv_bn_relu, init_conv_weights
from mlcvlab.nn import Dropout, GlobalAvgPool2d, Linear, MaxPool2d, Sequential, init


def inception_module(in_channels: int, k1: int, k3: int, rng=None) -> Concat:
    """Concat of a 1x1 conv module (k1 maps) and a 3x3 'same' conv module (k3 maps).

    x: (N, in_channels, H, W) -> (N, k1 + k3, H, W).
    """
    return Concat(conv_bn_relu(in_channels, k1, 1, rng=rng),
                  conv_bn_relu(in_channels, k3, 3, padding=1, rng=rng))


def downsample_module(in_channels: int, k: int, rng=None) -> Concat:
    """Concat of a 3x3 stride-2 'valid' conv module (k maps) and a 3x3 stride-2 max pool.

    x: (N, in_channels, H, W) -> (N, k + in_channels, (H - 3)//2 + 1, (W - 3)//2 + 1).
    """
    return Concat(conv_bn_relu(in_channels, k, 3, stride=2, rng=rng), MaxPool2d(3, stride=2))


def minigooglenet(num_classes: int = 10, in_channels: int = 3, p_dropout: float = 0.0,
                  rng=None) -> Sequential:
    """MiniGoogLeNet: x (N, in_channels, H, W) -> logits (N, num_classes); H, W >= 15 (28, 32).

    conv module 96@3x3 -> inception(32, 32) -> inception(32, 48) -> downsample(80)
    -> inception(112, 48) -> inception(96, 64) -> inception(80, 80) -> inception(48, 96)
    -> downsample(96) -> inception(176, 160) -> inception(176, 160) -> global
    average pooling -> [dropout] -> FC. A conv module is conv -> BN -> ReLU (conv
    without bias, since BN's shift replaces it). On 32x32 inputs the maps are 32,
    15, 7 pixels, and the global pooling equals the reference's 7x7 average pool;
    unlike a fixed 7x7 pool it also works on 28x28 (Fashion-MNIST gives 28, 13, 6).
    ``p_dropout``: the pyimagesearch version drops with 0.5 before the FC, Zhang
    et al. use none (the default). Conv weights are Glorot-uniform, as in Keras.
    """
    for name, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if int(value) != value or value < 1:
            raise ValueError(f"minigooglenet: {name} must be a positive integer, got {value!r}")
    if not 0.0 <= float(p_dropout) < 1.0:
        raise ValueError(f"minigooglenet: p_dropout must be in [0, 1), got {p_dropout!r}")
    gen = backend.rng(rng)
    model = Sequential(
        *conv_bn_relu(int(in_channels), 96, 3, padding=1, rng=gen),
        inception_module(96, 32, 32, gen),
        inception_module(64, 32, 48, gen),
        downsample_module(80, 80, gen),
        inception_module(160, 112, 48, gen),
        inception_module(160, 96, 64, gen),
        inception_module(160, 80, 80, gen),
        inception_module(160, 48, 96, gen),
        downsample_module(144, 96, gen),
        inception_module(240, 176, 160, gen),
        inception_module(336, 176, 160, gen),
        GlobalAvgPool2d(),
    )
    if p_dropout > 0:
        model.append(Dropout(float(p_dropout), rng=gen))
    model.append(Linear(336, int(num_classes), rng=gen))
    return init_conv_weights(model, init.xavier_uniform, gen)


__all__ = ["minigooglenet", "inception_module", "downsample_module"]
