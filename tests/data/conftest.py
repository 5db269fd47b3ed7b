"""Fixtures of the data tests: an isolated data environment (see datafiles.py for the file
writers)."""
import pytest


@pytest.fixture(autouse=True)
def isolated_data_env(tmp_path, monkeypatch):
    """No real data folder, no $MLCVLAB_DATA, no network: HOME is a fresh temporary folder and
    the official mirrors are replaced by a closed local port (connection refused at once)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("MLCVLAB_DATA", raising=False)
    monkeypatch.delenv("MLCVLAB_OFFLINE", raising=False)
    from mlcvlab.data import datasets

    for name, spec in list(datasets.REMOTE.items()):
        monkeypatch.setitem(datasets.REMOTE, name,
                            type(spec)(**{**spec.__dict__, "mirrors": ("http://127.0.0.1:9/",)}))
    return home
