"""The one replay pass: a mixture with global means written with ``locs[z]`` (its model cannot take a plate of
draws) is exported, diagnosed and compared correctly, and diagnose + to_arviz share one pass of the model."""

import warnings

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import norm

import ppl_lvm as lvm
from ppl_lvm import constraints, dist
from ppl_lvm.posterior import queries
from ppl_lvm.posterior.draws import loo_inputs, replay
from ppl_lvm.posterior.stats import psis_loo

pytestmark = pytest.mark.arviz  # the export, k-hat and LOO go through ArviZ

RUNS = {"mixture": 0, "ppca": 0}


@lvm.model
def global_mixture(x, K=3):
    """The README's mixture with the means as GLOBAL latents (outside the data plate) and ``locs[z]``."""
    RUNS["mixture"] += 1
    weights = lvm.param(torch.ones(K) / K, constraint=constraints.simplex)
    locs = lvm.latent(dist.Normal(0.0, 10.0).expand([K, x.shape[1]]).to_event(2))
    with lvm.plate(len(x)):
        z = lvm.latent(dist.Categorical(weights))
        lvm.observe(dist.Normal(locs[z], 1.0).to_event(1), x)


def _clusters(seed=0, n=12):
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.randn(n, 2, generator=g) - 4.0, torch.randn(n, 2, generator=g) + 4.0]).double()


@pytest.fixture(scope="module")
def mixtures():
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        x = _clusters()
        return x, {k: lvm.infer(global_mixture, {"x": x, "K": k}, method="svi", steps=60, lr=0.1, seed=0)
                   for k in (2, 3)}
    finally:
        torch.set_default_dtype(dtype)


def _by_hand(x, fit, locs):
    """log p(x_i | locs_s) (S, N), log prior (S,), log q (S,) and p(z_i = k | x_i, locs_s) (S, N, K) by scipy."""
    w = fit.params["weights"].numpy()
    comp = np.log(w) + norm.logpdf(x[None, :, None, :], locs[:, None, :, :], 1.0).sum(-1)  # (S, N, K)
    ll = logsumexp(comp, axis=-1)
    prior = norm.logpdf(locs, 0.0, 10.0).sum((1, 2))
    loc, scale = fit.params["MeanFieldNormal.locs.locs"].numpy(), fit.params["MeanFieldNormal.scales.locs"].numpy()
    log_q = norm.logpdf(locs, loc, scale).sum((1, 2))
    return ll, prior, log_q, np.exp(comp - ll[..., None])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_global_mixture_export_matches_scipy_at_the_draws(mixtures, seed, float64):
    x, fits = mixtures
    fit = fits[3]
    assert not queries.vectorizes(fit)  # locs[z] under a plate of draws indexes the draws: one at a time
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # ArviZ's notes on one chain
        idata = fit.to_arviz(num_samples=40, seed=seed)
    locs = idata.posterior["locs"].values[0]
    ll, prior, log_q, resp = _by_hand(x.numpy(), fit, locs)
    np.testing.assert_allclose(idata.log_likelihood["x"].values[0], ll, rtol=0, atol=1e-8)
    np.testing.assert_allclose(idata.sample_stats["lp"].values[0], prior + ll.sum(-1), rtol=1e-10)
    np.testing.assert_allclose(idata.sample_stats["log_q"].values[0], log_q, rtol=1e-10)
    # the labels are drawn from p(z_i | x_i, locs_s): on clusters 8 sd apart the drawn label is the likely one
    # (measured over seeds 0-2: mean probability of the drawn label 0.968-0.972)
    z = idata.posterior["z"].values[0]
    assert np.take_along_axis(resp, z[..., None], -1).mean() > 0.9
    # replicated data: x_rep - locs_s[z_s] ~ N(0, 1); 40 x 24 x 2 residuals (measured over seeds 0-2: mean 0.003-0.011, var 1.011-1.047)
    rep = idata.posterior_predictive["x"].values[0]
    residual = rep - np.take_along_axis(locs, z[..., None], 1)
    assert abs(residual.mean()) < 4 / np.sqrt(residual.size) and abs(residual.var() - 1) < 0.15


def test_global_mixture_diagnose_and_compare_read_the_same_pass(mixtures, float64):
    x, fits = mixtures
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # k-hat / R-hat advice is not the point here
        d = fits[3].diagnose(num_samples=60, seed=4)
        idata = fits[3].to_arviz(num_samples=60, seed=4)
        table = lvm.compare(fits, num_samples=60, seed=4)
    log_w = idata.sample_stats["log_weight"].values[0]
    assert d.khat_kind == "joint" and d.elbo == pytest.approx(log_w.mean(), abs=1e-9)
    assert d.is_estimate == pytest.approx(logsumexp(log_w) - np.log(60), abs=1e-9)
    assert d.iwae == {}  # enumerated and continuous latents: no IWAE_K, as before
    log_lik, log_weight = loo_inputs(fits[3], 60, 4)
    np.testing.assert_array_equal(log_lik, idata.log_likelihood["x"].values[0])
    assert table.loc[3, "elpd_loo"] == pytest.approx(
        psis_loo(log_lik, log_weight)["elpd_loo"], rel=1e-12)


@lvm.model
def ppca_counted(x, q=2):
    """PPCA (as demo_models.ppca), counting the runs of its body."""
    RUNS["ppca"] += 1
    n, d = x.shape
    W = lvm.param(lambda: 0.5 * torch.randn(d, q))
    mu = lvm.param(lambda: torch.zeros(d))
    sigma = lvm.param(lambda: torch.ones(()), constraint=constraints.positive)
    with lvm.plate(n):
        z = lvm.latent(dist.Normal(torch.zeros(q), 1.0).to_event(1))
        lvm.observe(dist.Normal(z @ W.T + mu, sigma).to_event(1), x)


def test_diagnose_and_to_arviz_replay_a_vectorisable_model_at_most_three_times(float64):
    x = _clusters(n=10)
    fit = lvm.infer(ppca_counted, x, method="svi", steps=30, lr=0.05, seed=0)
    RUNS["ppca"] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit.diagnose()
        fit.to_arviz()
    # measured: 2 (the probe whether draws vectorise, then the pass of 500 draws)
    assert RUNS["ppca"] <= 3
    assert replay(fit, 500, 0).vectorised


def test_diagnose_and_to_arviz_replay_a_model_drawn_one_at_a_time_at_most_s_plus_2_times(mixtures, float64):
    x = _clusters()
    fit = lvm.infer(global_mixture, {"x": x, "K": 2}, method="svi", steps=5, lr=0.1, seed=0)
    RUNS["mixture"] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit.diagnose(num_samples=30)
        fit.to_arviz(num_samples=30, seed=0)
        lvm.compare({"a": fit}, num_samples=30)
    # measured: 31 (the failed probe, then one run per draw)
    assert RUNS["mixture"] <= 30 + 2
