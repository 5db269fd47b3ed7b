"""DataLoader: determinism, coverage, drop_last, changing batch size, prefetch parity."""
import numpy as np
import pytest

from mlcvlab.data import DataLoader
from mlcvlab.data.transforms import BatchAugment, Compose, Cutout, RandomCrop


def data(n=23):
    X = np.arange(n * 4, dtype=np.float64).reshape(n, 1, 2, 2)
    return X, np.arange(n)


def epoch(loader):
    return [(xb.copy(), yb.copy()) for xb, yb in loader]


@pytest.mark.parametrize("prefetch", [0, 2])
def test_same_seed_same_batches_and_dtype(prefetch):
    X, y = data()
    a = epoch(DataLoader(X, y, 5, seed=3, prefetch=prefetch))
    b = epoch(DataLoader(X, y, 5, seed=3, prefetch=prefetch))
    c = epoch(DataLoader(X, y, 5, seed=4, prefetch=prefetch))
    assert all(np.array_equal(ya, yb) for (_, ya), (_, yb) in zip(a, b))
    assert not all(np.array_equal(ya, yc) for (_, ya), (_, yc) in zip(a, c))
    xb, yb = a[0]
    assert xb.dtype == np.float32 and xb.flags.c_contiguous
    np.testing.assert_array_equal(xb, X[yb].astype(np.float32))  # images follow labels


def test_every_index_once_per_epoch_and_epochs_differ():
    X, y = data(23)
    loader = DataLoader(X, y, 5, seed=0)
    assert len(loader) == 5
    first = np.concatenate([yb for _, yb in loader])
    second = np.concatenate([yb for _, yb in loader])
    assert sorted(first.tolist()) == list(range(23)) == sorted(second.tolist())
    assert not np.array_equal(first, second)
    assert [len(yb) for _, yb in loader] == [5, 5, 5, 5, 3]
    ordered = np.concatenate([yb for _, yb in DataLoader(X, y, 5, shuffle=False)])
    assert ordered.tolist() == list(range(23))


def test_drop_last():
    X, y = data(23)
    loader = DataLoader(X, y, 5, drop_last=True, seed=0)
    sizes = [len(yb) for _, yb in loader]
    assert sizes == [5, 5, 5, 5] and len(loader) == 4


@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_changing_batch_size_takes_effect_at_next_batch(prefetch):
    X, y = data(40)
    loader = DataLoader(X, y, 4, seed=0, prefetch=prefetch)
    sizes, seen = [], []
    for i, (_, yb) in enumerate(loader):
        sizes.append(len(yb))
        seen.extend(yb.tolist())
        loader.batch_size = [2, 7, 3, 10][i % 4]   # as CyclicBatchSize does after each batch
    assert sizes == [4, 2, 7, 3, 10, 2, 7, 3, 2]
    assert sorted(seen) == list(range(40))
    assert len(loader) == -(-40 // loader.batch_size)


def test_prefetch_gives_the_same_augmented_batches_as_no_prefetch():
    """Speculative prefetch is rolled back: augmentation randomness is identical with and
    without the worker thread, even when the batch size changes and an epoch is abandoned."""
    X = np.random.default_rng(0).random((50, 1, 6, 6))
    y = np.arange(50)

    def run(prefetch):
        t = Compose([RandomCrop(6, 2, rng=1), Cutout(2, rng=2)])
        loader = DataLoader(X, y, 4, seed=5, transform=t, prefetch=prefetch)
        out = []
        for i, (xb, yb) in enumerate(loader):       # epoch 1: cyclic batch sizes
            out.append(xb.copy())
            loader.batch_size = 3 + i % 5
        for i, (xb, _) in enumerate(loader):        # epoch 2: abandoned after 2 batches
            out.append(xb.copy())
            if i == 1:
                break
        out += [xb.copy() for xb, _ in loader]      # epoch 3: complete
        return out

    a, b = run(0), run(3)
    assert len(a) == len(b)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))


def test_batch_augment_in_loader():
    X, y = data(10)
    loader = DataLoader(X, y, 4, transform=BatchAugment(3, Cutout(1, rng=0)), seed=0)
    xb, yb = next(iter(loader))
    assert xb.shape == (12, 1, 2, 2) and len(yb) == 12
    assert np.all(yb[::3] == yb[1::3]) and np.all(yb[::3] == yb[2::3])


def test_state_dict_resumes_identically():
    X = np.random.default_rng(0).random((30, 1, 4, 4))
    y = np.arange(30)
    loader = DataLoader(X, y, 7, seed=1, transform=Cutout(2, rng=3))
    epoch(loader)
    state = loader.state_dict()
    expected = epoch(loader)
    other = DataLoader(X, y, 2, seed=99, transform=Cutout(2, rng=42))
    other.load_state_dict(state)
    got = epoch(other)
    assert all(np.array_equal(p[0], q[0]) for p, q in zip(expected, got))


def test_worker_errors_reach_the_caller():
    X, y = data(10)

    def broken(xb, yb):
        raise ValueError("broken transform")

    with pytest.raises(ValueError, match="broken transform"):
        epoch(DataLoader(X, y, 3, transform=broken))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(batch_size=0), ValueError, "batch_size must be an int >= 1, got 0"),
    (dict(batch_size=2.5), ValueError, "batch_size must be an int >= 1"),
    (dict(batch_size=2, transform=3), TypeError, "transform must be callable"),
    (dict(batch_size=2, prefetch=-1), ValueError, "prefetch must be an int >= 0"),
])
def test_argument_validation(kwargs, error, match):
    X, y = data(5)
    with pytest.raises(error, match=match):
        DataLoader(X, y, **kwargs)


def test_length_mismatch():
    with pytest.raises(ValueError, match=r"len\(X\) == len\(y\) required, got X \(5, 1, 2, 2\) "
                                         r"and y \(4,\)"):
        DataLoader(data(5)[0], np.arange(4), 2)
    loader = DataLoader(*data(5), 2)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        loader.batch_size = -3
