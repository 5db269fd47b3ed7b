"""Regression: the multiply-adds of ``summarize`` and the analytic memory of the memory lab for
every model of ``mlcvlab.models``, recorded before the layer facts moved into the layers
(session 7): the numbers must not change when the code that computes them moves."""
import pytest

from mlcvlab import models
from mlcvlab.analysis import summarize, totals
from mlcvlab.labs.memory import activation_bytes, training_memory
from mlcvlab.train.cli import build_model

# model -> (input shape, rows, params, activations, multiply-adds by layer type)
SUMMARIES = {
    "lenet5": ((1, 28, 28), 12, 61706, 15002,
               {"Conv2d": 357600, "Linear": 58920}),
    "minigooglenet": ((1, 28, 28), 61, 1649386, 1023402,
                      {"Conv2d": 174939392, "Linear": 3360}),
    "mlp": ((1, 28, 28), 6, 535818, 2330, {"Linear": 535040}),
    "nn4": ((1, 28, 28), 15, 569226, 4388, {"Linear": 566528}),
    "resnet18": ((3, 32, 32), 64, 11173962, 1974794, {"Conv2d": 555417600, "Linear": 5120}),
    "resnet20": ((3, 32, 32), 68, 269722, 651338, {"Conv2d": 40550400, "Linear": 640}),
    "resnet32": ((3, 32, 32), 110, 464154, 1052746, {"Conv2d": 68861952, "Linear": 640}),
    "resnet44": ((3, 32, 32), 152, 658586, 1454154, {"Conv2d": 97173504, "Linear": 640}),
    "resnet56": ((3, 32, 32), 194, 853018, 1855562, {"Conv2d": 125485056, "Linear": 640}),
}


def test_every_model_is_covered():
    assert sorted(SUMMARIES) == sorted(models.MODELS)


@pytest.mark.parametrize("name", sorted(SUMMARIES))
def test_summary_numbers_unchanged(name):
    shape, n_rows, params, acts, macs = SUMMARIES[name]
    model = build_model(name, shape, 10, 0)
    rows = summarize(model, shape)
    t = totals(rows)
    assert (len(rows), t["params"], t["activations"]) == (n_rows, params, acts)
    by_kind = {}
    for r in rows:
        by_kind[r.kind] = by_kind.get(r.kind, 0) + r.macs
    assert {k: v for k, v in by_kind.items() if v} == macs
    assert t["macs"] == sum(macs.values())


# chain -> (builder, activation bytes at batch 1, at batch 32); input 1 x 28 x 28
CHAINS = {
    "mlp": (lambda: models.mlp([784, 64, 10], rng=0), 3432, 109824),
    "mlp_bn_drop_tanh": (lambda: models.mlp([784, 32, 16, 10], activation="tanh", p_input=0.2,
                                            p_hidden=0.5, batchnorm=True, rng=0), 7656, 227136),
    "mlp_leaky": (lambda: models.mlp([784, 32, 10], activation="leaky_relu", rng=0),
                  3432, 109824),
    "mlp_sigmoid_drop": (lambda: models.mlp([784, 32, 10], activation="sigmoid", p_hidden=0.3,
                                            rng=0), 3560, 113920),
    "lenet5": (lambda: models.lenet5(rng=0), 37088, 1186816),
    "lenet5_bn_drop": (lambda: models.lenet5(batchnorm=True, p_input=0.2, p_hidden=0.5, rng=0),
                       71528, 2204824),
}


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_analytic_activation_bytes_unchanged(name):
    build, b1, b32 = CHAINS[name]
    assert activation_bytes(build(), (1, 28, 28), 1) == b1
    assert activation_bytes(build(), (1, 28, 28), 32) == b32


@pytest.mark.parametrize("name,total", [("lenet5", 1284000), ("mlp", 8623072)])
def test_training_memory_of_the_cli_models_unchanged(name, total):
    model = build_model(name, (1, 28, 28), 10, 0)
    assert training_memory(model, (1, 28, 28), 8, "adam")["total"] == total
