"""NUTS on models with discrete latents: enumerated in the potential, drawn from their exact conditional."""

import numpy as np
import pytest
import torch

import ppl_lvm as lvm
from ppl_lvm import dist


@lvm.model
def gmm2(x, K=2):
    with lvm.plate(K, name="components"):
        locs = lvm.latent(dist.Normal(torch.zeros(2), 5.0).to_event(1))
    with lvm.plate(len(x)):
        z = lvm.latent(dist.Categorical(torch.ones(K) / K))
        lvm.observe(dist.Normal(locs[z], 1.0).to_event(1), x)


def test_nuts_on_a_mixture_with_enumerated_assignments(float64):
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[-2.0, 0.0], [2.0, 1.0]])
    x = torch.cat([torch.randn(60, 2, generator=g) + centres[0], torch.randn(60, 2, generator=g) + centres[1]])
    fit = lvm.infer(gmm2, x, method="nuts", num_samples=100, warmup_steps=100, num_chains=2, seed=0)
    assert fit.enumerated == ["z"]
    table = fit.summary()
    means = table["mean"].to_numpy().reshape(2, 2)
    order = np.argsort(means[:, 0])
    # reference: the conjugate posterior given the generating assignments (clusters 4 sds apart: few points are
    # ambiguous), mean sum(x_k) / (n_k + 1/25), sd 1 / sqrt(n_k + 1/25) = 0.129
    known = np.stack([(x[:60].sum(0) / (60 + 1 / 25)).numpy(), (x[60:].sum(0) / (60 + 1 / 25)).numpy()])
    # Seeds 0-4 (2 chains x 100 draws): largest mean error 0.043-0.063, mean sd 0.124-0.134, largest R-hat
    # 1.008-1.067 once the chains' labellings are aligned.
    np.testing.assert_allclose(means[order], known, atol=0.12)
    assert table["sd"].mean() == pytest.approx(0.129, rel=0.15)
    assert table["r_hat"].max() < 1.1
    draws = fit.sample_posterior(10, seed=1)
    assert draws["z"].shape == (10, 120) and draws["locs"].shape == (10, 2, 2)
    idata = fit.to_arviz()
    assert idata.posterior["z"].shape == (2, 100, 120)
    assert idata.posterior["locs"].shape == (2, 100, 2, 2)


@lvm.model
def two_noises(x):
    s = lvm.latent(dist.Bernoulli(0.5))  # one global switch of the noise sd, summed out by NUTS
    mu = lvm.latent(dist.Normal(0.0, 3.0))
    with lvm.plate(len(x)):
        lvm.observe(dist.Normal(mu, 1.0 + s), x)


def _switch_posterior(x):
    """p(s = 1 | x): x | s ~ N(0, (1 + s)^2 I + 9 11^T) with mu integrated out."""
    n = len(x)
    logs = [dist.MultivariateNormal(torch.zeros(n, dtype=x.dtype), covariance_matrix=(1 + s) ** 2 * torch.eye(
        n, dtype=x.dtype) + 9.0 * torch.ones(n, n, dtype=x.dtype)).log_prob(x) for s in (0, 1)]
    return float(torch.sigmoid(logs[1] - logs[0]))


def test_an_enumerated_global_latent_is_summarised(float64):
    g = torch.Generator().manual_seed(0)
    x = 1.0 + 1.4 * torch.randn(20, generator=g, dtype=torch.float64)
    fit = lvm.infer(two_noises, x, method="nuts", num_samples=200, warmup_steps=100, seed=0)
    table = fit.summary(seed=1)
    assert set(table.index) == {"s", "mu"}
    exact = _switch_posterior(x)
    # Seeds 0-4: |mean of s - exact p(s = 1 | x) = 0.535| 0.002-0.045 (se of 400 Bernoulli draws ~0.025)
    assert table.loc["s", "mean"] == pytest.approx(exact, abs=0.1)
    assert fit.sample_posterior(10, seed=2)["s"].shape == (10,)
