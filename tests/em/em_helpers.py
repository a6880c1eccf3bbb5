"""Plain helper functions shared by the EM kernel tests (fixtures live in conftest.py).

A uniquely named module, so ``import`` cannot pick up another directory's conftest.
"""

from __future__ import annotations

import numpy as np
import torch


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
