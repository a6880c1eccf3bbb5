"""The prototype run of many rows: the first rows of the data plate, the structure of all of them.

``trace_structure(..., rows=r)`` traces the first ``r`` rows when the data have more than ``8 r``; these tests
use ``r = 50`` on a few thousand rows (``lvm.infer`` uses ``PROTOTYPE_ROWS`` = 1009 from 8 073 rows on).
"""

import re
import sys

import numpy as np
import pyro
import pytest
import torch

import ppl_lvm as lvm
import ppl_lvm.backends.problem as problem_module
from ppl_lvm import constraints, dist
from ppl_lvm.data import to_tensor
from ppl_lvm.em.routes import create_params
from ppl_lvm.model import trace_structure
from ppl_lvm.models.mixtures import bernoulli_mixture, gaussian_mixture, poisson_mixture

ROWS = 50
SEEN: list[int] = []  # the rows each run of `counted` saw


@lvm.model
def counted(x, K=2):
    SEEN.append(len(x))
    weights = lvm.param(torch.ones(K) / K, constraint=constraints.simplex)
    rates = lvm.param(torch.ones(K, x.shape[1]), constraint=constraints.positive)
    with lvm.plate(len(x)):
        z = lvm.latent(dist.Categorical(weights))
        lvm.observe(dist.Poisson(rates[z]).to_event(1), x)


def _structures(model, kwargs):
    return trace_structure(model, (), kwargs), trace_structure(model, (), kwargs, rows=ROWS)


@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical", "tied"])
def test_slice_gives_the_structure_of_all_rows(covariance_type):
    kwargs = {"x": torch.randn(3000, 3), "K": 4, "covariance_type": covariance_type}
    whole, sliced = _structures(gaussian_mixture, kwargs)
    assert sliced.sites == whole.sites and sliced.plates == whole.plates
    assert sliced.max_plate_nesting == whole.max_plate_nesting and sliced.table() == whole.table()
    assert sliced.n_data == 3000 and sliced.sites["z"].shape == (3000,) and sliced.sites["x"].shape == (3000, 3)


def test_the_run_sees_only_the_slice():
    SEEN.clear()
    x = torch.poisson(torch.full((1000, 2), 3.0))
    trace_structure(counted, (), {"x": x}, rows=ROWS)
    assert SEEN == [ROWS]
    SEEN.clear()
    trace_structure(counted, (), {"x": x[: 8 * ROWS]}, rows=ROWS)  # not more than 8 slices: all rows
    assert SEEN == [8 * ROWS]


def test_support_is_checked_on_every_row_beyond_the_slice():
    x = torch.poisson(torch.full((1000, 2), 3.0))
    x[700, 1] = -2.0
    x[950, 0] = 0.5
    with pytest.raises(lvm.ModelCheckError) as sliced:
        trace_structure(counted, (), {"x": x}, rows=ROWS)
    with pytest.raises(lvm.ModelCheckError) as whole:
        trace_structure(counted, (), {"x": x})
    assert str(sliced.value) == str(whole.value)  # count, positions, values, site and source line alike
    assert "2 of 1000 observed values lie outside the support of Poisson" in str(sliced.value)
    assert re.search(r"the first at \(700,\) = \[[0-9.]+, -2\.0\], \(950,\) = \[0\.5, [0-9.]+\]", str(sliced.value))
    assert "site 'x'" in str(sliced.value) and "test_prototype_rows.py" in str(sliced.value)


def test_support_check_blocks_hold_positions_across_blocks(monkeypatch):
    monkeypatch.setattr(sys.modules["ppl_lvm.model"], "CHECK_ROWS", 64)  # (lvm.model is the decorator)
    x = torch.bernoulli(torch.full((1000, 3), 0.5))
    x[130, 2] = 2.0
    x[900, 0] = -1.0
    with pytest.raises(lvm.ModelCheckError, match=r"2 of 1000 observed values .* the first at \(130,\) = "
                                                  r"\[[01.]+, [01.]+, 2\.0\], \(900,\) = \[-1\.0,"):
        trace_structure(bernoulli_mixture, (), {"x": x, "K": 2}, rows=ROWS)


def test_plate_size_not_the_data_length_is_refused_as_on_all_rows():
    @lvm.model
    def fixed(x, n=700):
        with lvm.plate(n):
            lvm.observe(dist.Normal(0.0, 1.0), x)

    x = torch.randn(1000)
    with pytest.raises(lvm.ModelCheckError) as sliced:
        trace_structure(fixed, (), {"x": x}, rows=ROWS)
    with pytest.raises(lvm.ModelCheckError) as whole:
        trace_structure(fixed, (), {"x": x})
    assert str(sliced.value) == str(whole.value)
    assert "size 1000 at dim -1, but that dim belongs to plate 'n' of size 700" in str(sliced.value)
    # the plate size given by an argument equal to the data length: the slice answers
    whole, sliced = _structures(fixed, {"x": x, "n": 1000})
    assert sliced.sites == whole.sites and sliced.plates == whole.plates and sliced.n_data == 1000


def test_what_the_slice_cannot_answer_runs_on_all_rows():
    """Per-row support bounds, a sliced argument that is not observed data, a parameter sized by the data: the
    whole data are traced (the run sees every row) and the structure is that of all rows."""
    SEEN.clear()

    @lvm.model
    def binomial(x, trials):
        SEEN.append(len(x))
        p = lvm.param(torch.tensor(0.5), constraint=constraints.unit_interval)
        with lvm.plate(len(x)):
            lvm.observe(dist.Binomial(trials, p), x)

    @lvm.model
    def per_row(x):
        SEEN.append(len(x))
        mu = lvm.param(torch.zeros(len(x)))
        with lvm.plate(len(x)):
            lvm.observe(dist.Normal(mu, 1.0), x)

    trials = torch.randint(5, 10, (1000,)).double()
    cases = [(binomial, {"x": torch.zeros(1000), "trials": trials}), (per_row, {"x": torch.randn(1000)})]
    for model, kwargs in cases:
        SEEN.clear()
        whole, sliced = _structures(model, kwargs)
        assert SEEN == [1000, ROWS, 1000]  # the whole run, the slice, the whole run again
        assert sliced.sites == whole.sites and sliced.plates == whole.plates


def test_nan_check_reads_blocks_and_names_the_first_positions(monkeypatch):
    monkeypatch.setattr("ppl_lvm.data.CHECK_ROWS", 16)
    x = np.zeros((100, 2))
    x[5, 0] = np.inf
    x[40, 1] = np.nan
    x[99, 0] = np.nan
    with pytest.raises(lvm.DataError, match=r"contains 2 NaN and 1 infinite value\(s\) \(first at \[5, 0\], "
                                            r"\[40, 1\], \[99, 0\]\)"):
        to_tensor(x, "x")


def test_em_fit_on_the_slice_equals_the_fit_on_all_rows(monkeypatch, float64):
    """lvm.infer on 9000 rows (more than 8 x 1009): the prototype traces a slice; the fit, its structure and the
    model-written start (`_spread_rows` reads all rows) are those of a prototype on all rows."""
    torch.manual_seed(0)
    x = torch.cat([torch.randn(4500, 2) - 2, torch.randn(4500, 2) + 2])
    data = {"x": x, "K": 2, "covariance_type": "diag"}

    def fit():
        return lvm.infer(gaussian_mixture, data, method="em", init_params="params", max_iter=5, tol=None)

    sliced = fit()
    monkeypatch.setattr(problem_module, "PROTOTYPE_ROWS", None)  # every row traced
    whole = fit()
    assert sliced.structure.sites == whole.structure.sites and sliced.structure.n_data == 9000
    assert sliced.history.tolist() == whole.history.tolist()
    for name, value in whole.params.items():
        assert torch.equal(sliced.params[name], value), name


@pytest.mark.parametrize("model", [bernoulli_mixture, poisson_mixture])
def test_em_creates_parameters_as_a_run_with_the_assignment_drawn(model):
    """With its assignment enumerated, the run that creates a mixture's parameters gives them the values a run
    with it drawn gives (random starts drawn before the assignment)."""
    x = torch.bernoulli(torch.full((300, 4), 0.4))
    lvm.infer(model, {"x": x, "K": 3}, method="em", max_iter=1, tol=None, seed=3)
    with pyro.get_param_store().scope(), torch.random.fork_rng(devices=[]):
        pyro.set_rng_seed(3)
        pyro.poutine.trace(model).get_trace(x=x, K=3)
        drawn = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    with pyro.get_param_store().scope(), torch.random.fork_rng(devices=[]):
        pyro.set_rng_seed(3)
        create_params(model, {"x": x, "K": 3}, model.inspect(x=x, K=3))
        enumerated = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    assert drawn.keys() == enumerated.keys()
    for name in drawn:
        assert torch.equal(drawn[name], enumerated[name]), name


def test_svi_minibatch_on_the_slice_structure():
    """A minibatch fit reads the data plate's full size from the structure of the slice."""
    x = torch.poisson(torch.full((9000, 2), 3.0))
    fit = lvm.infer(counted, {"x": x}, method="svi", steps=3, batch_size=500, seed=0)
    assert fit.structure.n_data == 9000 and np.isfinite(fit.losses).all()
