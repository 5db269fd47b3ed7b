"""Is the device path bit-deterministic under numba's simulator? Train the same model on
"cuda" several times in one process and compare the runs bit for bit: the losses, every
state_dict entry and (``--kernels``) every array of every kernel launch, before and after it.

Under the simulator NumPy stands in for CuPy and every kernel is written to give the same bits
on every run (fixed-order sums, no atomics), so any difference is a race: in a kernel (a
missing barrier, two threads writing one element) or in the simulator itself. The first
launch whose arrays differ names the culprit: its inputs equal and its outputs different
means that kernel; its inputs different means whatever ran before it (a NumPy GEMM).

    NUMBA_ENABLE_CUDASIM=1 PYTHONPATH=src python benchmarks/sim_determinism.py \\
        [--model resnet20|small] [--runs R] [--switch SECONDS] [--burn] [--kernels] \\
        [--simulator-as-shipped] [--force-interleave]

With ``NUMBA_ENABLE_CUDASIM=0`` on a GPU (CuPy) it compares the runs' losses and state (a
real race shows there too). ``--model resnet20`` is the engine check's ResNet-20 on
(2, 3, 8, 8), three SGD-momentum steps (tests/gpu/engine_sim_checks.py); ``small`` a
conv-BN-ReLU net (seconds a run). ``--switch`` sets the interpreter's thread switch interval
(mlcvlab's simulator default is 2e-5 s; smaller switches more often and provokes more
interleavings). ``--burn`` runs a CPU-burning process alongside (killed at the end).
``--force-interleave`` makes every simulated thread's ``np.empty`` sleep 1 ms in runs after
the first (the worst interleaving for the simulator's shared-array allocation, every launch).
``--simulator-as-shipped`` undoes mlcvlab's fix of the simulator's shared arrays
(:func:`mlcvlab.gpu.device.atomic_simulator_shared_arrays`), to measure the failure rate
without it. Prints one line per run and a summary; exit status 1
when any run differs from the first.
"""
import argparse
import os
import signal
import subprocess
import sys
import time

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")     # as tests/gpu/simcheck.py runs the checks
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "gpu"))

import numpy as np  # noqa: E402

from mlcvlab import nn  # noqa: E402
from mlcvlab.gpu import basis_kernels, conv_kernels, device  # noqa: E402
from mlcvlab.parallel import cuda_kernels  # noqa: E402


class Recorder:
    """Wraps every kernel of the kernel modules; keeps (name, inputs, outputs) of each launch,
    the arrays copied before and after it."""

    def __init__(self):
        self.launches = []
        self.originals = {}

    def install(self):
        from numba.cuda.simulator.kernel import FakeCUDAKernel
        for mod in (basis_kernels, conv_kernels, cuda_kernels):
            for name, obj in list(vars(mod).items()):
                if isinstance(obj, FakeCUDAKernel) and not obj._device:
                    self.originals[(mod, name)] = obj
                    setattr(mod, name, _Launcher(self, name, obj))

    def uninstall(self):
        for (mod, name), obj in self.originals.items():
            setattr(mod, name, obj)


class _Launcher:
    def __init__(self, recorder, name, kernel):
        self.recorder, self.name, self.kernel = recorder, name, kernel

    def __getitem__(self, config):
        def launch(*args):
            before = [np.array(a, copy=True) for a in args if isinstance(a, np.ndarray)]
            self.kernel[config](*args)
            after = [np.array(a, copy=True) for a in args if isinstance(a, np.ndarray)]
            self.recorder.launches.append((self.name, before, after))
        return launch


def _yielding(empty):
    """``np.empty`` that sleeps 1 ms when a simulated CUDA thread calls it (the simulator's
    shared-array allocation, nothing else in a kernel allocates): the other threads of the
    block run there, the interleaving that the simulator's unlocked allocation gets wrong."""
    import threading

    from numba.cuda.simulator.kernel import BlockThread

    def yielding_empty(*args, **kwargs):
        if isinstance(threading.current_thread(), BlockThread):
            time.sleep(1e-3)
        return empty(*args, **kwargs)
    return yielding_empty


def _bits_equal(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _first_launch_difference(ref, got):
    """A sentence naming the first launch whose arrays after it differ between two runs, and
    whether that kernel's read-only inputs (arrays it left unchanged in both runs) differ too
    (then the cause ran before it) or not (then the kernel itself gave other bits from the same
    inputs); None when every launch matches. Output buffers come from ``empty`` and hold
    garbage before a launch, so arrays are compared as the kernel leaves them."""
    if len(ref) != len(got):
        return f"{len(got)} launches against {len(ref)}"
    for i, ((name, b0, a0), (_, b1, a1)) in enumerate(zip(ref, got)):
        outs = [k for k, (x, y) in enumerate(zip(a0, a1)) if not _bits_equal(x, y)]
        if not outs:
            continue
        k = outs[0]
        diff = np.abs(a0[k].astype(np.float64) - a1[k].astype(np.float64))
        read_only = [j for j in range(len(b0))
                     if _bits_equal(b0[j], a0[j]) and _bits_equal(b1[j], a1[j])]
        upstream = [j for j in read_only if not _bits_equal(b0[j], b1[j])]
        cause = (f"its read-only inputs {upstream} differ too (the cause ran before it)"
                 if upstream else f"its read-only inputs {read_only} are the same bits: "
                 f"this launch gave other results from the same inputs")
        return (f"launch {i} ({name}): array argument(s) {outs} differ after it (argument {k}: "
                f"{int(np.count_nonzero(diff))} of {a0[k].size} values, max "
                f"{np.nanmax(diff):.3g}); {cause}")
    return None


def _build(model: str):
    if model == "resnet20":
        from mlcvlab.models import resnet_cifar
        return (lambda: resnet_cifar(20, rng=0)), (2, 3, 8, 8), 10

    def small():
        from mlcvlab.models.blocks import conv_bn_relu
        r = np.random.default_rng(0)
        return nn.Sequential(conv_bn_relu(1, 4, 3, padding=1, rng=r),
                             conv_bn_relu(4, 4, 3, padding=1, rng=r),
                             nn.GlobalAvgPool2d(), nn.Linear(4, 5, rng=r))
    return small, (3, 1, 6, 6), 5


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=("resnet20", "small"), default="resnet20")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--switch", type=float, default=None)
    p.add_argument("--burn", action="store_true")
    p.add_argument("--kernels", action="store_true")
    p.add_argument("--simulator-as-shipped", action="store_true")
    p.add_argument("--force-interleave", action="store_true")
    a = p.parse_args()
    # a timeout's SIGTERM must still run the finally below (it kills the burner)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))

    if (a.kernels or a.simulator_as_shipped) and not device.simulated():
        p.error("--kernels and --simulator-as-shipped need the simulator "
                "(NUMBA_ENABLE_CUDASIM=1); on a GPU compare the runs' losses and state only")
    import engine_sim_checks as E                       # tests/gpu: its _train and _batches
    device.cuda()                                       # the simulator's settings, the fix
    if a.simulator_as_shipped:
        from numba.cuda.simulator import kernelapi
        kernelapi.FakeCUDAShared.array = kernelapi.FakeCUDAShared.array.simulator_original
    if a.switch is not None:
        sys.setswitchinterval(a.switch)
    build, shape, classes = _build(a.model)
    batches = E._batches(shape, classes)
    burner = (subprocess.Popen([sys.executable, "-c", "while 1: pass"]) if a.burn else None)
    ref = None
    differing = 0
    try:
        for run in range(a.runs):
            rec = Recorder()
            if a.kernels:
                rec.install()
            t0 = time.perf_counter()
            real_empty = np.empty
            if a.force_interleave and run > 0:
                np.empty = _yielding(real_empty)
            try:
                losses, model = E._train(build, batches, "cuda")
            except (ValueError, FloatingPointError) as err:    # a NaN loss: wrong sums
                if ref is None:
                    raise
                first = (_first_launch_difference(ref[2][:len(rec.launches)], rec.launches)
                         if a.kernels else None)
                differing += 1
                print(f"run {run}: FAILED ({str(err)[:80]}...)"
                      + (f"; first differing launch: {first}" if first else ""), flush=True)
                continue
            finally:
                rec.uninstall()
                np.empty = real_empty
            state = model.state_dict()
            result = (losses, state, rec.launches)
            if ref is None:
                ref = result
                print(f"run 0: losses {losses} ({time.perf_counter() - t0:.1f} s, "
                      f"{len(rec.launches)} launches recorded)", flush=True)
                continue
            what = [f"loss {i + 1}" for i, (x, y) in enumerate(zip(ref[0], losses)) if x != y]
            what += [k for k in ref[1] if not _bits_equal(ref[1][k], state[k])]
            first = _first_launch_difference(ref[2], rec.launches) if a.kernels else None
            differing += bool(what or first)
            verdict = "same bits" if not (what or first) else f"DIFFERS in {what[:6]}"
            print(f"run {run}: {verdict} ({time.perf_counter() - t0:.1f} s)"
                  + (f"; first differing launch: {first}" if first else ""), flush=True)
    finally:
        if burner is not None:
            burner.kill()
            burner.wait()
    print(f"summary: {differing} of {a.runs - 1} runs differ from run 0 (model {a.model}, "
          f"switch interval {sys.getswitchinterval():g} s, burner {'on' if a.burn else 'off'}, "
          f"simulator {'as shipped' if a.simulator_as_shipped else 'with the fix'}"
          f"{', forced interleaving after run 0' if a.force_interleave else ''})")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
