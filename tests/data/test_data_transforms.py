"""Batch transforms: exact content checks, shapes, label order, validation."""
import numpy as np
import pytest

from mlcvlab.data.transforms import (BatchAugment, Compose, Cutout, Normalize, RandomCrop,
                                     RandomHorizontalFlip)


def batch(n=6, c=2, h=8, w=8, seed=0):
    return np.random.default_rng(seed).random((n, c, h, w)).astype(np.float32) + 1.0


def test_random_crop_keeps_shape_and_moves_content():
    xb = batch()
    out = RandomCrop(8, padding=2, rng=0)(xb)
    assert out.shape == xb.shape and out.dtype == xb.dtype and out.flags.c_contiguous
    padded = np.pad(xb, ((0, 0), (0, 0), (2, 2), (2, 2)))
    for i in range(len(xb)):   # each output is exactly one 8x8 window of the padded image
        windows = [(dy, dx) for dy in range(5) for dx in range(5)
                   if np.array_equal(padded[i, :, dy:dy + 8, dx:dx + 8], out[i])]
        assert len(windows) == 1
    # Content moved (not all centre crops) and the zero padding appears.
    assert not np.array_equal(out, xb) and (out == 0).any()


def test_random_crop_smaller_size_and_offsets_cover_range():
    xb = np.tile(np.arange(10, dtype=np.float32), (400, 1, 10, 1))   # value = column index
    out = RandomCrop((10, 4), rng=1)(xb)
    assert out.shape == (400, 1, 10, 4)
    left = out[:, 0, 0, 0]
    np.testing.assert_array_equal(out[:, 0, 0, :], left[:, None] + np.arange(4))
    assert set(left.astype(int).tolist()) == set(range(7))


def test_flip_is_exact():
    xb = batch(n=200)
    out = RandomHorizontalFlip(0.5, rng=0)(xb)
    flipped = np.all(out == xb[..., ::-1], axis=(1, 2, 3))
    same = np.all(out == xb, axis=(1, 2, 3))
    assert np.all(flipped ^ same) and 60 < flipped.sum() < 140
    np.testing.assert_array_equal(RandomHorizontalFlip(1.0)(xb), xb[..., ::-1])
    np.testing.assert_array_equal(RandomHorizontalFlip(0.0)(xb), xb)


def test_normalize_per_channel():
    xb = batch(c=3)
    out = Normalize([0.5, 1.0, 2.0], [1.0, 2.0, 4.0])(xb)
    np.testing.assert_allclose(out[:, 1], (xb[:, 1] - 1.0) / 2.0, rtol=1e-6)
    np.testing.assert_allclose(out[:, 2], (xb[:, 2] - 2.0) / 4.0, rtol=1e-6)
    assert out.dtype == np.float32
    with pytest.raises(ValueError, match="3 channel statistics for xb with 2 channels"):
        Normalize([0, 0, 0], [1, 1, 1])(batch(c=2))
    with pytest.raises(ValueError, match="std must be > 0"):
        Normalize([0], [0])


def test_cutout_zeroes_exactly_the_clipped_square():
    n, size, h = 300, 4, 8
    xb = batch(n=n, h=h, w=h)
    t = Cutout(size, rng=0)
    state = t.rng.bit_generator.state
    out = t(xb)
    # Re-draw the same centres to build the expected square independently.
    gen = np.random.default_rng()
    gen.bit_generator.state = state
    cy, cx = gen.integers(0, h, n), gen.integers(0, h, n)
    for i in range(n):
        mask = np.zeros((h, h), bool)
        mask[max(cy[i] - 2, 0):min(cy[i] + 2, h), max(cx[i] - 2, 0):min(cx[i] + 2, h)] = True
        assert np.all(out[i][:, mask] == 0)
        np.testing.assert_array_equal(out[i][:, ~mask], xb[i][:, ~mask])
    zeros = (out[:, 0] == 0).sum(axis=(1, 2))
    assert zeros.max() == size * size and zeros.min() < size * size  # some clipped at border
    assert np.all(xb > 0)  # input untouched


def test_batch_augment_shapes_and_label_order():
    xb, yb = batch(n=3), np.array([7, 8, 9])
    out, y = BatchAugment(4, RandomHorizontalFlip(0.5, rng=0))(xb, yb)
    assert out.shape == (12, 2, 8, 8)
    assert y.tolist() == [7, 7, 7, 7, 8, 8, 8, 8, 9, 9, 9, 9]
    for row in range(12):   # row i*M + m is a copy (maybe flipped) of image i
        i = row // 4
        assert np.array_equal(out[row], xb[i]) or np.array_equal(out[row], xb[i, ..., ::-1])
    # Copies get independent draws.
    out, _ = BatchAugment(8, Cutout(3, rng=0))(xb, yb)
    assert len({out[k].tobytes() for k in range(8)}) > 1


def test_call_forms_are_hard_to_misuse():
    xb, yb = batch(n=2), np.array([0, 1])
    out = Compose([RandomCrop(8, 1, rng=0), RandomHorizontalFlip(rng=0)])(xb)
    assert isinstance(out, np.ndarray)             # t(xb) -> array, not a tuple
    pair = Compose([Cutout(2, rng=0)])(xb, yb)
    assert isinstance(pair, tuple) and pair[1] is not None
    with pytest.raises(TypeError, match=r"call it as `xb, yb = t\(xb, yb\)`"):
        BatchAugment(2, Cutout(2))(xb)
    with pytest.raises(TypeError, match="Compose changes the batch size"):
        Compose([BatchAugment(2, Cutout(2))])(xb)
    with pytest.raises(ValueError, match=r"expected xb of shape \(N, C, H, W\)"):
        Cutout(2)(xb[0])
    with pytest.raises(ValueError, match="2 images but yb has shape"):
        Cutout(2)(xb, np.arange(3))


def test_seeded_transforms_repeat():
    xb = batch(n=5)
    make = lambda: Compose([RandomCrop(8, 2, rng=3), RandomHorizontalFlip(rng=4),  # noqa
                            Cutout(3, rng=5)])
    np.testing.assert_array_equal(make()(xb), make()(xb))


@pytest.mark.parametrize("bad", [lambda: RandomCrop(0), lambda: RandomCrop(4, -1),
                                 lambda: RandomHorizontalFlip(1.5), lambda: Cutout(0),
                                 lambda: BatchAugment(0, Cutout(1))])
def test_bad_hyperparameters(bad):
    with pytest.raises(ValueError):
        bad()
