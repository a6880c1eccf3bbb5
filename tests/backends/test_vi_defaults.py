"""Variational fits with default options: they reach the optimum, and say honestly when they have not.

The default loop anneals: a constant ``lr`` (0.05) for 70% of the steps, then half a cosine towards 0 with the
iterates averaged over the last 15% (``anneal=0.3``); ``svi`` differentiates the sticking-the-landing estimator
(``estimator="stl"``); ``converged`` is the noise-aware rule of :func:`ppl_lvm.fit_options.settling`;
``result.elbo`` is the bound at the returned (averaged) parameters.
Every check runs over 5 seeds (data and fit); the spread measured with these seeds is stated at each assertion.
"""

import warnings

import pytest
import torch
from demo_models import normal_normal, normal_normal_posterior

import ppl_lvm as lvm
from ppl_lvm import constraints, dist
from ppl_lvm.fit_options import settling
from ppl_lvm.models.factor import ppca, ppca_log_marginal, ppca_mle

SEEDS = range(5)


def _ppca_data(n, d, q, seed):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d, q, generator=g)
    z = torch.randn(n, q, generator=g)
    return z @ W.T + 0.5 * torch.randn(n, d, generator=g) + torch.randn(d, generator=g)


@pytest.mark.parametrize("n, d, q", [(500, 8, 2), (300, 10, 3), (500, 10, 2)])
def test_ppca_by_svi_with_default_options_reaches_the_closed_form_maximum(n, d, q):
    gaps, bound_gaps = [], []
    for seed in SEEDS:
        x = _ppca_data(n, d, q, seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", lvm.ConvergenceWarning)
            fit = lvm.infer(ppca, {"x": x, "q": q}, method="svi", seed=seed)
        exact = float(ppca_log_marginal(x, fit.params["W"], fit.params["mu"], fit.params["sigma"]))
        best = float(ppca_log_marginal(x, **ppca_mle(x, q=q)))
        gaps.append(best - exact)
        bound_gaps.append(best - fit.elbo)
    print(f"ppca N={n} D={d} q={q}: gaps to the maximum {[round(g, 2) for g in gaps]}; "
          f"ELBO below it by {[round(g, 2) for g in bound_gaps]}")
    # measured (the defaults: 1000 steps, lr 0.05, STL), seeds 0-4: (500, 8, 2) gaps 0.19-0.68 nats;
    # (300, 10, 3) 0.27-0.98; (500, 10, 2) 0.20-1.05; the ELBO at the averaged parameters 0.18-1.07 below the maximum
    # (with lr 0.01 and the standard gradient the gaps reached 1.47 and 2.26: the reason for these defaults)
    assert all(-0.05 < g < 2.0 for g in gaps)
    # the bound reported is the one at the returned parameters: it sits just below their exact log-likelihood
    assert all(g > -0.5 for g in bound_gaps)


def test_normal_normal_posterior_by_svi_with_default_options():
    mean_err, sd_err = [], []
    for seed in SEEDS:
        g = torch.Generator().manual_seed(100 + seed)
        x = 1.5 + torch.randn(50, generator=g)
        mean, sd = normal_normal_posterior(x)
        fit = lvm.infer(normal_normal, x, method="svi", seed=seed)
        draws = fit.sample_posterior(40000, seed=0)["mu"]
        mean_err.append(float(draws.mean()) / mean - 1)
        sd_err.append(float(draws.std()) / sd - 1)
        assert fit.converged
    print(f"normal-normal: relative error of the mean {[round(e, 3) for e in mean_err]}, of the sd "
          f"{[round(e, 3) for e in sd_err]}")
    # measured, seeds 0-4: mean -0.09% every seed, sd +0.13% .. +0.20% (the 40000 draws' own error is 0.35%/0.5%).
    # With Pyro's standard gradient the same defaults gave sd errors up to +18.7%: its score term keeps the scale
    # jittering at any step size, where STL's gradient vanishes at the exact posterior
    assert all(abs(e) < 0.03 for e in mean_err)
    assert all(abs(e) < 0.03 for e in sd_err)


def test_a_fit_cut_short_says_it_has_not_converged():
    for seed in SEEDS:
        x = _ppca_data(300, 8, 2, seed)
        with pytest.warns(lvm.ConvergenceWarning, match=r"before the loss settled: over its last \d+ steps the loss "
                                                          r"still fell by"):
            fit = lvm.infer(ppca, {"x": x, "q": 2}, method="svi", steps=100, seed=seed)
        assert not fit.converged


def test_settling_compares_the_trend_with_its_noise():
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(400, generator=g).numpy()
    assert settling(100 + noise, tol=0.0).settled  # flat and noisy: settled
    falling = 100 + noise - torch.linspace(0, 5, 400).numpy()
    check = settling(falling, tol=0.0)
    assert not check.settled and check.decrease == pytest.approx(5 * 0.9, rel=0.2)
    assert settling(falling, tol=0.1).settled  # 4.5 < 0.1 * 100: negligible
    assert not settling(falling[:6], tol=0.0).settled  # too short to tell


def test_the_elbo_of_a_fully_enumerated_model_is_its_log_evidence():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(60, 2, generator=g) * 0.3 + c for c in (torch.tensor([0.0, 0.0]),
                                                                          torch.tensor([3.0, 1.0]))])

    @lvm.model
    def mixture(x, K=2):
        weights = lvm.param(torch.ones(K) / K, constraint=constraints.simplex)
        locs = lvm.param(lambda: x[torch.randperm(len(x))[:K]])
        scales = lvm.param(torch.ones(K, 2), constraint=constraints.positive)
        with lvm.plate(len(x)):
            z = lvm.latent(dist.Categorical(weights))
            lvm.observe(dist.Normal(locs[z], scales[z]).to_event(1), x)

    for seed in SEEDS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", lvm.ConvergenceWarning)
            fit = lvm.infer(mixture, x, method="svi", steps=300, lr=0.05, seed=seed)
        # measured: equal to 1e-7 relative (float32), every seed
        assert fit.elbo == pytest.approx(fit.log_evidence(), rel=1e-6)


def test_fitting_longer_as_the_warning_advises_reaches_the_optimum():
    # the PPCA of the issue (N=300, D=10, q=3), cut short at 200 steps, then result.fit_more(steps=1000)
    before, after = [], []
    for seed in SEEDS:
        x = _ppca_data(300, 10, 3, seed)
        best = float(ppca_log_marginal(x, **ppca_mle(x, q=3)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", lvm.ConvergenceWarning)
            short = lvm.infer(ppca, {"x": x, "q": 3}, method="svi", steps=200, seed=seed)
        longer = short.fit_more(steps=1000)
        for fit, gaps in ((short, before), (longer, after)):
            gaps.append(best - float(ppca_log_marginal(x, fit.params["W"], fit.params["mu"], fit.params["sigma"])))
        assert longer.converged
    # measured, seeds 0-4: 1.66-2.93 nats below the maximum after 200 steps, 0.28-0.96 after fit_more(steps=1000)
    assert all(a < b for a, b in zip(after, before, strict=True))
    assert all(a < 1.5 for a in after)
