"""The memory lab: the analytic memory model against hand counts and the real caches; quick run."""
import numpy as np
import pytest

from mlcvlab.labs import stats
from mlcvlab.labs.memory import (UNSTABLE_LOSS_RISE, _stability_text, activation_bytes,
                                 batch_comparisons, cached_bytes, training_memory)
from mlcvlab.models import NN4, minigooglenet, resnet18, resnet_cifar
from mlcvlab.nn import (BatchNorm1d, Conv2d, CrossEntropyLoss, Dropout, Flatten, Linear, MaxPool2d,
                        MSELoss, ReLU, Sequential)

REPORT_KEYS = ["spec_rows", "state_rows", "batch_rows", "runs", "comparisons", "preset",
               "largest_model", "largest_params", "largest_mb", "state_all_match",
               "cache_matches", "peak_ratio_min", "peak_ratio_max", "fixed_kb", "act_growth",
               "act_share_last", "adam_over_sgd", "time_first", "time_last", "wall_first",
               "wall_last", "time_sentence", "acc_sentences", "model_params", "unstable_batches",
               "stability_text"]


def _forward(model, x, y):
    """A training forward + loss, as a step does before backward; returns the loss."""
    loss = CrossEntropyLoss()
    loss(model(x), y)
    return loss


def test_analytic_memory_exact_for_small_mlp():
    rng = np.random.default_rng(0)
    model = Sequential(Linear(4, 8, rng=rng), BatchNorm1d(8), ReLU(), Dropout(0.5, rng=rng),
                       Linear(8, 3, rng=rng))
    mem = training_memory(model, (4,), 16, "adam")
    # P = (4*8 + 8) + (8 + 8) + (8*3 + 3) = 83 float32 values.
    assert mem["parameters"] == mem["gradients"] == 83 * 4
    assert mem["optimizer_state"] == 2 * 83 * 4                       # Adam: m and v
    # per sample: input kept by Linear 4, BN x_hat 8 (not its input), ReLU output 8, dropout
    # mask 8, Linear2 input 8, loss gradient 3 -> 39 values; + BN mean/var/inv_std 3*8 = 24.
    assert mem["activations"] == (16 * 39 + 24) * 4 == 2592
    assert mem["total"] == 4 * 83 * 4 + 2592 == 3920
    x = rng.standard_normal((16, 4)).astype(np.float32)
    loss = _forward(model, x, rng.integers(0, 3, 16))
    assert cached_bytes(model, loss) == 2592


def test_analytic_memory_exact_for_small_convnet():
    rng = np.random.default_rng(1)
    model = Sequential(Conv2d(2, 2, 3, padding=1, rng=rng), ReLU(), MaxPool2d(2), Flatten(),
                       Linear(8, 3, rng=rng))
    mem = training_memory(model, (2, 4, 4), 5, "sgd")
    assert mem["parameters"] == (2 * 2 * 9 + 2 + 8 * 3 + 3) * 4 == 260
    assert mem["optimizer_state"] == 0
    # per sample: the conv's input 2*16 = 32, ReLU input 2*16 = 32, Linear input 8 (Flatten is
    # a view of the pooled map), loss gradient 3 -> 75 float32 + 8 uint8 argmax indices.
    assert mem["activations"] == 5 * (75 * 4 + 8) == 1540
    assert mem["total"] == 2 * 260 + 1540
    x = rng.standard_normal((5, 2, 4, 4)).astype(np.float32)
    assert cached_bytes(model, _forward(model, x, rng.integers(0, 3, 5))) == 1540


def test_flatten_output_is_not_counted_twice():
    rng = np.random.default_rng(2)
    model = Sequential(Conv2d(1, 3, 3, rng=rng), Flatten(), Linear(3 * 2 * 2, 2, rng=rng))
    # conv input 16, Linear input 12 (a view of the conv output), loss gradient 2 -> 30 values
    assert activation_bytes(model, (1, 4, 4), 7) == 7 * 30 * 4
    x = rng.standard_normal((7, 1, 4, 4)).astype(np.float32)
    assert cached_bytes(model, _forward(model, x, rng.integers(0, 2, 7))) == 7 * 30 * 4


def test_analytic_memory_errors():
    model = Sequential(Linear(2, 2))
    with pytest.raises(ValueError, match="optimizer must be one of"):
        training_memory(model, (2,), 4, "lbfgs")
    with pytest.raises(ValueError, match="batch_size"):
        training_memory(model, (2,), 0)


@pytest.mark.parametrize("name,build,shape", [
    ("nested Sequential", lambda: Sequential(Sequential(Linear(4, 5), ReLU()),
                                             Sequential(Linear(5, 3))), (4,)),
    ("NN4 with dropout, image input", lambda: NN4(64, hidden=(16, 12, 8), n_classes=4, rng=0),
     (1, 8, 8)),
    ("resnet20 (residual, option A shortcut)", lambda: resnet_cifar(20, rng=0), (3, 16, 16)),
    ("resnet18 (option B shortcut)", lambda: resnet18(rng=0), (3, 16, 16)),
    ("minigooglenet (inception concat, dropout)",
     lambda: minigooglenet(in_channels=1, p_dropout=0.5, rng=0), (1, 28, 28)),
])
def test_analytic_memory_of_nested_models_equals_their_caches(name, build, shape):
    """Containers add their children's declarations over the traced forward: the model equals
    the bytes in the caches after a training forward, for residual blocks and concats too."""
    model = build()
    x = np.random.default_rng(0).standard_normal((3,) + shape).astype(np.float32)
    y = model.train()(x)
    loss = MSELoss()
    loss(y, np.zeros_like(y))
    measured = cached_bytes(model, loss)        # before the model's own trace clears the caches
    assert activation_bytes(model, shape, 3) == measured


@pytest.fixture(scope="module")
def quick_run(run_quick):
    """The memory lab's quick preset with 2 epochs (a stability trend to judge), run once."""
    return run_quick("memory", overrides=["epochs=2", "n_train=512", "n_test=256"])


def test_memory_quick_via_api(quick_run):
    run = quick_run
    run.assert_outputs(keys=REPORT_KEYS,
                       files=("report.md", "model_sizes.csv", "optimizer_state.csv",
                              "batch_sizes.csv", "runs.csv", "memory_vs_batch.png",
                              "accuracy_time_vs_batch.png", "config.json"))
    res = run.results
    assert res["state_all_match"] and res["cache_matches"]
    spec = {r["model"]: r["params"] for r in res["spec_rows"]}
    assert spec["resnet152"] > spec["resnet50"] > spec["resnet18"]
    rows = res["batch_rows"]
    assert [r["batch"] for r in rows] == [4, 16, 64, 256]
    per_sample = {r["activation_bytes"] / r["batch"] for r in rows}
    assert len(per_sample) == 1                      # an MLP keeps exactly b x (per sample)
    fixed = 3 * res["model_params"] * 4              # params + grads + momentum
    for r in rows:
        assert r["analytic_bytes"] == fixed + r["activation_bytes"]
        assert r["peak_bytes"] >= r["analytic_bytes"]   # the peak adds temporaries
        assert 0.0 <= r["test acc"] <= 1.0 and r["seeds"] == 2
        assert r["CPU seconds"] > 0 and r["wall seconds"] > 0
        assert r["test acc CI lo"] <= r["test acc"] <= r["test acc CI hi"]
    assert rows[0]["steps"] > rows[-1]["steps"]
    runs = res["runs"]
    assert sorted((r["seed"], r["batch"]) for r in runs) == [(s, b) for s in (0, 1)
                                                             for b in (4, 16, 64, 256)]
    assert res["unstable_batches"] == sorted({
        r["batch"] for r in runs
        if r["train_loss_last"] > UNSTABLE_LOSS_RISE * r["train_loss_lowest"]})
    report = run.report()
    assert "mnist10k" in report and f"{res['largest_params']:,}" in report
    assert "(modelled)" in report and "peak KB (measured)" in report


def test_comparisons_cpu_time_and_accuracy_over_seeds(quick_run):
    res = quick_run.saved()
    comps = res["comparisons"]
    assert [(c["kind"], c["a"], c["b"]) for c in comps] == [
        ("accuracy", "batch 16", "batch 4"), ("accuracy", "batch 64", "batch 16"),
        ("accuracy", "batch 256", "batch 64"), ("time", "batch 16", "batch 4"),
        ("time", "batch 64", "batch 16"), ("time", "batch 256", "batch 64"),
        ("time", "batch 256", "batch 4")]
    report = quick_run.report()
    for c in comps:
        stats.check_comparison(c)
        assert c["n_seeds"] == 2
        assert stats.sentence(c) in report
    time_c = [c for c in comps if c["kind"] == "time"]
    assert all(c["metric"] == "CPU seconds of training" for c in time_c)
    conclusions = report.split("## Conclusions")[1]
    assert "CPU s at batch 4" in conclusions and stats.sentence(time_c[-1]) in conclusions
    assert "best test accuracy" not in report


def test_batch_comparisons_pair_by_seed_and_skip_diverged():
    # effects that vary a little from seed to seed (identical ones would give a zero-width
    # interval, which stats does not count as evidence from 3 seeds)
    runs = [{"seed": s, "batch": b,
             "test_acc": 0.5 + 0.01 * s + (0.1 + 0.01 * s if b == 8 else 0),
             "cpu_seconds": 1.0 + s + (1 + 0.1 * s if b == 4 else 0),
             "finite": not (b == 16 and s == 1)}
            for s in range(3) for b in (4, 8, 16)]
    comps = batch_comparisons(runs, [4, 8, 16])
    acc = [c for c in comps if c["kind"] == "accuracy"]
    assert [(c["a"], c["b"]) for c in acc] == [("batch 8", "batch 4")]   # 16 diverged once
    assert acc[0]["verdict"] == "a better" and acc[0]["diff"] == pytest.approx(0.11)
    t = [c for c in comps if c["kind"] == "time"]
    assert t[0]["verdict"] == "a better" and t[0]["diff"] == pytest.approx(-1.1)


@pytest.mark.parametrize("override, match", [
    ("batch_sizes=16,4", "batch_sizes"), ("batch_sizes=0,4", "batch_sizes"), ("lr=nan", "lr"),
    ("epochs=0", "epochs"), ("momentum=1", "momentum"), ("seeds=0", "seeds"),
    ("model=resnet18", "model"), ("n_train=-1", "n_train")])
def test_bad_config(run_quick, override, match):
    with pytest.raises(ValueError, match=match):
        run_quick("memory", overrides=[override])


def test_stability_conclusion_names_the_unstable_runs():
    row = {"batch": 4, "seed": 3, "train_loss_lowest": 0.23, "train_loss_last": 2.30,
           "test_acc": 0.0945}
    text = _stability_text([row], 3)
    assert "unstable in 1 run(s)" in text and "batch 4 seed 3: 0.230 -> 2.300" in text
    assert "test accuracy 0.0945" in text
    assert "stable" in _stability_text([], 3) and "unstable" not in _stability_text([], 3)
    assert "One epoch" in _stability_text([], 1)


def test_unknown_layers_are_refused_and_nested_caches_counted():
    from mlcvlab import nn
    from mlcvlab.labs.memory import cached_bytes, training_memory

    class Mystery(nn.Module):
        def forward(self, x):
            return x * x

    class Swish(nn.ReLU):                       # keeps other arrays than ReLU does
        def forward(self, x):
            return x / (1 + np.exp(-x))

    class Renamed(nn.ReLU):                     # ReLU's forward: ReLU's facts hold
        pass
    with pytest.raises(NotImplementedError, match="Mystery declares no kept_for_backward"):
        training_memory(nn.Sequential(nn.Linear(4, 4), Mystery()), (4,), 8)
    with pytest.raises(NotImplementedError, match="Swish overrides forward but inherits "
                                                  "kept_for_backward from _Activation"):
        training_memory(nn.Sequential(nn.Linear(4, 4), Swish()), (4,), 8)
    assert (training_memory(nn.Sequential(nn.Linear(4, 4), Renamed()), (4,), 8)
            == training_memory(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), (4,), 8))
    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Flatten())
    loss = nn.CrossEntropyLoss()
    x = np.random.default_rng(0).normal(size=(2, 4, 5, 5)).astype(np.float32)
    out = grouped(x)
    loss(out, np.zeros(2, dtype=np.int64))
    assert cached_bytes(grouped, loss) >= x.nbytes // 2     # the per-group inputs are found


def test_device_runs_compare_wall_seconds():
    """On "cuda" the time comparisons read wall seconds (device time), not the host's CPU
    seconds; an unknown time key is refused."""
    runs = [{"seed": s, "batch": b, "test_acc": 0.5, "finite": True,
             "cpu_seconds": 1.0 + 0.1 * s + (1 if b == 4 else 0),     # the host: batch 8 less
             "seconds": 2.0 + 0.1 * s + (1 if b == 8 else 0)}        # the device: batch 8 more
            for s in range(3) for b in (4, 8)]
    t = next(c for c in batch_comparisons(runs, [4, 8], "seconds") if c["kind"] == "time")
    assert t["metric"] == "wall seconds of training (device time)" and t["diff"] > 0
    t = next(c for c in batch_comparisons(runs, [4, 8]) if c["kind"] == "time")
    assert t["metric"] == "CPU seconds of training" and t["diff"] < 0
    with pytest.raises(ValueError, match="time_key"):
        batch_comparisons(runs, [4, 8], "cpu")


def test_device_memory_section_reports_measured_bytes_or_says_not_measurable(tmp_path,
                                                                             monkeypatch):
    """The device table and sentence come from the measured rows only; with none (the
    simulator) the report says not measurable and has no device table."""
    from mlcvlab.gpu import device
    from mlcvlab.labs import memory
    from mlcvlab.labs.report import Report
    monkeypatch.setattr(device, "describe", lambda d: "GPU 0 (Test)")
    rows = [{"batch": b, "total KB (modelled)": 10.0 * b, "device_peak_bytes": 1024 * 12 * b,
             "device peak / modelled": 1.2, "driver_free_bytes": 2**30,
             "driver_total_bytes": 2**32, "device KB after forward (measured)": 11.0 * b,
             "device KB after backward (measured)": 12.0 * b,
             "device KB after update (measured)": 12.0 * b, "device peak KB (sampled)": 12.0 * b,
             "device pool KB (live + cached)": 20.0 * b} for b in (4, 8)]
    summary = memory._device_summary({"device": "cuda"}, rows)
    assert summary["device_memory_measured"] and summary["driver_total_gb"] == 4.0
    assert summary["device_peak_ratio_min"] == summary["device_peak_ratio_max"] == 1.2
    rep = Report(tmp_path, "t", {**summary, "batch_rows": rows})
    memory._device_memory_section(rep, rep.results)
    rep.write()
    text = (tmp_path / "report.md").read_text()
    assert "GPU 0 (Test), **measured**" in text and "1.00 GB free of 4.00 GB" in text
    assert (tmp_path / "device_memory.csv").exists() and "not measurable" not in text

    for row in rows:
        row.update({k: None for k in row if k.startswith("device") or k.startswith("driver")})
    summary = memory._device_summary({"device": "cuda"}, rows)
    assert summary == {"device": "cuda", "device_where": "GPU 0 (Test)",
                       "device_memory_measured": False}
    out = tmp_path / "sim"
    out.mkdir()
    rep = Report(out, "t", {**summary, "batch_rows": rows})
    memory._device_memory_section(rep, rep.results)
    rep.write()
    text = (out / "report.md").read_text()
    assert "not measurable under the simulator" in text
    assert not (out / "device_memory.csv").exists()
    assert memory._device_summary({"device": "cpu"}, rows) == {"device": "cpu"}


def test_device_cuda_without_a_gpu_stops_before_any_work(run_quick):
    with pytest.raises(RuntimeError, match="no CUDA device found|CuPy is not installed"):
        run_quick("memory", overrides=["device=cuda"])
