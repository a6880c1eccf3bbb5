"""Restarts, starts, options and the convergence rule of ``method="em"`` on every route (closed-form mixtures,
chains, the generic route). Everything runs in float64 from fixed seeds, so the numbers are deterministic."""

import re
import warnings

import numpy as np
import pytest
import torch
from demo_data import normal_groups

import ppl_lvm as lvm
from ppl_lvm import constraints, dist
from ppl_lvm.em.convergence import ConvergenceMonitor
from ppl_lvm.models.hmm import gaussian_hmm, pad_sequences
from ppl_lvm.models.mixtures import gaussian_mixture


@lvm.model
def t_mixture(x, K=2):
    """Not a recognised family (Student-t emissions): the generic route. Both locations start at 0."""
    w = lvm.param(torch.ones(K) / K, constraint=constraints.simplex)
    loc = lvm.param(torch.zeros(K))
    scale = lvm.param(torch.ones(K), constraint=constraints.positive)
    with lvm.plate(len(x)):
        z = lvm.latent(dist.Categorical(w))
        lvm.observe(dist.StudentT(4.0, loc[z], scale[z]), x)


@lvm.model
def gmm(x, K=2):
    """A univariate Gaussian mixture the recogniser knows: the closed-form route."""
    w = lvm.param(torch.ones(K) / K, constraint=constraints.simplex)
    locs = lvm.param(torch.tensor([-1.0, 1.0]))
    scale = lvm.param(torch.ones(K), constraint=constraints.positive)
    with lvm.plate(len(x)):
        z = lvm.latent(dist.Categorical(w))
        lvm.observe(dist.Normal(locs[z], scale[z]), x)


@lvm.model
def log_scale_gmm(x, K=2):
    """The same mixture with the scales written as exp(unconstrained): not recognised, so the generic route."""
    w = lvm.param(torch.ones(K) / K, constraint=constraints.simplex)
    locs = lvm.param(torch.tensor([-1.0, 1.0]))
    log_scale = lvm.param(torch.zeros(K))
    with lvm.plate(len(x)):
        z = lvm.latent(dist.Categorical(w))
        lvm.observe(dist.Normal(locs[z], log_scale[z].exp()), x)


def _two_clusters(seed=0):
    return normal_groups((150, 100), locs=(-2.5, 2.0), scales=(1.0, 0.7), seed=seed, dtype=torch.float64)


def _quiet(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lvm.ConvergenceWarning)
        return lvm.infer(*args, **kwargs)


def _assert_best_of_kept_restarts(fit, n_init, seed=0):
    assert len(fit.restarts) == n_init and any(r is fit for r in fit.restarts)
    assert [r.seed for r in fit.restarts] == list(range(seed, seed + n_init))
    assert fit.log_likelihood == max(r.log_likelihood for r in fit.restarts)
    starts = [float(r.history[0]) for r in fit.restarts]
    assert len(set(starts)) == n_init, starts  # every restart started somewhere else


# ----------------------------------------------------------------- the generic route


def test_generic_route_keeps_every_restart_and_returns_the_best(float64):
    x = _two_clusters()
    single = lvm.infer(t_mixture, x, method="em", max_iter=60, tol=1e-6)
    fit = lvm.infer(t_mixture, x, method="em", n_init=3, max_iter=60, tol=1e-6)
    assert not fit.closed_form
    _assert_best_of_kept_restarts(fit, 3)
    # restart 0 starts from the model's lvm.param values: the symmetric start (both locations 0) is a fixed point
    # of EM, the single fit and restart 0 are the same fit; the random starts around it escape (float64, seed 0:
    # restart 0 ends at -2.3935 per point, restarts 1 and 2 at -1.9808)
    assert fit.restarts[0].history.tolist() == single.history.tolist()
    assert fit.log_likelihood > fit.restarts[0].log_likelihood + 50
    loc = fit.params["loc"].sort().values
    assert torch.allclose(loc, torch.tensor([-2.5, 2.0], dtype=loc.dtype), atol=0.3)
    assert fit.options["init_params"] == "params" and fit.options["n_init"] == 3


def test_generic_route_random_starts_every_restart_at_random(float64):
    x = _two_clusters()
    from_params = _quiet(t_mixture, x, method="em", max_iter=5)
    random = _quiet(t_mixture, x, method="em", init_params="random", max_iter=5)
    assert random.options["init_params"] == "random"
    assert random.history[0] != from_params.history[0]
    again = _quiet(t_mixture, x, method="em", init_params="random", max_iter=5)
    assert again.history.tolist() == random.history.tolist()  # the seed fixes the random start
    other_seed = _quiet(t_mixture, x, method="em", init_params="random", max_iter=5, seed=1)
    assert other_seed.history[0] != random.history[0]


def test_generic_route_honours_a_dict_of_initial_values(float64):
    x = _two_clusters()
    fit = _quiet(t_mixture, x, method="em", init_params={"loc": torch.tensor([-2.0, 2.0])}, max_iter=1)
    start = lvm.infer(t_mixture, x, method="em", init_params={"loc": torch.tensor([-2.0, 2.0])}, max_iter=200,
                      tol=1e-8)
    assert fit.options["init_params"] == "dict"
    assert fit.history[0] == start.history[0]
    assert start.converged and start.log_likelihood > -1.99 * len(x)


@pytest.mark.parametrize("init", ["k-means++", "kmeans", "random_from_data"])
def test_generic_route_refuses_data_seeded_starts(init, float64):
    with pytest.raises(lvm.UnsupportedModelError, match=rf"init_params='{re.escape(init)}' seeds .* generic EM route"):
        lvm.infer(t_mixture, _two_clusters(), method="em", init_params=init)


def test_generic_route_refuses_reg_covar(float64):
    with pytest.raises(lvm.UnsupportedModelError, match=r"generic EM route, whose numerical M-step has no covariance"):
        lvm.infer(t_mixture, _two_clusters(), method="em", reg_covar=1e-3)


# ----------------------------------------------------------------- the closed-form routes


def test_mixture_route_keeps_every_restart_and_records_the_options_used(float64):
    x = _two_clusters()
    fit = lvm.infer(gmm, x, method="em", n_init=3, max_iter=200, tol=1e-8)
    assert fit.closed_form
    _assert_best_of_kept_restarts(fit, 3)
    assert fit.options["init_params"] == "k-means++" and fit.options["reg_covar"] == 1e-6
    assert all(r.n_parameters == fit.n_parameters == 5 and r.n_samples == 250 for r in fit.restarts)


def test_chain_route_keeps_every_restart(float64):
    rng = np.random.default_rng(4)
    seqs = [torch.tensor(rng.normal(size=(n, 1)) + 3.0 * (np.arange(n) % 30 < 15)[:, None]) for n in (60, 45, 80)]
    padded, lengths = pad_sequences(seqs)
    fit = _quiet(gaussian_hmm, {"x": padded, "lengths": lengths, "K": 2}, method="em", n_init=3, max_iter=50,
                 init_params="random")
    assert fit.closed_form and fit.options["init_params"] == "random"
    _assert_best_of_kept_restarts(fit, 3)
    assert all(r.n_samples == 185 for r in fit.restarts)


def test_only_the_kept_restart_reports_not_converging(float64):
    x = torch.cat([torch.randn(40, 2) - 3, torch.randn(40, 2) + 3])
    with pytest.warns(lvm.ConvergenceWarning, match=r"EM did not converge in 2 iterations") as caught:
        fit = lvm.infer(gaussian_mixture, {"x": x, "K": 2}, method="em", n_init=3, max_iter=2, tol=0.0)
    messages = [str(w.message) for w in caught if issubclass(w.category, lvm.ConvergenceWarning)]
    assert len(messages) == 1 and f"seed {fit.seed})" in messages[0]
    assert not any(r.converged for r in fit.restarts)


# ----------------------------------------------------------------- one convergence rule


def test_the_monitor_stops_on_an_absolute_change_below_tol():
    monitor = ConvergenceMonitor(tol=0.1)
    assert not monitor.report(-5.0) and not monitor.report(-4.0)
    assert monitor.report(-3.95) and monitor.converged
    still = ConvergenceMonitor(tol=0.0)
    still.report(-1.0)
    assert not still.fixed_point() and still.history == [-1.0, -1.0]  # a change of 0 is not below tol=0
    assert ConvergenceMonitor(tol=1e-12, history=[-1.0]).fixed_point()
    never = ConvergenceMonitor(tol=None)
    assert not never.report(-1.0) and not never.report(-1.0) and not never.fixed_point()  # tol=None: no test
    falling = ConvergenceMonitor(tol=0.1)
    falling.report(-1.0)
    assert not falling.report(-2.0)  # a fall larger than tol is not convergence


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("tol", [1e-4, 1e-6])
def test_closed_form_and_generic_routes_share_one_convergence_rule(seed, tol, float64):
    """The same mixture through both routes: the same per-point history, stopped at the same iteration.

    Over seeds 0-2 and both tolerances the two histories agree to 1.3e-7 per point and their changes to 1e-9
    (the generic M-step is a numerical optimum), while the last change before stopping clears ``tol`` by at least
    5e-7: no run sits on the boundary.
    """
    x = _two_clusters(seed)
    closed = lvm.infer(gmm, x, method="em", init_params="params", tol=tol, max_iter=300)
    generic = lvm.infer(log_scale_gmm, x, method="em", tol=tol, max_iter=300)
    assert closed.closed_form and not generic.closed_form
    assert closed.converged and generic.converged
    assert len(closed.history) == len(generic.history)
    np.testing.assert_allclose(closed.history, generic.history, rtol=0, atol=1e-6)
    for fit in (closed, generic):
        changes = np.abs(np.diff(fit.history))
        assert changes[-1] < tol and np.all(changes[:-1] >= tol)


def _routes():
    rng = np.random.default_rng(4)
    seqs = [torch.tensor(rng.normal(size=(n, 1)) + 3.0 * (np.arange(n) % 30 < 15)[:, None]) for n in (60, 45, 80)]
    padded, lengths = pad_sequences(seqs)
    x = _two_clusters()
    # (model, data, closed form); t_mixture starts at a fixed point of EM (both locations 0), where the generic
    # M-step is rejected: tol=None must go on through it as well
    return {"mixture": (gmm, x, True), "chain": (gaussian_hmm, {"x": padded, "lengths": lengths, "K": 2}, True),
            "generic": (log_scale_gmm, x, False), "generic at a fixed point": (t_mixture, x, False)}


@pytest.mark.parametrize("route", ["mixture", "chain", "generic", "generic at a fixed point"])
def test_tol_none_runs_exactly_max_iter_iterations(route, float64):
    """tol=None: every one of max_iter iterations, not converged, no ConvergenceWarning, on every route.

    The convention: ``n_iter == max_iter``; ``len(history) == max_iter`` on the closed-form route (each iteration's
    E-step, before its M-step), ``max_iter + 1`` on the generic route (the start, then each iteration's result).
    """
    model, data, closed = _routes()[route]
    max_iter = 7
    with warnings.catch_warnings():
        warnings.simplefilter("error", lvm.ConvergenceWarning)
        fit = lvm.infer(model, data, method="em", tol=None, max_iter=max_iter)
    assert fit.closed_form is closed and fit.options["tol"] is None
    assert fit.n_iter == max_iter and not fit.converged
    assert len(fit.history) == (max_iter if closed else max_iter + 1)
    assert np.all(np.diff(fit.history) >= -1e-9 * np.abs(fit.history[:-1]))
    # a loose tol stops the same fit early; tol=0 runs every iteration too, but warns that it did not converge
    early = _quiet(model, data, method="em", tol=1e3, max_iter=max_iter)
    assert early.converged and early.n_iter < max_iter
    with pytest.warns(lvm.ConvergenceWarning, match="did not converge"):
        zero = lvm.infer(model, data, method="em", tol=0.0, max_iter=max_iter)
    assert zero.n_iter == max_iter and zero.history.tolist() == fit.history.tolist()


def test_tol_is_a_number_or_none():
    with pytest.raises(ValueError, match="tol must be a number >= 0, or None"):
        lvm.infer(gmm, _two_clusters(), method="em", tol=-1.0)
    with pytest.raises(ValueError, match="tol must be a number >= 0, or None"):
        lvm.infer(gmm, _two_clusters(), method="em", tol="none")


def test_fit_more_continues_from_the_fitted_parameters(float64):
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(100, 2, generator=g) + 3, torch.randn(100, 2, generator=g) - 3,
                   0.5 * torch.randn(100, 2, generator=g)])
    data = {"x": x, "K": 3}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lvm.ConvergenceWarning)  # a few iterations on purpose
        two = lvm.infer(gaussian_mixture, data, method="em", max_iter=2, init_params="random")
        more = two.fit_more(max_iter=2)
        four = lvm.infer(gaussian_mixture, data, method="em", max_iter=4, init_params="random")
    # 2 + 2 iterations from one start are the 4 iterations of one run (seen: equal to 3e-16 relative); a refit from
    # the stored initialisation would give the 2-iteration value again
    assert more.log_likelihood > two.log_likelihood + 1.0
    assert more.log_likelihood == pytest.approx(four.log_likelihood, rel=1e-10)
    assert more.options["init_params"] == "params"


@pytest.mark.parametrize("covariance_type", ["diag", "full"])
def test_reg_covar_zero_on_duplicated_points_says_the_likelihood_is_unbounded(float64, covariance_type):
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(50, 2, generator=g), torch.full((10, 2), 3.0)])  # ten identical points
    with pytest.warns(lvm.EMDegeneracyWarning, match=r"with reg_covar=0 a component can sit on identical points, "
                      r"where the likelihood is unbounded.*Use reg_covar > 0"):
        lvm.infer(gaussian_mixture, {"x": x, "K": 3, "covariance_type": covariance_type}, method="em",
                  reg_covar=0.0, max_iter=200)
