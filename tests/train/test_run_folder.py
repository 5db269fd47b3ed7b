"""The run folder of ``mlcvlab train``: resumable from the first second, checkpoints that
cannot run code and fail loudly when altered, flags checked before any work."""
import json
import os
import pickle
import stat
import time

import numpy as np
import pytest

from mlcvlab.cli import main
from mlcvlab.io import atomic_save_npz, atomic_write_text, remove_orphan_temporaries
from mlcvlab.train.checkpoint import (CheckpointError, load_checkpoint, read_state,
                                      save_checkpoint, write_state)

DIGITS = ["train", "--dataset", "digits", "--quiet"]


def _err(capsys):
    return capsys.readouterr().err


# ------------------------------------------------------------------ the checkpoint format
def _state():
    return {"model": {"w": np.arange(6, dtype=np.float32).reshape(2, 3),
                      "n": np.array(7, dtype=np.int64)},
            "optimizer": {"t": 3, "state": {"m": np.ones(4)}, "betas": (0.9, 0.999)},
            "history": [{"epoch": 1, "train_loss": float("nan"), "val_acc": None}],
            "epoch": 1, "rng": np.random.default_rng(5).bit_generator.state,
            "keyed": {0: "zero", 1: "one"}}


def test_a_state_round_trips_exactly(tmp_path):
    write_state(str(tmp_path / "c.npz"), _state())
    back = read_state(str(tmp_path / "c.npz"))
    assert back["model"]["n"].shape == () and back["model"]["n"] == 7      # 0-d stays 0-d
    np.testing.assert_array_equal(back["model"]["w"], _state()["model"]["w"])
    assert back["optimizer"]["betas"] == (0.9, 0.999) and back["keyed"] == {0: "zero", 1: "one"}
    assert np.isnan(back["history"][0]["train_loss"]) and back["history"][0]["val_acc"] is None
    assert back["rng"] == _state()["rng"]                          # 128-bit ints survive JSON


def test_a_crafted_pickle_checkpoint_does_not_run(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    # a pickle under the checkpoint's name, and an npz with a pickled object array in it
    (tmp_path / "checkpoint.npz").write_bytes(pickle.dumps({"model": Evil()}))
    with pytest.raises(CheckpointError, match="checkpoint.npz is unreadable"):
        load_checkpoint(str(tmp_path))
    with open(tmp_path / "checkpoint.npz", "wb") as f:
        np.savez(f, __state__=np.array([Evil()], dtype=object), __sha256__=np.zeros(3))
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(str(tmp_path))
    assert not marker.exists()


def test_a_flipped_byte_is_caught_and_the_previous_checkpoint_used(tmp_path):
    first, second = _state(), _state()
    second["epoch"] = 2
    save_checkpoint(str(tmp_path), first)
    save_checkpoint(str(tmp_path), second)
    path = tmp_path / "checkpoint.npz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10                       # a flipped bit in the middle
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checkpoint.npz"):
        read_state(str(path))
    with pytest.warns(UserWarning, match="previous checkpoint"):
        assert load_checkpoint(str(tmp_path))["epoch"] == 1
    (tmp_path / "checkpoint.prev.npz").write_bytes(b"")   # both gone: a clear error
    with pytest.raises(CheckpointError, match="(?s)no usable checkpoint.*Train again"):
        load_checkpoint(str(tmp_path))


def test_an_edited_array_fails_the_hash(tmp_path):
    path = str(tmp_path / "c.npz")
    write_state(path, _state())
    with np.load(path) as z:
        entries = {k: z[k] for k in z.files}
    entries["a0"] = entries["a0"] * 100            # weights changed, hash left as it was
    with open(path, "wb") as f:
        np.savez(f, **entries)
    with pytest.raises(CheckpointError, match="SHA-256"):
        read_state(path)


def test_truncated_checkpoint_is_named(tmp_path):
    save_checkpoint(str(tmp_path), _state())
    path = tmp_path / "checkpoint.npz"
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        load_checkpoint(str(tmp_path))


# ------------------------------------------------------------------ files and temporaries
def test_files_follow_the_umask_and_temporaries_are_exclusive(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(str(tmp_path / "a.txt"), "x")
        atomic_save_npz(str(tmp_path / "m.npz"), {"w": np.zeros(3)})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.txt").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "m.npz").st_mode) == 0o644
    # the same arrays give the same bytes (no timestamp in the zip)
    atomic_save_npz(str(tmp_path / "m2.npz"), {"w": np.zeros(3)})
    assert (tmp_path / "m.npz").read_bytes() == (tmp_path / "m2.npz").read_bytes()


def test_a_planted_symlink_is_not_followed(tmp_path):
    target = tmp_path / "victim.txt"
    target.write_text("keep me")
    out = tmp_path / "run"
    out.mkdir()
    for name in ("curves.png.tmp.png", ".tmp-curves.png"):    # the old fixed temporary names
        os.symlink(target, out / name)
    from mlcvlab.train.history import History
    History([{"epoch": 1, "train_loss": 1.0, "val_loss": None, "val_acc": None}]).plot(
        str(out / "curves.png"))
    assert target.read_text() == "keep me" and (out / "curves.png").stat().st_size > 1000


def test_orphan_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = tmp_path / ".tmp-999999999-abcd-checkpoint.npz"
    mine = tmp_path / f".tmp-{os.getpid()}-abcd-x"
    dead.write_bytes(b"half")
    mine.write_bytes(b"in progress")
    assert remove_orphan_temporaries(str(tmp_path)) == 1
    assert not dead.exists() and mine.exists()


# ------------------------------------------------------------------ the CLI
def test_config_is_written_before_the_first_step_and_resume_works_without_checkpoint(
        tmp_path, capsys):
    out = tmp_path / "run"
    assert main(DIGITS + ["--epochs", "0", "--out", str(out)]) == 0      # no epoch trained
    config = json.loads((out / "config.json").read_text())
    assert config["epochs"] == 0 and config["model"] == "nn4"
    for p in out.glob("checkpoint*"):
        p.unlink()                     # as if killed before the first checkpoint
    assert main(["train", "--resume", str(out), "--epochs", "2", "--quiet"]) == 0
    assert len(json.loads((out / "history.json").read_text())) == 2


def test_resume_trains_to_the_runs_own_epochs_and_refuses_other_settings(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(DIGITS + ["--epochs", "3", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    config["epochs"] = 5               # as if the run had asked for 5 and stopped after 3
    (out / "config.json").write_text(json.dumps(config))
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    assert len(json.loads((out / "history.json").read_text())) == 5      # not argparse's 20
    assert main(["train", "--resume", str(out), "--lr", "0.5", "--model", "mlp"]) == 1
    err = _err(capsys)
    assert "--lr 0.5 (the run has 0.1)" in err and "--model mlp (the run has nn4)" in err
    assert main(["train", "--resume", str(out), "--out", str(tmp_path / "other")]) == 1
    assert "--out" in _err(capsys)
    assert main(["train", "--resume", str(out), "--lr", "0.1", "--quiet"]) == 0   # same value


def test_corrupt_config_is_named(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{not json")
    assert main(["train", "--resume", str(out)]) == 1
    assert "config.json is not valid JSON" in _err(capsys)
    assert main(["train", "--resume", str(tmp_path / "nope")]) == 1
    assert "no such run folder" in _err(capsys)


def test_bad_output_folders_fail_at_once(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    start = time.perf_counter()
    assert main(DIGITS + ["--out", str(a_file)]) == 1
    assert "is a file, not a folder" in _err(capsys) and time.perf_counter() - start < 5
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    try:
        if os.access(ro, os.W_OK):     # root ignores permissions: use a path under a file
            bad = str(a_file / "sub")
        else:
            bad = str(ro / "run")
        assert main(DIGITS + ["--out", bad]) == 1
        assert "cannot write to the run folder" in _err(capsys) or "file" in _err(capsys)
    finally:
        os.chmod(ro, 0o700)


@pytest.mark.parametrize("flags, message", [
    (["--lr", "nan"], "--lr must be a finite number"),
    (["--lr", "-1"], "--lr must be a finite number"),
    (["--momentum", "1.5", "--optimizer", "momentum"], "--momentum must be"),
    (["--momentum", "0.5"], "--momentum is not used by --optimizer sgd"),
    (["--weight-decay", "inf"], "--weight-decay"),
    (["--val-fraction", "1"], "--val-fraction"),
    (["--threads", "0"], "must be >= 1, got 0"),
    (["--timeout", "0"], "--timeout"),
    (["--epochs", "-1"], "--epochs"),
    (["--workers", "3", "--batch-size", "64"], "divisible by --workers"),
    (["--model", "nope"], "--model 'nope' is not a model"),
    (["--model", "lenet5"], "cannot take the digits images of shape (1, 8, 8)"),
    (["--batch-size", "2000", "--drop-last", "yes"], "no batches"),
])
def test_bad_flags_are_named_before_training(tmp_path, capsys, flags, message):
    assert main(DIGITS + flags + ["--out", str(tmp_path / "r")]) == 1
    assert message in _err(capsys)
    assert not (tmp_path / "r" / "history.json").exists()


def test_adamw_weight_decay_and_momentum_are_recorded_as_used(tmp_path):
    assert main(DIGITS + ["--epochs", "0", "--optimizer", "adamw", "--weight-decay", "0",
                          "--out", str(tmp_path / "a")]) == 0
    assert json.loads((tmp_path / "a" / "config.json").read_text())["weight_decay"] == 0.0
    assert main(DIGITS + ["--epochs", "0", "--out", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "config.json").read_text())["momentum"] is None


def test_last_batch_of_one_into_batch_norm_is_dropped_or_refused(tmp_path, capsys):
    # mnist10k without a validation split: 8,000 images in batches of 421 leave one image
    common = ["train", "--dataset", "mnist10k", "--val-fraction", "0", "--batch-size", "421",
              "--epochs", "1"]
    start = time.perf_counter()
    assert main(common + ["--drop-last", "no", "--out", str(tmp_path / "no")]) == 1
    assert "last batch of 1" in _err(capsys) and time.perf_counter() - start < 20
    assert main(common + ["--out", str(tmp_path / "auto")]) == 0
    assert "the last batch of each epoch (1 samples) is dropped" in capsys.readouterr().out
    assert json.loads((tmp_path / "auto" / "config.json").read_text())["drop_last_batch"]


def test_a_full_disk_is_named_and_leaves_the_old_file(tmp_path, monkeypatch):
    import errno

    from mlcvlab import io as mio
    path = tmp_path / "history.json"
    mio.atomic_write_text(str(path), "old")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(mio.os, "fsync", full)
    with pytest.raises(OSError, match="no space left on the disk while writing .*history.json"):
        mio.atomic_write_text(str(path), "new")
    assert path.read_text() == "old"
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]


def test_conv_algorithm_holds_during_the_run_is_recorded_and_restored(tmp_path, monkeypatch,
                                                                      capsys):
    from mlcvlab.nn import conv
    from mlcvlab.train import cli as train_cli
    seen, build = [], train_cli.build_model
    monkeypatch.setattr(train_cli, "build_model",
                        lambda *a, **k: seen.append(conv.get_algorithm()) or build(*a, **k))
    before = conv.get_algorithm()
    out = tmp_path / "run"
    assert main(DIGITS + ["--epochs", "0", "--conv-algorithm", "fast", "--out", str(out)]) == 0
    assert seen == ["fast"] and conv.get_algorithm() == before
    assert json.loads((out / "config.json").read_text())["conv_algorithm"] == "fast"
    with pytest.raises(SystemExit):                 # argparse: usage error, exit status 2
        main(DIGITS + ["--conv-algorithm", "fastest", "--out", str(tmp_path / "b")])
    assert "invalid choice: 'fastest'" in capsys.readouterr().err
