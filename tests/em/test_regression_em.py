"""A mixture of linear regressions written naturally is recognised from its structure (the mean is linear in
parameters given z) and fitted by weighted least squares: the numbers of a numpy EM from the same start. Means that
are not linear in a component's own parameters run the generic route."""

import numpy as np
import pyro.poutine as poutine
import pytest
import torch
from scipy.special import logsumexp

import ppl_lvm as lvm
from ppl_lvm import constraints, dist
from ppl_lvm.models.regression import regression_mixture, simulate_regression_mixture

REG = 1e-6  # the variance floor added by the closed-form M-step (scikit-learn's reg_covar)


def numpy_wls_em(design, y, weights, coefs, variances, iters, reg=REG):
    """EM for a mixture of linear regressions in numpy: E-step, then per component weighted least squares."""
    history = []
    for _ in range(iters):
        residual = y[:, None] - design @ coefs.T
        log_p = np.log(weights) - 0.5 * np.log(2 * np.pi * variances) - 0.5 * residual**2 / variances
        total = logsumexp(log_p, axis=1)
        history.append(total.mean())
        resp = np.exp(log_p - total[:, None])
        nk = resp.sum(0) + 10 * np.finfo(float).eps
        weights = nk / nk.sum()
        coefs = np.stack([np.linalg.solve(design.T @ (r[:, None] * design), design.T @ (r * y)) for r in resp.T])
        variances = (resp * (y[:, None] - design @ coefs.T) ** 2).sum(0) / nk + reg
    return np.array(history), weights, coefs, variances


@pytest.fixture(scope="module")
def data():
    torch.set_default_dtype(torch.float64)
    try:
        x, y, z = simulate_regression_mixture(400, weights=[0.3, 0.3, 0.4], intercepts=[-2.0, 0.0, 2.0],
                                              coefs=[[1.0, -1.0], [-2.0, 0.5], [0.5, 1.5]], scales=[0.5, 0.3, 0.8],
                                              seed=0)
    finally:
        torch.set_default_dtype(torch.float32)
    return x, y


def _reference(x, y, fit_start, iters):
    design = np.concatenate([np.ones((len(x), 1)), x.numpy()], axis=1)
    coefs = np.concatenate([fit_start["intercepts"][:, None], fit_start["coefs"]], axis=1)
    return numpy_wls_em(design, y.numpy(), fit_start["weights"], coefs, fit_start["scales"] ** 2, iters)


START = {"weights": np.array([0.3, 0.3, 0.4]), "intercepts": np.array([-1.0, 0.5, 1.0]),
         "coefs": np.array([[0.5, -0.5], [-1.0, 0.0], [0.0, 1.0]]), "scales": np.array([1.0, 1.0, 1.0])}


def _torch(values):
    return {name: torch.tensor(value) for name, value in values.items()}


def test_the_ready_made_regression_mixture_is_weighted_least_squares(data, float64):
    x, y = data
    with pytest.warns(lvm.ConvergenceWarning):
        fit = lvm.infer(regression_mixture, {"x": x, "y": y, "K": 3}, method="em", init_params=_torch(START),
                        max_iter=30, tol=0.0)
    assert fit.closed_form and repr(fit.pattern.family) == "LinearGaussian()"
    history, weights, coefs, variances = _reference(x, y, START, 30)
    # measured over data seeds 0-4: histories agree to 1.3e-15, coefficients to 2.1e-15, variances to 6.7e-14
    np.testing.assert_allclose(fit.history, history, rtol=1e-10)
    np.testing.assert_allclose(fit.params["weights"].numpy(), weights, rtol=1e-8)
    np.testing.assert_allclose(fit.params["intercepts"].numpy(), coefs[:, 0], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(fit.params["coefs"].numpy(), coefs[:, 1:], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(fit.params["scales"].numpy() ** 2, variances, rtol=1e-8)
    assert lvm.Result.log_evidence(fit) == pytest.approx(fit.log_likelihood, rel=1e-10)
    assert fit.n_parameters == 3 * 3 + 3 + 2  # coefficients, variances, weights
    # without init_params the fit starts from the model's own values, as the generic route did
    default = lvm.infer(regression_mixture, {"x": x, "y": y, "K": 3}, method="em", max_iter=200, tol=1e-8)
    assert default.closed_form and default.options["init_params"] == "params" and default.converged


def _natural(spelling):
    @lvm.model
    def regression(X, y, K=3):
        w = lvm.param(torch.ones(K) / K, constraint=constraints.simplex)
        beta = lvm.param(torch.zeros(K, X.shape[1]))
        sigma = lvm.param(torch.ones(K), constraint=constraints.positive)
        with lvm.plate(len(y)):
            z = lvm.latent(dist.Categorical(w))
            if spelling == "sum":
                mean = (X * beta[z]).sum(-1)
            elif spelling == "einsum":
                mean = torch.einsum("np,...np->...n", X, beta[z])
            else:  # a matrix product per component, then the component's column
                mean = (beta[z] @ X.T.unsqueeze(0)).squeeze(-2)
            lvm.observe(dist.Normal(mean, sigma[z]), y)

    return regression


@pytest.mark.parametrize("spelling", ["sum", "einsum", "matmul"])
def test_a_regression_written_naturally_is_recognised_from_its_structure(data, spelling, float64):
    x, y = data
    X = torch.cat([torch.ones(len(x), 1), x], dim=1)
    start = {"w": START["weights"], "beta": np.concatenate([START["intercepts"][:, None], START["coefs"]], 1),
             "sigma": START["scales"]}
    with pytest.warns(lvm.ConvergenceWarning):
        fit = lvm.infer(_natural(spelling), {"X": X, "y": y}, method="em", init_params=_torch(start), max_iter=25,
                        tol=0.0)
    assert fit.closed_form
    history, weights, coefs, variances = numpy_wls_em(X.numpy(), y.numpy(), start["w"], start["beta"],
                                                      start["sigma"] ** 2, 25)
    np.testing.assert_allclose(fit.history, history, rtol=1e-10)
    np.testing.assert_allclose(fit.params["beta"].numpy(), coefs, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(fit.params["sigma"].numpy() ** 2, variances, rtol=1e-8)
    with pytest.raises(ValueError, match="refit on the new data"):
        fit.predict_proba(y[:3])


@lvm.model
def not_linear(X, y, K=2, how="square"):
    w = lvm.param(torch.ones(K) / K, constraint=constraints.simplex)
    beta = lvm.param(torch.tensor([[0.5], [1.5]]))
    sigma = lvm.param(torch.ones(K), constraint=constraints.positive)
    with lvm.plate(len(y)):
        z = lvm.latent(dist.Categorical(w))
        if how == "square":  # linear in beta**2, not in beta
            mean = (X * beta[z] ** 2).sum(-1)
        elif how == "relu":  # linear where beta > 0 (every value near the start), not across 0
            mean = (X * torch.relu(beta[z])).sum(-1)
        else:  # linear, but component k reads every component's slope
            mean = (X * (beta[z] + beta.sum(0))).sum(-1)
        lvm.observe(dist.Normal(mean, sigma[z]), y)


@pytest.mark.parametrize("how", ["square", "relu", "coupled"])
def test_a_mean_not_linear_in_its_own_component_runs_the_generic_route(how, float64):
    g = torch.Generator().manual_seed(3)
    X = torch.randn(80, 1, generator=g)
    y = X[:, 0] * torch.where(torch.arange(80) < 40, 1.0, 3.0) + 0.3 * torch.randn(80, generator=g)
    fit = lvm.infer(not_linear, {"X": X, "y": y, "how": how}, method="em", max_iter=4, tol=None)
    assert not fit.closed_form  # also with data seeds 4-7: never closed form, histories never falling
    assert np.all(np.diff(fit.history) >= -1e-9)
    assert lvm.Result.log_evidence(fit) == pytest.approx(fit.log_likelihood, rel=1e-10)


def numpy_hmm_regression_em(designs, ys, start, trans, coefs, variances, iters, reg=REG):
    """Baum-Welch in numpy (scaled forward-backward, hmmlearn's updates) with a weighted-least-squares M-step."""
    history = []
    for _ in range(iters):
        total, first, pairs = 0.0, np.zeros_like(start), np.zeros_like(trans)
        gram, rhs, weights, rows = 0.0, 0.0, 0.0, []
        for X, y in zip(designs, ys, strict=True):
            residual = y[:, None] - X @ coefs.T
            emit = np.exp(-0.5 * residual**2 / variances) / np.sqrt(2 * np.pi * variances)
            alpha, scale = np.zeros_like(emit), np.zeros(len(y))
            for t in range(len(y)):
                alpha[t] = (start if t == 0 else alpha[t - 1] @ trans) * emit[t]
                scale[t] = alpha[t].sum()
                alpha[t] /= scale[t]
            beta = np.ones_like(emit)
            for t in range(len(y) - 2, -1, -1):
                beta[t] = trans @ (emit[t + 1] * beta[t + 1]) / scale[t + 1]
            gamma = alpha * beta
            total += np.log(scale).sum()
            first += gamma[0]
            for t in range(len(y) - 1):
                pairs += alpha[t][:, None] * trans * (emit[t + 1] * beta[t + 1])[None, :] / scale[t + 1]
            gram = gram + np.einsum("tk,ti,tj->kij", gamma, X, X)
            rhs = rhs + np.einsum("tk,ti,t->ki", gamma, X, y)
            weights = weights + gamma.sum(0)
            rows.append(gamma)
        history.append(total)
        start = first / first.sum()
        trans = pairs / pairs.sum(1, keepdims=True)
        coefs = np.linalg.solve(gram, rhs[..., None])[..., 0]
        rss = sum((g * (y[:, None] - X @ coefs.T) ** 2).sum(0) for g, X, y in zip(rows, designs, ys, strict=True))
        variances = rss / (weights + 10 * np.finfo(float).eps) + reg
    return np.array(history), start, trans, coefs, variances


@lvm.model
def regression_hmm(u, y, lengths, K=2):
    """Within each hidden state a line: y_t = a[z_t] + b[z_t] u_t + noise; steps past a sequence's end masked."""
    start = lvm.param(torch.ones(K) / K, constraint=constraints.simplex)
    trans = lvm.param(torch.full((K, K), 1.0 / K), constraint=constraints.simplex)
    a = lvm.param(torch.tensor([-1.0, 1.0]))
    b = lvm.param(torch.tensor([0.5, -0.5]))
    s = lvm.param(torch.ones(K), constraint=constraints.positive)
    with lvm.plate(y.shape[0]):
        z = None
        for t in lvm.markov(range(y.shape[1])):
            with poutine.mask(mask=t < lengths):
                z = lvm.latent(dist.Categorical(start if z is None else trans[z]))
                lvm.observe(dist.Normal(a[z] + b[z] * u[:, t], s[z]), y[:, t])


def test_a_regression_within_hmm_states_is_baum_welch_with_weighted_least_squares(float64):
    g = torch.Generator().manual_seed(0)
    u = torch.randn(3, 40, generator=g)
    state = (torch.arange(40) // 10 % 2).expand(3, 40)
    y = torch.where(state == 0, -2 + 1.5 * u, 2 - 1.0 * u) + 0.3 * torch.randn(3, 40, generator=g)
    lengths = torch.tensor([40, 31, 22])
    with pytest.warns(lvm.ConvergenceWarning):
        fit = lvm.infer(regression_hmm, {"u": u, "y": y, "lengths": lengths}, method="em", max_iter=15, tol=0.0)
    assert fit.closed_form and repr(fit.pattern.family) == "LinearGaussian()"
    designs = [np.stack([np.ones(n), u[i, :n].numpy()], 1) for i, n in enumerate(lengths.tolist())]
    ys = [y[i, :n].numpy() for i, n in enumerate(lengths.tolist())]
    history, start, trans, coefs, variances = numpy_hmm_regression_em(
        designs, ys, np.ones(2) / 2, np.full((2, 2), 0.5), np.array([[-1.0, 0.5], [1.0, -0.5]]), np.ones(2), 15)
    # measured over data seeds 0-4: histories agree to 4.4e-15, coefficients to 9.1e-16
    np.testing.assert_allclose(fit.history, history / int(lengths.sum()), rtol=1e-9)
    np.testing.assert_allclose(fit.params["trans"].numpy(), trans, rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(fit.params["a"].numpy(), coefs[:, 0], rtol=1e-7)
    np.testing.assert_allclose(fit.params["b"].numpy(), coefs[:, 1], rtol=1e-7)
    np.testing.assert_allclose(fit.params["s"].numpy() ** 2, variances, rtol=1e-7)
    assert lvm.Result.log_evidence(fit) == pytest.approx(fit.log_likelihood, rel=1e-10)


def test_responses_far_from_zero_with_tiny_noise_keep_their_variances(float64):
    """y ~ 1000 with noise 1e-3: the residual sum of squares from the summed moments would cancel 12 digits; the
    kernel sums those residuals directly and keeps numpy's numbers (measured: 5e-13 on the history, 3e-12 on the
    variances)."""
    g = torch.Generator().manual_seed(0)
    X = torch.cat([torch.ones(300, 1), torch.randn(300, 1, generator=g)], 1)
    beta = torch.tensor([[1000.0, 1.0], [1010.0, -1.0], [1020.0, 2.0]])
    y = (X * beta[torch.arange(300) % 3]).sum(-1) + 1e-3 * torch.randn(300, generator=g)
    start = {"w": np.ones(3) / 3, "beta": beta.numpy() + 0.5, "sigma": np.ones(3) * 3}
    with pytest.warns(lvm.ConvergenceWarning):
        fit = lvm.infer(_natural("sum"), {"X": X, "y": y}, method="em", init_params=_torch(start), max_iter=20,
                        tol=0.0)
    history, _, coefs, variances = numpy_wls_em(X.numpy(), y.numpy(), start["w"], start["beta"],
                                                start["sigma"] ** 2, 20)
    assert fit.closed_form
    np.testing.assert_allclose(fit.history, history, rtol=1e-10)
    np.testing.assert_allclose(fit.params["sigma"].numpy() ** 2, variances, rtol=1e-9)
    np.testing.assert_allclose(fit.params["beta"].numpy(), coefs, rtol=1e-10)
