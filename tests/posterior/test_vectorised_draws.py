"""A mixture whose assignment is enumerated and indexes its parameters (``locs[z]``, the ready-made
``gaussian_mixture``) takes a plate of draws: its posterior draws and its export come from one vectorised run of the
model, with the assignments drawn from their exact conditional."""

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import norm

import ppl_lvm as lvm
from ppl_lvm.models.mixtures import gaussian_mixture
from ppl_lvm.posterior import queries
from ppl_lvm.posterior.draws import replay


@pytest.fixture(scope="module")
def fit():
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # float64 parameters: the log-likelihood is compared to 1e-10
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.cat([torch.randn(15, 2, generator=g) - 1.0, torch.randn(15, 2, generator=g) + 1.0])
        return x, lvm.infer(gaussian_mixture, {"x": x, "K": 2, "covariance_type": "diag"}, method="svi", steps=30,
                            lr=0.05, seed=0, progress=False)
    finally:
        torch.set_default_dtype(dtype)


def _exact(x, fit):
    """log p(x_i) and p(z_i = k | x_i) (N, K) at the fitted parameters, by scipy."""
    p = {k: v.numpy() for k, v in fit.params.items()}
    comp = np.log(p["weights"]) + norm.logpdf(x.numpy()[:, None, :], p["locs"], p["scales"]).sum(-1)
    ll = logsumexp(comp, axis=1)
    return ll, np.exp(comp - ll[:, None])


def test_the_vectorised_path_is_taken(fit):
    _, f = fit
    assert queries.vectorizes(f)
    found = replay(f, 50, seed=1)
    assert found.vectorised and found.model_runs == 1


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_vectorised_draws_follow_the_exact_conditional(fit, seed):
    x, f = fit
    s = 2000
    ll, resp = _exact(x, f)
    found = replay(f, s, seed=seed)
    assert found.draws["z"].shape == (s, 30) and found.predictive["x"].shape == (s, 30, 2)
    # the log-likelihood with z summed out is exact and the same in every draw (no continuous latent)
    np.testing.assert_allclose(found.log_lik["x"], np.broadcast_to(ll, (s, 30)), rtol=1e-10)
    # frequencies of z_i = 1 against p(z_i = 1 | x_i): binomial sd <= 0.011 at S = 2000; the largest error over
    # the 30 points was 0.014-0.033 over seeds 0-4, tolerance 0.05
    freq = found.draws["z"].double().mean(0).numpy()
    assert np.abs(freq - resp[:, 1]).max() < 0.05
    drawn = queries.sample_posterior(f, s, seed=seed)["z"]
    assert drawn.shape == (s, 30)
    assert np.abs(drawn.double().mean(0).numpy() - resp[:, 1]).max() < 0.05
    # replicated data: x_rep - locs[z] over the scale is N(0, 1); mean within 4 sd (0.016) of 0, sd within 0.03 of 1
    p = {k: v.numpy() for k, v in f.params.items()}
    z = found.draws["z"].numpy()
    std = (found.predictive["x"].numpy() - p["locs"][z]) / p["scales"][z]
    assert abs(std.mean()) < 0.016 and abs(std.std() - 1.0) < 0.03


def test_draws_of_a_point_mass_guide_carry_no_autograd_graph(float64):
    # AutoDelta's draw of an unconstrained site is its parameter itself; the draws must not carry its autograd graph
    @lvm.model
    def location(x):
        mu = lvm.latent(dist.Normal(0.0, 10.0))
        s = lvm.latent(dist.LogNormal(0.0, 1.0))
        with lvm.plate(len(x)):
            lvm.observe(dist.Normal(mu, s), x)

    x = torch.randn(20, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    f = lvm.infer(location, {"x": x}, method="svi", guide="delta", steps=5, seed=0, progress=False)
    assert queries.vectorizes(f)
    for draws in (f.sample_posterior(4), f.posterior_predictive(3), f.guide_draws(4)):
        assert not any(v.requires_grad for v in draws.values()), {n: v.requires_grad for n, v in draws.items()}
    draws = f.sample_posterior(4)
    assert torch.equal(draws["mu"], draws["mu"][:1].expand(4)), "a point mass draws one value"
