"""Full LeNet-5 and ResNet-20 against independently written PyTorch twins.

The twins below follow the papers' descriptions (LeNet-5 in its ReLU/max-pool
form; ResNet-20 with option A shortcuts as in He et al. 2016, Sec. 4.2) and
register their parameters in the same order as ours, so the weights are copied
by position. Train mode, batch norm with batch statistics. Compared: the
output, the input gradient and every parameter gradient.
"""
import numpy as np
import pytest
import torch
import torch.nn as tnn
import torch.nn.functional as F

from mlcvlab.models import lenet5, resnet_cifar

TOL = {np.float32: 1e-4, np.float64: 1e-8}


class TorchLeNet5(tnn.Sequential):
    def __init__(self, batchnorm: bool):
        bn2 = (lambda c: [tnn.BatchNorm2d(c)]) if batchnorm else (lambda c: [])
        bn1 = (lambda c: [tnn.BatchNorm1d(c)]) if batchnorm else (lambda c: [])
        bias = not batchnorm
        super().__init__(
            tnn.Conv2d(1, 6, 5, padding=2, bias=bias), *bn2(6), tnn.ReLU(), tnn.MaxPool2d(2),
            tnn.Conv2d(6, 16, 5, bias=bias), *bn2(16), tnn.ReLU(), tnn.MaxPool2d(2),
            tnn.Flatten(),
            tnn.Linear(400, 120, bias=bias), *bn1(120), tnn.ReLU(),
            tnn.Linear(120, 84, bias=bias), *bn1(84), tnn.ReLU(),
            tnn.Linear(84, 10),
        )


class TorchBasicBlock(tnn.Module):
    """He et al. (2016) basic block with the option-A (zero-padding) shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = tnn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.downsample = stride != 1 or in_planes != planes
        self.pad = (planes - in_planes) // 2

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = x
        if self.downsample:
            short = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + short)


class TorchResNetCifar(tnn.Module):
    def __init__(self, depth: int, num_classes: int = 10):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = tnn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(16)
        blocks, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                blocks.append(TorchBasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
        self.blocks = tnn.Sequential(*blocks)
        self.fc = tnn.Linear(64, num_classes)

    def forward(self, x):
        out = self.blocks(F.relu(self.bn1(self.conv1(x))))
        return self.fc(out.mean(dim=(2, 3)))


def copy_weights(ours, twin):
    """Copy our parameters into the twin by position; the shapes must agree one by one."""
    ours_params, twin_params = ours.parameters(), list(twin.parameters())
    assert len(ours_params) == len(twin_params)
    with torch.no_grad():
        for i, (p, tp) in enumerate(zip(ours_params, twin_params)):
            assert p.data.shape == tuple(tp.shape), f"parameter {i}: {p.data.shape} vs {tp.shape}"
            tp.copy_(torch.from_numpy(p.data.copy()))


def cross_entropy_grad(logits, labels):
    """dL/dlogits of the mean cross-entropy, (softmax - one_hot) / N: the scale of training."""
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    dy = e / e.sum(axis=1, keepdims=True)
    dy[np.arange(len(labels)), labels] -= 1
    return dy / len(labels)


def assert_parity(ours, twin, x, dtype):
    """Forward + backward of both in train mode; compare output, dx and every parameter grad."""
    ours.astype(dtype).train()
    twin = twin.to(torch.float64 if dtype == np.float64 else torch.float32).train()
    copy_weights(ours, twin)
    x = x.astype(dtype)
    y = ours(x)
    dy = cross_entropy_grad(y, np.random.default_rng(1).integers(0, y.shape[1], len(y)))
    ours.zero_grad()
    dx = ours.backward(dy)

    tx = torch.tensor(x, requires_grad=True)
    ty = twin(tx)
    ty.backward(torch.from_numpy(dy))
    tol = TOL[dtype]
    assert y.dtype == dx.dtype == dtype
    assert np.max(np.abs(y - ty.detach().numpy())) <= tol, "output"
    assert np.max(np.abs(dx - tx.grad.numpy())) <= tol, "input gradient"
    for (name, p), tp in zip(ours.named_parameters(), twin.parameters()):
        assert p.grad.dtype == dtype
        err = np.max(np.abs(p.grad - tp.grad.numpy()))
        assert err <= tol, f"gradient of {name}: max abs diff {err}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batchnorm", [False, True])
def test_lenet5_matches_torch(batchnorm, dtype):
    # batch 8: with 4 samples BatchNorm1d's inv_std gets large and float32 rounding of the
    # (equally accurate) gradients of both libraries approaches 1e-4
    torch.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((8, 1, 28, 28))
    assert_parity(lenet5(batchnorm=batchnorm, rng=0), TorchLeNet5(batchnorm), x, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_resnet20_matches_torch(dtype):
    torch.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32))
    assert_parity(resnet_cifar(20, rng=0), TorchResNetCifar(20), x, dtype)


def test_resnet20_parameter_count_matches_the_torch_twin():
    twin_count = sum(p.numel() for p in TorchResNetCifar(20).parameters())
    assert resnet_cifar(20, rng=0).num_parameters() == twin_count == 269_722
