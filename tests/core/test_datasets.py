"""ppl_lvm.datasets: shapes, values, splits, determinism and argument checks."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits, load_iris, load_wine

from ppl_lvm import datasets


def test_binarized_digits_shapes_values_and_split_sizes():
    split = datasets.binarized_digits()
    assert isinstance(split, datasets.DigitsSplit)
    x_train, x_test, y_train, y_test = split
    # 1797 images; sklearn's train_test_split rounds the test size up: ceil(0.2 * 1797) = 360
    assert x_train.shape == (1437, 64) and x_test.shape == (360, 64)
    assert y_train.shape == (1437,) and y_test.shape == (360,)
    assert x_train.dtype == torch.get_default_dtype() and y_train.dtype == torch.long
    assert set(torch.cat([x_train, x_test]).unique().tolist()) == {0.0, 1.0}
    assert set(torch.cat([y_train, y_test]).tolist()) == set(range(10))


def test_binarized_digits_are_the_thresholded_sklearn_images():
    digits = load_digits()
    x_train, x_test, y_train, y_test = datasets.binarized_digits(threshold=0.25)
    expected = {tuple(row) for row in (digits.data / 16 > 0.25).astype(np.float32)}
    got = torch.cat([x_train, x_test]).numpy()
    assert all(tuple(row) in expected for row in got)
    # the pixel mean of the whole set is preserved by the split (a partition, not a resample)
    assert abs(got.mean() - (digits.data / 16 > 0.25).mean()) < 1e-6
    # stratified: each class keeps its share within one image
    counts_test = torch.bincount(y_test, minlength=10).numpy()
    counts_all = np.bincount(digits.target, minlength=10)
    assert np.all(np.abs(counts_test - 0.2 * counts_all) <= 1)


def test_binarized_digits_deterministic_by_seed():
    a = datasets.binarized_digits(seed=3)
    b = datasets.binarized_digits(seed=3)
    c = datasets.binarized_digits(seed=4)
    for u, v in zip(a, b, strict=True):
        assert torch.equal(u, v)
    assert not torch.equal(a.x_train, c.x_train)


def test_binarized_digits_test_fraction():
    split = datasets.binarized_digits(test_fraction=0.5)
    assert len(split.x_train) + len(split.x_test) == 1797
    assert abs(len(split.x_test) - 898.5) <= 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"test_fraction": 0.0}, "test_fraction"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"test_fraction": "0.2"}, "test_fraction"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"threshold": 1.0}, "threshold"),
        ({"threshold": -0.1}, "threshold"),
    ],
)
def test_binarized_digits_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        datasets.binarized_digits(**kwargs)


@pytest.mark.parametrize("loader, reference, shape", [(datasets.iris, load_iris, (150, 4)),
                                                      (datasets.wine, load_wine, (178, 13))])
def test_tables(loader, reference, shape):
    ref = reference()
    x, y, names = loader()
    assert x.shape == shape and y.dtype == torch.long and names == list(ref.feature_names)
    np.testing.assert_allclose(x.numpy(), ref.data, rtol=1e-6)
    np.testing.assert_array_equal(y.numpy(), ref.target)
    xs, _, _ = loader(standardize=True)
    np.testing.assert_allclose(xs.mean(0).numpy(), 0.0, atol=1e-5)
    np.testing.assert_allclose(xs.std(0, unbiased=False).numpy(), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="standardize"):
        loader(standardize="yes")


def test_docstring_examples():
    import doctest

    failures, attempted = doctest.testmod(datasets, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert attempted > 0 and failures == 0
