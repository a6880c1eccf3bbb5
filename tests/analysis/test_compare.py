"""lvm.compare: EM fits by BIC, variational fits by PSIS-LOO (with the correction for draws from q)."""

import numpy as np
import pyro.poutine as poutine
import pytest
import torch
from demo_data import clusters
from pyro.infer.autoguide import init_to_value
from scipy.stats import norm

import ppl_lvm as lvm
from ppl_lvm import dist
from ppl_lvm.models.mixtures import gaussian_mixture
from ppl_lvm.posterior.stats import psis_loo

pytestmark = pytest.mark.arviz  # PSIS-LOO goes through ArviZ

CENTERS = torch.tensor([[-5.0, 0.0], [5.0, 0.0], [0.0, 7.0]], dtype=torch.float64)


def three_clusters(per_cluster=100):
    return clusters(CENTERS, per_cluster)


@lvm.model
def equal_gmm(x, K=3):
    """K equally weighted diagonal normals with priors on their means and scales; ``z`` is enumerated.

    Equal weights make every extra component cost predictive density (it must take 1/K of the points). With free
    weights an extra component can take almost none, the models nest, and the LOO differences between K=3, 4, 5
    shrink to about one nat (measured 0.4 for K=3 vs K=4 with Dirichlet(1) weights): too close to rank reliably.
    """
    d = x.shape[1]
    with lvm.plate(K, name="components"):
        locs = lvm.latent(dist.Normal(torch.zeros(d), 10.0).to_event(1))
        scales = lvm.latent(dist.LogNormal(torch.zeros(d), 1.0).to_event(1))
    with lvm.plate(len(x)):
        z = lvm.latent(dist.Categorical(torch.ones(K) / K))
        lvm.observe(dist.Normal(locs[z], scales[z]).to_event(1), x)


# ---------------------------------------------------------------------------------------------------- PSIS-LOO
def _normal_mean_problem(n=20, seed=0):
    """x_i ~ N(mu, 1), mu ~ N(0, 2^2): the posterior and every leave-one-out predictive are normal."""
    rng = np.random.default_rng(seed)
    x = rng.normal(1.0, 1.0, size=n)
    prior_var = 4.0

    def posterior(data):
        var = 1.0 / (1.0 / prior_var + len(data))
        return var * data.sum(), var

    exact_i = []
    for i in range(n):
        m, v = posterior(np.delete(x, i))
        exact_i.append(norm.logpdf(x[i], m, np.sqrt(v + 1.0)))
    return rng, x, posterior(x), prior_var, np.array(exact_i)


def test_psis_loo_of_posterior_draws_matches_the_exact_leave_one_out_predictive():
    rng, x, (m, v), _, exact_i = _normal_mean_problem()
    mu = rng.normal(m, np.sqrt(v), size=4000)
    loo = psis_loo(norm.logpdf(x[None, :], mu[:, None], 1.0))
    # Measured: elpd_loo -26.500 vs exact -26.502; largest pointwise error 0.0063; max k-hat 0.22; p_loo 0.74
    assert loo["elpd_loo"] == pytest.approx(exact_i.sum(), abs=0.05)
    np.testing.assert_allclose(loo["elpd_i"], exact_i, atol=0.01)
    assert not loo["warning"] and loo["pareto_k"].shape == (20,)
    # p_loo of a one-parameter model with a weak prior is at most about 1
    assert 0.5 < loo["p_loo"] < 1.2


def test_the_correction_for_draws_from_q_recovers_the_exact_loo_from_a_too_wide_q():
    rng, x, (m, v), prior_var, exact_i = _normal_mean_problem()
    q_sd = 2.0 * np.sqrt(v)  # q twice as wide as the posterior
    mu = rng.normal(m, q_sd, size=4000)
    log_lik = norm.logpdf(x[None, :], mu[:, None], 1.0)
    log_joint = norm.logpdf(mu, 0.0, np.sqrt(prior_var)) + log_lik.sum(1)
    log_weight = log_joint - norm.logpdf(mu, m, q_sd)
    corrected = psis_loo(log_lik, log_weight)
    naive = psis_loo(log_lik)
    # Measured: exact -26.502, corrected -26.524 (largest pointwise error 0.010, p_loo 0.76), uncorrected -29.545
    # (p_loo 3.3: q's extra width looks like overfitting)
    assert corrected["elpd_loo"] == pytest.approx(exact_i.sum(), abs=0.1)
    assert naive["elpd_loo"] < exact_i.sum() - 2.0 and naive["p_loo"] > 2.0
    np.testing.assert_allclose(corrected["elpd_i"], exact_i, atol=0.03)
    assert 0.5 < corrected["p_loo"] < 1.2


def test_psis_loo_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="draws >= 2"):
        psis_loo(np.zeros(5))
    with pytest.raises(ValueError, match="one value per draw"):
        psis_loo(np.zeros((5, 3)), np.zeros(4))


# ---------------------------------------------------------------------------------------------------- compare
@pytest.fixture(scope="module")
def em_fits():
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        x = three_clusters()
        return x, {k: lvm.infer(gaussian_mixture, {"x": x, "K": k, "covariance_type": "diag"}, method="em", n_init=2)
                   for k in range(1, 6)}
    finally:
        torch.set_default_dtype(dtype)


def test_em_fits_are_ranked_by_bic(em_fits):
    _, fits = em_fits
    table = lvm.compare({f"K={k}": f for k, f in fits.items()})
    # Measured: BIC 2470.0 (K=3), 2493.7 (K=4), 2519.8 (K=5), 3049.5 (K=2), 3346.5 (K=1)
    assert list(table.index) == ["K=3", "K=4", "K=5", "K=2", "K=1"]
    assert list(table["rank"]) == [0, 1, 2, 3, 4] and table.attrs["criterion"] == "bic"
    for k, fit in fits.items():
        row = table.loc[f"K={k}"]
        assert row["bic"] == fit.bic() and row["aic"] == fit.aic() and row["log_likelihood"] == fit.log_likelihood
        # diagonal mixture: K weights - 1, K * 2 means, K * 2 variances
        assert row["n_parameters"] == 5 * k - 1
    assert table["d_bic"].iloc[0] == 0 and table["weight"].sum() == pytest.approx(1.0)


def test_variational_fits_of_the_three_cluster_data_rank_k3_first_by_loo(em_fits, float64):
    x, em = em_fits
    fits = {}
    for k in range(1, 6):
        # started at the EM estimates (a common warm start), q's scales at 0.05
        start = {"locs": em[k].params["locs"], "scales": em[k].params["scales"]}
        guide = lvm.MeanFieldNormal(poutine.block(equal_gmm, hide=["z"]), init_loc_fn=init_to_value(values=start),
                                    init_scale=0.05)
        fits[f"K={k}"] = lvm.infer(equal_gmm, {"x": x, "K": k}, method="svi", guide=guide, steps=80, lr=0.02,
                                   seed=0)
    table = lvm.compare(fits, num_samples=60)
    # Measured (60 draws per fit): elpd_loo K=3 -1205.4, K=4 -1217.1 (dse 6.7), K=5 -1218.9, K=2 -1528.5, K=1 -1665.1;
    # IS estimate of log p(x) K=3 -1239.1, K=4 -1260.7. With 60 draws and 80 steps some Pareto k exceed 0.7 (max 1.1
    # for K=3), so `warning` is set: the ranking rests on a margin of ~12 nats, not on precise elpd values.
    assert table.index[0] == "K=3" and table.attrs["criterion"] == "elpd_loo"
    assert table["elpd_diff"].iloc[1] > 4.0
    assert list(table.index[-2:]) == ["K=2", "K=1"]
    assert set(table["correction"]) == {"psis(p/q)"} and set(table["method"]) == {"svi"}
    assert table.loc["K=3", "log_evidence"] == table["log_evidence"].max()
    assert table["weight"].iloc[0] > 0.99 and table["dse"].iloc[0] == 0


def test_compare_refuses_a_mix_of_em_and_variational_fits(em_fits):
    x, em = em_fits
    svi = lvm.infer(gaussian_mixture, {"x": x.float(), "K": 2, "covariance_type": "diag"}, method="svi", steps=2)
    with pytest.raises(ValueError, match=r"EM fits \['a'\] together with variational fits \['b'\].*BIC.*PSIS-LOO"):
        lvm.compare({"a": em[2], "b": svi})
    with pytest.raises(TypeError, match="non-empty dict"):
        lvm.compare([em[2]])
    with pytest.raises(TypeError, match="'a' is a int"):
        lvm.compare({"a": 3})


def test_a_point_estimate_gets_the_plug_in_log_likelihood(em_fits, float64):
    x, em = em_fits
    fit = lvm.infer(gaussian_mixture, {"x": x[:60], "K": 2, "covariance_type": "diag"}, method="svi", steps=20,
                    lr=0.05)
    table = lvm.compare({"mle": fit}, num_samples=10)
    row = table.loc["mle"]
    assert row["correction"] == "point estimate" and row["p_loo"] == 0.0 and bool(row["warning"])
    # every latent is enumerated: the plug-in sum of log p(x_i) is the exact log-likelihood
    assert row["elpd_loo"] == pytest.approx(fit.log_evidence(), rel=1e-9)
    assert row["log_evidence"] == pytest.approx(fit.log_evidence(), rel=1e-9)
