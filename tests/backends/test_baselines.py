"""Score-function gradients with baselines (``method="svi"`` with a guide that samples a site without rsample)."""

import pyro
import pytest
import torch
from demo_models import normal_normal

import ppl_lvm as lvm
from ppl_lvm import constraints, dist
from ppl_lvm.backends.base import guide_sites
from ppl_lvm.backends.baselines import ScoreFunctionELBO
from ppl_lvm.backends.problem import make_problem
from ppl_lvm.backends.svi import SVI
from ppl_lvm.datasets import binarized_digits
from ppl_lvm.guides import build_guide
from ppl_lvm.models.sbn import SigmoidBeliefNet


def _gradient_draws(model, guide, data, baseline, param, draws, warm=20, seed=0):
    """Draws of the gradient of ``param`` by the ELBO ``method="svi"`` plans, at fixed parameters: ``warm`` steps
    first (the running average settles), then ``draws`` recorded; nothing is optimised."""
    options = {} if baseline == "unset" else {"baseline": baseline}
    problem = make_problem(SVI, model, data, guide=guide, options=options)
    loop, method = SVI.options_of(problem)
    pyro.set_rng_seed(seed)
    rows = []
    with pyro.get_param_store().scope({"params": {}, "constraints": {}}):
        built, name = build_guide(guide, problem.model, problem.structure)
        plan = SVI.plan(problem, loop, dict(method), built, name, guide_sites(built, problem.data.kwargs))
        for i in range(warm + draws):
            with pyro.poutine.trace(param_only=True) as captured:
                plan.elbo.loss_and_grads(plan.model, plan.guide, **problem.data.kwargs)
            if i >= warm:
                rows.append(pyro.get_param_store()[param].unconstrained().grad.detach().clone())
            for site in captured.trace.nodes.values():
                site["value"].unconstrained().grad = None
    return torch.stack(rows), plan


@lvm.model
def coin(x):
    """A bit per row, prior p, seen through unit Gaussian noise around -1 or +1."""
    p = lvm.param(torch.tensor(0.3), constraint=constraints.unit_interval)
    with lvm.plate(len(x)):
        z = lvm.latent(dist.Bernoulli(p))
        lvm.observe(dist.Normal(2 * z - 1, 1.0), x)


def test_score_function_gradient_is_unbiased_against_the_enumerated_elbo_gradient(float64):
    x = torch.tensor([-1.5, -0.2, 0.1, 0.8, 1.7, 2.4])
    encoder = torch.nn.Linear(1, 1).double()
    with torch.no_grad():
        encoder.weight.fill_(0.7)
        encoder.bias.fill_(-0.2)

    class Squeeze(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = encoder

        def forward(self, x):
            return self.net(x.unsqueeze(-1)).squeeze(-1)

    guide = lvm.AmortizedBernoulli(Squeeze(), site="z")
    # the exact gradient: the ELBO summed over both values of every row's bit, differentiated by autograd
    logits = encoder(x.unsqueeze(-1)).squeeze(-1)
    elbo = 0.0
    for value in (0.0, 1.0):
        z = torch.full_like(x, value)
        q = dist.Bernoulli(logits=logits)
        log_joint = dist.Bernoulli(0.3).log_prob(z) + dist.Normal(2 * z - 1, 1.0).log_prob(x)
        elbo = elbo + (q.log_prob(z).exp() * (log_joint - q.log_prob(z))).sum()
    exact = -torch.autograd.grad(elbo, encoder.weight)[0].squeeze()
    for baseline in (None, "average"):
        draws, _ = _gradient_draws(coin, guide, {"x": x}, baseline, "encoder$$$net.weight", draws=250)
        draws = draws.squeeze()
        se = draws.std() / draws.shape[0] ** 0.5
        # seeds 0-4: |mean - exact| / se 0.2-1.2 (no baseline) and 0.1-0.8 (average, with 9 times less variance)
        assert abs(float(draws.mean() - exact)) < 4 * float(se), (baseline, float(draws.mean()), float(exact))


def test_the_baseline_cuts_the_gradient_variance_of_an_encoder_weight_of_a_sigmoid_belief_net():
    x = binarized_digits().x_train[:100]
    torch.manual_seed(100)
    sbn = SigmoidBeliefNet(64, latent_dim=16, hidden=())
    lvm.infer(sbn.model, x, guide=sbn.guide, steps=100, lr=0.02, seed=0)  # a trained point, not the initial one
    weight = "encoder$$$0.weight"
    plain, plan = _gradient_draws(sbn.model, sbn.guide, {"x": x}, None, weight, draws=60)
    assert isinstance(plan.elbo, ScoreFunctionELBO) and plan.elbo.baseline is None
    averaged, _ = _gradient_draws(sbn.model, sbn.guide, {"x": x}, "average", weight, draws=60)
    # the weight from pixel 28 (a central pixel) to the first bit, and the sum over the whole (16, 64) matrix:
    # over seeds 0-4 (models seeded 100-104) the running average cut the variance by a factor of 173-277 (the
    # element) and 209-230 (the sum); asserted with a margin of about 3 below the smallest
    element = (0, 28)
    ratio = plain[:, element[0], element[1]].var() / averaged[:, element[0], element[1]].var()
    total = plain.var(0).sum() / averaged.var(0).sum()
    assert ratio > 60 and total > 70, (float(ratio), float(total))
    # and the mean is the same within Monte Carlo error: seeds 0-4 gave |difference| / se of 0.2-1.8
    difference = plain[:, element[0], element[1]].mean() - averaged[:, element[0], element[1]].mean()
    se = ((plain[:, element[0], element[1]].var() + averaged[:, element[0], element[1]].var()) / 60) ** 0.5
    assert abs(float(difference)) < 4 * float(se)


def test_what_ran_is_recorded_and_fit_more_continues():
    x = binarized_digits().x_train[:60]
    torch.manual_seed(0)
    sbn = SigmoidBeliefNet(64, latent_dim=4, hidden=(8,))
    fit = lvm.infer(sbn.model, x, guide=sbn.guide, steps=20, lr=0.02, seed=0)
    assert fit.options["baseline"] == "average" and fit.options["score_function_sites"] == ["z"]
    assert fit.options["estimator"] == "standard"  # no reparameterised site for sticking the landing
    assert "__baseline_avg_downstream_cost_z" in fit.param_state["params"]
    net = lvm.infer(sbn.model, x, guide=sbn.guide, steps=20, lr=0.02, seed=0, baseline="NET")
    assert net.options["baseline"] == "net"
    assert any(name.startswith("baseline_z$$$") for name in net.param_state["params"])
    more = net.fit_more(steps=10)
    assert more.options["baseline"] == "net" and more.steps == 10
    none = lvm.infer(sbn.model, x, guide=sbn.guide, steps=20, lr=0.02, seed=0, baseline=None)
    assert none.options["baseline"] is None and "__baseline_avg_downstream_cost_z" not in none.param_state["params"]
    # a reparameterised guide: nothing is scored, no baseline runs
    plain = lvm.infer(normal_normal, torch.randn(20), steps=20)
    assert plain.options["score_function_sites"] == [] and plain.options["baseline"] is None


def test_the_baseline_option_is_checked():
    x = torch.randn(20)
    with pytest.raises(ValueError, match=r"baseline must be one of 'average' .*'net' .*None .*got 'mean'"):
        lvm.infer(normal_normal, x, steps=5, baseline="mean")
    with pytest.raises(
        lvm.UnsupportedModelError,
        match=r"baseline='average' applies to guide sites sampled by the "
        r"score function .* this guide has none",
    ):
        lvm.infer(normal_normal, x, steps=5, baseline="average")
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['baseline'\].*an option of method='svi'"):
        lvm.infer(normal_normal, x, method="meanfield", steps=5, baseline="average")


def test_a_net_baseline_needs_a_site_in_the_data_plate():
    @lvm.model
    def one_coin(x):
        z = lvm.latent(dist.Bernoulli(0.5))
        with lvm.plate(len(x)):
            lvm.observe(dist.Normal(2 * z - 1, 1.0), x)

    @one_coin.guide
    def one_coin_guide(x):
        logit = lvm.param(torch.tensor(0.0))
        lvm.latent(dist.Bernoulli(logits=logit), name="z")

    x = torch.randn(10) + 1
    fit = lvm.infer(one_coin, x, steps=10, baseline="average")
    assert fit.options["score_function_sites"] == ["z"]
    with pytest.raises(
        lvm.UnsupportedModelError,
        match=r"baseline='net' .* site 'z' is not one value per data row "
        r"\(its plates are \[\].*Use baseline='average'",
    ):
        lvm.infer(one_coin, x, steps=10, baseline="net")


def test_enumerated_latents_and_a_baseline_are_refused_together():
    @lvm.model
    def two_bits(x):
        a = lvm.latent(dist.Bernoulli(0.5))
        with lvm.plate(len(x)):
            b = lvm.latent(dist.Bernoulli(0.5))
            lvm.observe(dist.Normal(a + b, 1.0), x)

    @two_bits.guide
    def two_bits_guide(x):
        logit = lvm.param(torch.tensor(0.0))
        lvm.latent(dist.Bernoulli(logits=logit), name="a")

    x = torch.randn(10)
    fit = lvm.infer(two_bits, x, steps=5)  # 'b' summed out, 'a' scored by TraceEnum_ELBO's own estimator
    assert fit.options["score_function_sites"] == ["a"] and fit.options["baseline"] is None
    with pytest.raises(
        lvm.UnsupportedModelError,
        match=r"baseline='average' needs TraceGraph_ELBO, which cannot sum "
        r"out the model's enumerated discrete latents \['b'\]",
    ):
        lvm.infer(two_bits, x, steps=5, baseline="average")
