"""The device engine end to end: models moved with ``to("cuda")`` train as on the CPU.

Run by test_engine_sim.py as ``NUMBA_ENABLE_CUDASIM=1 python engine_sim_checks.py OUT.json``
(NumPy stands in for CuPy; ``NUMBA_ENABLE_CUDASIM=0`` runs the same checks on a GPU with
CuPy, as benchmarks/gpu_check.sh does). Writes {check: error or "ok"}; names after OUT.json
run only those checks. Each training check builds the same model from one seed three times:
float64 on the CPU (the reference), float32 on the CPU, float32 moved to "cuda", and runs three
SGD-with-momentum steps on the same batches. The device run must be as close to the float64
run as the CPU's float32 run is, and agree with it to float32 rounding: losses, weights and
batch-norm running statistics (the device sums in other orders).
"""
import json
import os

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import numpy as np  # noqa: E402
import simcheck  # noqa: E402  (the harness shared by tests/gpu)

from mlcvlab import nn  # noqa: E402
from mlcvlab.gpu.device import array_module, to_host  # noqa: E402
from mlcvlab.optim import SGD, Adam  # noqa: E402
from mlcvlab.train import Trainer  # noqa: E402

CHECKS = {}
TOL = 2e-4          # three steps of float32 sums in other orders; relative and absolute


def check(fn):
    CHECKS[fn.__name__] = fn
    return fn


def _batches(shape, n_classes, steps=3, seed=0):
    r = np.random.default_rng(seed)
    return [(r.normal(size=shape).astype(np.float32), r.integers(0, n_classes, shape[0]))
            for _ in range(steps)]


def _train(build, batches, device, dtype=np.float32,
           optimizer=lambda p: SGD(p, lr=0.01, momentum=0.9)):
    """(losses, model) after one step per batch on ``device``, in ``dtype``."""
    model = build().astype(dtype).to(device)
    loss = nn.CrossEntropyLoss().to(device)
    trainer = Trainer(model, loss, optimizer(model.parameters()), nan_guard=False)
    model.train()
    return [trainer.train_step(x, y)[0] for x, y in batches], model


def _train_both(build, batches, **kw):
    """(cpu losses, gpu losses, cpu model, gpu model), both float32."""
    cpu_losses, cpu = _train(build, batches, "cpu", **kw)
    gpu_losses, gpu = _train(build, batches, "cuda", **kw)
    return cpu_losses, gpu_losses, cpu, gpu


def _same_state(cpu, gpu, tol=TOL):
    a, b = cpu.state_dict(), gpu.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert isinstance(b[k], np.ndarray), f"{k}: state_dict gave {type(b[k])}, not NumPy"
        np.testing.assert_allclose(b[k], a[k], rtol=tol, atol=tol, err_msg=k)


def _as_close_to_float64_as_the_cpu(build, batches, **kw):
    """The device's float32 run is as close to the CPU's float64 run as the CPU's float32 run
    is (within 4x and 1e-5), loss by loss and value by value of the state: both round in
    float32, in other orders, so neither is the reference; float64 is."""
    ref_losses, ref = _train(build, batches, "cpu", np.float64, **kw)
    runs = {d: _train(build, batches, d, **kw) for d in ("cpu", "cuda")}
    (cpu_losses, cpu), (gpu_losses, gpu) = runs["cpu"], runs["cuda"]

    def err(losses, model):
        """(largest deviation from the float64 run, where): the losses and every state value."""
        st = model.state_dict()
        where = [(abs(a - b), f"loss {i + 1}") for i, (a, b) in enumerate(zip(losses, ref_losses))]
        where += [(float(np.abs(st[k].astype(np.float64) - v).max()), k)
                  for k, v in ref.state_dict().items()]
        return max(where)
    (e_cpu, at_cpu), (e_gpu, at_gpu) = err(cpu_losses, cpu), err(gpu_losses, gpu)
    assert e_gpu <= 4 * e_cpu + 1e-5, (
        f"device float32 error {e_gpu:.3g} at {at_gpu} vs the CPU's {e_cpu:.3g} at {at_cpu} "
        f"(both against float64); losses float64 {ref_losses}, CPU {cpu_losses}, device "
        f"{gpu_losses}")
    assert cpu_losses[-1] != cpu_losses[0]                  # the steps changed something
    return cpu_losses, gpu_losses, cpu, gpu


def _same_training(build, shape, n_classes, **kw):
    cpu_l, gpu_l, cpu, gpu = _as_close_to_float64_as_the_cpu(
        build, _batches(shape, n_classes), **kw)
    np.testing.assert_allclose(gpu_l, cpu_l, rtol=TOL, atol=TOL)
    _same_state(cpu, gpu)
    x = _batches(shape, n_classes, steps=1, seed=1)[0][0]
    cpu.eval(), gpu.eval()
    np.testing.assert_allclose(to_host(gpu(array_module().asarray(x))), cpu(x),
                               rtol=TOL, atol=TOL)


@check
def lenet5_three_steps_equal_cpu():
    from mlcvlab.models import lenet5
    _same_training(lambda: lenet5(rng=0), (2, 1, 28, 28), 10)


@check
def lenet5_batchnorm_dropout_three_steps_equal_cpu():
    """BN 1-D and 2-D, and dropout masks drawn on the device (the same Philox masks)."""
    from mlcvlab.models import lenet5
    _same_training(lambda: lenet5(batchnorm=True, p_input=0.2, p_hidden=0.5, rng=0),
                   (3, 1, 28, 28), 10)


@check
def resnet20_small_input_three_steps_equal_cpu():
    """ResNet-20 (19 convs, BN, residual and zero-pad shortcuts, global pooling) on 8x8.
    (On 4x4 inputs with 2 images the last stage's batch norm sees 2 values per channel and
    the run is chaotic: the CPU's float32 and float64 runs part by step 3.)"""
    from mlcvlab.models import resnet_cifar
    _same_training(lambda: resnet_cifar(20, rng=0), (2, 3, 8, 8), 10)


@check
def mlp_adam_three_steps_equal_cpu():
    from mlcvlab.models import mlp
    _same_training(lambda: mlp([12, 9, 7, 5], p_input=0.2, p_hidden=0.5, rng=0), (5, 12), 5,
                   optimizer=lambda p: Adam(p, lr=0.01))


@check
def googlenet_modules_three_steps_equal_cpu():
    """MiniGoogLeNet's parts, narrow (the whole network on the simulator takes a minute a
    step): conv-BN-ReLU, an inception module (Concat of a 1x1 and a 3x3 branch), a
    downsample module (Concat of a stride-2 conv and the overlapping 3x3 stride-2 max pool),
    global pooling, dropout and the linear head."""
    from mlcvlab.models.blocks import conv_bn_relu
    from mlcvlab.models.googlenet import downsample_module, inception_module

    def build():
        g = np.random.default_rng(0)
        return nn.Sequential(conv_bn_relu(1, 4, 3, padding=1, rng=g),
                             inception_module(4, 2, 3, rng=g), downsample_module(5, 3, rng=g),
                             nn.GlobalAvgPool2d(),
                             nn.Dropout(0.3, rng=g), nn.Linear(8, 10, rng=g))
    _same_training(build, (3, 1, 9, 9), 10)


@check
def device_training_is_bit_deterministic():
    """The device path gives the same bits on every run: the kernels sum in fixed orders with
    no atomics, and under the simulator NumPy's GEMMs are deterministic too, so two runs that
    differ mean a race (a kernel's missing barrier, or the simulator's: sessions 8 and 9 saw
    one-off engine failures from numba-cuda's unlocked shared-array allocation, see
    mlcvlab.gpu.device.atomic_simulator_shared_arrays). A conv-BN-ReLU net with dropout
    (every shared-memory kernel: batch norm per channel, global pooling, cross-entropy)
    trains three steps three times with the interpreter switching threads every 1 us (50x
    more often than mlcvlab's simulator setting) to provoke interleavings; losses and state
    must match bit for bit. benchmarks/sim_determinism.py is the long version (ResNet-20,
    every launch compared)."""
    import sys
    from mlcvlab.models.blocks import conv_bn_relu

    def build():
        g = np.random.default_rng(0)
        return nn.Sequential(conv_bn_relu(1, 4, 3, padding=1, rng=g),
                             conv_bn_relu(4, 4, 3, padding=1, rng=g), nn.GlobalAvgPool2d(),
                             nn.Dropout(0.3, rng=g), nn.Linear(4, 5, rng=g))
    batches = _batches((3, 1, 6, 6), 5)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        runs = [_train(build, batches, "cuda") for _ in range(3)]
    finally:
        sys.setswitchinterval(interval)
    (losses0, model0), rest = runs[0], runs[1:]
    state0 = model0.state_dict()
    for r, (losses, model) in enumerate(rest, start=1):
        assert losses == losses0, f"run {r} losses {losses} != run 0's {losses0}"
        state = model.state_dict()
        for k, v in state0.items():
            assert v.tobytes() == state[k].tobytes(), (
                f"run {r}: {k} differs from run 0 in {np.count_nonzero(v != state[k])} of "
                f"{v.size} values")


@check
def to_cuda_and_back_keeps_values_and_grads():
    from mlcvlab.models import mlp
    m = mlp([6, 5, 3], rng=0)
    before = m.state_dict()
    m.to("cuda")
    assert m.device == "cuda" and all(sub.device == "cuda" for sub in m.modules())
    assert m.flat().device == "cuda"
    m.to("cpu")
    assert isinstance(m.parameters()[0].data, np.ndarray) and m.flat().device == "cpu"
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


@check
def optimizer_built_before_the_move_refuses_to_step():
    from mlcvlab.models import mlp
    m = mlp([6, 5, 3], rng=0)
    opt = SGD(m.parameters(), lr=0.1)
    m.to("cuda")
    try:
        opt.step()
    except RuntimeError as err:
        assert "new flat buffer" in str(err), err
    else:
        raise AssertionError("an optimizer built before to('cuda') stepped")


@check
def checkpoint_state_is_host_numpy_and_loads_back_on_the_device():
    """What a checkpoint saves of a device run is NumPy (np.savez, no pickle), and loading it
    into a fresh device model and optimizer continues the run exactly."""
    from mlcvlab.models import mlp
    batches = _batches((6, 12), 5, steps=4)

    def fresh():
        m = mlp([12, 9, 7, 5], p_input=0.2, p_hidden=0.5, batchnorm=True, rng=0).to("cuda")
        return m, Trainer(m, nn.CrossEntropyLoss().to("cuda"),
                          SGD(m.parameters(), lr=0.05, momentum=0.9), nan_guard=False)

    m1, t1 = fresh()
    for x, y in batches[:2]:
        t1.train_step(x, y)
    state = t1.checkpoint_state()
    for k, v in list(state["model"].items()) + list(state["optimizer"]["state"].items()):
        assert isinstance(v, np.ndarray), f"{k}: {type(v)}"
    straight = [t1.train_step(x, y)[0] for x, y in batches[2:]]
    m2, t2 = fresh()
    t2.load_checkpoint_state(state)
    resumed = [t2.train_step(x, y)[0] for x, y in batches[2:]]
    np.testing.assert_array_equal(resumed, straight)


@check
def unsupported_layers_are_named_before_anything_moves():
    m = nn.Sequential(nn.Conv2d(1, 2, 3, dilation=2), nn.ReLU(), nn.Conv2d(2, 2, 3, groups=2))
    w = m[0].weight.data
    try:
        m.to("cuda")
    except NotImplementedError as err:
        msg = str(err)
        assert "2 layer(s)" in msg and "dilation" in msg and "group" in msg, msg
        assert "device 'cpu'" in msg, msg
    else:
        raise AssertionError("to('cuda') accepted a dilated conv")
    assert m.device == "cpu" and m[0].weight.data is w           # nothing moved


@check
def float64_model_is_refused():
    from mlcvlab.models import mlp
    m = mlp([6, 5, 3], rng=0).astype(np.float64)
    try:
        m.to("cuda")
    except TypeError as err:
        assert "float32" in str(err), err
    else:
        raise AssertionError("a float64 model moved to cuda")


@check
def bench_device_cuda_times_against_the_cpu_path():
    """Without a CUDA torch, ``mlcvlab bench --device cuda`` compares ours on the device with
    ours on the CPU, interleaved, and says so (the simulator's rate is not a speed)."""
    from mlcvlab import bench
    res = bench.run(["lenet5"], batch_size=2, repeats=1, quick=True, memory=False,
                    use_torch=False, device="cuda")
    assert res["config"]["device"] == "cuda" and res["config"]["baseline"] == "ours on the CPU"
    row = res["models"]["lenet5"]["train"]
    assert row["ours_samples_per_s"] > 0 and row["torch_samples_per_s"] > 0 and row["ratio"] > 0
    table = bench.format_table(res)
    assert "against ours on the CPU" in table and "ours / ours on the CPU" in table, table


@check
def cyclical_lab_runs_on_the_device():
    """``mlcvlab lab run cyclical --device cuda`` (its MLP smoke-test model, shrunk further):
    range tests, gradient accumulation and three policies on the device, device in
    config.json, and the same LR range-test curve as the CPU run to float32 rounding."""
    import tempfile
    from pathlib import Path
    from mlcvlab.labs import registry
    shrink = ["n_train=160", "n_test=40", "n_check=40", "epochs=1", "lr_test_epochs=1",
              "lr_test_num=4", "mlp_hidden=16", "bs_max=64", "bs_steps=2", "micro_batch=32",
              "seeds=2"]
    out = {}
    for device in ("cpu", "cuda"):
        folder = Path(tempfile.mkdtemp()) / device
        out[device] = registry.run_lab("cyclical", preset="quick", out_dir=str(folder),
                                       overrides=shrink + [f"device={device}"],
                                       show_progress=False)
        saved = json.loads((folder / "config.json").read_text())
        assert saved["config"]["device"] == device, saved
        # Report.setup names the device; a simulator run says it is one
        named = "**Device: cuda**, on numba's CUDA simulator" in (folder / "report.md").read_text()
        assert named == (device == "cuda"), (device, named)
    np.testing.assert_allclose(out["cuda"]["lr_test"]["loss"], out["cpu"]["lr_test"]["loss"],
                               rtol=1e-3, atol=1e-4)


def _first_record(history):
    return history[0] if isinstance(history, list) else history["records"][0]


@check
def train_cli_device_cuda_matches_the_cpu_run():
    """``mlcvlab train --device cuda`` end to end (model moved before the optimizer, the loss
    on the device, the test split evaluated there), with a narrow MLP in place of the CLI's
    784-512-256 one so that the simulator takes seconds: config.json records the device and
    the epoch's losses equal the CPU run's to float32 rounding."""
    import tempfile
    from pathlib import Path
    from mlcvlab.cli import main
    from mlcvlab.models import mlp
    from mlcvlab.train import cli as train_cli
    original = train_cli.build_model
    train_cli.build_model = lambda name, shape, n, seed: mlp([int(np.prod(shape)), 12, n],
                                                             p_hidden=0.2, rng=seed)
    records = {}
    try:
        for device in ("cpu", "cuda"):
            out = Path(tempfile.mkdtemp()) / device
            rc = main(["train", "--device", device, "--model", "mlp", "--dataset", "digits",
                       "--epochs", "1", "--out", str(out), "--quiet"])
            assert rc == 0, f"--device {device} exited {rc}"
            config = json.loads((out / "config.json").read_text())
            assert config["device"] == device, config
            records[device] = json.loads((out / "history.json").read_text())
    finally:
        train_cli.build_model = original
    cpu, gpu = (_first_record(records[d]) for d in ("cpu", "cuda"))
    for key in ("train_loss", "val_loss"):
        np.testing.assert_allclose(gpu[key], cpu[key], rtol=1e-4, err_msg=key)


DP_SHRINK = ["steps=1", "batches=4,8", "hidden=8", "n_train=64", "seeds=2", "workers=1,2",
             "measure_up_to=2"]


def _dp_config(device):
    from mlcvlab.labs import data_parallel as dp
    return {**dp.QUICK, "steps": 2, "hidden": [8], "batches": [4], "device": device}


@check
def data_parallel_lab_in_process_runs_on_the_device():
    """``mlcvlab lab run data-parallel --device cuda --set measure_mpi=false``: the MLP is on the
    device, two shards on one GPU end with the CPU's loss to float32 rounding, the K = 2 rows
    say "2 shards on one GPU" (measured: false) and the report says simulator."""
    import tempfile
    from pathlib import Path
    from mlcvlab import models
    from mlcvlab.labs import data_parallel as dp, registry
    from mlcvlab.parallel import LocalCommunicator
    r = np.random.default_rng(0)
    X, y = r.normal(size=(32, 12)).astype(np.float32), r.integers(0, 10, 32)
    built, original = [], models.mlp
    models.mlp = lambda *a, **k: built.append(original(*a, **k)) or built[-1]
    try:
        loss = {d: dp.time_steps(_dp_config(d), LocalCommunicator(2), 4, X, y, 0)["last_loss"]
                for d in ("cpu", "cuda")}
    finally:
        models.mlp = original
    assert [m.device for m in built] == ["cpu", "cuda"], [m.device for m in built]
    np.testing.assert_allclose(loss["cuda"], loss["cpu"], rtol=1e-5)
    out = Path(tempfile.mkdtemp()) / "dp"
    res = registry.run_lab("data-parallel", preset="quick", out_dir=str(out), show_progress=False,
                           overrides=DP_SHRINK + ["measure_mpi=false", "device=cuda"])
    two = [row for row in res["rows"] if row["K"] == 2]
    assert two and all(not row["measured"] and "2 shards on one GPU" in row["source"]
                       and "simulated GPU" in row["source"] for row in two), two
    assert res["clock"] == "wall" and res["best_speedup"] is None
    report = (out / "report.md").read_text()
    for text in ("**Device: cuda**", "numba's CUDA simulator", "**Simulator run**",
                 "host's share", "shards in turn on that GPU"):
        assert text in report, text
    assert json.loads((out / "config.json").read_text())["config"]["device"] == "cuda"


@check
def data_parallel_lab_mpi_ranks_on_the_device():
    """The lab's ``mpiexec -n 2`` ranks with device "cuda" (each selects its GPU and reduces
    through NcclCommunicator, MPI standing in for NCCL): the same last-step loss as the CPU
    ranks to float32 rounding, and the K = 2 rows measured, labelled with the GPU per rank and
    as oversubscribed (the simulator is one GPU)."""
    from mlcvlab.labs import data_parallel as dp
    got = {d: dp.measure_mpi(_dp_config(d), 2, 0)["4"] for d in ("cpu", "cuda")}
    np.testing.assert_allclose(got["cuda"]["last_loss"], got["cpu"]["last_loss"], rtol=1e-5)
    assert got["cuda"]["bytes"] == got["cpu"]["bytes"] > 0
    import tempfile
    from pathlib import Path
    from mlcvlab.labs import registry
    out = Path(tempfile.mkdtemp()) / "dp"
    res = registry.run_lab("data-parallel", preset="quick", out_dir=str(out), show_progress=False,
                           overrides=DP_SHRINK + ["seeds=1", "device=cuda"])
    two = [row for row in res["rows"] if row["K"] == 2]
    assert all(row["measured"] and row["oversubscribed"] for row in two), two
    assert all("a GPU per rank, MPI all-reduce, simulated GPU; oversubscribed: 2 ranks on 1 GPU"
               in row["source"] for row in two), two
    assert "wall seconds per epoch" in res["headline"], res["headline"]
    assert "**Simulator run**" in (out / "report.md").read_text()


def _lab_on_cpu_and_cuda(lab: str, module, builder: str, overrides, built_check):
    """Run ``lab``'s quick preset with ``overrides`` on "cpu", then on "cuda", recording the
    models ``module.<builder>`` builds in each run; ``built_check(device, models)`` asserts on
    them. Returns ({device: the lab's results}, the "cuda" run's folder)."""
    import tempfile
    from pathlib import Path
    from mlcvlab.labs import registry
    res, built, original = {}, [], getattr(module, builder)
    setattr(module, builder, lambda *a, **k: built.append(original(*a, **k)) or built[-1])
    try:
        for d in ("cpu", "cuda"):
            out = Path(tempfile.mkdtemp()) / d
            built.clear()
            res[d] = registry.run_lab(lab, preset="quick", out_dir=str(out), show_progress=False,
                                      overrides=list(overrides) + [f"device={d}"])
            built_check(d, built)
    finally:
        setattr(module, builder, original)
    return res, out


@check
def memory_lab_device_memory_is_not_faked_under_the_simulator():
    """``mlcvlab lab run memory --device cuda`` under the simulator: the batch-size study trains
    on the device (the same losses as the CPU run to float32 rounding), the device step runs at
    every batch size, and with no device memory to read its columns are None and the report
    says "not measurable under the simulator". Then measure_device_step's bookkeeping with a
    stand-in for the pool (the one function that reads CuPy), as a GPU would feed it."""
    from mlcvlab.gpu import device
    from mlcvlab.labs import memory

    def built_check(d, models):
        # the study's training runs (2 seeds x 2 batch sizes, a warm-up) and the device
        # step of each batch size on "cuda"; nothing there on "cpu"
        on_device = sum(m.device == "cuda" for m in models)
        assert on_device == (7 if d == "cuda" else 0), (d, on_device)

    res, out = _lab_on_cpu_and_cuda(
        "memory", memory, "build", ["spec_models=alexnet", "state_models=mlp", "n_train=32",
                                    "n_test=16", "batch_sizes=16,32"], built_check)
    built, original = [], memory.build
    np.testing.assert_allclose([r["train_loss_last"] for r in res["cuda"]["runs"]],
                               [r["train_loss_last"] for r in res["cpu"]["runs"]], rtol=1e-4)
    rows = res["cuda"]["batch_rows"]
    assert [r["batch"] for r in rows] == [16, 32]
    assert all(r["device peak KB (sampled)"] is None and r["device peak / modelled"] is None
               for r in rows), rows
    assert "device peak KB (sampled)" not in res["cpu"]["batch_rows"][0]
    assert res["cuda"]["device_memory_measured"] is False
    report = (out / "report.md").read_text()
    for text in ("not measurable under the simulator", "numba's CUDA simulator",
                 "host's share", "wall seconds of training (device time)"):
        assert text in report, text
    assert "device_memory.csv" not in report

    memory.build = lambda name, seed: built.append(original(name, seed)) or built[-1]
    calls = iter(range(100))
    real = device.memory_info
    device.memory_info = lambda release_cached=False: {
        "pool_used": 1000 * next(calls), "pool_total": 9000, "driver_free": 5, "driver_total": 8}
    try:
        X = np.zeros((8, 784), np.float32)
        got = memory.measure_device_step("mlp", "momentum", X, np.zeros(8, np.int64), 8, 0)
    finally:
        device.memory_info, memory.build = real, original
    assert built[0].device == "cuda"
    # baseline read 0, then the second step's samples 1, 2, 3 (x 1000 bytes), the pool last
    assert got == {"forward": 1000, "backward": 2000, "update": 3000, "peak_sampled": 3000,
                   "pool_total": 9000, "driver_free": 5, "driver_total": 8}, got


@check
def depth_width_lab_runs_on_the_device():
    """``mlcvlab lab run depth-width --device cuda`` (BN MLPs on an MSE loss kept on the host,
    checkpoints every epoch): every network trains on the device, ends with the CPU run's
    training loss and test RMSE to float32 rounding, and the report names the device and
    reads its time fit on wall seconds."""
    from mlcvlab.labs import depth_width

    def built_check(d, models):
        # the warm-up and 2 seeds x 2 networks, all on the run's device
        assert [m.device for m in models] == [d] * 5, [m.device for m in models]

    res, out = _lab_on_cpu_and_cuda(
        "depth-width", depth_width, "build_model",
        ["n_points=300", "widths=16", "depths=1,2", "max_total=32", "epochs=1",
         "batch_size=100", "checkpoint_every=1"], built_check)
    cpu, gpu = res["cpu"]["rows"], res["cuda"]["rows"]
    assert [(r["name"], r["seed"]) for r in gpu] == [(r["name"], r["seed"]) for r in cpu]
    for key in ("final_train_loss", "test_rmse"):
        np.testing.assert_allclose([r[key] for r in gpu], [r[key] for r in cpu], rtol=1e-4,
                                   err_msg=key)
    report = (out / "report.md").read_text()
    for text in ("**Device: cuda**", "numba's CUDA simulator", "host's share",
                 "wall time on the device grows by"):
        assert text in report, text
    assert "wall_seconds_per_kparam" in res["cuda"]
    assert "cpu_seconds_per_kparam" not in res["cuda"]


@check
def optimizers_lab_runs_on_the_device():
    """``mlcvlab lab run optimizers --device cuda``, on 12 random 2x2 images in place of MNIST (2
    held out) and a 4-3-3-10 MLP, one step per epoch, the warm-up left out (the same
    train_model as the arms: so the simulator takes seconds): every network (the ten arms
    and the non-inverted dropout net) trains on the device with its fused optimizer update,
    ends with the CPU run's training losses to float32 rounding, the non-inverted dropout
    draws the CPU's masks (the same Monte Carlo gaps), and the report names the device and
    compares the times on wall seconds."""
    from mlcvlab.labs import optimizers

    def tiny_images(name, split):
        r = np.random.default_rng(0 if split == "train" else 1)
        n = 12 if split == "train" else 6
        return r.random((n, 1, 2, 2), dtype=np.float32), r.integers(0, 10, n)

    def built_check(d, models):
        # the 10 arms of the one seed (the non-inverted net is not an mlp)
        assert [m.device for m in models] == [d] * 10, [m.device for m in models]

    original = optimizers.load, optimizers._warm_up
    optimizers.load, optimizers._warm_up = tiny_images, lambda data, config: None
    try:
        res, out = _lab_on_cpu_and_cuda(
            "optimizers", optimizers, "mlp",
            ["n_train=0", "n_test=0", "hidden=3,3", "epochs=1", "batch_size=16", "seeds=1",
             "probe_examples=2", "probe_masks=4", "mc_masks=2", "val_fraction=0.2"],
            built_check)
    finally:
        optimizers.load, optimizers._warm_up = original
    cpu, gpu = res["cpu"], res["cuda"]
    rows = {d: res[d]["mnist_run_rows"] for d in ("cpu", "cuda")}
    assert [(r["optimizer"], r["dropout"]) for r in rows["cuda"]] == \
        [(r["optimizer"], r["dropout"]) for r in rows["cpu"]]
    np.testing.assert_allclose([r["final train loss"] for r in rows["cuda"]],
                               [r["final train loss"] for r in rows["cpu"]], rtol=1e-4)
    for key in ("rel. gap: mean over masks vs scaled weights", "rel. Monte Carlo std error"):
        np.testing.assert_allclose([r[key] for r in gpu["mnist_scaling_rows"]],
                                   [r[key] for r in cpu["mnist_scaling_rows"]], rtol=1e-3,
                                   err_msg=key)
    assert cpu["mnist_clock"] == "cpu" and gpu["mnist_clock"] == "wall"
    times = [c["metric"] for c in gpu["comparisons"] if c["kind"] == "time"]
    assert times == ["wall seconds per training epoch (device time)"] * 5, times
    report = (out / "report.md").read_text()
    for text in ("**Device: cuda**", "numba's CUDA simulator", "host's share",
                 "wall seconds per training epoch (device time) with vs without dropout"):
        assert text in report, text


@check
def inductive_bias_lab_runs_on_the_device():
    """``mlcvlab lab run inductive-bias --device cuda`` (4x4 edge images, 2 kernels, 4 hidden
    units, one step of Adam per run): every CNN (conv, ReLU, global max or average pool,
    linear; a Sobel-frozen one whose conv weight Adam leaves out: the device's fused update on
    slices of the flat buffer) and MLP trains on the device and ends with the CPU run's
    weights to float32 rounding, the frozen kernels unchanged, and the report names the
    device."""
    from mlcvlab.labs import inductive_bias
    models = {}

    def built_check(d, built):
        # every run's model, then the two built on the CPU for the parameter counts
        trained = [m for m, _ in built[:-2]]
        assert [m.device for m in trained] == [d] * len(trained) and trained, d
        models[d] = [m.state_dict() for m in trained]

    res, out = _lab_on_cpu_and_cuda(
        "inductive-bias", inductive_bias, "build",
        ["size=4", "n_kernels=2", "hidden=4", "n_per_class=2", "n_test_per_class=2",
         "epochs=1", "batch_size=16", "more_classes=3", "seeds=1"], built_check)
    assert len(models["cuda"]) == len(models["cpu"]) == 7        # 7 kinds, one seed
    for a, b in zip(models["cuda"], models["cpu"]):
        _same_state_dicts(a, b)
    frozen = models["cuda"][inductive_bias.MAIN_KINDS.index("sobel_frozen")]["0.weight"][:, 0]
    np.testing.assert_array_equal(frozen, inductive_bias.SOBEL_BANK[:2].astype(np.float32))
    for key in ("3/sobel_frozen", "more/cnn_avg"):
        assert res["cuda"]["runs"][key] == res["cpu"]["runs"][key], key
    report = (out / "report.md").read_text()
    for text in ("**Device: cuda**", "numba's CUDA simulator"):
        assert text in report, text


@check
def nn4_lab_runs_on_the_cuda_workers():
    """``mlcvlab lab run nn4 --device cuda``: SyncSGD on the handout's CUDA workers (K = 1, 2
    on one simulated GPU; random 16-pixel images, NN4 16-4-3-3-10, one epoch of 2 rounds of
    16): the same per-round losses, curves and final weights as the CPU workers to float32
    rounding (worker k draws worker k's dropout masks on either), and the report names the
    device. (At 4 samples per worker batch norm amplifies rounding: there the CPU's float32
    weights already part from float64 ones by 1e-4 after 3 rounds, the device's by 2e-4.)"""
    from mlcvlab import models as model_zoo        # train_k imports NN4 from here per run
    from mlcvlab.labs import nn4
    models = {}

    def tiny(config):
        r = np.random.default_rng(0)
        arrays = []
        for n in (32, 8, 8):
            arrays += [r.random((n, 16), dtype=np.float32), r.integers(0, 10, n)]
        arrays[1][:10] = np.arange(10)                      # every class in training
        return tuple(arrays), "tiny", ""

    def built_check(d, built):
        models[d] = [m.state_dict() for m in built]

    original = nn4.load_data
    nn4.load_data = tiny
    try:
        res, out = _lab_on_cpu_and_cuda(
            "nn4", model_zoo, "NN4", ["hidden=4,3,3", "batch_size=16", "workers=1,2",
                                       "epochs=1", "seeds=1"], built_check)
    finally:
        nn4.load_data = original
    assert len(models["cpu"]) == len(models["cuda"]) == 2         # K = 1, 2
    for a, b in zip(models["cuda"], models["cpu"]):
        _same_state_dicts(a, b)
    for key in ("round_loss", "train_loss", "val_loss"):
        np.testing.assert_allclose([c[key] for r in res["cuda"]["runs"] for c in r["curve"]],
                                   [c[key] for r in res["cpu"]["runs"] for c in r["curve"]],
                                   rtol=1e-4, err_msg=key)
    report = (out / "report.md").read_text()
    for text in ("**Device: cuda**", "numba's CUDA simulator"):
        assert text in report, text


@check
def region_proposals_lab_runs_on_the_device():
    """``mlcvlab lab run region-proposals --device cuda`` (16x16 canvases, channels 2-2-2, one
    anchor per cell, one epoch of 2 steps): the RPN (stride-2 convolutions, the 1x1 head)
    trains and proposes on the device while the anchor sampling, the losses and NMS stay on
    the host; the trained network ends with the CPU run's weights and the curves and recalls
    are the CPU's to float32 rounding; the report names the device and gives the training
    time in wall seconds."""
    from mlcvlab.labs import region_proposals as rp
    models = {}

    def built_check(d, built):
        # per seed the trained net, the untrained arm; then the one built for the count
        assert [m.device for m in built] == [d, d, "cpu"], [m.device for m in built]
        models[d] = built[0].state_dict()

    res, out = _lab_on_cpu_and_cuda(
        "region-proposals", rp, "rpn_model",
        ["canvas=16", "min_digits=1", "max_digits=2", "min_digit=6", "max_digit=10",
         "n_train=4", "n_val=2", "n_test=2", "epochs=1", "batch_size=2", "channels=2,2,2",
         "anchor_scales=8", "aspect_ratios=1", "anchors_per_image=4", "proposal_counts=1,2",
         "compare_at=1", "nms_thresholds=0.7", "nms_sizes=10", "nms_repeats=1", "seeds=1"],
        built_check)
    _same_state_dicts(models["cuda"], models["cpu"])
    for key in ("train_loss", "val_loss"):
        np.testing.assert_allclose([c[key] for c in res["cuda"]["curves"]["0"]],
                                   [c[key] for c in res["cpu"]["curves"]["0"]], rtol=1e-4,
                                   err_msg=key)
    report = (out / "report.md").read_text()
    for text in ("**Device: cuda**", "numba's CUDA simulator", "s wall on the device"):
        assert text in report, text


def _same_state_dicts(a, b, tol=TOL):
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=tol, atol=tol, err_msg=k)


if __name__ == "__main__":
    simcheck.main(CHECKS)
