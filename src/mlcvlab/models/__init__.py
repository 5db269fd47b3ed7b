"""Models: NN4 and the MLP, LeNet-5, the CIFAR ResNets, ResNet-18 and MiniGoogLeNet.

``get_model(name, **kwargs)`` builds one by name (used by the CLI's ``--model``).
"""
from __future__ import annotations

from typing import Callable, Dict

from mlcvlab.models.googlenet import minigooglenet
from mlcvlab.models.lenet import lenet5
from mlcvlab.models.mlp import mlp
from mlcvlab.models.nn4 import NN4, emp_loss_grad, nn4_grad
from mlcvlab.models.resnet import CIFAR_DEPTHS, resnet18, resnet_cifar
from mlcvlab.nn import Module


def _resnet(depth: int) -> Callable[..., Module]:
    def build(**kwargs) -> Module:
        return resnet_cifar(depth, **kwargs)
    build.__name__ = f"resnet{depth}"
    build.__doc__ = f"ResNet-{depth} for CIFAR (resnet_cifar({depth}, ...))."
    return build


MODELS: Dict[str, Callable[..., Module]] = {
    "nn4": NN4,
    "mlp": mlp,
    "lenet5": lenet5,
    **{f"resnet{d}": _resnet(d) for d in CIFAR_DEPTHS},
    "resnet18": resnet18,
    "minigooglenet": minigooglenet,
}


def get_model(name: str, **kwargs) -> Module:
    """Build the model registered as ``name`` (see ``MODELS``) with ``kwargs``.

    E.g. ``get_model("resnet20", num_classes=10)``, ``get_model("mlp", sizes=(784, 100, 10))``.
    """
    key = str(name).lower().replace("-", "").replace("_", "")
    if key not in MODELS:
        raise ValueError(f"get_model: unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[key](**kwargs)


__all__ = [
    "NN4", "nn4_grad", "emp_loss_grad", "mlp", "lenet5", "resnet_cifar", "resnet18",
    "minigooglenet", "get_model", "MODELS",
]
