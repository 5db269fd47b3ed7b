"""Layers, losses and initializers (see DESIGN.md "Public surface")."""
from mlcvlab.nn import basis, init
from mlcvlab.nn.losses import (BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, HingeLoss, Loss,
                               MSELoss, NLLLoss)
from mlcvlab.nn.module import Kept, Module, Sequential
from mlcvlab.nn.modules import (AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, BatchNorm1d,
                                BatchNorm2d, Conv2d, Dropout, Flatten, GlobalAvgPool2d, Identity,
                                LeakyReLU, Linear, MaxPool2d, ReLU, Sigmoid, Softmax, Tanh)
from mlcvlab.nn.parameter import FlatParameters, Parameter, flatten

__all__ = [
    "basis", "init", "Module", "Sequential", "Kept", "Parameter", "FlatParameters", "flatten",
    "Linear", "Conv2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d",
    "GlobalAvgPool2d", "Flatten", "BatchNorm1d",
    "BatchNorm2d", "Dropout", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax", "Identity",
    "Loss", "CrossEntropyLoss", "NLLLoss", "BCEWithLogitsLoss", "BCELoss", "MSELoss", "HingeLoss",
]
