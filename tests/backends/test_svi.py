import warnings

import numpy as np
import pytest
import torch
from demo_data import labelled_clusters
from demo_models import gmm_map, normal_normal, normal_normal_posterior
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from scipy.special import logsumexp
from scipy.stats import norm

import ppl_lvm as lvm
from ppl_lvm import constraints, dist


@pytest.fixture
def normal_data():
    return 3.0 + torch.randn(50, generator=torch.Generator().manual_seed(1))


def _posterior_of(fit):
    draws = fit.sample_posterior(20000, seed=1)["mu"]
    return float(draws.mean()), float(draws.std())


@lvm.guide
def normal_guide(x):
    loc = lvm.param(torch.tensor(0.0))
    scale = lvm.param(torch.tensor(1.0), constraint=constraints.positive)
    mu = lvm.latent(dist.Normal(loc, scale))
    return mu


@pytest.mark.parametrize("guide", [normal_guide, "normal"])
def test_svi_recovers_the_conjugate_posterior_within_3_percent(normal_data, guide, float64):
    x = normal_data.double()
    # over fit seeds 0-4 and both guides: mean within 0.5%, sd within 1.8% (with 8 particles the sd spread reached
    # 2.8%, too close to the 3% tolerance for a test that must pass on any CPU)
    fit = lvm.infer(normal_normal, x, method="svi", guide=guide, steps=3000, num_particles=32,
                    optimizer="clippedadam", lr=0.05, optim_args={"lrd": 0.999}, seed=0)
    exact_mean, exact_sd = normal_normal_posterior(x)
    mean, sd = _posterior_of(fit)
    assert mean == pytest.approx(exact_mean, rel=0.03)
    assert sd == pytest.approx(exact_sd, rel=0.03)
    assert fit.method == "svi" and fit.steps == 3000 and np.all(np.isfinite(fit.losses))


def test_meanfield_uses_the_analytic_kl():
    @lvm.model
    def only_kl():
        z = lvm.latent(dist.Normal(torch.zeros(3), 1.0).to_event(1))
        return z

    fit = lvm.infer(only_kl, None, method="meanfield", steps=5, lr=0.1)
    with fit.activated():
        analytic = [TraceMeanField_ELBO().loss(only_kl, fit.guide) for _ in range(5)]
        sampled = [Trace_ELBO().loss(only_kl, fit.guide) for _ in range(5)]
    assert np.var(analytic) == 0.0
    assert np.var(sampled) > 0.0
    assert np.var(fit.losses[-3:] - fit.losses[-4:-1]) >= 0.0  # the history is finite
    assert analytic[0] > 0.0  # a KL after five steps from a unit scale is still positive


def test_meanfield_says_which_site_has_no_analytic_kl():
    @lvm.model
    def gamma_prior(x):
        rate = lvm.latent(dist.Gamma(2.0, 2.0))
        with lvm.plate(len(x)):
            lvm.observe(dist.Exponential(rate), x)

    x = torch.rand(20) + 0.1
    with pytest.warns(lvm.InferenceWarning, match=r"site 'rate' \(.*test_svi\.py:\d+.*\): no KL\(TransformedDistribution \|\| Gamma\)"):
        lvm.infer(gamma_prior, x, method="meanfield", steps=3)
    with pytest.raises(lvm.UnsupportedModelError, match="site 'rate'"):
        lvm.infer(gamma_prior, x, method="meanfield", steps=3, on_missing_kl="error")


def test_meanfield_refuses_discrete_latents():
    with pytest.raises(lvm.UnsupportedModelError, match=r"cannot sum out the discrete latent 'z' \(.*demo_models\.py:\d+"):
        lvm.infer(gmm_map, torch.randn(30, 2), method="meanfield", steps=1)


def _three_clusters(n=300, seed=0):
    return labelled_clusters([[-4.0, 0.0], [0.0, 4.0], [4.0, -1.0]], n, seed=seed, scale=[0.8, 0.5])


def _mixture_loglik(x, weights, locs, scales):
    comp = np.log(weights)[None, :] + norm.logpdf(x[:, None, :], locs[None], scales[None]).sum(-1)
    return float(logsumexp(comp, axis=1).sum())


def test_svi_with_map_guide_enumerates_and_matches_sklearn(float64):
    from sklearn.mixture import GaussianMixture

    x = _three_clusters()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # in particular no "Found vars in model but not guide"
        warnings.simplefilter("ignore", lvm.ConvergenceWarning)
        # measured, 2000 steps: seeds 1-5 end within 0.01 nats of scikit-learn's optimum; seed 0 settles in a
        # local optimum 307 nats below (a single MAP fit is not a global search: n_init is)
        fit = lvm.infer(gmm_map, x, method="svi", guide="delta", steps=2000, lr=0.05, seed=3)
    assert fit.enumerated == ["z"]
    point = fit.sample_posterior(1)
    ours = _mixture_loglik(x, point["weights"][0].numpy(), point["locs"][0].numpy(), point["scales"][0].numpy())
    sk = GaussianMixture(3, covariance_type="diag", n_init=5, random_state=0).fit(x)
    reference = sk.score(x) * len(x)
    assert ours == pytest.approx(reference, rel=0.005)
    # the discrete latent is drawn from its exact conditional posterior given the globals
    z = fit.sample_posterior(20, seed=0)["z"]
    assert z.shape == (20, len(x)) and z.dtype == torch.long


def test_nan_loss_stops_with_the_step_and_keeps_the_best_params(normal_data):
    calls = {"n": 0}

    @lvm.model
    def fragile(x):
        mu = lvm.param(torch.tensor(0.0))
        calls["n"] += 1
        # from the seventh call on the scale overflows to inf, so the log-likelihood is -inf
        scale = torch.exp(torch.tensor(1000.0 if calls["n"] > 7 else 0.0))
        with lvm.plate(len(x)):
            lvm.observe(dist.Normal(mu, scale), x)

    with pytest.raises(lvm.FitError, match=r"the loss became inf at step \d+ of svi\. The parameters of step \d+") as info:
        lvm.infer(fragile, normal_data, steps=50, lr=0.1)
    err = info.value
    assert err.step is not None and err.step > 1
    assert torch.isfinite(err.result.params["mu"])
    assert float(err.result.params["mu"]) > 0.0  # moved towards the data mean of about 3


def test_minibatches_scale_the_likelihood(normal_data, float64):
    x = normal_data.double()
    full = lvm.infer(normal_normal, x, steps=2000, lr=0.05, num_particles=4, seed=0)
    mini = lvm.infer(normal_normal, x, steps=2000, lr=0.05, num_particles=4, batch_size=10, seed=0)
    exact_mean, exact_sd = normal_normal_posterior(x)
    mean, sd = _posterior_of(mini)
    # with N/B scaling the minibatch posterior has the full-data width (unscaled it would be sqrt(5) wider); over fit
    # seeds 0-4: sd 8.6-13.2% narrow (minibatch noise), mean within 1.0%, ELBOs within 0.2% of each other
    assert sd == pytest.approx(exact_sd, rel=0.25)
    assert mean == pytest.approx(exact_mean, rel=0.05)
    assert full.elbo == pytest.approx(mini.elbo, rel=0.1)


def test_kl_weight_schedule_and_callbacks_and_early_stop(normal_data):
    seen = []
    fit = lvm.infer(normal_normal, normal_data, steps=5000, lr=0.05, beta=lvm.linear_warmup(100),
                    patience=100, tol=1e-3, callbacks=[lambda s: seen.append(s.beta)])
    assert seen[0] == 0.0 and seen[50] == pytest.approx(0.5) and seen[-1] == 1.0
    assert fit.converged and fit.steps < 5000


def test_stop_from_a_callback(normal_data):
    fit = lvm.infer(normal_normal, normal_data, steps=100, callbacks=[lambda s: s.step >= 7])
    assert fit.steps == 7


def test_log_evidence_is_exact_when_every_latent_is_enumerated(float64):
    from ppl_lvm import constraints

    @lvm.model
    def mixture(x, K=2):
        weights = lvm.param(torch.ones(K) / K, constraint=constraints.simplex)
        locs = lvm.param(torch.tensor([[-1.0, 0.0], [1.0, 0.5]]))
        scales = lvm.param(torch.ones(K, 2), constraint=constraints.positive)
        with lvm.plate(len(x)):
            z = lvm.latent(dist.Categorical(weights))
            lvm.observe(dist.Normal(locs[z], scales[z]).to_event(1), x)

    x = _three_clusters(100)
    fit = lvm.infer(mixture, x, steps=30, lr=0.05)
    p = {k: v.numpy() for k, v in fit.params.items()}
    exact = _mixture_loglik(x, p["weights"], p["locs"], p["scales"])
    assert fit.log_evidence() == pytest.approx(exact, rel=1e-10)
    assert fit.log_evidence(seed=3) == fit.log_evidence(seed=4)  # no sampling involved


def test_a_model_without_latents_fits_and_scores_without_warnings():
    @lvm.model
    def normal(x):
        loc = lvm.param(torch.tensor(0.0))
        with lvm.plate(len(x)):
            lvm.observe(dist.Normal(loc, 1.0), x)

    x = torch.randn(50) + 2
    fit = lvm.infer(normal, x, steps=300, lr=0.05)
    assert float(fit.params["loc"]) == pytest.approx(float(x.mean()), abs=0.05)
    assert fit.log_evidence() == pytest.approx(float(dist.Normal(fit.params["loc"], 1.0).log_prob(x).sum()), rel=1e-6)


def test_meanfield_on_local_latents_in_a_plate_uses_analytic_kls(float64):
    from demo_models import ppca

    x = torch.randn(40, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the plate's own subsample site is no latent: no KL warning for it
        warnings.simplefilter("ignore", lvm.ConvergenceWarning)  # 20 steps: cut short on purpose
        fit = lvm.infer(ppca, x, method="meanfield", steps=20, lr=0.05)
    assert fit.method == "meanfield" and np.isfinite(fit.losses).all()
