"""A statement's steady state: its name and site record come from per-call caches, a floating-point observation
outside the prototype run is not re-checked, and what the caches keep follows what the run does."""

import pyro.poutine as poutine
import pytest
import torch

import ppl_lvm as lvm
from ppl_lvm import dist, primitives


def _counting(monkeypatch, name):
    calls = []
    original = getattr(primitives, name)

    def counted(*args, **kwargs):
        calls.append(args[0] if args else None)
        return original(*args, **kwargs)

    monkeypatch.setattr(primitives, name, counted)
    return calls


def _run(model, *args):
    """One run of ``model`` under a trace (as a fit runs it)."""
    return poutine.trace(model).get_trace(*args).nodes["_RETURN"]["value"]


def test_a_second_run_makes_no_new_site_record_and_checks_no_float_observation(monkeypatch):
    @lvm.model
    def m(x):
        loc = lvm.param(torch.zeros(()))
        with lvm.plate(len(x)) as data:  # noqa: F841 - names the plate
            z = lvm.latent(dist.Normal(loc, 1.0))
            lvm.observe(dist.Normal(z, 1.0), x)

    x = torch.randn(5)
    m(x)
    first = dict(m.site_records)
    records, checks = _counting(monkeypatch, "_new_record"), _counting(monkeypatch, "check_observation")
    m(x)
    assert records == [] and checks == []  # the records of the first run, and no check of a float tensor
    assert all(m.site_records[name] is first[name] for name in ("loc", "z", "x"))
    assert m.site_records["x"].kind == "observed" and m.site_records["z"].kind == "latent"


def test_observations_that_need_a_check_are_still_checked(monkeypatch):
    @lvm.model
    def m(x):
        with lvm.plate(len(x)) as data:  # noqa: F841 - names the plate
            lvm.observe(dist.Poisson(2.0), x)

    @lvm.model
    def m2(y):
        lvm.observe(dist.Normal(0.0, 1.0), y)

    m(torch.ones(3))
    _run(m2, torch.zeros(3))
    checks = _counting(monkeypatch, "check_observation")
    with pytest.warns(lvm.DataWarning, match="integer data"):  # an integer tensor for a continuous distribution
        _run(m2, torch.arange(3))
    assert checks == ["y"]
    m(torch.ones(3).numpy())  # an array is converted and checked
    assert checks == ["y", "x"]
    with pytest.raises(lvm.ModelCheckError, match="shape"):  # the prototype run checks float tensors too
        m.inspect(torch.ones(3, 2))


def test_a_latent_named_like_an_argument_records_what_each_run_did():
    @lvm.model
    def m(x=None):
        x = lvm.latent(dist.Normal(0.0, 1.0))
        return x

    for value, kind in ((torch.tensor(1.0), "observed"), (None, "latent"), (torch.tensor(2.0), "observed")):
        out = _run(m, value)
        assert m.site_records["x"].kind == kind and m.site_records["x"].argument == ("x" if value is not None
                                                                                     else None)
        if value is not None:
            assert out is value


def test_a_cached_record_follows_the_kind_and_the_markov_step():
    @lvm.model
    def m(y=None):
        w = lvm.latent(dist.Normal(0.0, 1.0), obs=y)
        for _ in lvm.markov(range(2)):
            s = lvm.latent(dist.Normal(w, 1.0))  # noqa: F841 - names the site
        return w

    m(None)
    assert m.site_records["w"].kind == "latent" and {"s_0", "s_1"} <= set(m.site_records)
    _run(m, torch.tensor(0.5))
    assert m.site_records["w"].kind == "observed" and m.site_records["w"].argument is None
    assert "s" not in m.site_records and m.site_records["s_1"].name == "s_1"
    m(None)
    assert m.site_records["w"].kind == "latent"


def test_a_duplicate_name_that_appears_only_in_a_later_run_is_refused():
    @lvm.model
    def m(twice=False):
        z = lvm.latent(dist.Normal(0.0, 1.0))
        if twice:
            z = lvm.latent(dist.Normal(z, 1.0), name="z")
        return z

    m()
    m()  # the steady state
    with pytest.raises(lvm.ModelDefinitionError, match=r"two sites are named 'z' \(the first at .*test_statement_cache"):
        m(True)
    m()  # the failed run left nothing behind
    assert list(m.site_records) == ["z"]
