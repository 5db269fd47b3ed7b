"""Shared pieces of the lab tests: one way to run a lab's quick preset, and the checks of the
files a lab run writes (results.json keys, non-empty outputs, a filled-in report.md).

A test file names the lab it runs in a small module-scoped fixture, so that the slow quick
preset runs once per file and every test of the file reads the same run:

    @pytest.fixture(scope="module")
    def quick_run(run_quick):
        return run_quick("bagging")

The helpers come as fixtures and as methods of the LabRun they return, not as imports: pytest
advises against importing from conftest.py (several test folders have one).
"""
import json
from pathlib import Path
from typing import Any, Dict, Iterable, NamedTuple, Optional

import pytest

from mlcvlab.labs import run_lab


class LabRun(NamedTuple):
    """One finished lab run: the folder it wrote to and the results dict run_lab returned.

    A tuple, so ``out, res = quick_run`` unpacks it; the methods read and check its files.
    """

    out: Path
    results: Dict[str, Any]

    def saved(self) -> Dict[str, Any]:
        """results.json as the run wrote it (what the report and later readers see)."""
        return json.loads((self.out / "results.json").read_text())

    def report(self) -> str:
        """The text of the run's report.md."""
        return (self.out / "report.md").read_text()

    def assert_outputs(self, keys: Iterable[str] = (), files: Iterable[str] = ()) -> Dict[str, Any]:
        """Assert that results.json has every key in ``keys`` and that every file in ``files``
        exists in the run's folder and is not empty; return results.json.

        The keys are what the report and later readers use, the files the tables and figures
        the lab promises: a renamed key or a figure that failed to save shows up here, by name.
        """
        saved = self.saved()
        missing = [key for key in keys if key not in saved]
        assert not missing, f"results.json lacks {missing}"
        paths = [self.out / name for name in files]
        empty = [p.name for p in paths if not p.is_file() or p.stat().st_size == 0]
        assert not empty, f"missing or empty in {self.out}: {empty}"
        return saved

    def assert_report(self, *phrases: str, substituted: bool) -> str:
        """Assert that report.md has every placeholder filled in (no "{" left), contains each of
        ``phrases``, and notes the data substitution when the lab ran on a substitute dataset
        (``substituted``); return the report's text."""
        report = self.report()
        assert "{" not in report, "report.md has an unfilled placeholder"
        for phrase in phrases:
            assert phrase in report, phrase
        if substituted:
            assert "Data substitution" in report, "report.md does not note the substitute data"
        return report


@pytest.fixture(scope="session")
def run_quick(tmp_path_factory):
    """``run_quick(lab, out=None, **kwargs)`` runs ``lab``'s quick preset and returns a LabRun.

    It writes into ``out``, else into a fresh temporary folder named after the lab, with no
    progress bar; other keyword arguments (``overrides=[...]``, ``seed=...``) go to run_lab.
    Session-scoped so that the module-scoped fixtures of the test files can use it.
    """
    def run(lab: str, out: Optional[Path] = None, **kwargs: Any) -> LabRun:
        out = Path(out) if out is not None else tmp_path_factory.mktemp(lab)
        return LabRun(out, run_lab(lab, quick=True, out_dir=str(out), show_progress=False,
                                   **kwargs))
    return run


@pytest.fixture
def count_evaluations(monkeypatch):
    """``count_evaluations(*lab_modules)`` patches ``evaluate`` in the trainer and in each lab
    module so that every evaluation records how many samples it saw, and returns that list
    (for tests that the test split is evaluated once)."""
    return lambda *modules: _count_evaluations(monkeypatch, *modules)


def _count_evaluations(monkeypatch, *modules):
    import mlcvlab.train.trainer as trainer_module

    seen = []

    def counting(real):
        def wrapped(model, loss, batches, *args, **kwargs):
            batches = list(batches)
            seen.append(sum(len(x) for x, _ in batches))
            return real(model, loss, batches, *args, **kwargs)
        return wrapped

    for module in (trainer_module, *modules):
        monkeypatch.setattr(module, "evaluate", counting(module.evaluate))
    return seen

