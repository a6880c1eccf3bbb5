"""The built-in autoguides on the fast path (ppl_lvm.backends.planned_guides): the default ``"normal"`` guide,
``"delta"``, ``"fullrank"`` and Pyro's ``AutoNormal`` give the losses, gradients and parameters of Pyro's path under
the same seed, on every method the fast path serves and every built-in model that takes an autoguide, with
constrained sites (positive, simplex, interval), local latents in the data plate and minibatches.

The guide's draws are made by the same ``rsample`` calls in the same order from the same generator on both paths,
so the curves agree to float error: checked over seeds 0-4 for every case below (12 steps), the losses and the final
parameters were bit-identical (largest difference 0.0), and so were the first step's gradients; the tolerances (1e-6
relative on losses and gradients, 1e-4 on the parameters) leave room for another CPU's summation order.
"""

import warnings

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import RenyiELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoLowRankMultivariateNormal, AutoNormal

import ppl_lvm as lvm
from ppl_lvm import dist
from ppl_lvm.backends.estimators import STLTrace_ELBO
from ppl_lvm.backends.planned import loss_for
from ppl_lvm.datasets import binarized_digits
from ppl_lvm.guides import build_guide
from ppl_lvm.models.factor import factor_analysis, ppca
from ppl_lvm.models.topic import ProdLDA, generate_corpus
from ppl_lvm.models.vae import VAE
from ppl_lvm.models.vae_deep import TwoLayerVAE

SEED = 0


@lvm.model
def constrained(x):
    s = lvm.latent(dist.LogNormal(0.0, 1.0))  # positive
    w = lvm.latent(dist.Dirichlet(torch.ones(3)))  # simplex
    c = lvm.latent(dist.Uniform(-1.0, 2.0))  # interval
    with lvm.plate(len(x)):
        u = lvm.latent(dist.Beta(2.0, 2.0))  # interval (0, 1), local
        z = lvm.latent(dist.Normal(0.0, 1.0))  # real, local
        lvm.observe(dist.Normal(z * u + (w * torch.arange(3.0)).sum() + c, s), x)


@lvm.model
def local_constrained(x):
    with lvm.plate(len(x)):
        u = lvm.latent(dist.Beta(2.0, 2.0))
        v = lvm.latent(dist.Gamma(2.0, 1.0))
        p = lvm.latent(dist.Dirichlet(torch.ones(3)))
        lvm.observe(dist.Normal(u + v * p[..., 0], 1.0), x)


@lvm.model
def global_only(x):
    mu = lvm.latent(dist.Normal(0.0, 10.0))
    s = lvm.latent(dist.HalfNormal(5.0))
    with lvm.plate(len(x)):
        lvm.observe(dist.Normal(mu, s), x)


def _x(n=30, seed=1):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed)) + 1.0


def _constrained(seed):
    return constrained, _x(), {}


def _local(seed):
    return local_constrained, _x(), {}


def _global(seed):
    return global_only, _x(40), {}


def _linear_gaussian(model):
    def build(seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(40, 1, generator=g) @ torch.tensor([[2.0, -1.0, 1.0]]) + 0.3 * torch.randn(40, 3, generator=g)
        return model, {"x": x, "q": 1}, {}
    return build


def _prodlda(seed):
    corpus = generate_corpus(num_docs=40, vocab_size=20, num_topics=3, doc_length=(20, 40), seed=seed)
    torch.manual_seed(seed)
    return ProdLDA(20, num_topics=3, hidden=16).model, corpus.counts, {}


def _vae(seed):
    torch.manual_seed(seed)
    return VAE(64, latent_dim=4, hidden=(16,)).model, binarized_digits().x_train[:60], {}


def _deep(seed):
    torch.manual_seed(seed)
    return TwoLayerVAE(64, latent_dims=(4, 2), hidden=(16,), hidden2=(8,)).model, binarized_digits().x_train[:60], {}


# (case, build(seed) -> (model, data, options), method, options); no guide given is the method's default, "normal"
PLANNED = [
    ("constrained svi default guide (stl)", _constrained, "svi", {}),
    ("constrained svi standard", _constrained, "svi", {"estimator": "standard"}),
    ("constrained svi 3 particles", _constrained, "svi", {"num_particles": 3}),
    ("constrained svi warm-up", _constrained, "svi", {"beta": lvm.linear_warmup(5)}),
    ("constrained svi sgd", _constrained, "svi", {"optimizer": "sgd", "lr": 1e-3}),
    ("constrained meanfield", _constrained, "meanfield", {}),
    ("constrained svi delta", _constrained, "svi", {"guide": "delta"}),
    ("constrained svi map, sgd", _constrained, "svi", {"guide": "map", "optimizer": "sgd", "lr": 1e-3}),
    ("constrained meanfield delta", _constrained, "meanfield", {"guide": "delta"}),
    ("constrained svi fullrank", _constrained, "svi", {"guide": "fullrank"}),
    ("constrained svi fullrank 2 particles", _constrained, "svi", {"guide": "mvn", "num_particles": 2}),
    ("constrained svi AutoNormal", _constrained, "svi", {"guide": "AutoNormal"}),
    ("local constrained iwae", _local, "iwae", {"num_particles": 3}),
    ("local constrained renyi", _local, "renyi", {"num_particles": 3, "alpha": 0.5}),
    ("local constrained iwae AutoNormal", _local, "iwae", {"num_particles": 3, "guide": "AutoNormal"}),
    ("local constrained meanfield", _local, "meanfield", {}),
    ("minibatches, normal", _global, "svi", {"batch_size": 10}),
    ("minibatches, delta", _global, "svi", {"batch_size": 10, "guide": "delta"}),
    ("minibatches, fullrank", _global, "svi", {"batch_size": 10, "guide": "fullrank"}),
    ("minibatches, meanfield", _global, "meanfield", {"batch_size": 10}),
    ("ppca svi", _linear_gaussian(ppca), "svi", {}),
    ("ppca iwae", _linear_gaussian(ppca), "iwae", {"num_particles": 3}),
    ("ppca svi fullrank", _linear_gaussian(ppca), "svi", {"guide": "fullrank"}),
    ("factor analysis meanfield", _linear_gaussian(factor_analysis), "meanfield", {}),
    ("factor analysis svi delta", _linear_gaussian(factor_analysis), "svi", {"guide": "delta"}),
    ("prodlda svi", _prodlda, "svi", {"guide": "normal"}),
    ("prodlda meanfield", _prodlda, "meanfield", {"guide": "normal"}),
    ("vae svi", _vae, "svi", {"guide": "normal"}),
    ("vae iwae", _vae, "iwae", {"num_particles": 3, "guide": "normal"}),
    ("two-layer vae svi", _deep, "svi", {"guide": "normal"}),
]


def _fit(build, method, options, fast_path, seed=SEED, steps=12):
    model, data, extra = build(seed)
    options = {"lr": 0.02, **extra, **options}
    if options.get("guide") == "AutoNormal":
        options["guide"] = AutoNormal(model)
    if options.get("guide") == "lowrank":
        options["guide"] = AutoLowRankMultivariateNormal(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lvm.ConvergenceWarning)
        warnings.filterwarnings("ignore", message="no analytic KL")
        return lvm.infer(model, data, method=method, steps=steps, seed=seed, progress=False, fast_path=fast_path,
                         **options)


@pytest.mark.parametrize("case, build, method, options", PLANNED, ids=[c[0] for c in PLANNED])
def test_the_built_in_autoguides_give_the_losses_and_parameters_of_pyros_path(case, build, method, options):
    fast = _fit(build, method, options, fast_path=True)
    pyro_path = _fit(build, method, options, fast_path=False)
    assert fast.options["fast_path"] is True and fast.options["fast_path_reason"] is None
    assert pyro_path.options["fast_path"] is False
    np.testing.assert_allclose(fast.losses, pyro_path.losses, rtol=1e-6)
    assert set(fast.params) == set(pyro_path.params)
    for name, value in fast.params.items():
        np.testing.assert_allclose(value.detach().numpy(), pyro_path.params[name].detach().numpy(), rtol=1e-4,
                                   atol=1e-6, err_msg=name)


def _gradients(elbo, guide_spec, model, x, planned):
    """The first step's loss and gradients, by Pyro's estimator or by the planned loss, from seed 0."""
    pyro.clear_param_store()
    pyro.set_rng_seed(1)  # the fullrank guide's initial point is the median of prior draws
    guide, _ = build_guide(guide_spec, model, model.inspect(x))
    with torch.random.fork_rng(devices=[]):
        guide(x)  # the prototype trace and the parameters
    pyro.set_rng_seed(0)
    if not planned:
        with pyro.poutine.trace(param_only=True) as params:
            loss = elbo.loss_and_grads(model, guide, x)
        named = {n: s["value"].unconstrained() for n, s in params.trace.nodes.items()}
        return loss, {n: p.grad.clone() for n, p in named.items()}
    plan, reason = loss_for(elbo, guide)
    assert reason is None
    store = pyro.get_param_store()
    plan.named = {n: store._params[n] for n in store.keys()}
    loss = plan.loss_and_grads(model, guide, x=x)
    return loss, {n: p.grad.clone() for n, p in plan.named.items()}


ESTIMATORS = [("stl", lambda: STLTrace_ELBO(max_plate_nesting=1)), ("standard", lambda: Trace_ELBO(max_plate_nesting=1)),
              ("meanfield", lambda: TraceMeanField_ELBO(max_plate_nesting=1)),
              ("iwae", lambda: RenyiELBO(alpha=0.0, num_particles=3, vectorize_particles=True, max_plate_nesting=1))]


# the fullrank guide's auxiliary site is not a model site (meanfield) and lies outside the data plate (iwae): those
# run Pyro's path (test_autoguides_the_fast_path_does_not_plan_fall_back_and_say_why)
GRADIENT_CASES = [(guide, *e) for guide in ("normal", "delta", "fullrank") for e in ESTIMATORS
                  if not (guide == "fullrank" and e[0] in ("meanfield", "iwae"))]


@pytest.mark.parametrize("guide, estimator, make", GRADIENT_CASES, ids=[f"{c[0]}-{c[1]}" for c in GRADIENT_CASES])
def test_the_planned_autoguide_step_has_the_gradients_of_pyros_step(guide, estimator, make):
    model, x = (local_constrained, _x()) if estimator == "iwae" else (constrained, _x())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(not in model|mean-field|mean field).*")
        with pyro.get_param_store().scope():
            pyro_loss, pyro_grads = _gradients(make(), guide, model, x, planned=False)
        with pyro.get_param_store().scope():
            loss, grads = _gradients(make(), guide, model, x, planned=True)
    assert loss == pytest.approx(pyro_loss, rel=1e-6)
    assert set(grads) == set(pyro_grads)
    for name, g in grads.items():
        np.testing.assert_allclose(g.numpy(), pyro_grads[name].numpy(), rtol=1e-6, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("guide", ["normal", "delta", "fullrank"])
def test_a_fit_on_the_fast_path_reads_as_one_on_pyros_path(guide):
    # what a user reads after the fit: the guide, its parameters, posterior draws, the bound, ArviZ
    fits = {fp: _fit(_constrained, "svi", {"guide": guide}, fast_path=fp, steps=30) for fp in (True, False)}
    fast, slow = fits[True], fits[False]
    assert fast.options["fast_path"] is True
    assert type(fast.guide) is type(slow.guide) and fast.guide_name == slow.guide_name == guide
    median, slow_median = fast.guide.median(_x()), slow.guide.median(_x())
    assert set(median) == set(slow_median) == {"s", "w", "c", "u", "z"}
    for name in median:
        np.testing.assert_allclose(median[name].numpy(), slow_median[name].numpy(), rtol=1e-4, atol=1e-6)
    draws, slow_draws = fast.sample_posterior(40, seed=3), slow.sample_posterior(40, seed=3)
    assert set(draws) == set(slow_draws) and {"s", "w", "c", "u", "z"} <= set(draws)
    for name in draws:
        np.testing.assert_allclose(draws[name].detach().numpy(), slow_draws[name].detach().numpy(), rtol=1e-4, atol=1e-6)
    assert bool((draws["s"] > 0).all()) and np.allclose(draws["w"].sum(-1).numpy(), 1.0, atol=1e-5)
    assert bool(((draws["c"] > -1) & (draws["c"] < 2)).all()) and bool(((draws["u"] > 0) & (draws["u"] < 1)).all())
    assert fast.elbo == pytest.approx(slow.elbo, rel=1e-5)
    idata, slow_idata = fast.to_arviz(20, seed=4), slow.to_arviz(20, seed=4)
    assert set(idata.posterior.data_vars) == set(slow_idata.posterior.data_vars)
    for name in idata.posterior.data_vars:
        np.testing.assert_allclose(idata.posterior[name].values, slow_idata.posterior[name].values, rtol=1e-4,
                                   atol=1e-6)


FALLBACK = [
    ("lowrank autoguide", _constrained, "svi", {"guide": "lowrank"}, "AutoLowRankMultivariateNormal"),
    ("fullrank meanfield: an auxiliary site", _constrained, "meanfield", {"guide": "fullrank"}, "auxiliary"),
    ("AutoNormal meanfield: an auxiliary site", _constrained, "meanfield", {"guide": "AutoNormal"}, "auxiliary"),
    ("fullrank iwae: a global site", _local, "iwae", {"num_particles": 3, "guide": "fullrank"}, "LocalIWAE"),
    ("normal iwae with global latents", _constrained, "iwae", {"num_particles": 3}, "LocalIWAE"),
]


@pytest.mark.parametrize("case, build, method, options, reason", FALLBACK, ids=[c[0] for c in FALLBACK])
def test_autoguides_the_fast_path_does_not_plan_fall_back_and_say_why(case, build, method, options, reason):
    fit = _fit(build, method, options, fast_path=True, steps=2)
    assert fit.options["fast_path"] is False
    assert reason in fit.options["fast_path_reason"]
    if case == "lowrank autoguide":  # names the autoguides it runs
        assert "'normal'" in fit.options["fast_path_reason"]
