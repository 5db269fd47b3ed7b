"""The notebooks of examples/ run top to bottom (nbclient, a real Jupyter kernel) and match
the cells of tools/make_examples.py."""
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "examples").glob("*.ipynb"))


def test_the_examples_exist_and_are_up_to_date():
    assert {p.name for p in NOTEBOOKS} >= {"quickstart.ipynb", "hw2_mnist_nn4.ipynb",
                                           "lab_from_python.ipynb", "pytorch_to_mlcvlab.ipynb"}
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "make_examples.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    env_before = os.environ.get("MLCVLAB_THREADS")
    client = NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()        # raises CellExecutionError, naming the cell, on any error
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    assert os.environ.get("MLCVLAB_THREADS") == env_before
