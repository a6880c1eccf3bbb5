"""method="mcem" (Monte Carlo EM, self-normalised importance sampling) against closed-form maximum likelihood."""

import numpy as np
import pytest
import torch
from demo_models import one_way_mle, one_way_random_effects
from test_vem import anova_data, factor_data

import ppl_lvm as lvm
from ppl_lvm import dist
from ppl_lvm.backends.mcem import MCEMOptions
from ppl_lvm.backends.stochastic_em import sample_size
from ppl_lvm.errors import UnsupportedModelError
from ppl_lvm.models.factor import (
    factor_analysis,
    factor_analysis_log_marginal,
    factor_analysis_mle,
    ppca,
    ppca_log_marginal,
    ppca_mle,
)


def test_mcem_reaches_the_ppca_maximum(float64):
    x = factor_data(0, spherical=True)
    fit = lvm.infer(ppca, {"x": x, "q": 2}, method="mcem", seed=0)
    ll = ppca_log_marginal(x, fit.params["W"], fit.params["mu"], fit.params["sigma"])
    best = ppca_log_marginal(x, **ppca_mle(x, 2))
    # Seeds 0-4 (data and fit): relative gap 2.1e-4 - 2.2e-3 (0.26 - 3.10 nats of -1190 to -1430), converged in 8-12
    # iterations (tol=1e-3 per point).
    assert fit.converged
    assert (best - ll) / abs(best) < 0.01
    assert all(fit.options["closed_form_m_steps"])  # the M-step is weighted least squares here
    # the importance-sampling estimate of the history is close to the exact log-likelihood per point
    assert fit.history[-1] == pytest.approx(ll / len(x), abs=max(0.02, 5 * fit.history_se[-1]))


def test_mcem_reaches_the_factor_analysis_maximum(float64):
    x = factor_data(0, spherical=False)
    fit = lvm.infer(factor_analysis, {"x": x, "q": 2}, method="mcem", seed=0, max_iter=40,
                    max_samples=100)
    ll = factor_analysis_log_marginal(x, fit.params["W"], fit.params["mu"], fit.params["psi"])
    best = factor_analysis_log_marginal(x, **factor_analysis_mle(x, 2))
    # Seeds 0-4 (data and fit), draws capped at 100 per point (the default cap of 1000 takes ~40 s a fit):
    # relative gap 5.5e-4 - 1.7e-3 (0.78 - 2.39 nats), converged in 11-22 iterations, with the L-BFGS M-step as
    # with the closed form (m_step="auto" runs the closed form here).
    assert fit.converged
    assert (best - ll) / abs(best) < 0.01
    assert all(fit.options["closed_form_m_steps"])  # the M-step is weighted least squares here


@pytest.mark.parametrize("proposal", ["guide", "prior"])
def test_mcem_recovers_the_variance_components(float64, proposal):
    y = anova_data(0)
    fit = lvm.infer(one_way_random_effects, {"y": y}, method="mcem", seed=0, tol=None, max_iter=30,
                    proposal=proposal)
    _, tau2, sigma2 = one_way_mle(y)
    # Seeds 0-4 (data and fit), 30 iterations: proposal="guide": relative error of tau^2 -0.6% .. +0.5%, of
    # sigma^2 -0.06% .. +0.03%; proposal="prior": tau^2 +0.4% .. +2.0%, sigma^2 -0.01% .. +0.4%.
    assert float(fit.params["tau"] ** 2) == pytest.approx(tau2, rel=0.05)
    assert float(fit.params["sigma"] ** 2) == pytest.approx(sigma2, rel=0.05)
    # monotone up to Monte Carlo error: the largest decrease over seeds 0-4 was 2.0-4.7 standard errors of one
    # value with the guide, 0.1-2.8 with the prior
    assert np.all(-np.diff(fit.history) < 10 * fit.history_se[1:])
    assert list(fit.sample_sizes) == [sample_size(MCEMOptions(), t) for t in range(1, 31)]


def test_mcem_with_a_nuts_e_step(float64):
    y = anova_data(0)
    fit = lvm.infer(one_way_random_effects, {"y": y}, method="mcem", seed=0, tol=None, max_iter=8,
                    proposal="nuts", nuts_warmup=50)
    _, tau2, sigma2 = one_way_mle(y)
    # Seeds 0-4 (data and fit), 8 iterations: relative error of tau^2 -0.7% .. +1.5%, of sigma^2 -0.2% .. +0.4%;
    # the largest decrease of the history 1.2-2.7 of its standard errors; no divergence.
    assert float(fit.params["tau"] ** 2) == pytest.approx(tau2, rel=0.05)
    assert float(fit.params["sigma"] ** 2) == pytest.approx(sigma2, rel=0.05)
    assert np.all(-np.diff(fit.history) < 10 * fit.history_se[1:])
    assert fit.options["proposal"] == "nuts"
    assert len(fit.options["nuts_divergences"]) == 8
    assert list(fit.sample_sizes) == [sample_size(MCEMOptions(), t) for t in range(1, 9)]


def test_the_sample_size_schedule():
    opts = MCEMOptions(num_samples=10, sample_growth=1.3, max_samples=40)
    assert [sample_size(opts, t) for t in range(1, 8)] == [10, 13, 17, 22, 29, 38, 40]


@lvm.model
def _global_latent(x):
    s = lvm.param(lambda: torch.tensor(1.0))
    m = lvm.latent(dist.Normal(0.0, 1.0))
    with lvm.plate(len(x)):
        lvm.observe(dist.Normal(m, s.abs() + 0.1), x)


def test_mcem_refusals():
    with pytest.raises(UnsupportedModelError, match="method='vem'"):
        lvm.infer(_global_latent, torch.randn(10), method="mcem")
    with pytest.raises(ValueError, match="proposal must be one of"):
        lvm.infer(one_way_random_effects, {"y": anova_data(0)}, method="mcem", proposal="gibbs")
    with pytest.raises(ValueError, match="nuts_warmup must be a positive integer"):
        lvm.infer(one_way_random_effects, {"y": anova_data(0)}, method="mcem", proposal="nuts", nuts_warmup=0)
    with pytest.raises(ValueError, match=r"target_accept_prob must be a number in \(0, 1\)"):
        lvm.infer(one_way_random_effects, {"y": anova_data(0)}, method="mcem", proposal="nuts",
                  target_accept_prob=1.0)
    with pytest.raises(ValueError, match="proposal='prior'"):
        lvm.infer(one_way_random_effects, {"y": anova_data(0)}, method="mcem", proposal="prior", guide="normal")
    with pytest.raises(ValueError, match="sample_growth"):
        lvm.infer(one_way_random_effects, {"y": anova_data(0)}, method="mcem", sample_growth=0.5)
