import warnings

import numpy as np
import pytest
import torch
from demo_models import loc_gmm, normal_normal, normal_normal_posterior

import ppl_lvm as lvm
from ppl_lvm import dist
from ppl_lvm.posterior import arviz_compat
from ppl_lvm.posterior.queries import vectorizes


def _nn_data():
    g = torch.Generator().manual_seed(0)
    return 1.0 + torch.randn(50, generator=g, dtype=torch.float64)


@pytest.fixture(scope="module")
def nn_fit():
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        x = _nn_data()
        return x, lvm.infer(normal_normal, x, method="nuts", num_samples=2000, warmup_steps=300, num_chains=2, seed=0)
    finally:
        torch.set_default_dtype(dtype)


def test_nuts_matches_the_conjugate_posterior(nn_fit, float64):
    x, fit = nn_fit
    mean, sd = normal_normal_posterior(x)
    row = fit.summary().loc["mu"]
    # Seeds 0-4 (2 chains x 2000 draws after 300 warm-up): relative error of the mean 0.0009-0.0100, of the sd
    # 0.0008-0.0153, R-hat 1.0011-1.0036, bulk ESS 1250-1560: the 3% tolerance is ~2 standard errors of the sd.
    assert row["mean"] == pytest.approx(mean, rel=0.03)
    assert row["sd"] == pytest.approx(sd, rel=0.03)
    assert row["r_hat"] < 1.01
    assert row["ess_bulk"] > 800
    assert fit.converged and fit.divergences == 0
    assert fit.summary().attrs["num_chains"] == 2


def test_nuts_result_reads_its_chains(nn_fit, float64):
    _, fit = nn_fit
    assert isinstance(fit, lvm.MCMCResult)
    assert fit.samples["mu"].shape == (2, 2000)
    stored = fit.samples["mu"].reshape(-1)
    assert torch.equal(fit.sample_posterior(4000)["mu"], stored)  # every draw, in order
    thinned = fit.sample_posterior(100)["mu"]
    assert torch.equal(thinned, stored[::40])  # evenly spaced: each chain keeps its share
    assert fit.posterior_predictive(5)["x"].shape == (5, 50)
    ranked = lvm.compare({"nuts": fit})  # PSIS-LOO of the draws as posterior draws: no q to correct for
    assert ranked.loc["nuts", "correction"] == "none" and np.isfinite(ranked.loc["nuts", "elpd_loo"])
    with pytest.raises(TypeError, match="no ELBO"):
        fit.elbo_estimate()
    with pytest.raises(TypeError, match="not continued"):
        fit.fit_more()
    with pytest.raises(ValueError, match="multiple of num_chains"):
        fit.summary(num_samples=101)


def test_nuts_to_arviz_has_chains_and_sampler_stats(nn_fit, float64):
    _, fit = nn_fit
    idata = fit.to_arviz()
    assert idata.posterior["mu"].shape == (2, 2000)
    stats = idata.sample_stats
    for name in ("diverging", "step_size", "acceptance_rate", "lp", "potential_energy"):
        assert stats[name].shape == (2, 2000)
    assert "log_weight" not in stats  # MCMC draws have no density to weight by
    assert int(stats["diverging"].sum()) == fit.divergences
    rate = stats["acceptance_rate"].values  # differenced from Pyro's running mean: rounding only
    assert rate.min() > -1e-9 and rate.max() < 1 + 1e-9
    assert (np.ptp(stats["step_size"].values, axis=1) == 0).all()  # adaptation stops after warm-up
    assert idata.log_likelihood["x"].shape == (2, 2000, 50)
    az = arviz_compat.az()
    ours = fit.summary().loc["mu"]
    theirs = az.summary(idata, var_names=["mu"], round_to="none").loc["mu"]
    assert float(theirs["r_hat"]) == pytest.approx(ours["r_hat"], rel=1e-12)
    assert float(theirs["ess_bulk"]) == pytest.approx(ours["ess_bulk"], rel=1e-12)
    # lp of the replay pass is log p(x, mu): check one draw against a direct computation
    mu = float(idata.posterior["mu"][0, 0])
    x = fit.data.kwargs["x"]
    direct = float(dist.Normal(0.0, 2.0).log_prob(torch.tensor(mu)) + dist.Normal(mu, 1.0).log_prob(x).sum())
    assert float(stats["lp"][0, 0]) == pytest.approx(direct, rel=1e-10)


def test_nuts_refuses_parameters_and_guides():
    x = torch.randn(20, 2)
    with pytest.raises(lvm.UnsupportedModelError, match="without a prior: 'weights'"):
        lvm.infer(loc_gmm, x, method="nuts")
    with pytest.raises(lvm.UnsupportedModelError, match="uses no guide"):
        lvm.infer(normal_normal, x[:, 0], method="nuts", guide="normal")

    @lvm.model
    def counts(y):
        with lvm.plate(len(y)):
            k = lvm.latent(dist.Poisson(3.0))
            lvm.observe(dist.Normal(k.float(), 1.0), y)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(lvm.UnsupportedModelError, match="'k'.*cannot enumerate"):
            lvm.infer(counts, x[:, 0], method="nuts")


@pytest.mark.parametrize("option, value, match", [
    ("num_chains", 0, "num_chains must be a positive integer"),
    ("num_samples", 2.5, "num_samples must be a positive integer"),
    ("warmup_steps", -1, "warmup_steps must be an integer >= 0"),
    ("target_accept_prob", 1.0, "target_accept_prob must be a number in"),
    ("max_tree_depth", 0, "max_tree_depth must be a positive integer"),
    ("dense_mass", "yes", "dense_mass must be True or False"),
])
def test_nuts_refuses_bad_options(option, value, match):
    with pytest.raises(ValueError, match=match):
        lvm.infer(normal_normal, torch.randn(5), method="nuts", **{option: value})


def test_nuts_refuses_loop_options():
    with pytest.raises(TypeError, match="unknown option.*'steps'"):
        lvm.infer(normal_normal, torch.randn(5), method="nuts", steps=100)


@lvm.model
def matmul_regression(X, y):
    beta = lvm.latent(dist.Normal(torch.zeros(X.shape[1]), 10.0).to_event(1))
    with lvm.plate(len(y)):
        lvm.observe(dist.Normal(X @ beta, 1.0), y)  # X @ beta: no plate of draws, queries draw one at a time


def test_a_model_that_does_not_vectorise_gets_the_same_draws(float64):
    g = torch.Generator().manual_seed(1)
    X = torch.randn(30, 2, generator=g, dtype=torch.float64)
    y = X @ torch.tensor([1.0, -1.0], dtype=torch.float64) + torch.randn(30, generator=g, dtype=torch.float64)
    fit = lvm.infer(matmul_regression, {"X": X, "y": y}, method="nuts", num_samples=50, warmup_steps=50, seed=0)
    assert not vectorizes(fit)
    stored = fit.samples["beta"].reshape(-1, 2)
    draws = fit.sample_posterior(20)["beta"]
    assert torch.equal(draws, stored[torch.arange(20) * 100 // 20])  # the draws a plate of 20 would get
    assert fit.posterior_predictive(4)["y"].shape == (4, 30)
    assert fit.to_arviz().posterior["beta"].shape == (2, 50, 2)
