"""The API reference builds from the docstrings with the documented command
(README: `python -m pdoc mlcvlab -o docs/api`), every public module included."""
import subprocess
import sys


def test_api_reference_builds(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pdoc", "mlcvlab", "-o", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for page in ("mlcvlab.html", "mlcvlab/nn.html", "mlcvlab/train/checkpoint.html",
                 "mlcvlab/labs/stats.html", "mlcvlab/optim.html", "mlcvlab/data.html"):
        assert (tmp_path / page).exists(), page
    text = (tmp_path / "mlcvlab/labs/stats.html").read_text()
    assert "compare" in text and "not separable" in text
