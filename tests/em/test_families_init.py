"""Emission families (densities, M-steps, sampling) and initialisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from em_helpers import as_np, make_gmm_data
from torch import distributions as D

from ppl_lvm.em.families import Bernoulli, Categorical, Gaussian, Poisson, get_family
from ppl_lvm.em.init import (
    initialize_hmm,
    initialize_mixture,
    kmeans_plusplus,
    make_generator,
    params_from_responsibilities,
    random_responsibilities,
)
from ppl_lvm.em.mixture import mixture_e_step, weights_m_step

F64 = torch.float64


def _random_full_params(k=3, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(k, d, d, generator=g, dtype=F64)
    cov = a @ a.transpose(-1, -2) + 0.5 * torch.eye(d, dtype=F64)
    return {"means": torch.randn(k, d, generator=g, dtype=F64), "covariances": cov}


@pytest.mark.parametrize("strategy", ["moments", "direct"])
def test_gaussian_log_prob_full_matches_torch(strategy):
    p = _random_full_params()
    X = torch.randn(200, 4, generator=torch.Generator().manual_seed(1), dtype=F64) * 2
    fam = Gaussian("full", strategy=strategy)
    lp = fam.log_prob(X, fam.complete_params(p))
    ref = D.MultivariateNormal(p["means"], covariance_matrix=p["covariances"]).log_prob(X.unsqueeze(1))
    torch.testing.assert_close(lp, ref, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("ct", ["diag", "spherical", "tied"])
def test_gaussian_log_prob_other_types_match_torch(ct):
    g = torch.Generator().manual_seed(2)
    k, d = 3, 3
    means = torch.randn(k, d, generator=g, dtype=F64)
    if ct == "diag":
        cov = torch.rand(k, d, generator=g, dtype=F64) + 0.2
        full = torch.diag_embed(cov)
    elif ct == "spherical":
        cov = torch.rand(k, generator=g, dtype=F64) + 0.2
        full = cov[:, None, None] * torch.eye(d, dtype=F64)
    else:
        a = torch.randn(d, d, generator=g, dtype=F64)
        cov = a @ a.T + torch.eye(d, dtype=F64)
        full = cov.expand(k, d, d)
    X = torch.randn(100, d, generator=g, dtype=F64)
    fam = Gaussian(ct)
    lp = fam.log_prob(X, fam.complete_params({"means": means, "covariances": cov}))
    ref = D.MultivariateNormal(means, covariance_matrix=full).log_prob(X.unsqueeze(1))
    torch.testing.assert_close(lp, ref, rtol=1e-12, atol=1e-10)


def test_complete_params_from_precisions_roundtrip():
    p = _random_full_params()
    fam = Gaussian("full")
    a = fam.complete_params(p)
    b = fam.complete_params({"means": p["means"], "precisions": torch.linalg.inv(p["covariances"])})
    torch.testing.assert_close(a["precisions_cholesky"], b["precisions_cholesky"])
    torch.testing.assert_close(b["covariances"], p["covariances"])


def test_discrete_log_probs_match_torch():
    g = torch.Generator().manual_seed(3)
    probs = torch.rand(3, 5, generator=g, dtype=F64) * 0.98 + 0.01
    Xb = torch.bernoulli(torch.full((50, 5), 0.4, dtype=F64), generator=g)
    ref = D.Bernoulli(probs=probs).log_prob(Xb.unsqueeze(1)).sum(-1)
    torch.testing.assert_close(Bernoulli().log_prob(Xb, {"probs": probs}), ref)

    rates = torch.rand(3, 2, generator=g, dtype=F64) * 5 + 0.1
    Xp = torch.poisson(torch.full((50, 2), 3.0, dtype=F64), generator=g)
    ref = D.Poisson(rates).log_prob(Xp.unsqueeze(1)).sum(-1)
    torch.testing.assert_close(Poisson().log_prob(Xp, {"rates": rates}), ref)

    cat = torch.softmax(torch.randn(3, 6, generator=g, dtype=F64), -1)
    Xc = torch.randint(6, (50,), generator=g)
    ref = D.Categorical(probs=cat).log_prob(Xc.unsqueeze(1))
    torch.testing.assert_close(Categorical(6).log_prob(Xc, {"probs": cat}), ref)
    torch.testing.assert_close(Categorical(6).log_prob(Xc[:, None], {"probs": cat}), ref)


def test_weighted_m_steps_are_weighted_mles():
    rng = np.random.default_rng(4)
    n = 300
    resp = torch.as_tensor(rng.dirichlet(np.ones(3), size=n))
    w = as_np(resp)
    Xb = torch.as_tensor((rng.random((n, 4)) < 0.3).astype(float))
    probs = Bernoulli().m_step(Xb, resp)["probs"]
    np.testing.assert_allclose(as_np(probs), (w.T @ as_np(Xb)) / w.sum(0)[:, None], rtol=1e-12)
    Xp = torch.as_tensor(rng.poisson(4.0, size=(n, 2)).astype(float))
    rates = Poisson().m_step(Xp, resp)["rates"]
    np.testing.assert_allclose(as_np(rates), (w.T @ as_np(Xp)) / w.sum(0)[:, None], rtol=1e-12)
    Xc = torch.as_tensor(rng.integers(0, 5, size=n))
    cat = Categorical(5).m_step(Xc, resp)["probs"]
    onehot = np.eye(5)[as_np(Xc)]
    np.testing.assert_allclose(as_np(cat), (w.T @ onehot) / w.sum(0)[:, None], rtol=1e-9)


@pytest.mark.parametrize("ct", ["full", "diag", "spherical", "tied"])
def test_gaussian_sampling_moments(ct):
    p = _random_full_params(k=2, d=2, seed=5)
    fam = Gaussian(ct)
    if ct == "diag":
        p["covariances"] = torch.diagonal(p["covariances"], dim1=-2, dim2=-1)
    elif ct == "spherical":
        p["covariances"] = torch.tensor([0.5, 2.0], dtype=F64)
    elif ct == "tied":
        p["covariances"] = p["covariances"][0]
    z = torch.cat([torch.zeros(20000, dtype=torch.long), torch.ones(20000, dtype=torch.long)])
    x = fam.sample(p, z, make_generator(0))
    assert x.shape == (40000, 2) and x.dtype == F64
    emp = x[:20000].mean(0)
    torch.testing.assert_close(emp, p["means"][0], atol=0.05, rtol=0)
    # same generator seed, same draws
    torch.testing.assert_close(fam.sample(p, z, make_generator(0)), x, rtol=0, atol=0)


def test_discrete_sampling_shapes():
    z = torch.tensor([0, 1, 1, 0])
    g = make_generator(1)
    assert Bernoulli().sample({"probs": torch.rand(2, 3, dtype=F64)}, z, g).shape == (4, 3)
    assert Poisson().sample({"rates": torch.rand(2, 3, dtype=F64)}, z, g).shape == (4, 3)
    s = Categorical(4).sample({"probs": torch.full((2, 4), 0.25, dtype=F64)}, z, g)
    assert s.shape == (4,) and s.dtype == torch.long


def test_get_family():
    assert get_family("gaussian", covariance_type="diag").covariance_type == "diag"
    with pytest.raises(ValueError):
        get_family("nope")


def test_mixture_e_step_logsumexp():
    lp = torch.randn(30, 4, dtype=F64) * 10
    lw = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64))
    ll, resp = mixture_e_step(lp, lw)
    torch.testing.assert_close(ll, torch.logsumexp(lp + lw, 1))
    torch.testing.assert_close(resp, torch.softmax(lp + lw, 1))
    torch.testing.assert_close(weights_m_step(resp.sum(0)).sum(), torch.tensor(1.0, dtype=F64))


# ----------------------------------------------------------------- initialisation


def test_kmeans_plusplus_deterministic_and_spread():
    X = torch.as_tensor(make_gmm_data(2000, 2, 4, seed=1))
    c1, i1 = kmeans_plusplus(X, 4, make_generator(3))
    c2, i2 = kmeans_plusplus(X, 4, make_generator(3))
    assert torch.equal(i1, i2) and torch.equal(c1, c2)
    assert len(set(i1.tolist())) == 4


def test_kmeans_plusplus_identical_points():
    X = torch.zeros(10, 2, dtype=F64)
    centers, idx = kmeans_plusplus(X, 3, make_generator(0))
    assert not torch.isnan(centers).any() and idx.shape == (3,)


@pytest.mark.parametrize("init", ["kmeans", "k-means++", "random", "random_from_data"])
def test_initialize_mixture_deterministic(init):
    X = torch.as_tensor(make_gmm_data(500, 3, 3, seed=2))
    a = initialize_mixture(X, Gaussian("full"), 3, init, seed=7)
    b = initialize_mixture(X, Gaussian("full"), 3, init, seed=7)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key])
    torch.testing.assert_close(a["weights"].sum(), torch.tensor(1.0, dtype=F64))


def test_random_responsibilities_rows_sum_to_one():
    r = random_responsibilities(100, 4, make_generator(0))
    torch.testing.assert_close(r.sum(1), torch.ones(100, dtype=F64))


def test_params_from_responsibilities_matches_sklearn():
    from sklearn.mixture._gaussian_mixture import _estimate_gaussian_parameters

    X = make_gmm_data(300, 3, 3, seed=3)
    resp = random_responsibilities(300, 3, make_generator(0))
    for ct in ["full", "diag", "spherical", "tied"]:
        ours = params_from_responsibilities(torch.as_tensor(X), Gaussian(ct), resp)
        nk, means, cov = _estimate_gaussian_parameters(X, as_np(resp), 1e-6, ct)
        np.testing.assert_allclose(as_np(ours["weights"]), nk / 300, rtol=1e-12)
        np.testing.assert_allclose(as_np(ours["means"]), means, rtol=1e-10)
        np.testing.assert_allclose(as_np(ours["covariances"]), cov, rtol=1e-10)


def test_user_params_pass_through():
    p = _random_full_params()
    out = initialize_mixture(None, Gaussian("full"), 3, params=p)
    torch.testing.assert_close(out["weights"], torch.full((3,), 1 / 3, dtype=F64))
    torch.testing.assert_close(out["means"], p["means"])
    h = initialize_hmm(None, Gaussian("full"), 3, params=p, self_transition=0.5)
    torch.testing.assert_close(h["transmat"].sum(1), torch.ones(3, dtype=F64))
    assert float(h["transmat"][0, 0]) == pytest.approx(0.5 + 0.5 / 3)
