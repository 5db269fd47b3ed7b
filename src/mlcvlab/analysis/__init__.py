"""Architecture arithmetic: parameters, activations, multiply-adds, memory, receptive fields.

From layer specs (the classic ImageNet networks)::

    from mlcvlab.analysis import analyze, totals, vgg19, IMAGENET_INPUT
    rows = analyze(vgg19(), IMAGENET_INPUT)
    totals(rows)["weights"]          # 143,652,544 (without biases)

From one of our models: ``format_summary(summarize(model, (1, 28, 28)))``.
"""
from mlcvlab.analysis.architectures import (
    ALEXNET_INPUT,
    IMAGENET_INPUT,
    InceptionConfig,
    alexnet,
    inception_naive,
    inception_reduced,
    resnet,
    vgg19,
)
from mlcvlab.analysis.layers import (
    FC,
    BatchNorm,
    Concat,
    Conv,
    GlobalAvgPool,
    LayerStats,
    Pool,
    Residual,
    analyze,
    conv_out,
    totals,
)
from mlcvlab.analysis.receptive_field import (
    receptive_field,
    receptive_field_bruteforce,
    stacked_receptive_field,
)
from mlcvlab.analysis.summary import format_summary, summarize

__all__ = [
    "Conv", "Pool", "FC", "BatchNorm", "GlobalAvgPool", "Concat", "Residual", "LayerStats",
    "analyze", "totals", "conv_out", "alexnet", "vgg19", "resnet", "inception_naive",
    "inception_reduced", "InceptionConfig", "ALEXNET_INPUT", "IMAGENET_INPUT",
    "receptive_field", "receptive_field_bruteforce", "stacked_receptive_field",
    "summarize", "format_summary",
]
