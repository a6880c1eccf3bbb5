"""A chain written with ``lvm.markov`` is recognised from the few steps its prototype runs: the fit is the same, to
the last bit, as when every step is run, and a chain whose steps differ takes the route a run of every step gives."""

import warnings

import numpy as np
import pyro
import pyro.poutine as poutine
import pytest
import torch

import ppl_lvm as lvm
import ppl_lvm.runtime
from ppl_lvm import constraints, dist
from ppl_lvm.em.queries import recognise
from ppl_lvm.models.hmm import categorical_hmm, gaussian_hmm, pad_sequences
from ppl_lvm.runtime import chain_positions

K = 2
LENGTHS = [40, 33, 12]


@pytest.fixture
def every_step(monkeypatch):
    """Prototypes that run every step of every chain (the reference)."""
    def use():
        monkeypatch.setattr(ppl_lvm.runtime, "chain_positions", lambda n: list(range(n)))
    return use


def _sequences(seed=0, d=2):
    rng = np.random.default_rng(seed)
    seqs = [rng.normal(size=(n, d)) + np.repeat(rng.normal(scale=3, size=(n // 5 + 1, d)), 5, 0)[:n] for n in LENGTHS]
    return pad_sequences([torch.tensor(s) for s in seqs])


def _fit(model, data, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return lvm.infer(model, data, method="em", **{"max_iter": 8, "tol": None, **options})


def _assert_identical(a, b):
    assert a.closed_form == b.closed_form
    assert list(a.history) == list(b.history) and a.log_likelihood == b.log_likelihood
    assert all(torch.equal(a.params[n], b.params[n]) for n in b.params)
    assert all(torch.equal(a.responsibilities[n], b.responsibilities[n]) for n in b.responsibilities)


@pytest.mark.parametrize("case", ["gaussian", "categorical"])
def test_the_fit_is_the_fit_of_every_step(float64, every_step, case):
    assert max(LENGTHS) > len(chain_positions(max(LENGTHS)))  # the prototype runs only some steps
    if case == "gaussian":
        x, lengths = _sequences()
        model, data, options = gaussian_hmm, {"x": x, "lengths": lengths, "K": K}, {"reg_covar": 0.0}
    else:
        x = torch.as_tensor(np.random.default_rng(1).integers(0, 3, size=(len(LENGTHS), max(LENGTHS))))
        model, data, options = categorical_hmm, {"x": x, "lengths": torch.tensor(LENGTHS), "K": K}, {"seed": 2}
    shortened = _fit(model, data, **options)
    every_step()
    _assert_identical(shortened, _fit(model, data, **options))
    assert shortened.closed_form


@lvm.model
def regime_hmm(x, lengths, K: int = 2):
    """A Gaussian HMM whose emissions change parameters half way: not one chain."""
    start = lvm.param(torch.ones(K) / K, constraint=constraints.simplex)
    trans = lvm.param(torch.full((K, K), 1.0 / K), constraint=constraints.simplex)
    early = lvm.param(torch.linspace(-1.0, 1.0, K).unsqueeze(-1))
    late = lvm.param(torch.linspace(-2.0, 2.0, K).unsqueeze(-1))
    scales = lvm.param(torch.ones(K, 1), constraint=constraints.positive)
    with lvm.plate(x.shape[0]):
        z = None
        for t in lvm.markov(range(x.shape[1])):
            locs = early if t < x.shape[1] // 2 else late
            with poutine.mask(mask=t < lengths):
                z = lvm.latent(dist.Categorical(start if z is None else trans[z]))
                lvm.observe(dist.Normal(locs[z], scales[z]).to_event(1), x[:, t])


def _recognised(model, data):
    structure = model.inspect(**data)
    with pyro.get_param_store().scope():
        poutine.trace(model).get_trace(**data)  # creates the parameters
        return recognise(model, data, structure)


def test_a_chain_whose_steps_differ_goes_the_generic_route(float64, every_step):
    x, lengths = _sequences(d=1)
    data = {"x": x, "lengths": lengths, "K": K}
    assert _recognised(regime_hmm, data) is None  # (a fit of the generic route takes seconds: recognition says it)
    assert _recognised(gaussian_hmm, data) is not None
    every_step()
    assert _recognised(regime_hmm, data) is None


@lvm.model
def scaled_late(x, lengths, K: int = 2):
    """``gaussian_hmm`` reading its steps from the half way point on at twice their value."""
    d = x.shape[-1]
    start = lvm.param(torch.ones(K) / K, constraint=constraints.simplex)
    trans = lvm.param(torch.full((K, K), 1.0 / K), constraint=constraints.simplex)
    locs = lvm.param(torch.linspace(-1.0, 1.0, K).unsqueeze(-1).expand(K, d).clone())
    scales = lvm.param(torch.ones(K, d), constraint=constraints.positive)
    with lvm.plate(x.shape[0]):
        z = None
        for t in lvm.markov(range(x.shape[1])):
            value = x[:, t] if t < x.shape[1] // 2 else 2 * x[:, t]
            with poutine.mask(mask=t < lengths):
                z = lvm.latent(dist.Categorical(start if z is None else trans[z]))
                lvm.observe(dist.Normal(locs[z], scales[z]).to_event(1), value)


@lvm.model
def lengths_inside(x, K: int = 2):
    """``gaussian_hmm`` that finds each sequence's length itself (the zero padding of pad_sequences)."""
    d = x.shape[-1]
    lengths = (x.abs().sum(-1) > 0).sum(1)
    start = lvm.param(torch.ones(K) / K, constraint=constraints.simplex)
    trans = lvm.param(torch.full((K, K), 1.0 / K), constraint=constraints.simplex)
    locs = lvm.param(torch.linspace(-1.0, 1.0, K).unsqueeze(-1).expand(K, d).clone())
    scales = lvm.param(torch.ones(K, d), constraint=constraints.positive)
    with lvm.plate(x.shape[0]):
        z = None
        for t in lvm.markov(range(x.shape[1])):
            with poutine.mask(mask=t < lengths):
                z = lvm.latent(dist.Categorical(start if z is None else trans[z]))
                lvm.observe(dist.Normal(locs[z], scales[z]).to_event(1), x[:, t])


@lvm.model
def obs_keyword(x, lengths, K: int = 2):
    """``gaussian_hmm`` observing through ``lvm.latent(..., obs=x[:, t])``: the site names no argument."""
    d = x.shape[-1]
    start = lvm.param(torch.ones(K) / K, constraint=constraints.simplex)
    trans = lvm.param(torch.full((K, K), 1.0 / K), constraint=constraints.simplex)
    locs = lvm.param(torch.linspace(-1.0, 1.0, K).unsqueeze(-1).expand(K, d).clone())
    scales = lvm.param(torch.ones(K, d), constraint=constraints.positive)
    with lvm.plate(x.shape[0]):
        z = None
        for t in lvm.markov(range(x.shape[1])):
            with poutine.mask(mask=t < lengths):
                z = lvm.latent(dist.Categorical(start if z is None else trans[z]))
                y = lvm.latent(dist.Normal(locs[z], scales[z]).to_event(1), obs=x[:, t])  # noqa: F841


@pytest.mark.parametrize("model", [scaled_late, lengths_inside, obs_keyword])
def test_what_the_steps_that_ran_cannot_tell_is_read_from_every_step(float64, every_step, model):
    x, lengths = _sequences()
    data = {"x": x, "K": K} if model is lengths_inside else {"x": x, "lengths": lengths, "K": K}
    if model is obs_keyword:  # read from the one argument that fits: the prototype's run stands, step 5 did not run
        assert "y_5" in model.inspect(**data).sites and "y_5" not in model.site_records
    start = {"locs": torch.tensor([[-1.0, 0.5], [1.0, -0.5]]), "scales": torch.ones(K, 2)}
    shortened = _fit(model, data, reg_covar=0.0, init_params=start)
    assert shortened.closed_form
    # the fit is that of gaussian_hmm on the values the model observes, with the lengths it masks by
    half = x.shape[1] // 2
    observed = torch.cat([x[:, :half], 2 * x[:, half:]], dim=1) if model is scaled_late else x
    reference = _fit(gaussian_hmm, {"x": observed, "lengths": lengths, "K": K}, reg_covar=0.0, init_params=start)
    assert list(shortened.history) == list(reference.history)
    assert all(torch.equal(shortened.params[n], reference.params[n]) for n in reference.params)
    every_step()
    _assert_identical(shortened, _fit(model, data, reg_covar=0.0, init_params=start))
