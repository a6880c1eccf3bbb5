"""The generic route's M-step ``Q`` evaluated by the interpreter (``ppl_lvm.em.generic.interpreted``) against Pyro's
enumerated trace: the same ``Q`` and gradient, the same fits, the same streamed fits, and the fallbacks.

Exact EM from one start is deterministic, so both paths give the same numbers to rounding. Measured over seeds 0-4
(``init_params="random"``, the seed moving the start; 15 iterations, float64) on the four models below: ``Q`` and
every gradient equal to the last bit at the start and at a moved point (difference 0.0), and the fits' histories and
log-likelihoods identical (largest relative difference 0.0) with the log-likelihood never decreasing. The tests
assert 1e-12 (``Q``) and 1e-10 (fits), and run one or two seeds each.
"""

from __future__ import annotations

import warnings

import numpy as np
import pyro
import pytest
import torch

import ppl_lvm as lvm
from ppl_lvm import constraints, dist
from ppl_lvm.em.accumulate import ModelChunks
from ppl_lvm.em.generic.factors import _enum_trace
from ppl_lvm.em.generic.interpreted import FastQ, InterpretedQ
from ppl_lvm.em.generic.mstep import _store_params
from ppl_lvm.em.generic.passes import e_step_pass, q_objective

RTOL_Q, RTOL_FIT = 1e-12, 1e-10


@lvm.model
def t_mixture(x, K=2):
    """Student-t emissions: no closed-form M-step."""
    w = lvm.param(torch.ones(K) / K, constraint=constraints.simplex)
    locs = lvm.param(torch.linspace(-1.0, 1.0, K))
    scales = lvm.param(torch.ones(K), constraint=constraints.positive)
    with lvm.plate(len(x)):
        z = lvm.latent(dist.Categorical(w))
        lvm.observe(dist.StudentT(4.0, locs[z], scales[z]), x)


@lvm.model
def regime_mixture(x, K=2):
    """A global discrete latent (the regime, setting the scale of every point) and a local one: Laplace emissions."""
    p = lvm.param(torch.tensor(0.3), constraint=constraints.unit_interval)
    w = lvm.param(torch.ones(K) / K, constraint=constraints.simplex)
    locs = lvm.param(torch.linspace(-1.0, 1.0, K))
    scales = lvm.param(torch.tensor([0.7, 2.0]), constraint=constraints.positive)
    c = lvm.latent(dist.Bernoulli(p))
    with lvm.plate(len(x)):
        z = lvm.latent(dist.Categorical(w))
        lvm.observe(dist.Laplace(locs[z], scales[c.long()]), x)


@lvm.model
def poisson_regressions(X, y, K=2):
    """A mixture of Poisson regressions (log link: a non-conjugate emission)."""
    w = lvm.param(torch.ones(K) / K, constraint=constraints.simplex)
    beta = lvm.param(torch.linspace(-0.5, 0.5, K * X.shape[1]).reshape(K, X.shape[1]))
    with lvm.plate(len(y)):
        z = lvm.latent(dist.Categorical(w))
        lvm.observe(dist.Poisson((X * beta[z]).sum(-1).exp()), y)


@lvm.model
def t_chain(x, K=2):
    """A hidden Markov chain written step by step, Student-t emissions (the generic route)."""
    start = lvm.param(torch.ones(K) / K, constraint=constraints.simplex)
    trans = lvm.param(0.6 * torch.eye(K) + 0.4 / K, constraint=constraints.simplex)
    locs = lvm.param(torch.linspace(-1.0, 1.0, K))
    scales = lvm.param(torch.ones(K), constraint=constraints.positive)
    z = None
    for t in lvm.markov(range(len(x))):
        z = lvm.latent(dist.Categorical(start if z is None else trans[z]))
        lvm.observe(dist.StudentT(4.0, locs[z], scales[z]), x[t])


@lvm.model
def ridge_regressions(X, y, K=2):
    """The regressions with a ridge prior written by Pyro's own ``pyro.factor``."""
    w = lvm.param(torch.ones(K) / K, constraint=constraints.simplex)
    beta = lvm.param(torch.linspace(-0.5, 0.5, K * X.shape[1]).reshape(K, X.shape[1]))
    pyro.factor("ridge", -0.5 * (beta**2).sum())
    with lvm.plate(len(y)):
        z = lvm.latent(dist.Categorical(w))
        lvm.observe(dist.Poisson((X * beta[z]).sum(-1).exp()), y)


@lvm.model
def masked_mixture(x, K=2):
    """A Pyro handler (``poutine.mask``) inside the model: the interpreter does not run it."""
    w = lvm.param(torch.ones(K) / K, constraint=constraints.simplex)
    locs = lvm.param(torch.linspace(-1.0, 1.0, K))
    with lvm.plate(len(x)):
        z = lvm.latent(dist.Categorical(w))
        with pyro.poutine.mask(mask=x > -1.0):
            lvm.observe(dist.StudentT(4.0, locs[z], 1.0), x)


def _two_groups(n=(60, 40), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.randn(n[0], generator=g, dtype=torch.float64) * 1.2 - 2.0,
                      torch.randn(n[1], generator=g, dtype=torch.float64) * 0.6 + 1.5])


def _regression_data(n=80, seed=0):
    rng = np.random.default_rng(seed)
    X = np.column_stack([np.ones(n), rng.normal(size=(n, 2))])
    beta = np.array([[0.5, 1.0, -0.5], [2.0, -0.3, 0.4]])
    y = rng.poisson(np.exp((X * beta[rng.integers(0, 2, n)]).sum(1)))
    return torch.tensor(X), torch.tensor(y, dtype=torch.float64)


def _chain_data(T=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    states = (torch.arange(T) // 4) % 2
    return torch.where(states == 1, 2.0, -1.0).double() + 0.5 * torch.randn(T, generator=g, dtype=torch.float64)


def _cases():
    X, y = _regression_data()
    return {"t mixture": (t_mixture, {"x": _two_groups()}), "global latent": (regime_mixture, {"x": _two_groups()}),
            "poisson regressions": (poisson_regressions, {"X": X, "y": y}),
            "markov chain": (t_chain, {"x": _chain_data()})}


CASES = _cases()


def _infer(model, data, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lvm.ConvergenceWarning)
        return lvm.infer(model, data, method="em", progress=False, **options)


def _objectives(model, kwargs):
    """The traced and the interpreted objective at the store's parameters (created from the model's values)."""
    wrapped = pyro.poutine.infer_config(model, lambda msg: {})  # a handler around it, as the traced path's model
    data = ModelChunks(kwargs)
    likelihood = e_step_pass(wrapped, data, 1)
    fast = FastQ(model)
    traced = q_objective(wrapped, data, 1, likelihood)
    interpreted = q_objective(wrapped, data, 1, likelihood, fast)
    fast.start(lambda: _enum_trace(wrapped, kwargs, 1), traced, interpreted, _store_params(None))
    return fast, traced, interpreted


def _value_and_grads(objective, leaves):
    for p in leaves:
        p.grad = None
    with torch.enable_grad():
        q = objective(1.0)
    grads = [p.grad.clone() for p in leaves]
    for p in leaves:
        p.grad = None
    return q, grads


@pytest.mark.parametrize("case", list(CASES))
def test_interpreted_q_and_gradient_equal_the_traced(case, float64):
    model, kwargs = CASES[case]
    with pyro.get_param_store().scope():
        pyro.poutine.trace(model).get_trace(**kwargs)  # creates the parameters
        fast, traced, interpreted = _objectives(model, kwargs)
        assert fast.active and fast.reason is None, fast.reason
        leaves = list(_store_params(None).values())
        g = torch.Generator().manual_seed(1)
        for moved in (False, True):  # at the E-step's parameters, then elsewhere (as L-BFGS evaluates Q)
            if moved:
                with torch.no_grad():
                    for p in leaves:
                        p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
            q_traced, g_traced = _value_and_grads(traced, leaves)
            q_interp, g_interp = _value_and_grads(interpreted, leaves)
            assert float(q_interp) == pytest.approx(float(q_traced), rel=RTOL_Q)
            for a, b in zip(g_interp, g_traced, strict=True):
                np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=RTOL_Q, atol=RTOL_Q * float(b.abs().max()))
        assert fast.active


@pytest.mark.parametrize("case, seeds", [("t mixture", (0, 3)), ("global latent", (1,)),
                                         ("poisson regressions", (2,)), ("markov chain", (4,))])
def test_fits_on_the_fast_path_equal_the_traced_fits(case, seeds, float64):
    model, data = CASES[case]
    for seed in seeds:
        fits = {fp: _infer(model, data, init_params="random", seed=seed, max_iter=8, tol=None, fast_path=fp)
                for fp in (True, False)}
        fast, traced = fits[True], fits[False]
        assert fast.options["fast_path"] is True and fast.options["fast_path_reason"] is None
        assert traced.options["fast_path"] is False and traced.options["fast_path_reason"] == "fast_path=False"
        assert not fast.closed_form and fast.n_iter == traced.n_iter
        assert fast.log_likelihood == pytest.approx(traced.log_likelihood, rel=RTOL_FIT)
        np.testing.assert_allclose(fast.history, traced.history, rtol=RTOL_FIT)
        assert np.all(np.diff(fast.history) >= -1e-12 * np.abs(fast.history[:-1]))  # never decreases


def test_streamed_fit_on_the_fast_path_equals_the_in_memory_fits(float64):
    X, y = CASES["poisson regressions"][1].values()
    options = {"max_iter": 4, "tol": None}
    in_memory = {fp: _infer(poisson_regressions, {"X": X, "y": y}, fast_path=fp, **options) for fp in (True, False)}
    # 80 rows in chunks of 30, the last of 20
    streamed = _infer(poisson_regressions, {"X": lvm.chunks(X.numpy(), 30), "y": lvm.chunks(y.numpy(), 30)},
                      **options)
    assert streamed.options["fast_path"] is True
    for fit in in_memory.values():
        assert streamed.log_likelihood == pytest.approx(fit.log_likelihood, rel=RTOL_FIT)
        np.testing.assert_allclose(streamed.history, fit.history, rtol=RTOL_FIT)


def test_pyro_statements_in_the_model_run_on_the_fast_path_and_handlers_do_not(float64):
    X, y = CASES["poisson regressions"][1].values()
    for model, data, fast_path in ((ridge_regressions, {"X": X, "y": y}, True),
                                   (masked_mixture, {"x": _two_groups()}, False)):
        fits = {fp: _infer(model, data, max_iter=3, tol=None, fast_path=fp) for fp in (True, False)}
        assert fits[True].options["fast_path"] is fast_path
        if not fast_path:
            assert "runs under a Pyro handler (MaskMessenger)" in fits[True].options["fast_path_reason"]
        assert fits[True].history.tolist() == fits[False].history.tolist()


def test_an_evaluation_off_the_plan_is_traced_and_leaves_the_fast_path(float64):
    model, kwargs = CASES["t mixture"]
    with pyro.get_param_store().scope():
        pyro.poutine.trace(model).get_trace(**kwargs)
        fast, traced, interpreted = _objectives(model, kwargs)
        assert fast.active
        fast.plan.names = fast.plan.names[::-1]  # as if the model's sites had changed since the check
        assert float(interpreted(None)) == float(traced(None))
        assert not fast.active and "sites" in fast.reason


def test_fast_path_option(float64):
    with pytest.raises(ValueError, match="fast_path must be True or False"):
        _infer(t_mixture, {"x": _two_groups()}, fast_path="yes")

    @lvm.model
    def normal_mixture(x, K=2):  # recognised: the closed-form route has no Q to evaluate
        w = lvm.param(torch.ones(K) / K, constraint=constraints.simplex)
        locs = lvm.param(torch.tensor([-1.0, 1.0]))
        scale = lvm.param(torch.ones(K), constraint=constraints.positive)
        with lvm.plate(len(x)):
            z = lvm.latent(dist.Categorical(w))
            lvm.observe(dist.Normal(locs[z], scale[z]), x)

    fit = _infer(normal_mixture, {"x": _two_groups()}, max_iter=3)
    assert fit.closed_form and fit.options["fast_path"] is True and "fast_path_reason" not in fit.options


def test_an_interpreter_failure_at_the_check_runs_the_traced_path(monkeypatch, float64):
    def broken(self, kwargs, marginals):
        raise TypeError("no such statement")

    model, data = CASES["t mixture"]
    traced = _infer(model, data, max_iter=3, tol=None, fast_path=False)
    monkeypatch.setattr(InterpretedQ, "factors", broken)
    fit = _infer(model, data, max_iter=3, tol=None)
    assert fit.options["fast_path"] is False
    assert fit.options["fast_path_reason"] == "the interpreter failed: TypeError: no such statement"
    assert fit.history.tolist() == traced.history.tolist()
