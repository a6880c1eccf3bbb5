"""Gaussian mixture EM against sklearn.mixture.GaussianMixture, same init."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from em_helpers import as_np, rel_err, sklearn_init
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from ppl_lvm.em.families import Gaussian
from ppl_lvm.em.mixture import fit_mixture, mixture_log_likelihood, mixture_n_parameters

COV_TYPES = ["full", "diag", "spherical", "tied"]


def _sklearn_fit(X, k, ct, init, max_iter):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return GaussianMixture(
            k,
            covariance_type=ct,
            max_iter=max_iter,
            tol=0.0,
            weights_init=init["weights"],
            means_init=init["means"],
            precisions_init=init["precisions"],
        ).fit(X)


def assert_matches_sklearn(X, k, ct, strategy, max_iter, seed=0):
    init = sklearn_init(X, k, ct, seed)
    ref = _sklearn_fit(X, k, ct, init, max_iter)
    family = Gaussian(ct, strategy=strategy)
    res = fit_mixture(torch.as_tensor(X), family, init, max_iter=max_iter, tol=0.0)
    assert res.n_iter == ref.n_iter_ == max_iter
    assert rel_err(res.history[-1], ref.lower_bound_) < 1e-6
    assert rel_err(res.history, ref.lower_bounds_) < 1e-6
    ll, resp = mixture_log_likelihood(torch.as_tensor(X), family, res.params)
    np.testing.assert_allclose(as_np(resp), ref.predict_proba(X), atol=1e-6, rtol=0)
    np.testing.assert_allclose(as_np(ll), ref.score_samples(X), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(as_np(res.params["weights"]), ref.weights_, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(as_np(res.params["means"]), ref.means_, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(as_np(res.params["covariances"]), ref.covariances_, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(as_np(res.params["precisions_cholesky"]), ref.precisions_cholesky_, rtol=1e-6, atol=1e-8)
    return res, ref


@pytest.mark.parametrize("strategy", ["moments", "direct"])
@pytest.mark.parametrize("ct", COV_TYPES)
@pytest.mark.parametrize("dataset,k", [("iris", 3), ("wine", 3)])
def test_matches_sklearn_small(dataset, k, ct, strategy, request):
    X = request.getfixturevalue(dataset)
    assert_matches_sklearn(X, k, ct, strategy, max_iter=15)


@pytest.mark.parametrize("ct", COV_TYPES)
def test_matches_sklearn_100k(big_gmm_data, ct):
    assert_matches_sklearn(big_gmm_data, 5, ct, "auto", max_iter=3)


def test_first_iteration_is_exact_to_1e10(iris):
    """One E-step + M-step from identical parameters: parameters agree to 1e-10."""
    for ct in COV_TYPES:
        init = sklearn_init(iris, 3, ct)
        ref = _sklearn_fit(iris, 3, ct, init, max_iter=1)
        res = fit_mixture(torch.as_tensor(iris), Gaussian(ct), init, max_iter=1, tol=0.0)
        for ours, theirs in [
            (res.params["means"], ref.means_),
            (res.params["covariances"], ref.covariances_),
            (res.params["precisions_cholesky"], ref.precisions_cholesky_),
        ]:
            np.testing.assert_allclose(as_np(ours), theirs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("ct", COV_TYPES)
def test_offset_data_is_accurate(iris, ct):
    """Data far from the origin: centring keeps the expanded square accurate.

    The reference is sklearn on the *centred* data (EM is translation
    equivariant): sklearn's own diag/spherical M-step uses raw second moments
    and loses ~10 digits at this offset, so it is not a valid reference here.
    """
    offset = 1e4
    X = iris * 0.1
    init = sklearn_init(X, 3, ct)
    ref = _sklearn_fit(X, 3, ct, init, max_iter=5)
    shifted = dict(init, means=init["means"] + offset)
    res = fit_mixture(torch.as_tensor(X + offset), Gaussian(ct), shifted, max_iter=5, tol=0.0)
    assert rel_err(res.history, ref.lower_bounds_) < 1e-6
    np.testing.assert_allclose(as_np(res.params["means"]) - offset, ref.means_, atol=1e-8)


@pytest.mark.parametrize("ct", COV_TYPES)
def test_n_parameters_matches_sklearn(iris, ct):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = GaussianMixture(4, covariance_type=ct, max_iter=2, random_state=0).fit(iris)
    params = {
        "weights": torch.as_tensor(ref.weights_),
        "means": torch.as_tensor(ref.means_),
        "covariances": torch.as_tensor(ref.covariances_),
    }
    assert mixture_n_parameters(Gaussian(ct), params) == ref._n_parameters()


def test_tolerance_convention(iris):
    """Convergence when |change in mean log-likelihood| < tol, as sklearn."""
    init = sklearn_init(iris, 3, "full")
    ref = GaussianMixture(
        3,
        covariance_type="full",
        max_iter=500,
        tol=1e-4,
        weights_init=init["weights"],
        means_init=init["means"],
        precisions_init=init["precisions"],
    ).fit(iris)
    res = fit_mixture(torch.as_tensor(iris), Gaussian("full"), init, max_iter=500, tol=1e-4)
    assert res.converged and ref.converged_
    assert res.n_iter == ref.n_iter_


@pytest.mark.parametrize("ct", COV_TYPES)
def test_bic_aic_match_sklearn(iris, ct):
    from ppl_lvm.em.mixture import aic, bic

    init = sklearn_init(iris, 3, ct)
    ref = _sklearn_fit(iris, 3, ct, init, max_iter=5)
    res = fit_mixture(torch.as_tensor(iris), Gaussian(ct), init, max_iter=5, tol=0.0)
    ll, _ = mixture_log_likelihood(torch.as_tensor(iris), Gaussian(ct), res.params)
    p = mixture_n_parameters(Gaussian(ct), res.params)
    assert bic(float(ll.sum()), p, len(iris)) == pytest.approx(ref.bic(iris), rel=1e-9)
    assert aic(float(ll.sum()), p) == pytest.approx(ref.aic(iris), rel=1e-9)


def test_float32_family(iris):
    init = sklearn_init(iris, 3, "full")
    r64 = fit_mixture(torch.as_tensor(iris), Gaussian("full"), init, max_iter=10, tol=0.0)
    r32 = fit_mixture(torch.as_tensor(iris), Gaussian("full", dtype=torch.float32), init, max_iter=10, tol=0.0)
    assert r32.params["means"].dtype == torch.float32
    assert rel_err(r32.history, r64.history) < 1e-4
