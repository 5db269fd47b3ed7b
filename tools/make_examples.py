#!/usr/bin/env python
"""Write the notebooks of ``examples/`` from the cells below (unexecuted, so the diffs stay
readable); ``tests/test_examples.py`` executes each one top to bottom with nbclient.

    python tools/make_examples.py            # rewrite examples/*.ipynb
    python tools/make_examples.py --check    # fail if a notebook differs from its cells here
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

OUT = Path(__file__).resolve().parents[1] / "examples"

QUICKSTART = [
    ("md", """# mlcvlab quickstart

A model, a training loop with a progress bar, curves inline, one test result. Runs in well under
a minute on 2 CPU cores with the embedded `mnist10k` set (10,000 real MNIST images)."""),
    ("code", """import numpy as np
import matplotlib.pyplot as plt

import mlcvlab
from mlcvlab import data, nn, optim
from mlcvlab.train import Trainer, evaluate, array_batches

mlcvlab.set_num_threads(1)   # on a small shared machine one BLAS thread is fastest here
X, y = data.load("mnist10k", split="train")
X_test, y_test = data.load("mnist10k", split="test")
# hold out a validation split of the *training* data for the curves; the test split is used once
X_train, y_train, X_val, y_val = data.train_val_split(X, y, val_fraction=0.1, seed=0)
X_train.shape, X_val.shape, X_test.shape"""),
    ("code", """model = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
trainer = Trainer(model, nn.CrossEntropyLoss(), opt, progress=True)
history = trainer.fit(data.DataLoader(X_train, y_train, 64, seed=0), epochs=3,
                      val_loader=list(array_batches(X_val, y_val)))
history"""),
    ("code", """fig = history.plot(title="MLP on mnist10k")
fig   # a Figure shows itself; plt.show() keeps working too"""),
    ("code", """plt.plot([1, 2, 3], [3, 1, 2])   # pyplot was not switched to a file backend
plt.title("still interactive")
plt.show()"""),
    ("code", """test = evaluate(model, nn.CrossEntropyLoss(), array_batches(X_test, y_test))
print(f"test accuracy {test['acc']:.4f} (evaluated once, after training)")
assert test["acc"] > 0.9"""),
]

HW2 = [
    ("md", """# HW2: NN4 on MNIST, by hand and with synchronous SGD

The course's four-layer network NN4 (layers 1-3: Dropout → Linear → ReLU → BatchNorm; layer 4:
Dropout → Linear → softmax), its hand-written gradient `nn4_grad` checked two ways (against
`mlcvlab.autograd`, a reverse-mode engine on a computational graph, and against finite
differences), then trained with `SyncSGD` over K = 1, 2, 4 workers."""),
    ("code", """import numpy as np
import matplotlib.pyplot as plt

import mlcvlab
from mlcvlab import data
from mlcvlab.autograd import Tensor
from mlcvlab.models import NN4
from mlcvlab.models.nn4 import emp_loss_grad
from mlcvlab.optim.sync_sgd import SyncSGD

mlcvlab.set_num_threads(1)
rng = np.random.default_rng(0)"""),
    ("md", """## 1. `nn4_grad` against the computational graph

A small NN4 in float64 without dropout (dropout masks are random; the graph below has none),
batch norm in training mode. The same forward pass is written with `mlcvlab.autograd.Tensor`
operations, and `backward()` walks the graph in reverse."""),
    ("code", """net = NN4(6, hidden=(5, 4, 3), n_classes=3, p_input=0.0, p_hidden=0.0, rng=1).astype(np.float64)
Xs, ys = rng.standard_normal((8, 6)), rng.integers(0, 3, 8)
loss_hand, grad_hand = emp_loss_grad(net, Xs, ys)   # the hand-written backward (nn4_grad)

params = [Tensor(p.data.T.copy() if p.data.ndim == 2 else p.data.copy()) for p in net.parameters()]
def graph_loss(params, X, y, eps=1e-5):
    a = Tensor(X)
    for i in range(3):
        W, b, gamma, beta = params[4 * i: 4 * i + 4]
        h = (a @ W + b).relu()
        mu = h.mean(axis=0, keepdims=True)
        var = ((h - mu) ** 2).mean(axis=0, keepdims=True)
        a = (h - mu) / (var + eps) ** 0.5 * gamma + beta
    logits = a @ params[12] + params[13]
    shifted = logits - logits.data.max(axis=1, keepdims=True)
    log_probs = shifted - shifted.exp().sum(axis=1, keepdims=True).log()
    onehot = np.eye(3)[y]
    return -(log_probs * onehot).sum() / len(y)

L = graph_loss(params, Xs, ys)
L.backward()
grad_graph = np.concatenate([(t.grad.T if t.grad.ndim == 2 else t.grad).ravel() for t in params])
print(f"loss: hand {loss_hand:.12f}, graph {L.item():.12f}")
print("max |hand - graph| over all gradients:", np.abs(grad_hand - grad_graph).max())
assert np.allclose(grad_hand, grad_graph, atol=1e-10)"""),
    ("md", "## 2. `nn4_grad` against finite differences (central, ε = 1e-6, float64)"),
    ("code", """flat = net.flat()
worst = 0.0
for i in rng.choice(flat.size, 30, replace=False):
    old = flat.data[i]
    flat.data[i] = old + 1e-6; up = emp_loss_grad(net, Xs, ys)[0]
    flat.data[i] = old - 1e-6; down = emp_loss_grad(net, Xs, ys)[0]
    flat.data[i] = old
    worst = max(worst, abs((up - down) / 2e-6 - grad_hand[i]))
print(f"largest |finite difference - nn4_grad| over 30 weights: {worst:.2e}")
assert worst < 1e-6"""),
    ("md", """## 3. Synchronous SGD with K = 1, 2, 4 workers

Each round, K workers compute the gradient on their shard of the same batch against the same
weights; the gradients are averaged and one update is applied. Same seed for every K, so the
curves differ only by the shards' batch-norm statistics and dropout masks."""),
    ("code", """X, y = data.load("mnist10k", split="train")
X_test, y_test = data.load("mnist10k", split="test")
X_tr, y_tr, X_val, y_val = data.train_val_split(X, y, 0.1, seed=0)
curves, val_acc = {}, {}
for K in (1, 2, 4):
    model = NN4(784, n_classes=10, rng=0)
    sgd = SyncSGD(model, lr=0.1, workers=K, seed=0)
    curves[K] = sgd.fit(X_tr.reshape(len(X_tr), -1), y_tr, rounds=150, batch_size=128, rng=0)
    model.eval()
    val_acc[K] = float((model(X_val.reshape(len(X_val), -1)).argmax(1) == y_val).mean())
    print(f"K={K}: validation accuracy {val_acc[K]:.4f}")"""),
    ("code", """fig, ax = plt.subplots(figsize=(6, 3.5))
for K, losses in curves.items():
    ax.plot(np.arange(1, len(losses) + 1), losses, label=f"K = {K}", alpha=0.8)
ax.set_xlabel("round"); ax.set_ylabel("training loss (cross-entropy)")
ax.set_title("SyncSGD on mnist10k, batch 128 split over K workers"); ax.legend()
plt.show()"""),
    ("code", """best_K = max(val_acc, key=val_acc.get)   # chosen on the validation split, not the test split
model = NN4(784, n_classes=10, rng=0)
SyncSGD(model, lr=0.1, workers=best_K, seed=0).fit(X_tr.reshape(len(X_tr), -1), y_tr, 150, 128, rng=0)
model.eval()
test_acc = float((model(X_test.reshape(len(X_test), -1)).argmax(1) == y_test).mean())
print(f"K = {best_K} (best on validation): test accuracy {test_acc:.4f}, measured once")
assert test_acc > 0.85"""),
]

LAB = [
    ("md", """# A lab from Python

Every lab runs from the command line (`mlcvlab lab run NAME`) or from Python. Here the
perceptron lab's quick preset (a smoke test: its report says so), then its results and a
figure."""),
    ("code", """import json
from pathlib import Path
from IPython.display import Image, Markdown, display

from mlcvlab.labs import run_lab

out = Path("lab_runs_example/perceptron")
results = run_lab("perceptron", preset="quick", out_dir=str(out), show_progress=False)
results["preset"], len(results["comparisons"])"""),
    ("code", """saved = json.loads((out / "results.json").read_text())
for c in saved["comparisons"]:
    print(c["a"], "vs", c["b"], "|", c["metric"], "| diff", round(c["diff"], 4),
          "| 95% CI", [round(v, 4) if v is not None else None for v in c["ci95"]], "|", c["verdict"])"""),
    ("code", """report = (out / "report.md").read_text()
display(Markdown(report.split("\\n## ")[0]))   # the title and the smoke-test banner
png = sorted(out.glob("*.png"))[0]
Image(filename=str(png))"""),
]

PYTORCH = [
    ("md", """# From PyTorch to mlcvlab

The same small CNN in both, with the same weights: outputs and gradients agree to float64
rounding. The differences a PyTorch user meets are listed at the end."""),
    ("code", """import numpy as np
import torch

from mlcvlab import data, nn, optim

torch.set_default_dtype(torch.float64)
X, y = data.load("digits", split="train")          # (N, 1, 8, 8) images, int64 labels
X, y = X[:32].astype(np.float64), y[:32]

ours = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                     nn.Linear(4 * 4 * 4, 10)).astype(np.float64)
theirs = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                             torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(64, 10))
theirs.load_state_dict({k: torch.tensor(v) for k, v in ours.state_dict().items()})"""),
    ("code", """loss_ours = nn.CrossEntropyLoss()
value = loss_ours(ours(X), y)
ours.zero_grad()
ours.backward(loss_ours.backward())              # explicit backward through the modules

xt = torch.tensor(X)
value_t = torch.nn.functional.cross_entropy(theirs(xt), torch.tensor(y))
value_t.backward()                                # autograd
print(f"loss: mlcvlab {value:.12f}, torch {value_t.item():.12f}")
for (name, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters()):
    print(f"{name:10s} max |grad difference| = {np.abs(p.grad - q.grad.numpy()).max():.1e}")
    assert np.allclose(p.grad, q.grad.numpy(), atol=1e-12)"""),
    ("code", """opt = optim.SGD(ours.parameters(), lr=0.1, momentum=0.9)
opt_t = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9)
for step in range(5):
    ours.zero_grad(); v = loss_ours(ours(X), y); ours.backward(loss_ours.backward()); opt.step()
    opt_t.zero_grad(); vt = torch.nn.functional.cross_entropy(theirs(xt), torch.tensor(y)); vt.backward(); opt_t.step()
print(f"after 5 steps: mlcvlab loss {v:.10f}, torch {vt.item():.10f}")
assert abs(v - vt.item()) < 1e-10"""),
    ("md", """## What differs

| PyTorch | mlcvlab |
|---|---|
| `loss.backward()` on a tensor (autograd) | `model.backward(loss.backward())`: each layer's backward is written by hand from its cache |
| `torch.Tensor` | plain NumPy arrays in, NumPy arrays out |
| `model.to("cuda")` | `mlcvlab train --dist cuda` (numba kernels) for NN4 and MLPs |
| `DataLoader(dataset, ...)` | `data.DataLoader(X, y, batch_size, seed=...)` over arrays, augmentation on whole batches |
| `torch.save(model.state_dict())` | `model.state_dict()` is a dict of arrays; `mlcvlab train` writes `model.npz` and SHA-256-checked checkpoints, never pickles |
| float32 by default, `.double()` | float32 by default, `model.astype(np.float64)` |
| `Dropout(p)` drops with probability p | the same (`p` is the drop probability) |"""),
]

NOTEBOOKS = {"quickstart.ipynb": QUICKSTART, "hw2_mnist_nn4.ipynb": HW2,
             "lab_from_python.ipynb": LAB, "pytorch_to_mlcvlab.ipynb": PYTORCH}


def build(cells):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    for i, (kind, text) in enumerate(cells):
        cell = (nbformat.v4.new_markdown_cell(text) if kind == "md"
                else nbformat.v4.new_code_cell(text))
        cell["id"] = f"cell-{i}"
        nb.cells.append(cell)
    return nbformat.writes(nb) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    stale = []
    for name, cells in NOTEBOOKS.items():
        text = build(cells)
        path = OUT / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"out of date: {stale}; run python tools/make_examples.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
