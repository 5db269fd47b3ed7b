"""What the simulator check files of tests/gpu share.

numba's CUDA simulator must be on before numba is imported, so each ``*_sim_checks.py`` runs
in a subprocess: :func:`main` runs the chosen checks there and writes ``{name: "ok" or the
traceback}`` (plus the measured float32 errors under "errors", as data) to OUT.json;
:func:`run` is the pytest side, starting that subprocess once per test module. Importing this
module does not touch numba or the environment.
"""
import json
import os
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))


def main(checks: dict, errors: dict = None) -> None:
    """``python X_sim_checks.py OUT.json [NAME ...]``: run the named checks (default all),
    each check's time on stderr, and write the results."""
    chosen = sys.argv[2:] or list(checks)
    unknown = [c for c in chosen if c not in checks]
    if unknown:
        sys.exit(f"{os.path.basename(sys.argv[0])}: unknown checks {unknown}; choose from "
                 f"{list(checks)}")
    results = {}
    for name in chosen:
        start = time.perf_counter()
        try:
            checks[name]()
            results[name] = "ok"
        except Exception:                       # noqa: BLE001 - reported per check
            results[name] = traceback.format_exc()[-3000:]
        print(f"{name}: {'ok' if results[name] == 'ok' else 'FAILED'} in "
              f"{time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    if errors is not None:
        results["errors"] = errors
    with open(sys.argv[1], "w") as f:
        json.dump(results, f, indent=1)


def run(script: str, out_dir, timeout: int, names=None, shards: int = 1) -> dict:
    """Run ``script`` (a file of this folder) under the simulator; its results.

    With ``names`` and ``shards`` > 1 the checks are dealt round-robin to that many
    subprocesses running at once: the simulator runs a kernel's threads as Python threads
    under one GIL, so one subprocess keeps one core busy, and a 2-core CI machine runs two
    (the engine checks: ~5 min alone)."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", OPENBLAS_NUM_THREADS="1")
    groups = [[]]                               # one subprocess, every check
    if names and shards > 1:
        groups = [g for g in (list(names)[i::shards] for i in range(shards)) if g]
    procs = []
    for i, group in enumerate(groups):
        out = out_dir / f"results{i}.json"
        cmd = [sys.executable, os.path.join(HERE, script), str(out)] + group
        procs.append((out, subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.PIPE, text=True, env=env)))
    results, deadline = {}, time.monotonic() + timeout
    try:
        for out, proc in procs:
            _, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            assert proc.returncode == 0, err[-3000:]
            results.update(json.loads(out.read_text()))
    finally:
        for _, proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def verdicts(results: dict) -> list:
    """The names of the checks that ran (not the "errors" data)."""
    return sorted(k for k, v in results.items() if isinstance(v, str))
