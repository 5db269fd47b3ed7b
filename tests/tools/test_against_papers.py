"""tools/against_papers.py: the 'against the papers' table of LAB_RESULTS.md is computed from
the runs' saved results by the labs' own functions, and a missing run is said, not filled."""
import importlib.util
import json
from pathlib import Path

import pytest

from mlcvlab.labs import stats

TOOL = Path(__file__).resolve().parents[2] / "tools" / "against_papers.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("against_papers", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(folder: Path, lab: str, results: dict) -> None:
    (folder / lab).mkdir(parents=True)
    (folder / lab / "results.json").write_text(json.dumps(results))


def _bn_dropout_results(plain_errors):
    curve = lambda accs: {"val_acc": accs}  # noqa: E731
    return {"used": "mnist", "epochs": 3, "n_train": 1280, "batch_size": 128,
            "target_pct": 98.5,
            "per_seed": {"plain": [{"test_error_pct": e} for e in plain_errors]},
            "curves": {"plain": curve([[0.97, 0.986, 0.99], [0.98, 0.98, 0.99],
                                       [0.97, 0.985, 0.99]]),
                       "bn": curve([[0.986, 0.99, 0.99], [0.985, 0.99, 0.99],
                                    [0.98, 0.986, 0.99]])}}


def test_the_table_is_computed_from_the_saved_runs(tool, tmp_path):
    _write(tmp_path, "bn-dropout", _bn_dropout_results([0.90, 0.95, 1.00]))
    acc = stats.compare("Adam + dropout", [0.985, 0.986, 0.984], "Adam", [0.982, 0.983, 0.9825],
                        "test accuracy", higher_is_better=True)
    acc.update(kind="dropout", optimizer="Adam", dataset="mnist")
    _write(tmp_path, "optimizers", {"comparisons": [acc], "mnist_used": "mnist",
                                    "mnist_epochs": 10})
    rows = tool.table(tmp_path)
    by_claim = {r["claim"]: r for r in rows}
    lenet = by_claim["LeNet-5 test error on MNIST (bn-dropout, plain arm)"]
    assert lenet["verdict"] == "reproduced" and lenet["ours"].startswith("0.95%")
    bn = by_claim["batch norm reaches 98.5% validation accuracy in fewer steps"]
    # steps per epoch 10: plain 20, 30, 20; bn 10, 10, 20 -> -10 on average
    assert "difference -10" in bn["ours"] and bn["data"] == "mnist"
    drop = by_claim["dropout lowers the test error (Adam, optimizers lab)"]
    assert drop["ours"].startswith(f"{-100 * acc['diff']:+.2f} points")
    lo, hi = acc["ci95"]
    assert drop["verdict"] == stats.against_published("effect", [-100 * hi, -100 * lo], -0.35)
    missing = [r for r in rows if r["verdict"] == "not run"]
    assert {r["command"].split()[-3] for r in missing} == {"cyclical", "nn4"}
    text = tool.markdown(rows)
    assert text.count("\n") == len(rows) + 1 and "| verdict |" in text.splitlines()[0]


def test_a_lenet_interval_away_from_the_paper_is_not_reproduced(tool, tmp_path):
    _write(tmp_path, "bn-dropout", _bn_dropout_results([1.30, 1.31, 1.32]))
    rows = tool.table(tmp_path, claims=[("bn-dropout", tool.lenet5_error)])
    assert rows[0]["verdict"] == "not reproduced"


def test_usage_error_on_a_missing_folder(tool, tmp_path, capsys):
    assert tool.main([str(tmp_path / "nope")]) == 2
    assert "usage" in capsys.readouterr().err


def test_a_censored_speed_claim_is_not_reproduced_only_when_the_faster_arm_missed(tool):
    missed = tool._fewer_steps("c", "p", [], ["bn never reached it"], True, ("BN", "plain"),
                               "steps", "mnist", "bn-dropout")
    other = tool._fewer_steps("c", "p", [], ["plain never reached it"], False,
                              ("BN", "plain"), "steps", "mnist", "bn-dropout")
    assert missed[0]["verdict"] == "not reproduced"
    assert other[0]["verdict"] == "not separable at this budget"
