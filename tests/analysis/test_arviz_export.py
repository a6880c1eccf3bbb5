"""ArviZ export: every number in the groups checked against an independent computation (scipy / scikit-learn)."""

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from demo_data import normal_groups, two_clusters
from demo_models import gmm_map, ppca
from scipy.special import logsumexp
from scipy.stats import norm
from sklearn.mixture import GaussianMixture
from sklearn.mixture._gaussian_mixture import _compute_precision_cholesky

import ppl_lvm as lvm
from ppl_lvm.arviz_export import load_netcdf, save_netcdf
from ppl_lvm.models.hmm import gaussian_hmm, pad_sequences
from ppl_lvm.models.mixtures import gaussian_mixture
from ppl_lvm.posterior import arviz_compat
from ppl_lvm.posterior.arviz_compat import az as _az
from ppl_lvm.posterior.arviz_compat import group_names
from ppl_lvm.posterior.stats import psis_loo

pytestmark = pytest.mark.arviz
az = _az()


def _flat(variable):
    """(chain, draw, ...) values as (chain * draw, ...)."""
    return variable.values.reshape((-1,) + variable.shape[2:])


def _gmm_loglik_scipy(x, weights, locs, scales):
    """log sum_k w_k prod_d N(x_id | loc_kd, scale_kd), per draw and point: (S, N)."""
    # (S, 1, K) + sum_d (S, N, K, D)
    comp = norm.logpdf(x[None, :, None, :], locs[:, None, :, :], scales[:, None, :, :]).sum(-1)
    return logsumexp(np.log(weights)[:, None, :] + comp, axis=-1)


@pytest.fixture(scope="module")
def svi_idata():
    """An SVI fit (mean-field normal guide, z enumerated) of a small mixture, exported with pandas labels."""
    torch.set_default_dtype(torch.float64)
    try:
        x = two_clusters()
        frame = pd.DataFrame(x.numpy(), columns=["a", "b"], index=[f"row{i}" for i in range(len(x))])
        fit = lvm.infer(gmm_map, {"x": frame, "K": 2}, method="svi", guide="normal", steps=30, lr=0.05, seed=0)
        return x.numpy(), fit, fit.to_arviz(num_samples=60, seed=3, chains=2)
    finally:
        torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize("guide", ["normal", "delta"])
def test_svi_log_likelihood_equals_scipy_mixture_density_at_each_draw(guide, float64, svi_idata):
    if guide == "normal":
        x, _, idata = svi_idata
    else:
        x = two_clusters().numpy()
        fit = lvm.infer(gmm_map, {"x": torch.from_numpy(x), "K": 2}, method="svi", guide=guide, steps=30, lr=0.05,
                        seed=0)
        idata = fit.to_arviz(num_samples=20, seed=1)
    post = {v: _flat(idata.posterior[v]) for v in ("weights", "locs", "scales")}
    expected = _gmm_loglik_scipy(x, post["weights"], post["locs"], post["scales"])
    got = idata.log_likelihood["x"]
    assert got.dims == ("chain", "draw", "x_index")
    np.testing.assert_allclose(_flat(got), expected, rtol=0, atol=1e-8)
    # lp is the log joint with z summed out: log priors + sum_i log p(x_i | theta)
    w, locs, scales = (post[v] for v in ("weights", "locs", "scales"))
    from scipy.stats import dirichlet, lognorm
    log_prior = (np.array([dirichlet.logpdf(wi, np.ones(2)) for wi in w])
                 + norm.logpdf(locs, 0, 10).sum((1, 2)) + lognorm.logpdf(scales, 2.0).sum((1, 2)))
    np.testing.assert_allclose(_flat(idata.sample_stats["lp"]), log_prior + expected.sum(-1), rtol=1e-10)


def test_svi_groups_layout_keep_pandas_labels(svi_idata):
    x, fit, idata = svi_idata
    assert set(group_names(idata)) >= {"posterior", "log_likelihood", "posterior_predictive", "observed_data",
                                   "sample_stats"}
    post = idata.posterior
    assert post["weights"].dims == ("chain", "draw", "weights_dim_0")
    assert post["locs"].dims == ("chain", "draw", "components", "locs_dim_0")
    assert post["z"].dims == ("chain", "draw", "x_index") and (post.sizes["chain"], post.sizes["draw"]) == (2, 30)
    assert list(idata.observed_data["x"].dims) == ["x_index", "x_dim_0"]
    assert list(idata.observed_data["x_index"].values) == [f"row{i}" for i in range(len(x))]
    assert list(idata.observed_data["x_dim_0"].values) == ["a", "b"]
    np.testing.assert_array_equal(idata.observed_data["x"].values, x)
    assert idata.posterior_predictive["x"].shape == (2, 30, len(x), 2)
    assert list(idata.log_likelihood["x_index"].values) == [f"row{i}" for i in range(len(x))]
    # the mean-field guide samples the sites themselves: log q is its density, log_weight = lp - log q
    stats = idata.sample_stats
    np.testing.assert_allclose(stats["log_weight"], stats["lp"] - stats["log_q"])
    assert np.all(np.isfinite(stats["log_q"]))


def test_summary_and_loo_run_on_the_export(svi_idata, caplog):
    _, _, idata = svi_idata
    with caplog.at_level("WARNING"), warnings.catch_warnings():  # ArviZ logs shape problems rather than warning
        # a point deep inside one cluster has the same assignment in every draw: ArviZ's R-hat of a constant
        # column divides 0 by 0 (NaN, its documented answer) with numpy's RuntimeWarning
        warnings.filterwarnings("ignore", message="invalid value encountered", category=RuntimeWarning)
        summary = az.summary(idata)  # the user's call, in either design
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    assert len(summary) == 2 + 4 + 4 + 24 and np.all(np.isfinite(summary.loc["weights[0]"]))
    loo = arviz_compat.loo(idata)  # az.loo on ArviZ 0.x, arviz_stats.loo on 1.x
    assert loo["elpd_i"].shape == (24,) and loo["pareto_k"].shape == (24,)
    assert np.isfinite(loo["elpd_loo"])
    # the same draws through the library's own PSIS-LOO (reff = 1; ArviZ estimates reff from the two chains)
    ours = psis_loo(_flat(idata.log_likelihood["x"]))
    again = arviz_compat.loo(idata, reff=1.0)
    np.testing.assert_allclose(again["elpd_i"], ours["elpd_i"], rtol=1e-10)
    np.testing.assert_allclose(again["pareto_k"], ours["pareto_k"], rtol=1e-10)
    assert again["p_loo"] == pytest.approx(ours["p_loo"], rel=1e-10)
    if hasattr(az, "waic"):  # ArviZ 1.x has no WAIC
        with warnings.catch_warnings():  # ArviZ's note on the posterior variance of the pointwise log densities
            warnings.filterwarnings("ignore", message="For one or more samples the posterior variance",
                                    category=UserWarning)
            waic = az.waic(idata, pointwise=True)
        assert waic["waic_i"].shape == (24,)
        assert abs(waic["elpd_waic"] - loo["elpd_loo"]) < 0.05 * abs(loo["elpd_loo"])  # two estimates of one elpd


def test_netcdf_round_trip_keeps_every_group(svi_idata, tmp_path):
    _, _, idata = svi_idata
    path = tmp_path / "fit.nc"
    save_netcdf(idata, path)
    loaded = load_netcdf(path)
    assert set(group_names(loaded)) == set(group_names(idata))
    for group in group_names(idata):
        assert loaded[group].identical(idata[group]), group


def test_iwae_ppca_log_likelihood_is_the_conditional_density_at_each_drawn_z(float64):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(15, 3, generator=g) @ torch.randn(3, 3, generator=g)
    fit = lvm.infer(ppca, x, method="iwae", steps=25, lr=0.05, seed=0)
    idata = fit.to_arviz(num_samples=40, seed=2)
    z = idata.posterior["z"].values[0]  # (S, N, q)
    assert idata.posterior["z"].dims == ("chain", "draw", "n", "z_dim_0")
    W, mu, sigma = (fit.params[k].numpy() for k in ("W", "mu", "sigma"))
    mean = z @ W.T + mu  # (S, N, D)
    expected = norm.logpdf(x.numpy()[None], mean, sigma).sum(-1)
    np.testing.assert_allclose(idata.log_likelihood["x"].values[0], expected, rtol=0, atol=1e-8)
    prior = norm.logpdf(z).sum((1, 2))
    np.testing.assert_allclose(idata.sample_stats["lp"].values[0], prior + expected.sum(-1), rtol=1e-10)
    loo = arviz_compat.loo(idata)
    assert np.isfinite(loo["elpd_loo"])


def test_em_export_matches_scikit_learn(float64, tmp_path):
    x = normal_groups((40, 30), locs=(-2.0, 2.0), scales=(1.0, 0.5), seed=5, d=2)
    frame = pd.DataFrame(x.numpy(), columns=["u", "v"], index=[f"p{i}" for i in range(len(x))])
    fit = lvm.infer(gaussian_mixture, {"x": frame, "K": 2}, method="em", seed=0)
    idata = fit.to_arviz()
    assert list(idata.responsibilities["x_index"].values) == list(frame.index)
    assert list(idata.observed_data["x_dim_0"].values) == ["u", "v"]
    # the Laplace approximation's draws are the posterior (tests/results/test_em_uncertainty.py checks them)
    assert {"posterior", "log_likelihood", "point_estimate"} <= set(group_names(idata))
    point = idata.point_estimate
    weights, means, trils = point["weights"].values, point["locs"].values, point["scale_trils"].values
    covariances = trils @ np.swapaxes(trils, -1, -2)
    sk = GaussianMixture(n_components=2, covariance_type="full")
    sk.weights_, sk.means_, sk.covariances_ = weights, means, covariances
    sk.precisions_cholesky_ = _compute_precision_cholesky(covariances, "full")
    resp = idata.responsibilities["z"]
    assert resp.dims == ("x_index", "z_state")
    np.testing.assert_allclose(resp.values, sk.predict_proba(x.numpy()), rtol=0, atol=1e-8)
    assert point.attrs["bic"] == pytest.approx(sk.bic(x.numpy()), rel=1e-9)
    assert point.attrs["aic"] == pytest.approx(sk.aic(x.numpy()), rel=1e-9)
    assert point.attrs["log_likelihood"] == pytest.approx(fit.log_likelihood)
    assert point.attrs["n_iter"] == fit.n_iter and point.attrs["converged"] == int(fit.converged)
    np.testing.assert_array_equal(idata.em_history["mean_log_likelihood"].values, fit.history)
    np.testing.assert_array_equal(idata.map_assignments["z"].values, resp.values.argmax(-1))
    path = tmp_path / "em.nc"
    save_netcdf(idata, path)
    loaded = load_netcdf(path)
    for group in group_names(idata):
        assert loaded[group].identical(idata[group]), group


def test_em_hmm_export_names_sequence_time_and_state(float64):
    g = torch.Generator().manual_seed(0)
    padded, lengths = pad_sequences([torch.randn(n, 2, generator=g) for n in (8, 6, 7)])
    fit = lvm.infer(gaussian_hmm, {"x": padded, "lengths": lengths, "K": 2}, method="em", max_iter=20)
    idata = fit.to_arviz()
    resp = idata.responsibilities["z"]
    assert resp.dims == ("sequences", "time", "z_state")
    np.testing.assert_array_equal(resp.values, fit.responsibilities["z"].numpy())
    np.testing.assert_array_equal(idata.map_assignments["z"].values, fit.map_assignments()["z"].numpy())
    assert idata.observed_data["x"].dims == ("sequences", "time", "x_dim_2")
    assert idata.point_estimate.attrs["bic"] == pytest.approx(fit.bic())


def test_svi_on_a_markov_chain_omits_the_pointwise_group_and_lp_is_the_exact_evidence(float64):
    g = torch.Generator().manual_seed(0)
    padded, lengths = pad_sequences([torch.randn(n, 2, generator=g) for n in (5, 4)])
    fit = lvm.infer(gaussian_hmm, {"x": padded, "lengths": lengths, "K": 2}, method="svi", steps=3, seed=0)
    with pytest.warns(lvm.InferenceWarning, match="no log_likelihood group"):
        idata = fit.to_arviz(num_samples=4, seed=0)
    assert "log_likelihood" not in group_names(idata)
    # every latent is discrete and enumerated: the contracted log joint is log p(x), as TraceEnum_ELBO computes it
    np.testing.assert_allclose(idata.sample_stats["lp"].values, fit.log_evidence(), rtol=1e-10)
