"""EM standard errors: the observed information (autograd Hessian of the exact log-likelihood at the estimate)
against a central-difference Hessian of an independent log-likelihood (scipy, hmmlearn) and against the spread of
bootstrap refits (scikit-learn, hmmlearn); the Laplace posterior of ``to_arviz()`` and what happens on a boundary."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hmmlearn.hmm import CategoricalHMM
from scipy.special import logsumexp
from scipy.stats import multivariate_normal, norm
from sklearn.mixture import GaussianMixture

import ppl_lvm as lvm
from ppl_lvm.models.hmm import categorical_hmm
from ppl_lvm.models.mixtures import gaussian_mixture
from ppl_lvm.posterior import arviz_compat
from ppl_lvm.posterior.laplace import laplace

TRUE_HMM = {"start": np.array([0.6, 0.4]), "trans": np.array([[0.85, 0.15], [0.25, 0.75]]),
            "emission": np.array([[0.8, 0.15, 0.05], [0.05, 0.15, 0.8]])}


# ---------------------------------------------------------------------------------------------------- data and fits
def mixture_data(seed: int, n: int = 400) -> np.ndarray:
    """1-D: 30% N(-2, 1), 70% N(2, 0.7^2)."""
    rng = np.random.default_rng(seed)
    first = rng.uniform(size=n) < 0.3
    return np.where(first, rng.normal(-2.0, 1.0, n), rng.normal(2.0, 0.7, n))[:, None]


def hmm_data(seed: int, n_seq: int = 60, length: int = 25) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.zeros((n_seq, length), dtype=np.int64)
    for b in range(n_seq):
        z = rng.choice(2, p=TRUE_HMM["start"])
        for t in range(length):
            z = z if t == 0 else rng.choice(2, p=TRUE_HMM["trans"][z])
            x[b, t] = rng.choice(3, p=TRUE_HMM["emission"][z])
    return x


def fit_mixture(x: np.ndarray, covariance_type: str = "diag"):
    """EM to a tight tolerance (the gradient at the estimate is then ~1e-6), components ordered by their mean."""
    return lvm.infer(gaussian_mixture, {"x": torch.from_numpy(x), "K": 2, "covariance_type": covariance_type},
                     method="em", tol=1e-12, max_iter=5000, init_params={"locs": np.array([[-1.0] * x.shape[1],
                                                                                           [1.0] * x.shape[1]])})


def fit_hmm(x: np.ndarray):
    start = {"emission": TRUE_HMM["emission"] * 0.5 + 1 / 6, "trans": np.full((2, 2), 0.5)}
    return lvm.infer(categorical_hmm, {"x": torch.from_numpy(x), "K": 2}, method="em", tol=1e-12, max_iter=5000,
                     init_params=start)


# ---------------------------------------------------------------------------------------------------- helpers
def central_hessian(f, v: np.ndarray, h: float = 1e-4) -> np.ndarray:
    """The Hessian of f at v by central differences (second-order accurate)."""
    p = len(v)
    hess = np.zeros((p, p))
    for i in range(p):
        for j in range(i, p):
            ei, ej = np.eye(p)[i] * h, np.eye(p)[j] * h
            hess[i, j] = hess[j, i] = (f(v + ei + ej) - f(v + ei - ej) - f(v - ei + ej) + f(v - ei - ej)) / (4 * h * h)
    return hess


def delta_se(f_params, v: np.ndarray, hess: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Standard errors of f_params(v) from the covariance (-hess)^-1 of v, the Jacobian by central differences."""
    cov = np.linalg.inv(-hess)
    jac = np.stack([(f_params(v + e) - f_params(v - e)) / (2 * h) for e in np.eye(len(v)) * h], axis=1)
    return np.sqrt(np.diag(jac @ cov @ jac.T))


def flat_se(fit, names) -> np.ndarray:
    se = fit.standard_errors()
    return np.concatenate([se[n].numpy().reshape(-1) for n in names])


# mixture: free coordinates (w0, mu_0, mu_1, sigma_0, sigma_1) in their natural scale, the model's constrained order
def _mixture_params(v):
    return np.array([v[0], 1 - v[0], v[1], v[2], v[3], v[4]])


def _mixture_loglik(x):
    def f(v):
        w, mu, sd = np.array([v[0], 1 - v[0]]), v[1:3], v[3:5]
        return logsumexp(np.log(w) + norm.logpdf(x, mu, sd), axis=1).sum()
    return f


# HMM: free coordinates (start_0, trans_00, trans_10, emission_00, emission_01, emission_10, emission_11)
def _hmm_params(v):
    start = [v[0], 1 - v[0]]
    trans = [v[1], 1 - v[1], v[2], 1 - v[2]]
    emission = [v[3], v[4], 1 - v[3] - v[4], v[5], v[6], 1 - v[5] - v[6]]
    return np.array(start + trans + emission)


def _hmmlearn(v) -> CategoricalHMM:
    c = _hmm_params(v)
    model = CategoricalHMM(n_components=2, n_features=3, init_params="", params="ste", n_iter=500, tol=1e-10)
    model.startprob_, model.transmat_, model.emissionprob_ = c[:2], c[2:6].reshape(2, 2), c[6:].reshape(2, 3)
    return model


def _hmm_free(fit) -> np.ndarray:
    p = {k: fit.params[k].double().numpy() for k in ("start", "trans", "emission")}
    return np.array([p["start"][0], p["trans"][0, 0], p["trans"][1, 0], *p["emission"][0, :2], *p["emission"][1, :2]])


# ---------------------------------------------------------------------------------------------------- numerical Hessian
@pytest.mark.parametrize("seed", [0])
def test_mixture_standard_errors_match_a_numerical_hessian_of_the_scipy_log_likelihood(seed, float64):
    x = mixture_data(seed)
    fit = fit_mixture(x)
    p = {k: fit.params[k].double().numpy().reshape(-1) for k in ("weights", "locs", "scales")}
    v = np.array([p["weights"][0], *p["locs"], *p["scales"]])
    assert _mixture_loglik(x)(v) == pytest.approx(fit.log_likelihood, rel=1e-10)
    expected = delta_se(_mixture_params, v, central_hessian(_mixture_loglik(x), v))
    # Measured (data seeds 0-4): largest relative difference 7.6e-7; the acceptance asks for 5%
    np.testing.assert_allclose(flat_se(fit, ["weights", "locs", "scales"]), expected, rtol=1e-3)


def test_full_covariance_standard_errors_match_a_numerical_hessian(float64):
    """Two dimensions, full covariances: the Cholesky factors' free coordinates (lower triangle, log diagonal)."""
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.multivariate_normal([-2, 0], [[1.0, 0.5], [0.5, 1.5]], 150),
                        rng.multivariate_normal([2, 1], [[0.6, -0.2], [-0.2, 0.4]], 250)])
    fit = fit_mixture(x, "full")
    w, locs, trils = (fit.params[k].double().numpy() for k in ("weights", "locs", "scale_trils"))
    # v = (w0, locs (4), per component: L00, L10, L11) with L's diagonal positive; the model's order of values
    v = np.concatenate([[w[0]], locs.reshape(-1), trils[:, [0, 1, 1], [0, 0, 1]].reshape(-1)])

    def params(v):
        trils = np.zeros((2, 2, 2))
        trils[:, [0, 1, 1], [0, 0, 1]] = v[5:].reshape(2, 3)
        return np.concatenate([[v[0], 1 - v[0]], v[1:5], trils.reshape(-1)])

    def loglik(v):
        c = params(v)
        w, locs, trils = c[:2], c[2:6].reshape(2, 2), c[6:].reshape(2, 2, 2)
        comp = [multivariate_normal(locs[k], trils[k] @ trils[k].T).logpdf(x) for k in range(2)]
        return logsumexp(np.log(w)[:, None] + np.stack(comp), axis=0).sum()

    assert loglik(v) == pytest.approx(fit.log_likelihood, rel=1e-10)
    expected = delta_se(params, v, central_hessian(loglik, v))
    got = flat_se(fit, ["weights", "locs", "scale_trils"])
    upper = np.zeros((2, 2, 2), dtype=bool)
    upper[:, 0, 1] = True
    assert np.all(got[6:][upper.reshape(-1)] == 0)  # the upper triangle is zero, exactly
    # both are exact up to the finite differences' rounding: rtol 1e-3 (the acceptance asks for 5%)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-12)


@pytest.mark.parametrize("seed", [0])
def test_hmm_standard_errors_match_a_numerical_hessian_of_the_hmmlearn_log_likelihood(seed, float64):
    x = hmm_data(seed)
    fit = fit_hmm(x)
    v = _hmm_free(fit)
    obs, lengths = x.reshape(-1, 1), [x.shape[1]] * x.shape[0]
    loglik = lambda v: _hmmlearn(v).score(obs, lengths)  # noqa: E731
    assert loglik(v) == pytest.approx(fit.log_likelihood, rel=1e-10)
    expected = delta_se(_hmm_params, v, central_hessian(loglik, v))
    # Measured (data seeds 0-4): largest relative difference 2.0e-3 (seed 1; EM stops near, not at, the maximum);
    # the acceptance asks for 5%
    np.testing.assert_allclose(flat_se(fit, ["start", "trans", "emission"]), expected, rtol=1e-2)


# ---------------------------------------------------------------------------------------------------- bootstrap
def test_mixture_standard_errors_match_200_bootstrap_refits(float64):
    x = mixture_data(0, n=1000)
    fit = fit_mixture(x)
    p = {k: fit.params[k].double().numpy().reshape(-1) for k in ("weights", "locs", "scales")}
    rng = np.random.default_rng(100)
    estimates = []
    for _ in range(200):  # scikit-learn refits from the estimate, so that no label switches
        xb = x[rng.integers(0, len(x), len(x))]
        gm = GaussianMixture(2, covariance_type="diag", weights_init=p["weights"], means_init=p["locs"][:, None],
                             precisions_init=1 / p["scales"][:, None] ** 2, tol=1e-10, max_iter=1000,
                             reg_covar=1e-6).fit(xb)
        estimates.append([gm.weights_[0], *gm.means_[:, 0], *np.sqrt(gm.covariances_[:, 0])])
    ratio = flat_se(fit, ["weights", "locs", "scales"])[[0, 2, 3, 4, 5]] / np.array(estimates).std(0, ddof=1)
    # The sd of 200 refits has a Monte Carlo error of 1 / sqrt(2 * 199) = 5% alone. Measured over data and
    # bootstrap seeds 0-4 (N = 1000): 24 of the 25 ratios within 15% of 1, the other 1.17 (seed 0, sigma_0);
    # RMS of ratio - 1 per seed 0.049-0.087. Asserted (seed 0): each within 0.2, RMS below 0.1.
    assert np.all(np.abs(ratio - 1) < 0.2), ratio
    assert np.sqrt(np.mean((ratio - 1) ** 2)) < 0.1, ratio


def batched_baum_welch(x: np.ndarray, weights: np.ndarray, start, trans, emission, max_iter: int = 400,
                       tol: float = 1e-7):
    """Baum-Welch (scaled forward-backward, float64) for R weighted copies of the sequences ``x`` (B, T) at once,
    ``weights`` (R, B): a bootstrap resample is the data with each sequence counted as often as it was drawn. Written
    here, apart from the package's kernels, so that the refits are an independent computation."""
    x, w = torch.as_tensor(x), torch.as_tensor(weights, dtype=torch.float64)
    (r, (b, t_max)), k = (w.shape[0], x.shape), len(start)
    pi, a, e = (torch.as_tensor(v, dtype=torch.float64).expand(r, *np.shape(v)).clone() for v in (start, trans, emission))
    onehot = torch.nn.functional.one_hot(x, e.shape[-1]).double()  # (B, T, C)
    previous = None
    for _ in range(max_iter):
        emis = torch.einsum("rkc,btc->rbtk", e, onehot)
        alpha, scale = torch.empty(r, b, t_max, k), torch.empty(r, b, t_max)
        for t in range(t_max):
            step = pi[:, None, :] * emis[:, :, 0] if t == 0 else torch.einsum("rbk,rkl->rbl", alpha[:, :, t - 1], a) * emis[:, :, t]
            scale[:, :, t] = step.sum(-1)
            alpha[:, :, t] = step / scale[:, :, t, None]
        beta = torch.ones(r, b, t_max, k)
        for t in range(t_max - 2, -1, -1):
            beta[:, :, t] = torch.einsum("rkl,rbl->rbk", a, emis[:, :, t + 1] * beta[:, :, t + 1]) / scale[:, :, t + 1, None]
        gamma = alpha * beta
        xi = alpha[:, :, :-1, :, None] * a[:, None, None] * (emis[:, :, 1:] * beta[:, :, 1:])[:, :, :, None, :]
        xi = xi / scale[:, :, 1:, None, None]
        log_likelihood = (w * scale.log().sum(-1)).sum(-1)
        pi = (w[:, :, None] * gamma[:, :, 0]).sum(1) / w.sum(1, keepdim=True)
        counts = (w[:, :, None, None] * xi.sum(2)).sum(1)
        a = counts / counts.sum(-1, keepdim=True)
        emitted = torch.einsum("rb,rbtk,btc->rkc", w, gamma, onehot)
        e = emitted / emitted.sum(-1, keepdim=True)
        if previous is not None and float((log_likelihood - previous).abs().max()) < tol:
            break
        previous = log_likelihood
    return pi, a, e


REFITS, MAX_DEVIATION, MAX_RMS = 50, 0.6, 0.35


def test_hmm_standard_errors_match_bootstrap_refits(float64):
    x = hmm_data(0)
    fit = fit_hmm(x)
    estimate = [fit.params[k] for k in ("start", "trans", "emission")]
    # the refits' EM at the data themselves (every weight 1) stays at the estimate: the two EMs agree
    again = batched_baum_welch(x, np.ones((1, len(x))), *estimate)
    for got, expected in zip(again, estimate, strict=True):
        torch.testing.assert_close(got[0], expected, rtol=0, atol=1e-5)
    rng = np.random.default_rng(100)  # resample whole sequences, refit from the estimate (so no label switches)
    weights = np.stack([np.bincount(rng.integers(0, len(x), len(x)), minlength=len(x)) for _ in range(REFITS)])
    pi, a, e = batched_baum_welch(x, weights, *estimate)
    refits = torch.stack([pi[:, 0], a[:, 0, 0], a[:, 1, 0], e[:, 0, 0], e[:, 0, 1], e[:, 1, 0], e[:, 1, 1]], 1)
    # the free coordinates of _hmm_free, in the model's order of values
    ratio = flat_se(fit, ["start", "trans", "emission"])[[0, 2, 4, 6, 7, 9, 10]] / refits.numpy().std(0, ddof=1)
    # Measured once with 200 refits (data seeds 0, 1, 2; bootstrap seed 100 + data seed; the refits stop at 400
    # iterations, which every batch reached): ratios [0.88 1.02 1.02 0.90 0.96 1.22 1.31], [0.93 1.04 1.27 0.94 0.91
    # 1.44 1.29], [1.04 1.43 1.21 1.24 0.97 1.31 0.99]; largest |ratio - 1| per seed 0.31, 0.44, 0.43, RMS 0.16,
    # 0.23, 0.23. So on this chain (60 sequences of 25 steps) the bootstrap spread is up to 44% below the standard
    # error for some coordinates, outside the 15% that holds for the mixture; the refits' unfinished EM (slow along
    # the chain's weakest direction) is the leading suspect. The suite runs REFITS refits (seed 0) and asserts
    # what was measured, with the Monte Carlo error of REFITS refits (1 / sqrt(2 * 49) = 10%) added; measured there:
    # ratios [1.03 1.05 0.99 0.88 0.97 1.12 1.52], largest |ratio - 1| 0.52, RMS 0.21.
    assert np.all(np.abs(ratio - 1) < MAX_DEVIATION), ratio
    assert np.sqrt(np.mean((ratio - 1) ** 2)) < MAX_RMS, ratio


# ---------------------------------------------------------------------------------------------------- results
def test_summary_has_the_standard_errors_and_wald_intervals(float64):
    x = mixture_data(1, n=200)
    fit = fit_mixture(x)
    table = fit.summary()
    se = flat_se(fit, ["weights", "locs", "scales"])
    assert list(table.columns) == ["mean", "se", "ci_2.5%", "ci_97.5%", "kind"]
    np.testing.assert_allclose(table["se"], se, rtol=1e-12)
    np.testing.assert_allclose(table["ci_97.5%"] - table["mean"], 1.959963984540054 * se, rtol=1e-12)
    np.testing.assert_allclose(table["mean"] - table["ci_2.5%"], 1.959963984540054 * se, rtol=1e-12)
    information = fit.observed_information()
    assert information.shape == (5, 5) and torch.allclose(information, information.T)
    assert torch.linalg.eigvalsh(information).min() > 0


@pytest.mark.arviz
def test_to_arviz_of_an_em_fit_holds_laplace_draws_and_their_log_likelihood(float64):
    x = mixture_data(2, n=150)
    fit = fit_mixture(x)
    idata = fit.to_arviz(num_samples=2000, seed=0, chains=2)
    post = arviz_compat.group(idata, "posterior")
    assert "laplace approximation" in post.attrs["posterior"]
    assert post["scales"].dims == ("chain", "draw", "scales_dim_0", "scales_dim_1")
    # the draws' spread is the standard error (2000 draws: sd within 5%), the draws respect the support
    se = fit.standard_errors()
    for name in ("weights", "locs", "scales"):
        flat = post[name].values.reshape(2000, -1)
        np.testing.assert_allclose(flat.std(0), se[name].numpy().reshape(-1), rtol=0.08)
    assert np.all(post["scales"].values > 0)
    np.testing.assert_allclose(post["weights"].values.sum(-1), 1.0, rtol=1e-12)
    # log p(x_i | theta_s) of each draw, recomputed with scipy for the first draws
    log_lik = arviz_compat.group(idata, "log_likelihood")["x"]
    assert log_lik.dims == ("chain", "draw", "x_index")
    for s in range(3):
        w, mu, sd = (post[n].values[0, s].reshape(-1) for n in ("weights", "locs", "scales"))
        expected = logsumexp(np.log(w) + norm.logpdf(x, mu, sd), axis=1)
        np.testing.assert_allclose(log_lik.values[0, s], expected, rtol=1e-10)
    summary = arviz_compat.az().summary(idata, var_names=["weights", "locs", "scales"])
    assert np.all(np.isfinite(summary["mean"])) and np.all(summary["r_hat"] < 1.01)
    loo = arviz_compat.loo(idata)
    assert loo["elpd_i"].shape == (150,) and not loo["warning"]
    # a regular model: elpd_loo is the plug-in log-likelihood less about the number of parameters (5)
    assert fit.log_likelihood - loo["elpd_loo"] == pytest.approx(5, abs=1.5)


def test_an_estimate_on_the_boundary_has_nan_standard_errors_and_a_warning(float64):
    # three sequences that all start in the same state: the start probabilities' estimate is (1, 0)
    x = np.tile([[0, 0, 0, 2, 2, 2, 0, 0, 1, 2, 2, 2]], (3, 1))
    fit = lvm.infer(categorical_hmm, {"x": torch.from_numpy(x), "K": 2}, method="em", max_iter=300, tol=None,
                    init_params={"emission": TRUE_HMM["emission"]})
    with pytest.warns(lvm.InferenceWarning, match=r"'start' \(2 of its coordinates\).* sit on the boundary"):
        se = fit.standard_errors()
    assert torch.isnan(se["start"]).all() and torch.isfinite(se["trans"]).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the warning is given once per fit
        draws = laplace(fit).sample(20, seed=0)
    assert torch.allclose(draws["start"], fit.params["start"].double().expand(20, 2), rtol=0, atol=1e-12)
