"""A long ``lvm.markov`` chain's prototype runs a few of its steps (ppl_lvm.chains): the structure it gives equals
that of a run of every step, and a chain whose steps differ is run whole."""

import warnings

import pyro
import pyro.poutine as poutine
import pytest
import torch

import ppl_lvm as lvm
from ppl_lvm import constraints, dist
from ppl_lvm.models.hmm import categorical_hmm, gaussian_hmm
from ppl_lvm.runtime import chain_positions, run_scope, select_steps
from ppl_lvm.structure import structure_from_trace

T = 40  # more steps than a prototype runs (chain_positions(40) has 11)


def _every_step(model, **kwargs):
    """The structure of a plain run of every step (what Model.inspect gave before chains were shortened)."""
    with pyro.get_param_store().scope(), torch.random.fork_rng(devices=[]):
        with run_scope(model, preflight=True) as run:
            trace = poutine.trace(model.fn).get_trace(**kwargs)
        return structure_from_trace(trace, run.sites)


def _steps_run(model, **kwargs):
    with pyro.get_param_store().scope(), torch.random.fork_rng(devices=[]), select_steps() as selection:
        poutine.trace(model).get_trace(**kwargs)
    return selection


def _assert_same(structure, reference):
    assert list(structure.sites) == list(reference.sites)
    assert all(structure.sites[n] == reference.sites[n] for n in reference.sites)
    assert structure.plates == reference.plates and structure.max_plate_nesting == reference.max_plate_nesting


def test_the_steps_a_prototype_runs():
    assert chain_positions(5) == [0, 1, 2, 3, 4]
    positions = chain_positions(T)
    assert len(positions) == 11 and positions[:3] == [0, 1, 2] and positions[-1] == T - 1
    assert chain_positions(10**5)[-1] == 10**5 - 1 and len(chain_positions(10**5)) == 11


@pytest.mark.parametrize("model, kwargs", [
    (gaussian_hmm, {"x": torch.randn(3, T, 2), "lengths": torch.tensor([T, 30, 9]), "K": 3}),
    (categorical_hmm, {"x": torch.randint(0, 4, (2, T)), "K": 2}),
])
def test_a_homogeneous_chain_is_known_from_a_few_steps(model, kwargs):
    selection = _steps_run(model, **kwargs)
    assert [loop.positions for loop in selection.loops] == [chain_positions(T)]
    _assert_same(model.inspect(**kwargs), _every_step(model, **kwargs))


@lvm.model
def switching(x, change: int):
    """A chain whose steps from ``change`` on observe through another distribution."""
    probs = lvm.param(torch.full((2, 2), 0.5), constraint=constraints.simplex)
    with lvm.plate(x.shape[0]):
        z = None
        for t in lvm.markov(range(x.shape[1])):
            z = lvm.latent(dist.Categorical(probs[0] if z is None else probs[z]))
            if t < change:
                lvm.observe(dist.Normal(z.double(), 1.0), x[:, t])
            else:
                lvm.observe(dist.Laplace(z.double(), 1.0), x[:, t])


@lvm.model
def nested(x):
    probs = lvm.param(torch.full((2,), 0.5), constraint=constraints.simplex)
    for s in lvm.markov(range(x.shape[0])):
        for t in lvm.markov(range(x.shape[1])):
            lvm.observe(dist.Normal(probs[0], 1.0), x[s, t])


@lvm.model
def named_by_hand(x):
    for t in lvm.markov(range(len(x))):
        lvm.observe(dist.Normal(0.0, 1.0), x[t], name=f"obs{t}")


@lvm.model
def left_early(x):
    for t in lvm.markov(range(len(x))):
        lvm.observe(dist.Normal(0.0, 1.0), x[t])
        if t >= len(x) // 2:
            break


@pytest.mark.parametrize("model, kwargs", [
    (switching, {"x": torch.randn(2, T), "change": T // 2}),  # differs from a step that ran on
    (switching, {"x": torch.randn(2, T), "change": 1}),  # every step but the first differs from it
    (nested, {"x": torch.randn(3, T)}),
    (named_by_hand, {"x": torch.randn(T)}),
    (left_early, {"x": torch.randn(T)}),
])
def test_steps_that_do_not_repeat_are_run_whole(model, kwargs):
    _assert_same(model.inspect(**kwargs), _every_step(model, **kwargs))


def test_switching_chain_lists_each_steps_own_distribution():
    structure = switching.inspect(x=torch.randn(2, T), change=T // 2)
    assert structure.sites["x_3"].distribution == "Normal" and structure.sites["x_33"].distribution == "Laplace"


def test_data_outside_the_support_at_a_step_that_did_not_run_is_reported_for_that_step():
    assert 5 not in chain_positions(T)
    x = torch.randint(0, 3, (2, T))
    x[1, 5] = 7  # outside Categorical(emission[z]) with 4 symbols
    with pytest.raises(lvm.ModelCheckError, match="x_5"):
        categorical_hmm.inspect(x=x, K=2, n_symbols=4)
    y = torch.randn(2, T, 2)
    y[0, 5, 1] = float("nan")
    with pytest.raises(lvm.ModelCheckError, match="x_5"):
        gaussian_hmm.inspect(x=y, K=2)


def test_an_error_at_a_step_that_ran_is_reported_at_the_first_step_it_occurs():
    assert 20 in chain_positions(T) and 5 not in chain_positions(T)
    x = torch.randint(0, 3, (2, T))
    x[0, 20] = x[1, 5] = 7
    with pytest.raises(lvm.ModelCheckError, match="x_5"):
        categorical_hmm.inspect(x=x, K=2, n_symbols=4)


@pytest.mark.parametrize("change, runs", [(T, len(chain_positions(T))), (T // 2, T)])
def test_the_warnings_are_those_of_the_run_that_stands(change, runs):
    """Integer data for a continuous likelihood warn at every observed step that runs: the steps of the shortened
    run when it stands, those of the run of every step (and not both) when the steps differ."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        switching.inspect(x=torch.randint(0, 3, (2, T)), change=change)
    assert sum(issubclass(w.category, lvm.DataWarning) for w in caught) == runs


@lvm.model
def reversed_reads(x):
    """Observes the data back to front: no step's value is ``x[:, t]``."""
    with lvm.plate(x.shape[0]):
        for t in lvm.markov(range(x.shape[1])):
            lvm.observe(dist.Normal(0.0, 1.0), x[:, x.shape[1] - 1 - t])


def test_observations_that_are_not_slices_at_the_step_run_every_step():
    kwargs = {"x": torch.randn(2, T)}
    _assert_same(reversed_reads.inspect(**kwargs), _every_step(reversed_reads, **kwargs))
