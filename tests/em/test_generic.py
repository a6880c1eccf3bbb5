"""Generic exact EM (ppl_lvm.em.generic): exactness against brute force, speed on chains, monotonicity."""

from __future__ import annotations

import itertools

import pyro
import pyro.poutine as poutine
import pytest
import torch
from generic_models import coupled, gmm, hmm, laplace_mixture, many_coupled, student_mixture
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyro.poutine.util import site_is_subsample

import ppl_lvm as lvm
from ppl_lvm import constraints, dist
from ppl_lvm.em.generic import (
    e_step,
    estimate_enumeration_bytes,
    expected_complete_log_likelihood,
    fit_generic_em,
    generic_m_step,
    marginal_log_likelihood,
    site_marginal,
    site_marginals,
)
from ppl_lvm.errors import UnsupportedModelError


@pytest.fixture(autouse=True)
def _float64():
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    with pyro.get_param_store().scope():
        yield
    torch.set_default_dtype(before)


# ----------------------------------------------------------------------------------------------------------------
# brute force: condition the model on every joint assignment of its latents
# ----------------------------------------------------------------------------------------------------------------


def _latent_layout(model, kwargs):
    """[(site, shape, support)] of the unobserved sites of one prior run."""
    trace = poutine.trace(model).get_trace(**kwargs)
    return [
        (name, tuple(node["value"].shape), node["fn"].enumerate_support(expand=False).reshape(-1))
        for name, node in trace.nodes.items()
        if node["type"] == "sample" and not node["is_observed"] and not site_is_subsample(node)
    ]


def _brute_force(model, kwargs):
    """All joint assignments: (list of {site: value}, tensor of log joints)."""
    layout = _latent_layout(model, kwargs)
    scalars = [(name, idx, sup) for name, shape, sup in layout for idx in itertools.product(*map(range, shape))]
    assignments, log_joint = [], []
    for values in itertools.product(*(sup for _, _, sup in scalars)):
        data = {name: torch.zeros(shape, dtype=sup.dtype) for name, shape, sup in layout}
        for (name, idx, _), v in zip(scalars, values, strict=True):
            data[name][idx] = v
        tr = poutine.trace(poutine.condition(model, data=data)).get_trace(**kwargs)
        assignments.append(data)
        log_joint.append(tr.log_prob_sum().detach())
    return assignments, torch.stack(log_joint)


def _arrange(es, name, symbols):
    """The marginal of factor ``name`` with its dims permuted to the order of ``symbols``."""
    dims = es.dims[name]
    assert sorted(dims) == sorted(symbols), (dims, symbols)
    return es.marginals[name].permute([dims.index(s) for s in symbols])


def _rel(a, b):
    return float(abs(a - b) / abs(b))


def test_coupled_latents_match_brute_force():
    x = torch.tensor([-1.7, -0.2, 0.4, 1.1, 2.6])
    kwargs = {"x": x}
    es = e_step(coupled, kwargs, max_plate_nesting=1)
    assignments, log_joint = _brute_force(coupled, kwargs)
    log_z = torch.logsumexp(log_joint, 0)
    assert _rel(es.log_likelihood, log_z) < 1e-10
    assert _rel(es.log_likelihood_per_point.sum(), log_z) < 1e-10
    post = (log_joint - log_z).exp()

    n, K1, K2 = len(x), 2, 2
    pair = torch.zeros(n, K1, K2)
    for w, a in zip(post, assignments, strict=True):
        pair[torch.arange(n), a["z1"], a["z2"]] += w
    a, b, d = es.plate_to_symbol["data"], es.enum_symbol["z1"], es.enum_symbol["z2"]
    assert torch.allclose(_arrange(es, "z2", a + b + d), pair, rtol=0, atol=1e-10)
    assert torch.allclose(_arrange(es, "x", a + b + d), pair, rtol=0, atol=1e-10)
    assert torch.allclose(_arrange(es, "z1", a + b), pair.sum(-1), rtol=0, atol=1e-10)
    assert torch.allclose(site_marginal(es, "z2"), pair.sum(1), rtol=0, atol=1e-10)
    assert site_marginal(es, "z1").shape == (n, K1)
    assert {k: v.shape for k, v in site_marginals(es).items()} == {"z1": (n, K1), "z2": (n, K2)}
    # per point: log p(x_i) by hand
    pi, A, mu = (pyro.param(k).detach() for k in ("pi", "A", "mu"))
    by_hand = torch.logsumexp(
        pi.log()[:, None] + A.log() + dist.Normal(mu, 1.0).log_prob(x[:, None, None]), dim=(-2, -1)
    )
    assert torch.allclose(es.log_likelihood_per_point, by_hand, rtol=1e-12, atol=0)


def test_hmm_chain_matches_brute_force():
    x = torch.tensor([-2.1, -1.5, 0.3, 0.1, 2.2, 1.7])
    T = len(x)
    kwargs = {"x": x}
    es = e_step(hmm, kwargs, max_plate_nesting=0)
    assignments, log_joint = _brute_force(hmm, kwargs)
    log_z = torch.logsumexp(log_joint, 0)
    assert _rel(es.log_likelihood, log_z) < 1e-10
    assert es.log_likelihood_per_point is None
    post = (log_joint - log_z).exp()
    gamma = torch.zeros(T, 3)
    xi = torch.zeros(T - 1, 3, 3)
    for w, a in zip(post, assignments, strict=True):
        z = [int(a[f"z_{t}"]) for t in range(T)]
        for t in range(T):
            gamma[t, z[t]] += w
        for t in range(T - 1):
            xi[t, z[t], z[t + 1]] += w
    for t in range(T):
        assert torch.allclose(site_marginal(es, f"z_{t}"), gamma[t], rtol=0, atol=1e-10)
    for t in range(1, T):
        prev, cur = es.enum_symbol[f"z_{t - 1}"], es.enum_symbol[f"z_{t}"]
        assert torch.allclose(_arrange(es, f"z_{t}", prev + cur), xi[t - 1], rtol=0, atol=1e-10)


def test_hmm_written_with_the_dsl_and_long_chain_is_exact():
    @lvm.model
    def chain(x):
        A = lvm.param(0.8 * torch.eye(3) + 0.2 / 3, constraint=constraints.simplex)
        locs = lvm.param(torch.tensor([-2.0, 0.0, 2.0]))
        z = 0
        for t in lvm.markov(range(len(x))):
            z = lvm.latent(dist.Categorical(A[z]), name=f"z_{t}")
            lvm.observe(dist.Normal(locs[z], 1.0), x[t], name=f"x_{t}")

    torch.manual_seed(0)
    x = torch.randn(200) * 2
    # a chain of T=200 steps: the contraction is linear in T (its speed is measured in bench/, not asserted here)
    es = e_step(chain, {"x": x}, max_plate_nesting=0)
    # forward algorithm by hand
    A, locs = pyro.param("A").detach(), pyro.param("locs").detach()
    emit = dist.Normal(locs, 1.0).log_prob(x[:, None])
    alpha = A[0].log() + emit[0]
    for t in range(1, len(x)):
        alpha = torch.logsumexp(alpha[:, None] + A.log(), 0) + emit[t]
    assert _rel(es.log_likelihood, torch.logsumexp(alpha, 0)) < 1e-10
    assert torch.allclose(site_marginal(es, "z_100").sum(), torch.tensor(1.0))


def test_gmm_responsibilities_and_fisher_identity():
    torch.manual_seed(1)
    X = torch.cat([torch.randn(40, 2) - 3, torch.randn(40, 2) + 3, torch.randn(40, 2)])
    kwargs = {"x": X}
    es = e_step(gmm, kwargs, max_plate_nesting=1)
    w, locs, scales = (pyro.param(k).detach() for k in ("w", "locs", "scales"))
    joint = w.log() + dist.Normal(locs, scales).log_prob(X[:, None, :]).sum(-1)
    resp = (joint - torch.logsumexp(joint, -1, keepdim=True)).exp()
    assert torch.allclose(site_marginal(es, "z"), resp, rtol=0, atol=1e-12)
    assert torch.allclose(es.log_likelihood_per_point, torch.logsumexp(joint, -1), rtol=1e-12, atol=0)
    assert es.data_plate == "data" and es.n_data == 120
    # Fisher's identity: grad log p(x) == grad Q(theta | theta_old) at theta_old
    leaves = [pyro.get_param_store()._params[k] for k in ("w", "locs", "scales")]
    g_ll = torch.autograd.grad(marginal_log_likelihood(gmm, kwargs, 1), leaves)
    g_q = torch.autograd.grad(expected_complete_log_likelihood(gmm, kwargs, 1, es.marginals), leaves)
    for a, b in zip(g_ll, g_q, strict=True):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-10)
    # exact log-likelihood agrees with Pyro's TraceEnum_ELBO
    elbo = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1)
    loss = elbo.loss(pyro.infer.config_enumerate(gmm), lambda x: None, X)
    assert _rel(es.log_likelihood, torch.tensor(-loss)) < 1e-12


def test_enumeration_size_is_checked_before_allocating():
    kwargs = {"x": torch.randn(3)}
    n_bytes = estimate_enumeration_bytes(many_coupled, kwargs, max_plate_nesting=1)
    assert n_bytes >= 30**12 * 3 * 8
    with pytest.raises(UnsupportedModelError, match=r"EiB.*\(30, 30, 30.*site 'x'"):
        e_step(many_coupled, kwargs, max_plate_nesting=1)
    with pytest.raises(UnsupportedModelError, match="'z0'"):
        fit_generic_em(many_coupled, kwargs, max_plate_nesting=1)
    # exact for a mixture: log-probs of z and x, (K, N) each, plus their marginals
    X = torch.randn(50, 2)
    assert estimate_enumeration_bytes(gmm, {"x": X}, 1) == 2 * (2 * 3 * 50) * 8


def test_continuous_latent_is_refused():
    def model(x):
        m = pyro.sample("m", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(m, 1.0), obs=x)

    with pytest.raises(UnsupportedModelError, match="site 'm'"):
        e_step(model, {"x": torch.randn(4)}, 1)


def _monotone(history):
    for before, after in itertools.pairwise(history):
        assert after >= before - 1e-9 * abs(before), history


def _direct_optimum(model, kwargs, P):
    """Maximise the exact marginal log-likelihood with L-BFGS from the current parameters."""
    leaves = list(pyro.get_param_store()._params.values())
    n = len(next(iter(kwargs.values())))
    opt = torch.optim.LBFGS(
        leaves,
        max_iter=500,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-12,
        tolerance_change=1e-14,
        history_size=50,
    )

    def closure():
        opt.zero_grad()
        loss = -marginal_log_likelihood(model, kwargs, P) / n
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    with torch.no_grad():
        return float(marginal_log_likelihood(model, kwargs, P)) / n


@pytest.mark.parametrize(
    "model, K, df",
    [(student_mixture, 2, 4.0), (laplace_mixture, 3, None)],
    ids=["student_t", "laplace"],
)
def test_em_is_monotone_and_reaches_the_direct_optimum(model, K, df):
    gen = torch.Generator().manual_seed(3)
    centres = torch.tensor([-5.0, 0.0, 5.0][:K]) if K == 3 else torch.tensor([-4.0, 4.0])
    z = torch.randint(K, (300,), generator=gen)
    if df is None:
        x = centres[z] + dist.Laplace(0.0, 1.0).sample((300,))
    else:
        x = centres[z] + dist.StudentT(df).sample((300,))
    kwargs = {"x": x, "K": K}
    store = pyro.get_param_store()
    e_step(model, kwargs, 1)  # creates the parameters at their initial values
    init = {k: v.detach().clone() for k, v in store._params.items()}

    seen = []
    fit = fit_generic_em(
        model, kwargs, 1, max_iter=300, tol=1e-10, max_steps=30, callback=lambda i, ll: seen.append((i, ll))
    )
    _monotone(fit["history"])
    assert seen == list(enumerate(fit["history"][1:], start=1))
    assert fit["converged"]
    em_ll = fit["history"][-1]
    assert _rel(torch.tensor(em_ll), fit["e_step"].log_likelihood / 300) < 1e-12

    with torch.no_grad():
        for k, v in init.items():
            store._params[k].copy_(v)
    direct_ll = _direct_optimum(model, kwargs, 1)
    assert abs(em_ll - direct_ll) / abs(direct_ll) < 1e-4, (em_ll, direct_ll)
    assert em_ll >= direct_ll - 1e-4 * abs(direct_ll)


def test_m_step_rejects_a_worse_q_and_restores_exactly():
    x = torch.tensor([-1.7, -0.2, 0.4, 1.1, 2.6])
    kwargs = {"x": x}
    es = e_step(coupled, kwargs, 1)
    store = pyro.get_param_store()
    before = {k: v.detach().clone() for k, v in store._params.items()}
    # NaN marginals make Q NaN: the step must be refused and the parameters left bit for bit as they were
    bad = {k: v * float("nan") for k, v in es.marginals.items()}
    info = generic_m_step(coupled, kwargs, 1, bad)
    assert not info["accepted"]
    for k, v in store._params.items():
        assert torch.equal(v, before[k])
    good = generic_m_step(coupled, kwargs, 1, es)
    assert good["accepted"] and good["q_after"] >= good["q_before"]


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**16), n=st.integers(3, 25))
def test_property_monotone(seed, n):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=gen) * 3
    with pyro.get_param_store().scope():
        pyro.param("mu", torch.randn(2, 2, generator=gen) * 2)
        fit = fit_generic_em(coupled, {"x": x}, 1, max_iter=8, tol=0.0, max_steps=10, callback=lambda i, ll: i == 3)
    _monotone(fit["history"])
    assert 2 <= len(fit["history"]) <= 4
    if fit["n_iter"] == 3:  # stopped by the callback
        assert not fit["converged"]


def test_global_latent_couples_points_and_factor_sites_count():
    def switch(x):
        p = pyro.param("p", torch.tensor(0.3), constraint=constraints.unit_interval)
        mu = pyro.param("mu", torch.tensor([-1.0, 1.0]))
        c = pyro.sample("c", dist.Bernoulli(p)).long()
        pyro.factor("prior", -0.5 * (mu**2).sum())  # a log-prior on the parameters: part of log Z and of Q
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(mu[c], 1.0), obs=x)

    x = torch.tensor([0.8, 1.4, 0.3, 2.0])
    kwargs = {"x": x}
    es = e_step(switch, kwargs, 1)
    assert es.data_plate == "data" and es.n_data == 4
    assert es.log_likelihood_per_point is None  # c couples the points
    _, log_joint = _brute_force(switch, kwargs)
    assert _rel(es.log_likelihood, torch.logsumexp(log_joint, 0)) < 1e-12
    post = (log_joint - torch.logsumexp(log_joint, 0)).exp()
    assert torch.allclose(site_marginal(es, "c"), post, rtol=0, atol=1e-12)
    fit = fit_generic_em(switch, kwargs, 1, max_iter=50, tol=1e-9)
    _monotone(fit["history"])
    assert fit["history"][0] == pytest.approx(float(es.log_likelihood) / 4, rel=1e-12)
    # the prior pulls mu towards 0: at the MAP the gradient of log Z (prior included) vanishes
    leaves = [pyro.get_param_store()._params[k] for k in ("p", "mu")]
    grads = torch.autograd.grad(marginal_log_likelihood(switch, kwargs, 1), leaves)
    assert all(float(g.abs().max()) < 1e-3 for g in grads)
