"""The closed-form M-step of vem and mcem (backends/closed_m_step.py) against least squares by hand, and its
fall-backs."""

import pyro
import pyro.poutine as poutine
import pytest
import torch
from demo_models import one_way_random_effects
from test_vem import anova_data, factor_data

import ppl_lvm as lvm
from ppl_lvm import dist
from ppl_lvm.backends.closed_m_step import closed_form_maximise
from ppl_lvm.errors import UnsupportedModelError
from ppl_lvm.models.factor import factor_analysis, ppca


def _objective_at_fixed_draws(model, x, z, weights):
    """F(theta) = sum_i sum_s w_is log p(x_i, z_is; theta) with S draws of z per row, stacked as S * N rows."""
    s = z.shape[0]
    xs = x.repeat(s, 1)
    zs = z.reshape(-1, z.shape[-1])
    w = weights.reshape(-1)

    def objective():
        trace = poutine.trace(poutine.condition(model, data={"z": zs})).get_trace(xs, z.shape[-1])
        trace.compute_log_prob()
        return sum((trace.nodes[k]["log_prob"] * w).sum() for k in ("z", "x"))

    return objective, xs, zs, w


def _by_hand(xs, zs, w, diagonal):
    """Weighted least squares of x on [z, 1]; the noise variance from the weighted residuals (per column for
    factor analysis, pooled for PPCA)."""
    design = torch.cat([zs, torch.ones(len(zs), 1, dtype=zs.dtype)], 1)
    root = w.sqrt()[:, None]
    coef = torch.linalg.lstsq(design * root, xs * root).solution  # (q + 1, D)
    resid2 = (xs - design @ coef) ** 2
    var = (w[:, None] * resid2).sum(0) / w.sum()
    return coef[:-1].T, coef[-1], var if diagonal else var.mean()


@pytest.mark.parametrize("model, diagonal", [(ppca, False), (factor_analysis, True)])
def test_the_closed_form_is_weighted_least_squares(float64, model, diagonal):
    x = factor_data(0, spherical=not diagonal, n=60)
    g = torch.Generator().manual_seed(1)
    z = torch.randn(5, len(x), 2, generator=g)
    weights = torch.softmax(torch.randn(5, len(x), generator=g), 0)  # self-normalised over the 5 draws of a row
    objective, xs, zs, w = _objective_at_fixed_draws(model, x, z, weights)
    with pyro.get_param_store().scope({"params": {}, "constraints": {}}):
        objective()  # creates the parameters at their defaults
        store = pyro.get_param_store()
        leaves = {name: store._params[name] for name in store.keys()}
        info, reason = closed_form_maximise(objective, leaves)
        assert info is not None, reason
        W, mu, var = _by_hand(xs, zs, w, diagonal)
        fitted_var = store["psi"] if diagonal else store["sigma"] ** 2
        # exact up to float64 rounding (both are closed forms); the sign of W is fixed by the draws of z
        torch.testing.assert_close(store["W"].detach(), W, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(store["mu"].detach(), mu, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(fitted_var.detach(), var, rtol=1e-8, atol=1e-10)
        assert info["after"] >= info["before"]
        assert info["cycles"] == 1  # the locations do not depend on the scales: one cycle is the maximum


def test_float32_parameters_are_left_to_lbfgs():
    x = factor_data(0, spherical=True, n=30).float()
    z = torch.randn(2, len(x), 2)
    objective, *_ = _objective_at_fixed_draws(ppca, x, z, torch.full((2, len(x)), 0.5))
    with pyro.get_param_store().scope({"params": {}, "constraints": {}}):
        objective()
        store = pyro.get_param_store()
        info, reason = closed_form_maximise(objective, {n: store._params[n] for n in store.keys()})
    assert info is None and "float64" in reason


@lvm.model
def _poisson_effects(y):
    beta = lvm.param(lambda: torch.zeros((), dtype=y.dtype))
    with lvm.plate(len(y)):
        b = lvm.latent(dist.Normal(torch.zeros((), dtype=y.dtype), 1.0))
        lvm.observe(dist.Poisson(torch.exp(beta + b)), y)


def test_a_model_outside_the_closed_form_runs_lbfgs(float64):
    y = torch.poisson(torch.full((40,), 3.0, dtype=torch.float64), generator=torch.Generator().manual_seed(0))
    fit = lvm.infer(_poisson_effects, {"y": y}, method="mcem", seed=0, max_iter=3, tol=None)
    assert fit.options["closed_form_m_steps"] == [False, False, False]
    with pytest.raises(UnsupportedModelError, match="the closed-form M-step does not apply, because the objective "
                                                    "is not quadratic in the real parameters"):
        lvm.infer(_poisson_effects, {"y": y}, method="mcem", seed=0, max_iter=3, m_step="closed")


@pytest.mark.parametrize("method", ["vem", "mcem"])
def test_the_m_step_option(float64, method):
    y = anova_data(0)
    fit = lvm.infer(one_way_random_effects, {"y": y}, method=method, seed=0, max_iter=2, tol=None)
    assert fit.options["m_step"] == "auto" and fit.options["closed_form_m_steps"] == [True, True]
    lbfgs = lvm.infer(one_way_random_effects, {"y": y}, method=method, seed=0, max_iter=2, tol=None, m_step="lbfgs")
    assert lbfgs.options["closed_form_m_steps"] == [False, False]
    with pytest.raises(ValueError, match=r"m_step must be one of \['auto', 'closed', 'lbfgs'\]"):
        lvm.infer(one_way_random_effects, {"y": y}, method=method, m_step="newton")

