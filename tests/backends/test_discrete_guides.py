"""lvm.AmortizedCategorical (score function or Gumbel-softmax), lvm.AmortizedBernoulli, lvm.temperature_schedule."""

import math

import pyro
import pyro.poutine as poutine
import pytest
import torch

import ppl_lvm as lvm
from ppl_lvm import dist
from ppl_lvm.runtime import FitContext, fit_scope

K = 3


@lvm.model
def clusters(x):
    """Three one-hot codes, each a location on the line."""
    locs = lvm.param(torch.tensor([-2.0, 0.0, 2.0]))
    with lvm.plate(len(x)):
        c = lvm.latent(dist.OneHotCategorical(logits=torch.zeros(K)))
        lvm.observe(dist.Normal(c @ locs, 0.5), x)


@lvm.model
def integer_clusters(x):
    locs = lvm.param(torch.tensor([-2.0, 0.0, 2.0]))
    with lvm.plate(len(x)):
        c = lvm.latent(dist.Categorical(logits=torch.zeros(K)))
        lvm.observe(dist.Normal(locs[c], 0.5), x)


class Encoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(1, K)

    def forward(self, x):
        return self.net(x.unsqueeze(-1))


def _x():
    return torch.tensor([-2.1, -1.8, 0.2, -0.1, 1.9, 2.2])


def test_the_temperature_follows_its_schedule_at_every_step():
    schedule = lvm.temperature_schedule(2.0, 0.5, steps=10)
    assert schedule(0) == 2.0 and schedule(10) == pytest.approx(0.5) and schedule(25) == pytest.approx(0.5)
    assert schedule(5) == pytest.approx(1.0)  # geometric: halfway in log-temperature
    guide = lvm.AmortizedCategorical(Encoder(), site="c", relaxed=True, temperature=schedule)
    seen = []
    fit = lvm.infer(
        clusters, _x(), guide=guide, steps=14, lr=0.01, callbacks=[lambda s: seen.append(guide.last_temperature)]
    )
    assert seen == pytest.approx([schedule(s) for s in range(14)], rel=1e-12)
    assert fit.options["score_function_sites"] == [] and fit.options["baseline"] is None
    assert fit.guide_name == "amortised categorical over 'c' (Gumbel-softmax)"


def test_inside_a_fit_the_guide_and_the_model_prior_are_relaxed_to_the_same_temperature():
    guide = lvm.AmortizedCategorical(Encoder(), site="c", relaxed=True, temperature=lambda step: 0.3 + 0.1 * step)
    guide.bind(clusters, clusters.inspect(_x()))
    with fit_scope(FitContext(step=2)):
        gtrace = poutine.trace(guide).get_trace(_x())
        mtrace = poutine.trace(poutine.replay(guide.relaxing(clusters), trace=gtrace)).get_trace(_x())
    for trace in (gtrace, mtrace):
        fn = trace.nodes["c"]["fn"]
        assert isinstance(fn, torch.distributions.RelaxedOneHotCategorical)
        assert float(fn.temperature) == pytest.approx(0.5)
    value = gtrace.nodes["c"]["value"]
    assert value.requires_grad and torch.allclose(value.sum(-1), torch.ones(6)) and not torch.all(value.max(-1)[0] == 1)
    # outside a fit: the categorical itself (the argmax of a Gumbel-softmax draw has this law at any temperature)
    outside = poutine.trace(guide).get_trace(_x()).nodes["c"]
    assert isinstance(outside["fn"], dist.OneHotCategorical) and torch.all(outside["value"].sum(-1) == 1)
    assert isinstance(poutine.trace(guide.relaxing(clusters)).get_trace(_x()).nodes["c"]["fn"], dist.OneHotCategorical)


def test_straight_through_draws_are_one_hot_with_a_relaxed_gradient():
    encoder = Encoder()
    guide = lvm.AmortizedCategorical(encoder, site="c", relaxed=True, temperature=0.5, straight_through=True)
    guide.bind(clusters, clusters.inspect(_x()))
    with fit_scope(FitContext()):
        value = poutine.trace(guide).get_trace(_x()).nodes["c"]["value"]
    assert torch.all((value == 0) | (value == 1)) and torch.all(value.sum(-1) == 1)
    (value * torch.arange(float(K))).sum().backward()
    assert pyro.get_param_store()["encoder$$$net.weight"].grad.abs().sum() > 0
    fit = lvm.infer(clusters, _x(), guide=guide, steps=5, lr=0.01)
    assert "straight-through" in fit.guide_name and math.isfinite(fit.elbo)


def test_the_score_function_categorical_guide_fits_one_hot_and_integer_sites():
    for model in (clusters, integer_clusters):
        fit = lvm.infer(model, _x(), guide=lvm.AmortizedCategorical(Encoder(), site="c"), steps=5, lr=0.01)
        assert fit.options["score_function_sites"] == ["c"] and fit.options["baseline"] == "average"


def test_bad_categorical_guides_are_refused():
    with pytest.raises(ValueError, match=r"temperature=0.5 applies to the Gumbel-softmax relaxation only"):
        lvm.AmortizedCategorical(Encoder(), site="c", temperature=0.5)
    with pytest.raises(ValueError, match=r"straight_through=True applies to the Gumbel-softmax relaxation only"):
        lvm.AmortizedCategorical(Encoder(), site="c", straight_through=True)
    with pytest.raises(ValueError, match=r"temperature must be a positive finite number, got -1"):
        lvm.AmortizedCategorical(Encoder(), site="c", relaxed=True, temperature=-1)
    with pytest.raises(ValueError, match=r"temperature_schedule: end must be a positive number"):
        lvm.temperature_schedule(1.0, 0.0, steps=10)
    with pytest.raises(ValueError, match=r"site 'c' is a Categorical, whose integer value cannot be relaxed"):
        lvm.infer(integer_clusters, _x(), guide=lvm.AmortizedCategorical(Encoder(), site="c", relaxed=True), steps=2)
    with pytest.raises(ValueError, match=r"temperature\(0\) must be a positive finite number, got nan"):
        guide = lvm.AmortizedCategorical(Encoder(), site="c", relaxed=True, temperature=lambda s: math.nan)
        lvm.infer(clusters, _x(), guide=guide, steps=2)
    with pytest.raises(lvm.UnsupportedModelError, match=r"method 'iwae' with the relaxed guide .* use method='svi'"):
        lvm.infer(
            clusters, _x(), method="iwae", guide=lvm.AmortizedCategorical(Encoder(), site="c", relaxed=True), steps=2
        )
    with pytest.raises(ValueError, match=r"AmortizedBernoulli: site 'c' has support 'onehot'"):
        lvm.infer(clusters, _x(), guide=lvm.AmortizedBernoulli(Encoder(), site="c"), steps=2)
