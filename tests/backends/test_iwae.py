import numpy as np
import pytest
import torch
from demo_data import ppca_data as simulate_ppca
from demo_models import Encoder, gmm_map, ppca, ppca_log_marginal

import ppl_lvm as lvm
from ppl_lvm import constraints, dist


@pytest.fixture
def ppca_data():
    return simulate_ppca(200, dtype=torch.float64)


def test_ppca_bound_ladder_elbo_le_iwae_k_le_exact(ppca_data, float64):
    fit = lvm.infer(ppca, ppca_data, method="iwae", num_particles=5, steps=800, lr=0.03, seed=0)
    p = fit.params
    exact = ppca_log_marginal(ppca_data, p["W"], p["mu"], p["sigma"])
    elbo = fit.elbo_estimate(num_particles=200, seed=1)
    repeats = 20
    iwae = {k: np.mean([fit.log_evidence(num_particles=k, seed=s) for s in range(repeats)]) for k in (1, 10, 100)}
    # Measured at this seed: exact -1335.1, ELBO -1394, IWAE_1 -1390 (one draw has sd ~13 nats over 200 points),
    # IWAE_10 -1340, IWAE_100 -1335.1 (sd ~1.5 per draw). Tolerances are ~3 standard errors of the means.
    assert iwae[1] == pytest.approx(elbo, abs=10.0)  # IWAE_1 is the ELBO
    assert elbo <= iwae[10]
    assert iwae[1] < iwae[10] < iwae[100]
    assert iwae[100] <= exact + 1.5
    assert exact - iwae[100] < exact - elbo  # the bound tightens towards log p(x)


def test_iwae_refuses_a_non_reparameterised_guide():
    @lvm.model
    def counts(y):
        rate = lvm.param(torch.tensor(2.0), constraint=constraints.positive)
        with lvm.plate(len(y)):
            k = lvm.latent(dist.Gamma(rate, 1.0))
            lvm.observe(dist.Poisson(k), y)

    @counts.guide
    def counts_guide(y):
        a = lvm.param(torch.ones(len(y)), constraint=constraints.positive)
        with lvm.plate(len(y)):
            k = lvm.latent(dist.Gamma(a, 1.0).mask(True))
        return k

    class NoRsampleGamma(dist.Gamma):
        has_rsample = False

    @lvm.guide
    def bad_guide(y):
        a = lvm.param(torch.ones(len(y)), constraint=constraints.positive)
        with lvm.plate(len(y)):
            k = lvm.latent(NoRsampleGamma(a, 1.0))
        return k

    y = torch.tensor([1, 2, 3])
    with pytest.raises(lvm.UnsupportedModelError, match=r"needs reparameterised guide sites, but the guide samples 'k' from NoRsampleGamma"):
        lvm.infer(counts, y, method="iwae", guide=bad_guide, steps=2)


def test_iwae_refuses_discrete_latents():
    # global latents are fitted (tests/backends/test_local_iwae.py)
    with pytest.raises(lvm.UnsupportedModelError, match=r"cannot fit the discrete latent 'z' \(.*demo_models\.py:\d+"):
        lvm.infer(gmm_map, torch.randn(10, 2), method="iwae", steps=2)


def test_renyi_alpha(ppca_data, float64):
    with pytest.raises(ValueError, match="alpha must be a number other than 1"):
        lvm.infer(ppca, ppca_data, method="renyi", alpha=1.0, steps=2)
    fit = lvm.infer(ppca, ppca_data, method="renyi", alpha=0.5, num_particles=3, steps=20)
    assert fit.method == "renyi" and fit.options["alpha"] == 0.5 and np.isfinite(fit.losses).all()


def test_iwae_minibatches_scale_outside_the_log_mean_exp(ppca_data, float64):
    torch.manual_seed(0)
    encoder = Encoder().double()
    state = {k: v.clone() for k, v in encoder.state_dict().items()}

    def fit(**options):
        encoder.load_state_dict(state)
        guide = lvm.AmortizedNormal(encoder, site="z")
        return lvm.infer(ppca, ppca_data, method="iwae", guide=guide, num_particles=5, steps=1, seed=0, **options)

    full, mini = fit(), fit(batch_size=50)
    # one step from the same initial parameters: the minibatch loss estimates the full loss (N/B times a quarter)
    assert mini.losses[0] == pytest.approx(full.losses[0], rel=0.3)
