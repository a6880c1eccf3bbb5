"""Scorers for choosing a model with scikit-learn's search tools (``GridSearchCV``, ``cross_val_score``).

They take any fitted estimator with the named criterion (:class:`ppl_lvm.sklearn.GaussianMixture`,
:class:`ppl_lvm.sklearn.MixtureEstimator`, scikit-learn's own ``GaussianMixture``) and import nothing;
:mod:`ppl_lvm.sklearn` gathers them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["bic_scorer"]


def bic_scorer(estimator: Any, X: Any, y: Any = None) -> float:
    """Minus the BIC of a fitted estimator on ``X``: the ``scoring`` that makes ``GridSearchCV`` choose by BIC.

    scikit-learn's search tools keep the highest score, so this returns ``-estimator.bic(X)``. Under
    cross-validation each held-out fold is scored by its BIC and the folds' scores are averaged; this is
    scikit-learn's own recipe for choosing the number of components of a ``GaussianMixture`` (its gallery example
    "Gaussian Mixture Model Selection").

    Why the default scoring chooses differently: without ``scoring``, ``GridSearchCV`` uses the estimator's
    ``score``, the mean log-likelihood per held-out sample. That estimates how well a fit predicts new rows; it
    charges extra components only through what they cost on held-out rows, never the ``p log n`` of BIC, so it
    is a different criterion and settles on as many components as still improve prediction. On iris (full
    covariances, K = 1 to 4) it picks K = 3 for most splits, for ppl_lvm's ``GaussianMixture`` and for
    scikit-learn's alike, where BIC on all the data picks K = 2; ``scoring=bic_scorer`` picks K = 2.

    Parameters
    ----------
    estimator : fitted estimator
        Anything with a ``bic(X)`` method (lower is better).
    X : array-like of shape (n_samples, n_features)
        The rows to score (a held-out fold under cross-validation).
    y : None
        Ignored; scikit-learn's scorer signature.

    Returns
    -------
    float
        ``-estimator.bic(X)`` (higher is better).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.model_selection import GridSearchCV
    >>> from ppl_lvm.sklearn import GaussianMixture, bic_scorer
    >>> X = np.vstack([np.random.default_rng(0).normal(size=(60, 2)) + c for c in (-4, 4)])
    >>> search = GridSearchCV(GaussianMixture(covariance_type="diag", random_state=0),
    ...                       {"n_components": [1, 2, 3]}, scoring=bic_scorer, cv=3).fit(X)
    >>> search.best_params_
    {'n_components': 2}
    """
    return -float(estimator.bic(X))
