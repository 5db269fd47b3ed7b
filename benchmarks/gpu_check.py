"""The Python stages of ``benchmarks/gpu_check.sh`` (issue #22): one GPU, one command.

Each sub-command runs one stage and appends one record per item to
``OUT/stages.jsonl`` (``{"stage", "item", "status": "pass" | "fail" | "skip", "detail"}``);
``summary`` turns the records into ``OUT/gpu_check_summary.md`` (and ``.json``) and
exits 1 when a record failed or a stage is missing. With ``--dry-run`` (``DRY_RUN=1`` in
the shell script) the sizes are tiny and the CUDA kernels run on numba's simulator
(``NUMBA_ENABLE_CUDASIM=1``, set by the script before Python starts).

    python benchmarks/gpu_check.py record --out DIR STAGE ITEM STATUS DETAIL
    python benchmarks/gpu_check.py env --out DIR
    python benchmarks/gpu_check.py kernels --out DIR [--dry-run]
    python benchmarks/gpu_check.py compare --out DIR [--dry-run] [--steps N]
    python benchmarks/gpu_check.py step --model MODEL         (one small step: the sanitizer's)
    python benchmarks/gpu_check.py speed --out DIR [--dry-run]
    python benchmarks/gpu_check.py summary --out DIR [--dry-run]

Two GPU paths are checked. The engine, ``model.to("cuda")`` (``mlcvlab train --device
cuda``): CuPy arrays (cuBLAS GEMMs) and the numba kernels of :mod:`mlcvlab.gpu`, every model;
in a dry run NumPy stands in for CuPy under the simulator. And the handout's workers,
``--dist cuda`` (numba device arrays, nn4 and mlp only). Training compares each with the plain
Trainer step of ``--dist local --workers 1`` on the CPU, built by the CLI's own builders;
since the dropout masks are counter-based (``mlcvlab.nn.philox``) all draw the same masks and
the losses agree to float32 rounding.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STAGES = {
    "environment": "(a) environment: GPU, numba, numba-cuda, CuPy, PyTorch",
    "install": "(b) pip install --no-deps --no-build-isolation -e .",
    "kernels": "(c) kernel tests (numba CUDA kernels vs NumPy; PTX compile)",
    "training": "(d) device vs CPU training, loss per step",
    "sanitizer": "(e) compute-sanitizer memcheck and racecheck on a small step",
    "speed": "(f) samples/s per model: device, CPU, torch CUDA",
}
MLP_MODELS = ("nn4", "mlp")
CONV_MODELS = ("lenet5", "resnet20")
# the GPU paths: the engine (model.to("cuda")) and the handout's --dist cuda workers
PATHS = {"device": "model.to('cuda')", "cuda": "--dist cuda workers"}
# float32 tolerance of the loss comparison: |gpu - cpu| <= ATOL + RTOL |cpu| at every step
RTOL, ATOL = 1e-3, 1e-4
# the dry run's kernel checks: the kernels alone (training is stage d's)
DRY_KERNEL_CHECKS = ("matmul", "add_bias_and_colsum", "activations", "dropout_mask",
                     "philox_mask_kernel", "reduce_mean", "sgd_update")
# (the test suite runs every check of these files; the dry run checks that each file runs)
DRY_CONV_CHECKS = ("conv_3x3_pad1_stride1", "maxpool_ties_nan_and_overlap")
DRY_BASIS_CHECKS = ("relu_forward_backward", "batchnorm_4d", "cross_entropy_equals_cpu")
DRY_ENGINE_CHECKS = ("to_cuda_and_back_keeps_values_and_grads",
                     "unsupported_layers_are_named_before_anything_moves")


def record(out: Path, stage: str, item: str, status: str, detail: str) -> None:
    if stage not in STAGES or status not in ("pass", "fail", "skip"):
        raise ValueError(f"gpu_check record: unknown stage {stage!r} or status {status!r}")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "stages.jsonl", "a") as f:
        f.write(json.dumps({"stage": stage, "item": item, "status": status,
                            "detail": " ".join(str(detail).split())}) + "\n")
    print(f"[{stage}] {item}: {status} - {detail}", flush=True)


def _sys_path() -> None:
    src = str(ROOT / "src")
    if src not in sys.path:
        sys.path.insert(0, src)


# ------------------------------------------------------------------ (a) environment
def stage_env(out: Path, dry: bool) -> None:
    """Versions of numba, numba-cuda, CuPy and PyTorch (each absent one reported), and
    whether numba sees a GPU. Absent is a failure on a GPU run only for numba-cuda."""
    for module, needed in (("numba", True), ("numba_cuda", not dry), ("cupy", False),
                           ("torch", False)):
        try:
            mod = importlib.import_module(module)
            record(out, "environment", module, "pass", getattr(mod, "__version__", "?"))
        except Exception as err:  # noqa: BLE001 - any import failure means "absent"
            status = "fail" if needed else "skip"
            record(out, "environment", module, status, f"absent ({type(err).__name__}: {err})")
    from numba import cuda
    if dry:
        record(out, "environment", "device", "skip",
               f"dry run: numba's CUDA simulator (NUMBA_ENABLE_CUDASIM="
               f"{os.environ.get('NUMBA_ENABLE_CUDASIM')})")
        return
    try:
        names = [g.name.decode() if isinstance(g.name, bytes) else str(g.name) for g in cuda.gpus]
        record(out, "environment", "device", "pass" if names else "fail",
               ", ".join(names) or "numba sees no GPU")
    except Exception as err:  # noqa: BLE001
        record(out, "environment", "device", "fail", f"numba.cuda: {err}")


# ------------------------------------------------------------------ (c) kernels
def stage_kernels(out: Path, dry: bool) -> None:
    """tests/parallel/cudasim_checks.py (every kernel against NumPy at odd shapes, and the
    --dist cuda steps against the CPU) on the device, or on the simulator in a dry run
    (the kernel checks only), and the Philox known-answer tests (not in a dry run: the test
    suite runs them)."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1" if dry else "0",
               PYTHONPATH=str(ROOT / "src"))
    res = out / "kernel_checks.json"
    where = "simulator" if dry else "device"
    for script, chosen in (("tests/parallel/cudasim_checks.py", DRY_KERNEL_CHECKS),
                           ("tests/gpu/conv_sim_checks.py", DRY_CONV_CHECKS),
                           ("tests/gpu/basis_sim_checks.py", DRY_BASIS_CHECKS),
                           ("tests/gpu/engine_sim_checks.py", DRY_ENGINE_CHECKS)):
        name = Path(script).stem
        res = out / f"{name}.json"
        cmd = [sys.executable, str(ROOT / script), str(res)] + (list(chosen) if dry else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=420)
        if proc.returncode != 0 or not res.exists():
            record(out, "kernels", f"{name} ({where})", "fail", proc.stderr[-1500:])
            continue
        results = {k: v for k, v in json.loads(res.read_text()).items()
                   if isinstance(v, str)}        # (the measured errors ride along as data)
        bad = {k: v for k, v in results.items() if v != "ok"}
        record(out, "kernels", f"{name} ({where})", "fail" if bad else "pass",
               f"{len(results) - len(bad)}/{len(results)} checks ok"
               + (f"; failed: {', '.join(bad)} (details in {res.name})" if bad else ""))
    item = "Philox known answers and masks (tests/nn/test_philox.py)"
    if dry:      # the test suite runs it; the dry run stays short
        record(out, "kernels", item, "skip", "dry run: run by the test suite")
        return
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(ROOT / "tests/nn/test_philox.py")], capture_output=True,
                          text=True, env=env, timeout=300)
    tail = proc.stdout.strip().splitlines()[-1:] or [proc.stderr[-500:]]
    record(out, "kernels", item, "pass" if proc.returncode == 0 else "fail", tail[0])


# ------------------------------------------------------------------ (d) training
def _model_and_data(name: str, dry: bool, seed: int):
    """The model as ``mlcvlab train --model name`` builds it, the mnist10k training images
    and the batch size (tiny models on synthetic data in a dry run)."""
    _sys_path()
    from mlcvlab import backend, data, models
    from mlcvlab.train.cli import build_model
    backend.seed(seed)
    if dry:        # few simulated threads per kernel launch
        g = np.random.default_rng(seed)
        if name in CONV_MODELS:     # LeNet-5 needs 28x28; ResNet-20 runs on 8x8 (on 4x4 with
            # 2 images the last batch norm sees 2 values per channel: a chaotic run)
            shape = (1, 28, 28) if name == "lenet5" else (3, 8, 8)
            X = g.standard_normal((16,) + shape).astype(np.float32)
            y = g.integers(0, 10, 16)
            model = (models.lenet5(rng=seed) if name == "lenet5"
                     else models.resnet_cifar(20, rng=seed))
            return model, X, y, 2
        X = g.standard_normal((256, 12)).astype(np.float32)
        y = (X[:, :3] @ g.standard_normal((3, 3))).argmax(1).astype(np.int64)
        model = (models.NN4(12, hidden=(8, 6, 5), n_classes=3, rng=seed) if name == "nn4"
                 else models.mlp([12, 8, 6, 3], p_hidden=0.2, rng=seed))
        return model, X, y, 8
    if name == "resnet20":          # the CIFAR network: the labelled 32x32 substitute
        g = np.random.default_rng(seed)
        X = g.standard_normal((2048, 3, 32, 32)).astype(np.float32)
        y = g.integers(0, 10, 2048)
        return build_model(name, X.shape[1:], 10, seed), X, y, 128
    X, y = data.load("mnist10k", split="train")
    X, y = np.asarray(X, np.float32), np.asarray(y, np.int64)
    return build_model(name, X.shape[1:], 10, seed), X, y, 128


def _batches(X, y, batch: int, steps: int, seed: int):
    g = np.random.default_rng(seed)
    for _ in range(steps):
        idx = g.choice(len(X), batch, replace=False)
        yield X[idx], y[idx]


def train_losses(name: str, dist: str, steps: int, dry: bool, seed: int = 0):
    """Per-step losses of ``steps`` SGD steps (lr 0.05, momentum 0.9) with the plain Trainer
    step (dist "local", as --dist local --workers 1), the engine on the device (dist
    "device", as --device cuda) or the handout's CUDA step (dist "cuda")."""
    trainer, X, y, batch = _trainer(name, dist, dry, seed)
    return [trainer.train_step(xb, yb)[0] for xb, yb in _batches(X, y, batch, steps, seed)]


def _trainer(name: str, dist: str, dry: bool, seed: int = 0):
    _sys_path()
    from mlcvlab.parallel import make_step_fn
    from mlcvlab.train import Trainer
    from mlcvlab.train.cli import build_optimizer, loss_for
    model, X, y, batch = _model_and_data(name, dry, seed)
    device = "cuda" if dist == "device" else "cpu"
    model.to(device)
    opt = build_optimizer("momentum", model.parameters(), 0.05, 0.0, 0.9)
    step_fn = make_step_fn("cuda", 1, model) if dist == "cuda" else None
    return Trainer(model, loss_for(model), opt, step_fn=step_fn), X, y, batch


def stage_compare(out: Path, dry: bool, steps: int) -> None:
    """Every model on the engine, and nn4/mlp on the handout's workers too, against the CPU
    step, loss by loss (a dry run: 3 steps of the conv models, on tiny inputs)."""
    for name in MLP_MODELS + CONV_MODELS:
        n = min(steps, 3) if dry and name in CONV_MODELS else steps
        try:
            cpu = np.array(train_losses(name, "local", n, dry))
        except Exception as err:  # noqa: BLE001 - the failure is the finding
            record(out, "training", name, "fail", f"CPU: {type(err).__name__}: {err}")
            continue
        for dist in ("device", "cuda") if name in MLP_MODELS else ("device",):
            item = name if dist == "device" else f"{name} ({PATHS[dist]})"
            try:
                gpu = np.array(train_losses(name, dist, n, dry))
            except Exception as err:  # noqa: BLE001
                record(out, "training", item, "fail", f"{type(err).__name__}: {err}")
                continue
            diff = np.abs(gpu - cpu)
            bad = np.flatnonzero(diff > ATOL + RTOL * np.abs(cpu))
            suffix = "" if dist == "device" else "_dist_cuda"
            np.savetxt(out / f"losses_{name}{suffix}.csv", np.stack([cpu, gpu], 1),
                       delimiter=",", header="cpu,gpu", comments="", fmt="%.8g")
            detail = (f"{PATHS[dist]}, {n} steps from seed 0: max |gpu - cpu| {diff.max():.3g} "
                      f"(loss {cpu[0]:.4f} -> {cpu[-1]:.4f}); tolerance {ATOL:g} + "
                      f"{RTOL:g} |cpu|")
            if len(bad):
                detail += (f"; first step over it: {bad[0] + 1} ({gpu[bad[0]]:.6g} vs "
                           f"{cpu[bad[0]]:.6g})")
            record(out, "training", item, "fail" if len(bad) else "pass", detail)


def one_step(name: str) -> None:
    """One small device step (the dry run's tiny model): what the sanitizer watches. nn4 and
    mlp on the handout's workers; lenet5 and resnet20 on the engine."""
    train_losses(name, "cuda" if name in MLP_MODELS else "device", 1, dry=True)


# ------------------------------------------------------------------ (f) speed
def _rate(fn, batch: int, steps: int, sync=lambda: None, warm: bool = True) -> float:
    if warm:
        fn()
        sync()                              # compile / warm up outside the clock
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return batch * steps / (time.perf_counter() - t)


def _ours(name: str, dist: str, dry: bool):
    """A train step of ``name`` on one fixed batch: CPU ("local"), engine ("device") or the
    handout's workers ("cuda"). The engine's step ends by reading its loss, so it is
    synchronised."""
    trainer, X, y, batch = _trainer(name, dist, dry)
    xb, yb = X[:batch], y[:batch]
    return (lambda: trainer.train_step(xb, yb)), batch


def _torch_cuda(name: str, batch: int):
    """A torch CUDA train step of the same architecture, or None without torch CUDA."""
    try:
        import torch
        if not torch.cuda.is_available():
            return None
    except Exception:  # noqa: BLE001
        return None
    from torch import nn as tnn
    if name == "nn4":
        sizes, layers = (784, 512, 256, 128), []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [tnn.Dropout(0.2 if a == 784 else 0.5), tnn.Linear(a, b), tnn.ReLU(),
                       tnn.BatchNorm1d(b)]
        model = tnn.Sequential(*layers, tnn.Dropout(0.5), tnn.Linear(128, 10))
        shape = (784,)
    elif name == "mlp":
        model = tnn.Sequential(tnn.Linear(784, 512), tnn.ReLU(), tnn.Linear(512, 256), tnn.ReLU(),
                               tnn.Linear(256, 10))
        shape = (784,)
    else:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        _sys_path()
        import torch_reference
        model = torch_reference.build(name)
        shape = (1, 28, 28) if name == "lenet5" else (3, 32, 32)
    model = model.cuda()
    x = torch.randn((batch,) + shape, device="cuda")
    y = torch.randint(0, 10, (batch,), device="cuda")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss = tnn.CrossEntropyLoss()

    def step():
        opt.zero_grad()
        loss(model(x), y).backward()
        opt.step()
    return step, torch.cuda.synchronize


def stage_speed(out: Path, dry: bool) -> None:
    """samples/s of a train step per model (a dry run's device rate is the simulator's: it
    checks that the timing runs, it is not a speed)."""
    steps = 1 if dry else 50
    for name in MLP_MODELS + CONV_MODELS:
        parts = []
        try:
            fn, batch = _ours(name, "local", dry)
            parts.append(f"CPU {_rate(fn, batch, steps):,.0f}")
            for dist in ("device", "cuda") if name in MLP_MODELS else ("device",):
                fn, batch = _ours(name, dist, dry)     # (a dry run: one simulated step)
                parts.append(f"{PATHS[dist]}{' (simulator, not a speed)' if dry else ''} "
                             f"{_rate(fn, batch, steps, warm=not dry):,.1f}")
            ref = None if dry else _torch_cuda(name, batch)
            parts.append("torch CUDA: not importable" if ref is None
                         else f"torch CUDA {_rate(ref[0], batch, steps, ref[1]):,.0f}")
        except Exception as err:  # noqa: BLE001
            record(out, "speed", name, "fail", f"{type(err).__name__}: {err}")
            continue
        record(out, "speed", name, "pass",
               f"samples/s at batch {batch}, {steps} steps: " + "; ".join(parts))


# ------------------------------------------------------------------ summary
def stage_summary(out: Path, dry: bool) -> int:
    rows = [json.loads(line) for line in (out / "stages.jsonl").read_text().splitlines()
            if line.strip()] if (out / "stages.jsonl").exists() else []
    lines = [f"# gpu_check summary ({'DRY RUN: simulator, tiny sizes' if dry else 'GPU run'})",
             "", f"Written {time.strftime('%Y-%m-%d %H:%M:%S')} by benchmarks/gpu_check.sh.", "",
             "| stage | item | status | detail |", "|---|---|---|---|"]
    verdicts = {}
    for stage, title in STAGES.items():
        mine = [r for r in rows if r["stage"] == stage]
        if not mine:
            mine = [{"stage": stage, "item": "-", "status": "fail",
                     "detail": "the stage did not run"}]
        statuses = {r["status"] for r in mine}
        verdicts[stage] = ("fail" if "fail" in statuses else
                           "pass" if "pass" in statuses else "skip")
        for r in mine:
            lines.append(f"| {title} | {r['item']} | {r['status']} | "
                         f"{r['detail'].replace('|', chr(92) + '|')} |")
    lines += ["", "Stage verdicts: " + ", ".join(f"{s} {v}" for s, v in verdicts.items())]
    elapsed = out / "elapsed.txt"        # written by gpu_check.sh: the budget is 8 minutes
    if elapsed.exists():
        lines += ["", f"Wall time of the stages: {elapsed.read_text().strip()} "
                      f"(budget on one GPU: 8 minutes)."]
    (out / "gpu_check_summary.md").write_text("\n".join(lines) + "\n")
    (out / "gpu_check_summary.json").write_text(json.dumps(
        {"dry_run": dry, "stages": verdicts, "records": rows}, indent=1))
    print("\n".join(lines))
    return 1 if "fail" in verdicts.values() else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("command", choices=["record", "env", "kernels", "compare", "step", "speed",
                                       "summary"])
    p.add_argument("args", nargs="*", help="record: STAGE ITEM STATUS DETAIL")
    p.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"))
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--model", default="mlp", choices=MLP_MODELS + CONV_MODELS)
    a = p.parse_intermixed_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.command == "record":
        if len(a.args) != 4:
            p.error("record takes STAGE ITEM STATUS DETAIL")
        record(out, *a.args)
    elif a.command == "env":
        stage_env(out, a.dry_run)
    elif a.command == "kernels":
        stage_kernels(out, a.dry_run)
    elif a.command == "compare":
        stage_compare(out, a.dry_run, a.steps or (5 if a.dry_run else 300))
    elif a.command == "step":
        one_step(a.model)
    elif a.command == "speed":
        stage_speed(out, a.dry_run)
    else:
        return stage_summary(out, a.dry_run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
