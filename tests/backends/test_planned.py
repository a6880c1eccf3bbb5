"""The fast path of the variational methods (ppl_lvm.backends.planned): the same losses and parameters as Pyro's
path under the same seed, on every built-in model the gradient methods fit, and Pyro's path where it cannot plan.

The two paths draw the same random numbers in the same order and compute the same sums, so the loss curves agree
to float error: checked over seeds 0-4 for every planned case below (12 steps), the loss curves and the final
parameters were bit-identical (largest difference 0.0); the tolerances (1e-6 relative on the losses, 1e-4 on the
parameters) leave room for another CPU's summation order.
"""

import warnings

import numpy as np
import pytest
import torch
from torch.distributions import Distribution

import ppl_lvm as lvm
from ppl_lvm import dist
from ppl_lvm.datasets import binarized_digits
from ppl_lvm.models.factor import factor_analysis, ppca
from ppl_lvm.models.hmm import gaussian_hmm
from ppl_lvm.models.mixtures import gaussian_mixture
from ppl_lvm.models.regression import regression_mixture
from ppl_lvm.models.sbn import SigmoidBeliefNet
from ppl_lvm.models.topic import ProdLDA, generate_corpus
from ppl_lvm.models.vae import VAE
from ppl_lvm.models.vae_categorical import CategoricalVAE
from ppl_lvm.models.vae_deep import TwoLayerVAE

SEED = 0


def _digits(n=200):
    return binarized_digits().x_train[:n]


def _vae(seed):
    torch.manual_seed(seed)
    vae = VAE(64, latent_dim=4, hidden=(16,))
    return vae.model, _digits(), dict(guide=vae.guide, batch_size=50)


def _deep(seed):
    torch.manual_seed(seed)
    vae = TwoLayerVAE(64, latent_dims=(4, 2), hidden=(16,), hidden2=(8,))
    return vae.model, _digits(), dict(guide=vae.guide, batch_size=50)


def _prodlda(seed):
    corpus = generate_corpus(num_docs=60, vocab_size=20, num_topics=3, doc_length=(20, 40), seed=seed)
    torch.manual_seed(seed)
    lda = ProdLDA(20, num_topics=3, hidden=16)
    return lda.model, corpus.counts, dict(guide=lda.guide)


def _linear_gaussian(model):
    def build(seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(80, 1, generator=g) @ torch.tensor([[2.0, -1.0, 1.0]]) + 0.3 * torch.randn(80, 3, generator=g)
        return model, {"x": x, "q": 1}, {}
    return build


# (case, build(seed) -> (model, data, options), method, method options)
PLANNED = [
    ("vae svi (stl)", _vae, "svi", {}),
    ("vae svi standard", _vae, "svi", {"estimator": "standard"}),
    ("vae svi 3 particles", _vae, "svi", {"num_particles": 3}),
    ("vae svi warm-up", _vae, "svi", {"beta": lvm.linear_warmup(5)}),
    ("vae svi clippedadam", _vae, "svi", {"optimizer": "clippedadam", "clip_norm": 5.0}),
    ("vae svi sgd, clipped", _vae, "svi", {"optimizer": "sgd", "optim_args": {"momentum": 0.9}, "clip_norm": 50.0,
                                           "lr": 1e-4}),
    ("vae meanfield rmsprop", _vae, "meanfield", {"optimizer": "rmsprop"}),
    ("vae meanfield", _vae, "meanfield", {}),
    ("vae iwae", _vae, "iwae", {"num_particles": 3}),
    ("vae renyi", _vae, "renyi", {"num_particles": 3, "alpha": 0.5}),
    ("two-layer vae svi", _deep, "svi", {}),
    ("two-layer vae iwae", _deep, "iwae", {"num_particles": 3}),
    ("prodlda meanfield", _prodlda, "meanfield", {}),
    ("ppca svi", _linear_gaussian(ppca), "svi", {}),
    ("factor analysis meanfield", _linear_gaussian(factor_analysis), "meanfield", {}),
]


def _fit(build, method, options, fast_path, seed=SEED, steps=12):
    model, data, extra = build(seed)
    options = {"lr": 0.02, **options}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lvm.ConvergenceWarning)
        return lvm.infer(model, data, method=method, steps=steps, seed=seed, progress=False, fast_path=fast_path,
                         **extra, **options)


@pytest.mark.parametrize("case, build, method, options", PLANNED, ids=[c[0] for c in PLANNED])
def test_the_fast_path_gives_the_losses_and_parameters_of_pyros_path(case, build, method, options):
    fast = _fit(build, method, options, fast_path=True)
    pyro_path = _fit(build, method, options, fast_path=False)
    assert fast.options["fast_path"] is True and fast.options["fast_path_reason"] is None
    assert pyro_path.options["fast_path"] is False and pyro_path.options["fast_path_reason"] == "fast_path=False"
    np.testing.assert_allclose(fast.losses, pyro_path.losses, rtol=1e-6)
    assert set(fast.params) == set(pyro_path.params)
    for name, value in fast.params.items():
        np.testing.assert_allclose(value.detach().numpy(), pyro_path.params[name].detach().numpy(), rtol=1e-4,
                                   atol=1e-6, err_msg=name)


def _gmm(seed):
    x = torch.cat([torch.randn(30, 2) - 3, torch.randn(30, 2) + 3])
    return gaussian_mixture, {"x": x, "K": 2, "covariance_type": "diag"}, {}


def _hmm(seed):
    return gaussian_hmm, {"x": torch.randn(2, 12, 1), "lengths": torch.tensor([12, 8]), "K": 2}, {}


def _regression(seed):
    x = torch.randn(40, 1)
    return regression_mixture, {"x": x, "y": 2 * x[:, 0] + 0.1 * torch.randn(40), "K": 2}, {}


def _sbn(seed):
    sbn = SigmoidBeliefNet(64, latent_dim=4, hidden=())
    return sbn.model, binarized_digits(threshold=0.5).x_train[:50], dict(guide=sbn.guide)


def _relaxed(seed):
    vae = CategoricalVAE(64, num_categories=3, hidden=(8,))
    return vae.model, _digits(50), dict(guide=vae.guide(relaxed=True))


@lvm.model
def _normal_mean(x):
    mu = lvm.latent(dist.Normal(0.0, 10.0))
    with lvm.plate(len(x)):
        lvm.observe(dist.Normal(mu, 1.0), x)


FALLBACK = [
    ("gaussian mixture: enumerated", _gmm, "svi", {}, "enumeration"),
    ("hmm: enumerated", _hmm, "svi", {}, "enumeration"),
    ("mixture of regressions: enumerated", _regression, "svi", {}, "enumeration"),
    ("sigmoid belief net: score function", _sbn, "svi", {}, "ScoreFunctionELBO"),
    ("relaxed categorical vae: a Pyro handler", _relaxed, "svi", {}, "handler"),
    ("two-layer vae meanfield: Monte Carlo KL term", _deep, "meanfield", {}, "FreeBitsMeanField_ELBO"),
    ("two-layer vae dreg", _deep, "iwae", {"num_particles": 3, "estimator": "dreg"}, "LocalIWAE"),
    ("particles one at a time", _vae, "svi", {"num_particles": 2, "vectorize_particles": False}, "one at a time"),
]


@pytest.mark.parametrize("case, build, method, options, reason", FALLBACK, ids=[c[0] for c in FALLBACK])
def test_models_the_fast_path_cannot_plan_run_pyros_path_and_say_why(case, build, method, options, reason):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="no analytic KL")
        fit = _fit(build, method, options, fast_path=True, steps=2)
    assert fit.options["fast_path"] is False
    assert reason in fit.options["fast_path_reason"]


def test_a_model_whose_structure_changes_leaves_the_fast_path_with_the_same_losses():
    @lvm.model
    def switching(x):
        mu = lvm.param(torch.zeros(()))
        with lvm.plate(len(x)):
            lvm.observe(dist.Normal(mu, 1.0), x)
        if float(mu.detach()) > 0.1:  # a site appears once mu has moved
            lvm.observe(dist.Normal(mu, 1.0), torch.tensor(1.0), name="extra")

    x = torch.full((20,), 2.0)
    fits = {fp: lvm.infer(switching, x, steps=10, lr=0.05, anneal=0, seed=0, fast_path=fp, progress=False)
            for fp in (True, False)}
    assert fits[True].options["fast_path"] is False
    assert "changed" in fits[True].options["fast_path_reason"]
    np.testing.assert_allclose(fits[True].losses, fits[False].losses, rtol=1e-6)


def test_a_model_without_parameters_runs_on_the_fast_path():
    @lvm.model
    def fixed(x):
        with lvm.plate(len(x)):
            z = lvm.latent(dist.Normal(0.0, 1.0))
            lvm.observe(dist.Normal(z, 1.0), x)

    @fixed.guide
    def fixed_guide(x):
        with lvm.plate(len(x)):
            lvm.latent(dist.Normal(x / 2, 0.5 ** 0.5), name="z")

    x = torch.randn(10)
    fits = {fp: lvm.infer(fixed, x, steps=3, seed=0, fast_path=fp, progress=False) for fp in (True, False)}
    assert fits[True].options["fast_path"] is True
    np.testing.assert_allclose(fits[True].losses, fits[False].losses, rtol=1e-6)


def test_a_planned_step_leaves_torchs_default_argument_checks_alone():
    # the planned steps build their distributions unchecked in their own thread only; torch's process-wide default
    # (what another thread building a distribution at that moment reads) stays as it was
    default = Distribution._validate_args
    seen = []

    @lvm.model
    def recording(x):
        mu = lvm.param(torch.zeros(()))
        likelihood = dist.Normal(mu, 1.0)
        seen.append((Distribution._validate_args, likelihood._validate_args))
        with lvm.plate(len(x)):
            lvm.observe(likelihood, x)

    fit = lvm.infer(recording, torch.randn(20), steps=5, lr=0.05, anneal=0, seed=0, progress=False)
    assert fit.options["fast_path"] is True
    assert Distribution._validate_args is default
    assert [flag for flag, _ in seen] == [default] * len(seen)
    # the prototype run, Pyro's first step and the planner's check of it build checked distributions (as torch's
    # default says), the planned steps 2-5 unchecked ones
    assert [checked for _, checked in seen] == [default] * 3 + [False] * 4


def test_fast_path_must_be_a_bool():
    with pytest.raises(ValueError, match="fast_path must be True or False"):
        lvm.infer(_normal_mean, torch.randn(5), steps=1, fast_path="yes")
