"""The API reference builds from the docstrings with the documented command
(README: `python tools/build_docs.py`), every module included."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_api_reference_builds(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "build_docs.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for page in ("mlcvlab.html", "mlcvlab/nn.html", "mlcvlab/train/checkpoint.html",
                 "mlcvlab/labs/stats.html", "mlcvlab/optim.html", "mlcvlab/data.html"):
        assert (tmp_path / page).exists(), page
    text = (tmp_path / "mlcvlab/labs/stats.html").read_text()
    assert "compare" in text and "not separable" in text
