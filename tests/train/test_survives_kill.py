"""Training that survives: a run killed with SIGKILL at random moments (and in the middle of
a checkpoint write) and resumed with ``mlcvlab train --resume`` ends byte for byte where an
uninterrupted run ends: the same ``model.npz`` and the same history (timings aside).

Each case starts the run, kills its whole process group after a random delay measured from
the moment training starts (the header line), resumes, kills again, ... and finally lets the
resumed run finish. The delays are drawn from a seeded generator, so a failure is
reproducible; they spread over start-up, epochs and checkpoint writes.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zlib

import numpy as np
import pytest

MPIEXEC = shutil.which("mpiexec")
TIMING = {"seconds", "cpu_seconds", "compute_seconds", "update_seconds", "communication_seconds"}
ENV = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONUNBUFFERED="1")

CASES = {
    # name: (launcher prefix, train flags); mnist10k epochs take ~0.3-1 s, so kills land in
    # start-up, in epochs and in checkpoint writes
    "mlp": ([], ["--model", "mlp", "--epochs", "3", "--optimizer", "momentum"]),
    "nn4-workers2": ([], ["--model", "nn4", "--epochs", "3", "--workers", "2",
                          "--optimizer", "momentum"]),
    "nn4-mpi2": (["mpiexec", "-n", "2"], ["--model", "nn4", "--epochs", "3", "--workers", "2",
                                           "--dist", "mpi", "--optimizer", "momentum"]),
}


def _command(case, out, resume=False):
    launcher, flags = CASES[case]
    if launcher:
        if MPIEXEC is None:
            pytest.fail("mpiexec is not on PATH: pip install mpich (the test extra installs it)")
        launcher = [MPIEXEC] + launcher[1:]
    base = [sys.executable, "-m", "mlcvlab", "train", "--dataset", "mnist10k", "--seed", "3"]
    if resume:
        tail = ["--resume", str(out)] + (["--dist", "mpi", "--workers", "2"]
                                         if "mpi" in case else [])
    else:
        tail = flags + ["--out", str(out)]
    return launcher + base + tail


def _history(out):
    return [{k: v for k, v in r.items() if k not in TIMING}
            for r in json.loads((out / "history.json").read_text())]


def _finish(case, out, resume):
    proc = subprocess.run(_command(case, out, resume), capture_output=True, text=True,
                          timeout=300, env=ENV)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def _killed_after(case, out, resume, delay):
    """Start the run, wait until it prints its header, sleep ``delay`` s, SIGKILL the group.
    Returns True if the run finished before the kill."""
    proc = subprocess.Popen(_command(case, out, resume), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=ENV, start_new_session=True)
    deadline = time.monotonic() + 120
    for line in proc.stdout:                 # the header: data loaded, training starts
        if line.startswith(("training", "resuming")) or time.monotonic() > deadline:
            break
    time.sleep(delay)
    finished = proc.poll() is not None
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.stdout.close()
    proc.wait(timeout=60)
    _wait_for_stragglers(out)
    return finished and proc.returncode == 0


def _wait_for_stragglers(out, timeout=60.0):
    """Wait until no process still names ``out`` on its command line: the ranks of an MPI
    job are not in mpiexec's process group, so a SIGKILL of the group leaves them alive
    until they notice (a user's next start leaves a live writer's temporaries alone, by
    design; the test waits so that each launch starts after the last one has died)."""
    deadline = time.monotonic() + timeout
    needle = str(out).encode()
    while time.monotonic() < deadline:
        alive = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if needle in f.read():
                        alive.append(pid)
            except OSError:
                pass
        if not alive:
            return
        time.sleep(0.2)


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """An uninterrupted run of each case: model.npz bytes and history."""
    refs = {}
    for case in CASES:
        out = tmp_path_factory.mktemp(f"ref-{case}")
        _finish(case, out, resume=False)
        refs[case] = ((out / "model.npz").read_bytes(), _history(out))
    return refs


@pytest.mark.parametrize("case", list(CASES))
def test_sigkill_at_random_points_then_resume_equals_uninterrupted(case, references, tmp_path):
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    out = tmp_path / "run"
    kills = 10
    for i in range(kills):
        # the first launch is a fresh run; later ones resume whatever the last kill left
        started = (out / "config.json").exists()
        _killed_after(case, out, resume=started, delay=float(rng.uniform(0.0, 2.5)))
    _finish(case, out, resume=(out / "config.json").exists())
    model_bytes, history = references[case]
    assert (out / "model.npz").read_bytes() == model_bytes
    assert _history(out) == history
    assert not [p for p in os.listdir(out) if p.startswith(".tmp-")]   # orphans cleaned
    results = json.loads((out / "results.json").read_text())
    assert results["epochs"] == 3 and 0.5 < results["test_accuracy"] <= 1.0


# A harness that runs `mlcvlab train` with checkpoint writes instrumented to SIGKILL the
# process at a chosen point: half-way through writing the bytes, or between the rename of the
# old checkpoint to checkpoint.prev.npz and the rename of the new one into place.
HARNESS = textwrap.dedent("""
    import os, signal, sys
    import mlcvlab.train.checkpoint as ck
    where, at_write = sys.argv[1], int(sys.argv[2])
    count = [0]
    real_write, real_replace = ck.write_npz, os.replace

    def write_npz(f, entries):
        count[0] += 1
        if where == "mid-write" and count[0] == at_write:
            f.write(b"PK\\x03\\x04 half a checkpoint")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        real_write(f, entries)

    class _Os:
        def __getattr__(self, name):
            return getattr(os, name)

        @staticmethod
        def replace(a, b):
            real_replace(a, b)
            if where == "between-renames" and count[0] == at_write and b.endswith("prev.npz"):
                os.kill(os.getpid(), signal.SIGKILL)

    ck.write_npz, ck.os = write_npz, _Os()
    from mlcvlab.cli import main
    sys.exit(main(sys.argv[3:]))
""")


@pytest.mark.parametrize("where", ["mid-write", "between-renames"])
def test_sigkill_inside_a_checkpoint_write(where, references, tmp_path):
    harness = tmp_path / "harness.py"
    harness.write_text(HARNESS)
    out = tmp_path / "run"
    flags = CASES["nn4-workers2"][1]
    cmd = [sys.executable, str(harness), where, "2", "train", "--dataset", "mnist10k",
           "--seed", "3", "--quiet", *flags, "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    names = os.listdir(out)
    if where == "mid-write":           # the half-written temporary is an orphan, not a checkpoint
        assert any(n.startswith(".tmp-") for n in names) and "checkpoint.npz" in names
    else:                              # only the previous checkpoint and the new one's file
        assert "checkpoint.npz" not in names and "checkpoint.prev.npz" in names
    _finish("nn4-workers2", out, resume=True)
    assert (out / "model.npz").read_bytes() == references["nn4-workers2"][0]
    assert _history(out) == references["nn4-workers2"][1]
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]
