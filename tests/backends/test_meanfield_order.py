"""meanfield with a prior that depends on a later guide draw: the two-layer VAE's z1, whose prior p(z1 | z2) depends
on z2, which the guide q(z1 | x) q(z2 | z1) draws after z1 and from it.

E_q[log q(z1 | x) - log p(z1 | z2)] is then no KL of two distributions fixed when z1 is drawn: the backend estimates it
by Monte Carlo (and takes the analytic KL for z2, whose prior is fixed), so its objective is the ELBO, while
Pyro's TraceMeanField_ELBO takes KL(q(z1 | x) || p(z1 | z2)) at the drawn z2, which is not.
"""

import math
import warnings

import pyro
import pyro.distributions as pdist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

import ppl_lvm as lvm
from ppl_lvm import constraints, dist
from ppl_lvm.backends.meanfield import FreeBitsMeanField_ELBO, drawn_later

N = 30


def _model(x):
    with pyro.plate("data", len(x)):
        z2 = pyro.sample("z2", pdist.Normal(0.0, 1.0))
        z1 = pyro.sample("z1", pdist.Normal(z2, 0.5))
        pyro.sample("x", pdist.Normal(z1, 0.5), obs=x)


def _guide(x):
    with pyro.plate("data", len(x)):
        z1 = pyro.sample("z1", pdist.Normal(0.8 * x, 0.4))
        pyro.sample("z2", pdist.Normal(0.9 * z1, 0.3))


@pytest.fixture
def x():
    return 2.0 * torch.randn(N, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _mean_loss(elbo, x, seed):
    pyro.set_rng_seed(seed)
    return elbo.loss(_model, _guide, x)


def test_the_late_prior_gets_a_monte_carlo_term_and_the_objective_is_the_elbo(x, float64):
    trace = pyro.poutine.trace(_guide).get_trace(x)
    assert drawn_later(_model, trace, {"x": x}) == {"z1": ["z2"]}
    common = dict(num_particles=20000, vectorize_particles=True, max_plate_nesting=1)
    reference = _mean_loss(Trace_ELBO(**common), x, seed=0)
    fixed = _mean_loss(FreeBitsMeanField_ELBO(0.0, monte_carlo=("z1",), **common), x, seed=1)
    with pytest.warns(UserWarning, match="Failed to verify mean field restriction"):
        naive = _mean_loss(TraceMeanField_ELBO(**common), x, seed=2)
    # Over seeds 0-4 (20000 particles each): Trace_ELBO's loss 90.77-90.80, the fixed estimator -0.009..+0.033 from
    # it, the naive one 17.27-17.33 above it (its "KL" of z1 ignores that z2 was drawn from z1)
    assert fixed == pytest.approx(reference, abs=0.3)
    assert naive > reference + 5


@lvm.model
def two_layer(x):
    with lvm.plate(len(x)):
        z2 = lvm.latent(dist.Normal(0.0, 1.0))
        z1 = lvm.latent(dist.Normal(z2, 0.5))
        lvm.observe(dist.Normal(z1, 0.5), x)


@two_layer.guide
def two_layer_guide(x):
    a = lvm.param(torch.tensor(0.5))
    d = lvm.param(torch.tensor(0.5))
    s = lvm.param(torch.tensor(0.5), constraint=constraints.positive)
    with lvm.plate(len(x)):
        z1 = lvm.latent(dist.Normal(a * x, s), name="z1")
        lvm.latent(dist.Normal(d * z1, s), name="z2")


def test_meanfield_says_which_site_has_no_closed_form_kl(x, float64):
    with pytest.warns(lvm.InferenceWarning, match=r"site 'z1' \(.*\): its prior depends on \['z2'\], which the guide "
                                                   r"draws after it \(and from it\), so its KL term has no closed form"):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="meanfield stopped after")
            fit = lvm.infer(two_layer, x, method="meanfield", steps=300, lr=0.05, seed=0)
    exact = float(pdist.Normal(0.0, math.sqrt(1.5)).log_prob(x).sum())
    elbo = fit.elbo_estimate(num_particles=5000, seed=0)  # Trace_ELBO at the fit: an independent estimator
    # the guide's family holds a near-exact posterior (q(z2 | z1) can equal p(z2 | z1)), so the ELBO at the fit is
    # just below log p(x) = -83.67. Over seeds 0-4: the reported bound -84.62..-82.56, the 5000-particle ELBO
    # -83.83..-83.68
    assert exact - 3 < fit.elbo < exact + 3  # the reported bound: at most 32 one-particle estimates (sd ~6 each)
    assert exact - 1 < elbo < exact + 0.05
    with pytest.raises(lvm.UnsupportedModelError, match="its prior depends on"):
        lvm.infer(two_layer, x, method="meanfield", steps=2, on_missing_kl="error")
