"""The bn-dropout lab's standard preset end to end on the real MNIST (issue #17).

Not run in CI (about 45 CPU minutes on 2 cores): pyproject.toml deselects the ``realdata``
marker. Run it with the real data laid out (``shared/tools/fetch-real-data ROOT``):

    MLCVLAB_DATA=ROOT python -m pytest -m realdata tests/labs/test_realdata_standard.py

Selected without ``$MLCVLAB_DATA`` holding MNIST, it fails and says so (it never skips: a
requested check that did not run must not look like a pass).
"""
import json
import os
import time

import pytest

from mlcvlab.labs import stats
from mlcvlab.labs.registry import run_lab

pytestmark = pytest.mark.realdata


def test_bn_dropout_standard_on_real_mnist(tmp_path):
    root = os.environ.get("MLCVLAB_DATA")
    assert root and os.path.isdir(os.path.join(root, "mnist")), (
        "this test needs the real MNIST: lay it out with shared/tools/fetch-real-data ROOT "
        "and set MLCVLAB_DATA=ROOT")
    start = time.process_time()
    run_lab("bn-dropout", preset="standard", out_dir=str(tmp_path), show_progress=False)
    cpu_minutes = (time.process_time() - start) / 60
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["preset"] == "standard" and results["used"] == "mnist"
    assert results["n_train"] + results["n_val"] == 60_000 and results["n_test"] == 10_000
    plain = stats.summarize([r["test_error_pct"] for r in results["per_seed"]["plain"]])
    lo, hi = plain["ci95"]
    assert plain["n"] >= 3 and 0.7 <= lo and hi <= 1.4, plain   # LeCun et al. 1998: 0.95%
    assert cpu_minutes <= 60, f"the standard preset took {cpu_minutes:.1f} CPU min"
