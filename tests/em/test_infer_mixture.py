"""``lvm.infer(..., method="em")`` on mixtures: agreement with scikit-learn, discrete families, BIC, restarts and
Ctrl-C, options, the generic route (the kernels themselves are tested in test_gmm_vs_sklearn.py and
test_families_init.py)."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_iris, load_wine
from sklearn.mixture import GaussianMixture
from sklearn.preprocessing import StandardScaler

import ppl_lvm as lvm
from ppl_lvm import constraints, dist
from ppl_lvm.models.mixtures import bernoulli_mixture, gaussian_mixture, poisson_mixture

K = 3


def _sklearn_from(x, covariance_type, means, max_iter):
    d = x.shape[1]
    precisions = {
        "full": np.stack([np.eye(d)] * K),
        "tied": np.eye(d),
        "diag": np.ones((K, d)),
        "spherical": np.ones(K),
    }[covariance_type]
    gm = GaussianMixture(K, covariance_type=covariance_type, weights_init=np.ones(K) / K, means_init=means,
                         precisions_init=precisions, max_iter=max_iter, tol=0.0, reg_covar=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's ConvergenceWarning for the fixed iteration budget
        return gm.fit(x)


@pytest.mark.parametrize("dataset", [load_iris, load_wine])
@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical", "tied"])
def test_gmm_matches_sklearn_from_identical_initial_parameters(dataset, covariance_type, float64):
    x = StandardScaler().fit_transform(dataset().data)
    means = x[np.random.default_rng(0).choice(len(x), K, replace=False)]
    sk = _sklearn_from(x, covariance_type, means, max_iter=40)
    with pytest.warns(lvm.ConvergenceWarning):
        fit = lvm.infer(gaussian_mixture, {"x": x, "K": K, "covariance_type": covariance_type}, method="em",
                        init_params={"locs": means}, max_iter=40, tol=0.0)
    assert fit.closed_form
    assert fit.log_likelihood == pytest.approx(sk.score(x) * len(x), rel=1e-6)
    np.testing.assert_allclose(fit.responsibilities["z"].numpy(), sk.predict_proba(x), atol=1e-6)
    assert fit.bic() == pytest.approx(sk.bic(x), rel=1e-9)
    assert fit.aic() == pytest.approx(sk.aic(x), rel=1e-9)
    # the exact log-likelihood agrees with Pyro's enumeration of the same model at the fitted parameters
    assert lvm.Result.log_evidence(fit) == pytest.approx(fit.log_likelihood, rel=1e-10)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_gmm_matches_sklearn_on_100k_points(covariance_type, float64):
    rng = np.random.default_rng(1)
    centres = rng.normal(scale=4.0, size=(K, 5))
    x = centres[rng.integers(0, K, 100_000)] + rng.normal(size=(100_000, 5))
    means = x[:K].copy()
    sk = _sklearn_from(x, covariance_type, means, max_iter=5)
    with pytest.warns(lvm.ConvergenceWarning):
        fit = lvm.infer(gaussian_mixture, {"x": x, "K": K, "covariance_type": covariance_type}, method="em",
                        init_params={"locs": means}, max_iter=5, tol=0.0)
    assert fit.log_likelihood == pytest.approx(sk.score(x) * len(x), rel=1e-6)
    np.testing.assert_allclose(fit.responsibilities["z"].numpy(), sk.predict_proba(x), atol=1e-6)


def _is_monotone(history):
    h = np.asarray(history)
    return bool(np.all(h[1:] >= h[:-1] - 1e-9 * np.abs(h[:-1])))


def test_a_plainly_written_user_gmm_gets_the_closed_form(float64):
    @lvm.model
    def my_gmm(data):
        w = lvm.param(torch.ones(2) / 2, constraint=constraints.simplex)
        mu = lvm.param(torch.tensor([-1.0, 1.0]))
        sd = lvm.param(torch.ones(2), constraint=constraints.positive)
        with lvm.plate(len(data)):
            c = lvm.latent(dist.Categorical(w))
            lvm.observe(dist.Normal(mu[c], sd[c]), data)

    g = torch.Generator().manual_seed(0)
    data = torch.cat([torch.randn(200, generator=g) - 3, 0.5 * torch.randn(100, generator=g) + 2])
    fit = lvm.infer(my_gmm, data, method="em", init_params="params", max_iter=200, tol=1e-10)
    assert fit.closed_form and fit.converged and _is_monotone(fit.history)
    order = torch.argsort(fit.params["mu"])
    assert torch.allclose(fit.params["mu"][order], torch.tensor([-3.0, 2.0]), atol=0.2)
    assert torch.allclose(fit.params["w"][order], torch.tensor([2 / 3, 1 / 3]), atol=0.05)
    assert torch.allclose(fit.params["sd"][order], torch.tensor([1.0, 0.5]), atol=0.1)


def test_bernoulli_and_poisson_mixtures_are_monotone_and_recover_components(float64):
    g = torch.Generator().manual_seed(2)
    probs = torch.tensor([[0.9, 0.9, 0.1, 0.1, 0.5], [0.1, 0.2, 0.9, 0.8, 0.5]])
    z = torch.randint(0, 2, (600,), generator=g)
    xb = torch.bernoulli(probs[z], generator=g)
    fit = lvm.infer(bernoulli_mixture, {"x": xb, "K": 2}, method="em", n_init=3, tol=1e-8, max_iter=300)
    assert fit.closed_form and _is_monotone(fit.history)
    learned = fit.params["probs"][torch.argsort(fit.params["probs"][:, 0], descending=True)]
    assert torch.allclose(learned, probs, atol=0.08)

    rates = torch.tensor([[1.0, 8.0], [6.0, 2.0]])
    xp = torch.poisson(rates[z], generator=g).long()
    fit = lvm.infer(poisson_mixture, {"x": xp, "K": 2}, method="em", n_init=3, tol=1e-8, max_iter=300)
    assert fit.closed_form and _is_monotone(fit.history)
    learned = fit.params["rates"][torch.argsort(fit.params["rates"][:, 0])]
    assert torch.allclose(learned, rates, rtol=0.15)


def test_bic_picks_the_true_number_of_components(float64):
    rng = np.random.default_rng(3)
    centres = np.array([[-6.0, 0.0], [0.0, 6.0], [6.0, 0.0]])
    x = centres[rng.integers(0, 3, 600)] + rng.normal(size=(600, 2))
    bics = {k: lvm.infer(gaussian_mixture, {"x": x, "K": k, "covariance_type": "full"}, method="em",
                         n_init=2, max_iter=200).bic() for k in range(1, 7)}
    assert min(bics, key=bics.get) == 3


def test_ctrl_c_during_em_restarts_keeps_the_best_finished_restart(float64):
    x = torch.cat([torch.randn(100, 2) - 4, torch.randn(100, 2) + 4])
    data = {"x": x, "K": 2, "covariance_type": "diag"}
    calls = []

    def interrupt_in_the_third_restart(i, loglik):
        calls.append(i)
        if calls.count(1) == 3:  # the first iteration of the third restart
            raise KeyboardInterrupt

    with pytest.warns(lvm.InferenceWarning, match=r"interrupted \(Ctrl-C\) during restart 3 of 5"):
        fit = lvm.infer(gaussian_mixture, data, method="em", n_init=5, callbacks=[interrupt_in_the_third_restart])
    assert fit.interrupted
    # the kept result is the better of the two finished restarts: the same as a fit with n_init=2
    reference = lvm.infer(gaussian_mixture, data, method="em", n_init=2)
    assert fit.log_likelihood == pytest.approx(reference.log_likelihood, rel=1e-12)
    assert not reference.interrupted
    calls.clear()

    def interrupt_at_once(i, loglik):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # nothing finished: nothing to keep
        lvm.infer(gaussian_mixture, data, method="em", n_init=2, callbacks=[interrupt_at_once])


def test_new_data_scoring_and_sampling(float64):
    x = torch.cat([torch.randn(100, 2) - 4, torch.randn(100, 2) + 4])
    fit = lvm.infer(gaussian_mixture, {"x": x, "K": 2, "covariance_type": "diag"}, method="em", n_init=2)
    proba = fit.predict_proba(x[:5])
    assert proba.shape == (5, 2) and torch.allclose(proba.sum(-1), torch.ones(5, dtype=proba.dtype))
    assert torch.allclose(fit.score_samples(x).sum(), torch.tensor(fit.log_likelihood, dtype=x.dtype))
    samples, components = fit.sample(500, seed=0)
    assert samples.shape == (500, 2) and components.shape == (500,)
    assert abs(float(samples[:, 0].mean())) < 1.0  # two symmetric clusters around -4 and +4
    assert set(fit.map_assignments()["z"].unique().tolist()) == {0, 1}


def test_em_errors_name_the_problem(float64):
    @lvm.model
    def continuous(x):
        mu = lvm.latent(dist.Normal(0.0, 1.0))
        with lvm.plate(len(x)):
            lvm.observe(dist.Normal(mu, 1.0), x)

    with pytest.raises(lvm.UnsupportedModelError, match=r"'mu' \(.*test_infer_mixture\.py:\d+.*\) is a continuous Normal\. Fit this model with method='svi' or method='iwae'"):
        lvm.infer(continuous, torch.randn(10), method="em")
    bad = torch.randn(10, 2)
    bad[4, 1] = float("nan")
    with pytest.raises(lvm.DataError, match=r"1 NaN"):
        lvm.infer(gaussian_mixture, {"x": bad, "K": 2}, method="em")
    with pytest.raises(lvm.DataError, match="2 data points are fewer than the 3 mixture components"):
        lvm.infer(gaussian_mixture, {"x": torch.randn(2, 2), "K": 3}, method="em")
    with pytest.raises(ValueError, match="unknown init_params 'best'"):
        lvm.infer(gaussian_mixture, {"x": torch.randn(20, 2)}, method="em", init_params="best")
    with pytest.raises(ValueError, match="max_iter must be a positive integer"):
        lvm.infer(gaussian_mixture, {"x": torch.randn(20, 2)}, method="em", max_iter=0)


def test_a_model_without_closed_form_runs_generalised_em(float64):
    @lvm.model
    def t_mixture(x, K=2):
        w = lvm.param(torch.ones(K) / K, constraint=constraints.simplex)
        loc = lvm.param(torch.tensor([-1.0, 1.0]))
        scale = lvm.param(torch.ones(K), constraint=constraints.positive)
        with lvm.plate(len(x)):
            z = lvm.latent(dist.Categorical(w))
            lvm.observe(dist.StudentT(4.0, loc[z], scale[z]), x)

    torch.manual_seed(0)
    x = torch.cat([dist.StudentT(4.0, -3.0, 1.0).sample((200,)), dist.StudentT(4.0, 3.0, 0.5).sample((100,))])
    fit = lvm.infer(t_mixture, x, method="em", init_params="params", max_iter=200, tol=1e-8)
    assert not fit.closed_form and fit.converged and _is_monotone(fit.history)
    assert fit.responsibilities["z"].shape == (300, 2)
    assert lvm.Result.log_evidence(fit) == pytest.approx(fit.log_likelihood, rel=1e-10)
    order = torch.argsort(fit.params["loc"])
    assert torch.allclose(fit.params["loc"][order], torch.tensor([-3.0, 3.0]), atol=0.3)
    assert fit.n_parameters == 1 + 2 + 2


def test_an_enumeration_too_large_for_memory_is_refused_before_allocating(float64):
    @lvm.model
    def coupled(x):
        trans = lvm.param(torch.full((30, 30), 1 / 30), constraint=constraints.simplex)
        with lvm.plate(len(x)):
            z = lvm.latent(dist.Categorical(torch.ones(30) / 30), name="z0")
            total = z
            for i in range(1, 12):  # each latent depends on all earlier ones through the sum: no factorisation
                z = lvm.latent(dist.Categorical(trans[total % 30]), name=f"z{i}")
                total = total + z
            lvm.observe(dist.Normal(total.double(), 1.0), x)

    with pytest.raises(lvm.UnsupportedModelError, match=r"jointly needs ~[\d.]+ [KMGTPE]iB .*the limit is 2 GiB"):
        lvm.infer(coupled, torch.randn(5), method="em")


def test_init_params_leave_the_callers_tensors_untouched(float64):
    means = torch.tensor([[-3.0, 0.0], [3.0, 0.0]])
    x = torch.cat([torch.randn(40, 2) - 3, torch.randn(40, 2) + 3])
    lvm.infer(gaussian_mixture, {"x": x, "K": 2, "covariance_type": "diag"}, method="em", init_params={"locs": means})
    assert not means.requires_grad and torch.equal(means, torch.tensor([[-3.0, 0.0], [3.0, 0.0]]))
