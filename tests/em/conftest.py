"""Shared data and helpers for the EM kernel tests."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from demo_data import correlated_clusters


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
    return correlated_clusters(100_000, 5, 5, seed=0)
