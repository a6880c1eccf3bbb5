"""Mixtures written in other spellings than the ready-made models' are recognised as closed form and give
scikit-learn's numbers: ``MultivariateNormal`` with ``covariance_matrix`` or ``precision_matrix``, location and
scale built per dimension (one parameter per column, or one observed site per column), a product of Poissons
written as one site per count. Near misses run the generic route."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_iris
from sklearn.mixture import GaussianMixture
from sklearn.preprocessing import StandardScaler

import ppl_lvm as lvm
from ppl_lvm import constraints, dist
from ppl_lvm.models.mixtures import poisson_mixture

K = 3


@pytest.fixture(scope="module")
def iris64():
    return torch.tensor(StandardScaler().fit_transform(load_iris().data), dtype=torch.float64)


def _start(x):
    return x[torch.as_tensor(np.random.default_rng(0).choice(len(x), K, replace=False))]


def _sklearn(x, covariance_type, means, max_iter=40):
    d = x.shape[1]
    precisions = {"full": np.stack([np.eye(d)] * K), "tied": np.eye(d), "diag": np.ones((K, d))}[covariance_type]
    gm = GaussianMixture(K, covariance_type=covariance_type, weights_init=np.ones(K) / K, means_init=means.numpy(),
                         precisions_init=precisions, max_iter=max_iter, tol=0.0, reg_covar=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's ConvergenceWarning for the fixed iteration budget
        return gm.fit(x.numpy())


def _fit(model, data, init, max_iter=40):
    with pytest.warns(lvm.ConvergenceWarning):
        return lvm.infer(model, data, method="em", init_params=init, max_iter=max_iter, tol=0.0)


def _agrees(fit, sk, x):
    assert fit.closed_form
    assert fit.log_likelihood == pytest.approx(sk.score(x.numpy()) * len(x), rel=1e-9)
    np.testing.assert_allclose(fit.responsibilities["z"].numpy(), sk.predict_proba(x.numpy()), atol=1e-8)
    assert fit.bic() == pytest.approx(sk.bic(x.numpy()), rel=1e-9)


@lvm.model
def matrix_gmm(x, K=3, spelling="covariance_matrix", tied=False):
    d = x.shape[1]
    w = lvm.param(torch.ones(K) / K, constraint=constraints.simplex)
    locs = lvm.param(x[:K].clone())
    eye = torch.eye(d, dtype=x.dtype)
    matrix = lvm.param(eye if tied else eye.expand(K, d, d).clone(), constraint=constraints.positive_definite)
    with lvm.plate(len(x)):
        z = lvm.latent(dist.Categorical(w))
        lvm.observe(dist.MultivariateNormal(locs[z], **{spelling: matrix if tied else matrix[z]}), x)


@pytest.mark.parametrize("spelling", ["covariance_matrix", "precision_matrix"])
@pytest.mark.parametrize("tied", [False, True])
def test_a_gaussian_mixture_with_a_covariance_or_precision_matrix_is_closed_form(iris64, spelling, tied, float64):
    means = _start(iris64)
    sk = _sklearn(iris64, "tied" if tied else "full", means)
    fit = _fit(matrix_gmm, {"x": iris64, "K": K, "spelling": spelling, "tied": tied}, {"locs": means})
    _agrees(fit, sk, iris64)
    expected = sk.covariances_ if spelling == "covariance_matrix" else sk.precisions_
    np.testing.assert_allclose(fit.params["matrix"].numpy(), expected, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(fit.params["locs"].numpy(), sk.means_, rtol=1e-7, atol=1e-9)


@lvm.model
def per_dimension_gmm(x, K=3):
    w = lvm.param(torch.ones(K) / K, constraint=constraints.simplex)
    mus = [lvm.param(x[:K, d].clone(), name=f"mu{d}") for d in range(x.shape[1])]
    sds = [lvm.param(torch.ones(K, dtype=x.dtype), constraint=constraints.positive, name=f"sd{d}")
           for d in range(x.shape[1])]
    with lvm.plate(len(x)):
        z = lvm.latent(dist.Categorical(w))
        loc = torch.stack([mu[z] for mu in mus], -1)
        scale = torch.stack([sd[z] for sd in sds], -1)
        lvm.observe(dist.Normal(loc, scale).to_event(1), x)


@lvm.model
def column_sites_gmm(x0, x1, x2, x3, K=3):
    w = lvm.param(torch.ones(K) / K, constraint=constraints.simplex)
    with lvm.plate(len(x0)):
        z = lvm.latent(dist.Categorical(w))
        for d, column in enumerate((x0, x1, x2, x3)):
            mu = lvm.param(column[:K].clone(), name=f"mu{d}")
            sd = lvm.param(torch.ones(K, dtype=column.dtype), constraint=constraints.positive, name=f"sd{d}")
            lvm.observe(dist.Normal(mu[z], sd[z]), column, name=f"x{d}")


@pytest.mark.parametrize("model", [per_dimension_gmm, column_sites_gmm])
def test_per_dimension_location_and_scale_are_the_diagonal_kernel(iris64, model, float64):
    means = _start(iris64)
    sk = _sklearn(iris64, "diag", means)
    data = {"x": iris64} if model is per_dimension_gmm else {f"x{d}": iris64[:, d] for d in range(4)}
    fit = _fit(model, data, {f"mu{d}": means[:, d] for d in range(4)})
    _agrees(fit, sk, iris64)
    assert fit.pattern.family.covariance_type == "diag"
    for d in range(4):
        np.testing.assert_allclose(fit.params[f"mu{d}"].numpy(), sk.means_[:, d], rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(fit.params[f"sd{d}"].numpy() ** 2, sk.covariances_[:, d], rtol=1e-7)
    if model is column_sites_gmm:  # the kernels read three sites, not one argument: new data are refused clearly
        with pytest.raises(ValueError, match="refit on the new data"):
            fit.predict_proba(iris64[:5])


@lvm.model
def poisson_sites(c0, c1, c2, K=2):
    w = lvm.param(torch.ones(K) / K, constraint=constraints.simplex)
    with lvm.plate(len(c0)):
        z = lvm.latent(dist.Categorical(w))
        for j, counts in enumerate((c0, c1, c2)):
            rate = lvm.param(torch.linspace(1.0, 4.0, K) * (j + 1), constraint=constraints.positive, name=f"rate{j}")
            lvm.observe(dist.Poisson(rate[z]), counts, name=f"c{j}")


def test_a_product_of_poissons_written_as_three_sites_is_the_poisson_kernel(float64):
    g = torch.Generator().manual_seed(0)
    rates = torch.tensor([[1.0, 8.0, 3.0], [6.0, 2.0, 3.0]])
    counts = torch.poisson(rates[torch.randint(0, 2, (400,), generator=g)], generator=g)
    start = torch.stack([torch.linspace(1.0, 4.0, 2) * (j + 1) for j in range(3)], -1)
    with pytest.warns(lvm.ConvergenceWarning):
        sites = lvm.infer(poisson_sites, {f"c{j}": counts[:, j] for j in range(3)}, method="em",
                          init_params="params", max_iter=30, tol=0.0)
        event = lvm.infer(poisson_mixture, {"x": counts, "K": 2}, method="em",
                          init_params={"rates": start, "weights": torch.ones(2) / 2}, max_iter=30, tol=0.0)
    # the same kernel on the same numbers: equal to rounding (also with data seeds 1-4)
    assert sites.closed_form and event.closed_form and repr(sites.pattern.family) == "Poisson()"
    np.testing.assert_allclose(sites.history, event.history, rtol=1e-12)
    assert sites.log_likelihood == pytest.approx(event.log_likelihood, rel=1e-12)
    for j in range(3):
        np.testing.assert_allclose(sites.params[f"rate{j}"].numpy(), event.params["rates"][:, j].numpy(), rtol=1e-10)
    assert sites.n_parameters == event.n_parameters


@lvm.model
def shifted_covariance(x, K=2):
    d = x.shape[1]
    w = lvm.param(torch.ones(K) / K, constraint=constraints.simplex)
    locs = lvm.param(x[:K].clone())
    cov = lvm.param(torch.eye(d, dtype=x.dtype).expand(K, d, d).clone(), constraint=constraints.positive_definite)
    with lvm.plate(len(x)):
        z = lvm.latent(dist.Categorical(w))
        lvm.observe(dist.MultivariateNormal(locs[z], covariance_matrix=cov[z] + 0.5 * torch.eye(d, dtype=x.dtype)), x)


@lvm.model
def mixed_sites(x0, c1, K=2):
    w = lvm.param(torch.ones(K) / K, constraint=constraints.simplex)
    mu = lvm.param(torch.tensor([-1.0, 1.0]))
    sd = lvm.param(torch.ones(K), constraint=constraints.positive)
    rate = lvm.param(torch.tensor([1.0, 3.0]), constraint=constraints.positive)
    with lvm.plate(len(x0)):
        z = lvm.latent(dist.Categorical(w))
        lvm.observe(dist.Normal(mu[z], sd[z]), x0, name="x0")
        lvm.observe(dist.Poisson(rate[z]), c1, name="c1")


def test_near_misses_run_the_generic_route(iris64, float64):
    x = iris64[::5, :2]
    fit = lvm.infer(shifted_covariance, {"x": x}, method="em", max_iter=3, tol=None)
    assert not fit.closed_form
    assert lvm.Result.log_evidence(fit) == pytest.approx(fit.log_likelihood, rel=1e-10)
    # a Gaussian and a Poisson factor: no one kernel holds both
    g = torch.Generator().manual_seed(1)
    z = torch.randint(0, 2, (60,), generator=g)
    fit = lvm.infer(mixed_sites, {"x0": 3.0 * z - 1.5 + torch.randn(60, generator=g),
                                  "c1": torch.poisson(1.0 + 3.0 * z.double(), generator=g)},
                    method="em", max_iter=3, tol=None)
    assert not fit.closed_form
    assert np.all(np.diff(fit.history) >= -1e-9)  # generalised EM never falls (also with data seeds 2-5)
