"""method="vem" (variational EM) against closed-form maximum-likelihood estimates, and its refusals."""

import numpy as np
import pytest
import torch
from demo_models import one_way_mle, one_way_random_effects

import ppl_lvm as lvm
from ppl_lvm import constraints, dist
from ppl_lvm.backends.stochastic_em import sample_size
from ppl_lvm.backends.vem import VEMOptions
from ppl_lvm.errors import UnsupportedModelError
from ppl_lvm.models.factor import (
    factor_analysis,
    factor_analysis_log_marginal,
    factor_analysis_mle,
    ppca,
    ppca_log_marginal,
    ppca_mle,
)


def factor_data(seed, spherical, n=200, d=5, q=2):
    g = torch.Generator().manual_seed(100 + seed)
    W = torch.randn(d, q, generator=g, dtype=torch.float64)
    noise = 0.5 if spherical else torch.linspace(0.3, 1.0, d, dtype=torch.float64)
    return torch.randn(n, q, generator=g, dtype=torch.float64) @ W.T + noise * torch.randn(n, d, generator=g,
                                                                                          dtype=torch.float64) + 1.0


def anova_data(seed, a=30, m=8):
    g = torch.Generator().manual_seed(100 + seed)
    return 2.0 + torch.randn(a, 1, generator=g, dtype=torch.float64) + 0.7 * torch.randn(a, m, generator=g,
                                                                                       dtype=torch.float64)


def test_vem_reaches_the_ppca_maximum(float64):
    x = factor_data(0, spherical=True)
    fit = lvm.infer(ppca, {"x": x, "q": 2}, method="vem", seed=0)
    ll = ppca_log_marginal(x, fit.params["W"], fit.params["mu"], fit.params["sigma"])
    best = ppca_log_marginal(x, **ppca_mle(x, 2))
    # Seeds 0-4 (data and fit): relative gap 5.4e-4 - 1.1e-3 (0.64 - 1.54 nats of -1190 to -1430), converged in 13-18
    # iterations (tol=1e-3 per point); the tolerance is the 1% of the acceptance criterion.
    assert fit.converged
    assert (best - ll) / abs(best) < 0.01
    assert all(fit.options["closed_form_m_steps"])  # the M-step is weighted least squares here
    assert len(fit.history) == fit.n_iter + 1 == len(fit.history_se)
    # the ELBO of the history is a lower bound of the exact log-likelihood (up to its Monte Carlo error)
    assert fit.history[-1] * len(x) <= ll + 4 * fit.history_se[-1] * len(x)


def test_vem_reaches_the_factor_analysis_maximum(float64):
    x = factor_data(0, spherical=False)
    fit = lvm.infer(factor_analysis, {"x": x, "q": 2}, method="vem", seed=0, max_samples=100)
    ll = factor_analysis_log_marginal(x, fit.params["W"], fit.params["mu"], fit.params["psi"])
    best = factor_analysis_log_marginal(x, **factor_analysis_mle(x, 2))
    # Seeds 0-4 (data and fit), M-step draws capped at 100 per point (the default cap of 1000 takes ~40 s a fit):
    # relative gap 5.9e-4 - 2.0e-3 (0.92 - 2.85 nats of -1370 to -1580), converged in 11-26 iterations
    # (tol=1e-3 per point).
    assert fit.converged
    assert (best - ll) / abs(best) < 0.01
    assert all(fit.options["closed_form_m_steps"])  # the M-step is weighted least squares here


def test_vem_recovers_the_variance_components(float64):
    y = anova_data(0)
    fit = lvm.infer(one_way_random_effects, {"y": y}, method="vem", seed=0, tol=None, max_iter=40)
    _, tau2, sigma2 = one_way_mle(y)
    # Seeds 0-4 (data and fit), 40 iterations, the mean-field "normal" guide (exact here: the posterior of each
    # b_i is normal and independent): relative error of tau^2 -0.5% .. +1.9%, of sigma^2 -0.2% .. +0.4% (with a
    # constant 8 draws per M-step instead of the growing schedule: -2.1% .. +2.6% and -1.4% .. +1.1%).
    assert float(fit.params["tau"] ** 2) == pytest.approx(tau2, rel=0.05)
    assert float(fit.params["sigma"] ** 2) == pytest.approx(sigma2, rel=0.05)
    # monotone up to Monte Carlo error: over seeds 0-4 the largest decrease of the history was 1.5-3.2 times
    # the standard error of one value (the values share their base draws, so only the stochastic E-steps move it)
    drops = -np.diff(fit.history)
    assert np.all(drops < 10 * fit.history_se[1:])
    assert fit.history[-1] > fit.history[0]
    assert list(fit.sample_sizes) == [sample_size(VEMOptions(), t) for t in range(1, 41)]


@lvm.model
def _no_params(x):
    with lvm.plate(len(x)):
        z = lvm.latent(dist.Normal(0.0, 1.0))
        lvm.observe(dist.Normal(z, 1.0), x)


@lvm.model
def _only_discrete(x):
    p = lvm.param(lambda: torch.tensor(0.5), constraint=constraints.unit_interval)
    with lvm.plate(len(x)):
        z = lvm.latent(dist.Bernoulli(p))
        lvm.observe(dist.Normal(z, 1.0), x)


@lvm.model
def _no_latent(x):
    m = lvm.param(lambda: torch.tensor(0.0))
    with lvm.plate(len(x)):
        lvm.observe(dist.Normal(m, 1.0), x)


@pytest.mark.parametrize("method", ["vem", "mcem"])
def test_refusals(method):
    x = torch.randn(10)
    with pytest.raises(UnsupportedModelError, match="nothing to maximise"):
        lvm.infer(_no_params, x, method=method)
    with pytest.raises(UnsupportedModelError, match="method='em'"):
        lvm.infer(_only_discrete, x, method=method)
    with pytest.raises(UnsupportedModelError, match="has no latent"):
        lvm.infer(_no_latent, x, method=method)
    with pytest.raises(TypeError, match="unknown option"):
        lvm.infer(one_way_random_effects, {"y": anova_data(0)}, method=method, steps=10)
    with pytest.raises(ValueError, match="max_iter must be a positive integer"):
        lvm.infer(one_way_random_effects, {"y": anova_data(0)}, method=method, max_iter=0)
