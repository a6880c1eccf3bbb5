"""DReG through a hierarchical local guide, q(z1 | x) q(z2 | z1): the same mean as the standard IWAE gradient.

The model: z2_i ~ N(0, 1), z1_i | z2_i ~ N(z2_i, 1), x_i | z1_i ~ N(z1_i, SIG^2); the guide: z1_i ~ N(a x_i + b, c^2),
z2_i | z1_i ~ N(d z1_i + e, f^2), so the guide's z2 is a function of its z1 draw and the doubly reparameterised
gradient must follow z2's dependence on z1 (and the dependence of q(z2 | z1) on z1) exactly once.
"""


import pyro
import pyro.distributions as pdist
import pytest
import torch

from ppl_lvm import constraints
from ppl_lvm.backends.local_iwae import LocalIWAE, dreg_obstacle

SIG = 0.5
N = 30
START = dict(a=0.5, b=0.2, c=0.6, d=0.3, e=-0.1, f=0.8)  # away from the optimum


def _model(x):
    with pyro.plate("data", len(x)):
        z2 = pyro.sample("z2", pdist.Normal(0.0, 1.0))
        z1 = pyro.sample("z1", pdist.Normal(z2, 1.0))
        pyro.sample("x", pdist.Normal(z1, SIG), obs=x)


def _guide(x):
    p = {k: pyro.param(k, torch.tensor(v), constraint=constraints.positive if k in "cf" else constraints.real)
         for k, v in START.items()}
    with pyro.plate("data", len(x)):
        z1 = pyro.sample("z1", pdist.Normal(p["a"] * x + p["b"], p["c"]))
        pyro.sample("z2", pdist.Normal(p["d"] * z1 + p["e"], p["f"]))


@pytest.fixture
def x():
    return 2.0 * torch.randn(N, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _gradients(estimator, x, draws, seed, vectorize=True):
    elbo = LocalIWAE(50, "data", 1, estimator=estimator, vectorize_particles=vectorize)
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    rows, losses = [], []
    for _ in range(draws):
        losses.append(elbo.loss_and_grads(_model, _guide, x))
        params = pyro.get_param_store()._params
        rows.append(torch.stack([params[k].grad.clone() for k in START]))
        for p in params.values():
            p.grad = None
    return torch.stack(rows), torch.tensor(losses)


def test_dreg_through_two_local_layers_has_the_standard_mean_and_a_lower_variance(x, float64):
    draws = 300
    dreg, dreg_losses = _gradients("dreg", x, draws, seed=0)
    standard, std_losses = _gradients("standard", x, draws, seed=0)
    torch.testing.assert_close(dreg_losses, std_losses)  # the same draws, the same bound
    se = torch.sqrt(dreg.var(0) / draws + standard.var(0) / draws)
    z = (dreg.mean(0) - standard.mean(0)).abs() / se
    ratio = standard.var(0) / dreg.var(0)
    # over seeds 0, 10, 20, 30, 40 (300 draws each): mean differences 0.09-2.08 standard errors; variance ratios
    # standard / DReG for (a, b, c) of q(z1 | x) 2.6-3.3, 5.5-6.1, 2.3-3.1, for (d, e, f) of q(z2 | z1) 10-14, 20-28,
    # 20-28. Tolerance: 4 standard errors.
    assert (z < 4).all()
    assert (ratio[:3] > 1.5).all() and (ratio[3:] > 5).all()


def test_dreg_in_k_passes_is_the_same_gradient(x, float64):
    vectorised, _ = _gradients("dreg", x, 100, seed=1)
    sequential, _ = _gradients("dreg", x, 100, seed=2, vectorize=False)
    se = torch.sqrt(vectorised.var(0) / 100 + sequential.var(0) / 100)
    z = (vectorised.mean(0) - sequential.mean(0)).abs() / se
    # over seed pairs (1, 2), (11, 12), ..., (41, 42): 0.09-2.63 standard errors. Tolerance: 4
    assert (z < 4).all()


def test_a_hierarchical_local_guide_is_no_obstacle(x):
    pyro.clear_param_store()
    assert dreg_obstacle(pyro.poutine.trace(_guide).get_trace(x), "data") is None
