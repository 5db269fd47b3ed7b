"""A 0-d array (BatchNorm's num_batches_tracked) keeps its shape through a checkpoint file."""
import numpy as np

from mlcvlab.train.checkpoint import read_state, write_state


def test_zero_dimensional_arrays_round_trip(tmp_path):
    path = str(tmp_path / "state.npz")
    write_state(path, {"n": np.array(7, dtype=np.int64), "v": np.arange(3.0)})
    back = read_state(path)
    assert back["n"].shape == () and int(back["n"]) == 7
    np.testing.assert_array_equal(back["v"], np.arange(3.0))
