"""Shared data and helpers for the EM kernel tests."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _quiet_hmmlearn():
    # hmmlearn reports through `logging`, not warnings; keep test output clean.
    logging.getLogger("hmmlearn").setLevel(logging.ERROR)
    yield


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One thread for torch and BLAS: on 2 shared cores, threads mostly contend."""
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(before)


def _standardise(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(0)) / x.std(0)


@pytest.fixture(scope="session")
def iris() -> np.ndarray:
    from sklearn.datasets import load_iris

    return _standardise(load_iris().data)


@pytest.fixture(scope="session")
def wine() -> np.ndarray:
    from sklearn.datasets import load_wine

    return _standardise(load_wine().data)


@pytest.fixture(scope="session")
def big_gmm_data() -> np.ndarray:
    """N = 100k, D = 5, five correlated clusters (the benchmark's data)."""
    return make_gmm_data(100_000, 5, 5, seed=0)


def make_gmm_data(n: int, d: int, k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 3
    parts = [rng.normal(size=(n // k, d)) @ rng.normal(size=(d, d)) * 0.5 + c for c in centers]
    return np.concatenate(parts)


def sklearn_init(X: np.ndarray, k: int, covariance_type: str, seed: int = 0) -> dict:
    """Initial parameters shared by sklearn and our EM (one sklearn EM step
    from random_from_data responsibilities, on at most 2000 points)."""
    X = X[:: max(1, len(X) // 2000)]
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        g0 = GaussianMixture(
            k,
            covariance_type=covariance_type,
            max_iter=1,
            random_state=seed,
            init_params="random_from_data",
        ).fit(X)
    return {"weights": g0.weights_, "means": g0.means_, "precisions": g0.precisions_}


def rel_err(a, b) -> float:
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def as_np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()
