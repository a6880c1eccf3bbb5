"""Small real data sets as torch tensors, for examples, tutorials and tests.

The data come from scikit-learn's bundled copies (no download): ``load_digits``, ``load_iris``, ``load_wine``.
scikit-learn is needed only when one of these functions is called.

>>> from ppl_lvm import datasets
>>> split = datasets.binarized_digits()
>>> split.x_train.shape, split.x_test.shape
(torch.Size([1437, 64]), torch.Size([360, 64]))
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np
import torch

__all__ = ["DigitsSplit", "binarized_digits", "iris", "wine"]


class DigitsSplit(NamedTuple):
    """A train/test split of the binarised 8x8 digits.

    Attributes
    ----------
    x_train, x_test : torch.Tensor
        Float tensors of 0/1 pixels, shape ``(n, 64)`` (row-major 8x8 images).
    y_train, y_test : torch.Tensor
        Long tensors of the digit labels 0-9, shape ``(n,)``.
    """

    x_train: torch.Tensor
    x_test: torch.Tensor
    y_train: torch.Tensor
    y_test: torch.Tensor


def _sklearn_datasets():
    try:
        from sklearn import datasets as sk_datasets  # scikit-learn is imported on first use: import ppl_lvm stays fast
    except ImportError as err:  # pragma: no cover - scikit-learn is a test dependency
        raise ImportError(
            "ppl_lvm.datasets reads scikit-learn's bundled data sets; install scikit-learn "
            "(pip install scikit-learn)"
        ) from err
    return sk_datasets


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (numbers.Integral, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    return int(seed)


def binarized_digits(test_fraction: float = 0.2, seed: int = 0, threshold: float = 0.5) -> DigitsSplit:
    """scikit-learn's 1797 handwritten 8x8 digits as binary pixels, split into train and test sets.

    Each pixel intensity (0-16) is scaled by 1/16 and set to 1 when it is greater than ``threshold``, else 0.
    The split is stratified by label and fixed by ``seed``.

    Parameters
    ----------
    test_fraction : float
        Fraction of the images held out, strictly between 0 and 1 (default 0.2: 1437 train, 360 test).
    seed : int
        Seed of the split; the same seed gives the same split.
    threshold : float
        Binarisation threshold on the scaled intensity, in [0, 1).

    Returns
    -------
    DigitsSplit
        ``(x_train, x_test, y_train, y_test)``: float 0/1 tensors of shape ``(n, 64)`` and long label tensors.

    Raises
    ------
    ValueError
        If ``test_fraction``, ``seed`` or ``threshold`` is out of range.

    Examples
    --------
    >>> x_train, x_test, y_train, y_test = binarized_digits(test_fraction=0.5, seed=1)
    >>> x_train.shape[1], sorted(x_train.unique().tolist()), y_train.dtype
    (64, [0.0, 1.0], torch.int64)
    """
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, numbers.Real) or not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be a number strictly between 0 and 1, got {test_fraction!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0 <= threshold < 1:
        raise ValueError(
            f"threshold must be a number in [0, 1) (pixels are scaled to [0, 1]), got {threshold!r}"
        )
    seed = _check_seed(seed)
    # scikit-learn is imported on first use: import ppl_lvm stays fast
    from sklearn.model_selection import train_test_split

    digits = _sklearn_datasets().load_digits()
    x = (digits.data / 16.0 > threshold).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=float(test_fraction), random_state=seed, stratify=y
    )
    dtype = torch.get_default_dtype()
    return DigitsSplit(
        torch.as_tensor(x_train, dtype=dtype),
        torch.as_tensor(x_test, dtype=dtype),
        torch.as_tensor(y_train, dtype=torch.long),
        torch.as_tensor(y_test, dtype=torch.long),
    )


def _table(loader_name: str, standardize: bool) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    if not isinstance(standardize, bool):
        raise ValueError(f"standardize must be True or False, got {standardize!r}")
    bunch = getattr(_sklearn_datasets(), loader_name)()
    x = np.asarray(bunch.data, dtype=np.float64)
    if standardize:
        # population standard deviation, as sklearn's StandardScaler
        x = (x - x.mean(axis=0)) / x.std(axis=0)
    return (
        torch.as_tensor(x, dtype=torch.get_default_dtype()),
        torch.as_tensor(bunch.target, dtype=torch.long),
        [str(n) for n in bunch.feature_names],
    )


def iris(standardize: bool = False) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Fisher's iris data: 150 flowers, 4 measurements (cm), 3 species.

    Parameters
    ----------
    standardize : bool
        Centre each column and divide it by its (population) standard deviation.

    Returns
    -------
    x : torch.Tensor
        Shape ``(150, 4)``, the default float dtype.
    y : torch.Tensor
        Long species labels 0-2, shape ``(150,)``.
    feature_names : list of str

    Examples
    --------
    >>> x, y, names = iris()
    >>> x.shape, int(y.max()), names[0]
    (torch.Size([150, 4]), 2, 'sepal length (cm)')
    """
    return _table("load_iris", standardize)


def wine(standardize: bool = False) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The UCI wine recognition data: 178 wines, 13 chemical measurements, 3 cultivars.

    Parameters
    ----------
    standardize : bool
        Centre each column and divide it by its (population) standard deviation.

    Returns
    -------
    x : torch.Tensor
        Shape ``(178, 13)``, the default float dtype.
    y : torch.Tensor
        Long cultivar labels 0-2, shape ``(178,)``.
    feature_names : list of str

    Examples
    --------
    >>> x, y, names = wine(standardize=True)
    >>> x.shape, round(float(x[:, 0].std(unbiased=False)), 4)
    (torch.Size([178, 13]), 1.0)
    """
    return _table("load_wine", standardize)
