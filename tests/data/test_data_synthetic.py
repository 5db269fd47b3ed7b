"""Synthetic datasets: shapes, labels, formulas, seeds."""
import numpy as np
import pytest

from mlcvlab.data import synthetic


def test_perceptron_points():
    X, y = synthetic.perceptron_points(500, seed=0)
    assert X.shape == (500, 2) and y.dtype == np.int64
    assert set(np.unique(y)) == {-1, 1}
    np.testing.assert_array_equal(y == 1, X[:, 0] > X[:, 1])
    assert X.min() >= -1 and X.max() <= 1
    np.testing.assert_array_equal(X, synthetic.perceptron_points(500, seed=0)[0])


def test_eggholder_formula_and_noise():
    # Known global minimum: f(512, 404.2319) = -959.6407.
    assert synthetic.eggholder_function(np.array(512.0), np.array(404.2319)) == \
        pytest.approx(-959.6407, abs=1e-3)
    X, t = synthetic.eggholder(20000, seed=1)
    assert X.shape == (20000, 2) and np.abs(X).max() <= 512
    residual = t - synthetic.eggholder_function(X[:, 0], X[:, 1])
    assert residual.std() == pytest.approx(0.3, rel=0.05) and abs(residual.mean()) < 0.01
    _, clean = synthetic.eggholder(10, seed=1, noise_std=0.0)
    np.testing.assert_array_equal(clean, synthetic.eggholder_function(*X[:10].T))


@pytest.mark.parametrize("target, f", [
    ("abs", np.abs), ("xsin5x", lambda x: x * np.sin(5 * x)),
    ("step_sin", lambda x: (x > 0) + 0.2 * np.sin(5 * x))])
def test_dying_relu_targets(target, f):
    x, t = synthetic.dying_relu_1d(3000, target, seed=0)
    assert x.shape == t.shape == (3000, 1)
    assert np.abs(x).max() <= np.sqrt(7) and np.abs(x).max() > 2.5
    np.testing.assert_allclose(t, f(x))
    with pytest.raises(ValueError, match="unknown target 'sin'"):
        synthetic.dying_relu_1d(10, "sin")
    x2, t2 = synthetic.dying_relu_2d(5, seed=0)
    np.testing.assert_allclose(t2[:, 1], np.abs(x2[:, 0] - x2[:, 1]))


def test_dropout_regression_scales_and_weights():
    X, y = synthetic.dropout_regression(20000, seed=0, noise_std=0.0)
    assert X.std(axis=0) == pytest.approx([1.0, 10.0], rel=0.03)
    w, *_ = np.linalg.lstsq(X, y, rcond=None)
    np.testing.assert_allclose(w, [1.0, 1.0], atol=1e-10)


def test_edge_images_classes_and_domain_shift():
    X, y = synthetic.edge_images(300, seed=0, size=8, noise_std=0.0)
    assert X.shape == (300, 1, 8, 8) and X.dtype == np.float32 and y.dtype == np.int64
    assert np.bincount(y).tolist() == [100, 100, 100]
    img = X[:, 0]
    # No edge: flat. Vertical: constant down each column; horizontal: along each row.
    assert np.all(img[y == 0].max(axis=(1, 2)) == img[y == 0].min(axis=(1, 2)))
    assert np.allclose(np.diff(img[y == 1], axis=1), 0) and \
        not np.allclose(np.diff(img[y == 1], axis=2), 0)
    assert np.allclose(np.diff(img[y == 2], axis=2), 0) and \
        not np.allclose(np.diff(img[y == 2], axis=1), 0)
    X5, y5 = synthetic.edge_images(100, seed=0, n_classes=5, noise_std=0.0)
    diag = X5[y5 == 3, 0]
    assert np.allclose(diag[:, 1:, 1:], diag[:, :-1, :-1])   # constant along diagonals
    Xs, _ = synthetic.edge_images(300, seed=1, contrast=(0.1, 0.2), noise_std=0.2)
    assert Xs[:, 0].std(axis=(1, 2)).mean() != pytest.approx(img.std(axis=(1, 2)).mean(),
                                                             rel=0.2)
    with pytest.raises(ValueError, match="n_classes must be in 1..5"):
        synthetic.edge_images(10, n_classes=6)


def test_bad_n():
    for fn in (synthetic.perceptron_points, synthetic.eggholder, synthetic.dropout_regression,
               synthetic.edge_images):
        with pytest.raises(ValueError, match="n must be an int >= 1"):
            fn(0)
