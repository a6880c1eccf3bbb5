import pyro.poutine as poutine
import pytest
import torch

import ppl_lvm as lvm
from ppl_lvm import dist


def test_site_names_equal_assigned_names():
    @lvm.model
    def m(x):
        loc = lvm.param(torch.zeros(2))
        scale = lvm.latent(dist.LogNormal(0.0, 1.0))
        with lvm.plate(len(x)) as data:  # noqa: F841 - names the plate
            z = lvm.latent(dist.Bernoulli(0.5))
            y = lvm.observe(dist.Normal(loc[z.long()], scale), x)
        return y

    trace = poutine.trace(m).get_trace(torch.randn(4))
    names = {n for n, s in trace.nodes.items() if s["type"] in ("sample", "param")}
    assert {"loc", "scale", "z", "y", "data"} <= names
    assert trace.nodes["y"]["is_observed"]


def test_observe_without_target_takes_the_value_name_and_explicit_name_wins():
    @lvm.model
    def m(x):
        mu = lvm.latent(dist.Normal(0.0, 1.0), name="location")
        lvm.observe(dist.Normal(mu, 1.0).expand([len(x)]).to_event(1), x)

    trace = poutine.trace(m).get_trace(torch.randn(3))
    assert "location" in trace.nodes and "mu" not in trace.nodes
    assert trace.nodes["x"]["is_observed"]


def test_multiline_and_method_chain_calls_are_named():
    @lvm.model
    def m():
        first = lvm.latent(
            dist.Normal(0.0, 1.0)
        )
        second = (lvm
                  .latent(dist.Normal(first, 1.0)))
        return second

    trace = poutine.trace(m).get_trace()
    assert {"first", "second"} <= set(trace.nodes)


def test_duplicate_name_names_file_and_both_lines():
    @lvm.model
    def m():
        for _ in range(2):
            z = lvm.latent(dist.Normal(0.0, 1.0))
        return z

    with pytest.raises(lvm.ModelDefinitionError, match=r"test_naming\.py:\d+.*two sites are named 'z' \(the first at .*test_naming\.py:\d+"):
        m()


def test_call_without_target_or_name_is_refused_with_its_line():
    @lvm.model
    def m():
        lvm.latent(dist.Normal(0.0, 1.0))

    with pytest.raises(lvm.ModelDefinitionError, match=r"test_naming\.py:\d+ in m\(\): this latent\(\) call has no name"):
        m()


def test_model_without_source_needs_explicit_names():
    namespace = {"lvm": lvm, "dist": dist}
    exec("def m():\n    z = lvm.latent(dist.Normal(0.0, 1.0))\n    return z\n", namespace)
    compiled = lvm.model(namespace["m"])
    with pytest.raises(lvm.ModelDefinitionError, match=r"<string>:2 in m\(\): the source of m\(\) cannot be read"):
        compiled()
    exec("def n():\n    return lvm.latent(dist.Normal(0.0, 1.0), name='z')\n", namespace)
    assert "z" in poutine.trace(lvm.model(namespace["n"])).get_trace().nodes


def test_latent_named_like_an_argument_is_observed_when_given_and_sampled_when_none():
    @lvm.model
    def m(x=None, n=5):
        with lvm.plate(n):
            x = lvm.latent(dist.Normal(0.0, 1.0))
        return x

    data = torch.arange(5.0)
    observed = poutine.trace(m).get_trace(data)
    assert observed.nodes["x"]["is_observed"]
    assert torch.equal(observed.nodes["x"]["value"], data)
    simulated = poutine.trace(m).get_trace(None)
    assert not simulated.nodes["x"]["is_observed"]
    assert simulated.nodes["x"]["value"].shape == (5,)


def test_markov_appends_the_step_to_automatic_names():
    @lvm.model
    def chain(T=4):
        probs = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
        s = torch.tensor(0)
        for t in lvm.markov(range(T)):  # noqa: B007
            s = lvm.latent(dist.Categorical(probs[s]))
        return s

    trace = poutine.trace(chain).get_trace()
    assert [n for n in trace.nodes if n.startswith("s_")] == ["s_0", "s_1", "s_2", "s_3"]


def test_model_is_an_ordinary_pyro_model():
    from pyro.infer import SVI, Predictive, Trace_ELBO
    from pyro.infer.autoguide import AutoNormal
    from pyro.optim import Adam

    @lvm.model
    def m(x):
        mu = lvm.latent(dist.Normal(0.0, 1.0))
        with lvm.plate(len(x)):
            lvm.observe(dist.Normal(mu, 1.0), x)

    x = torch.randn(10)
    guide = AutoNormal(m)
    svi = SVI(m, guide, Adam({"lr": 0.01}), Trace_ELBO())
    assert torch.isfinite(torch.tensor(svi.step(x)))
    samples = Predictive(m, guide=guide, num_samples=3)(x)
    assert samples["mu"].shape[0] == 3
