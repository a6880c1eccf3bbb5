import math

import numpy as np
import pytest
import torch
from demo_models import bayes_linreg, bayes_linreg_posterior, normal_normal

import ppl_lvm as lvm


def _correlated_regression():
    g = torch.Generator().manual_seed(0)
    n = 50
    x1 = torch.randn(n, generator=g, dtype=torch.float64)
    x2 = 0.95 * x1 + math.sqrt(1 - 0.95**2) * torch.randn(n, generator=g, dtype=torch.float64)
    X = torch.stack([x1, x2], 1)
    y = X @ torch.tensor([1.0, -0.5], dtype=torch.float64) + torch.randn(n, generator=g, dtype=torch.float64)
    return X, y


def test_mean_field_under_estimates_a_correlated_posterior(float64):
    X, y = _correlated_regression()
    mean, cov, mean_field_sd = bayes_linreg_posterior(X, y)
    sd = cov.diagonal().sqrt()
    expected_ratio = (mean_field_sd / sd).numpy()  # 0.267: sqrt(1 - rho^2) with posterior correlation rho = -0.964
    data = {"X": X, "y": y}
    vi = lvm.infer(bayes_linreg, data, method="meanfield", steps=1500, lr=0.03, num_particles=4, seed=0)
    nuts = lvm.infer(bayes_linreg, data, method="nuts", num_samples=600, warmup_steps=200, dense_mass=True, seed=0)
    table = lvm.compare_posteriors(vi, nuts)
    assert list(table.index) == ["beta[0]", "beta[1]"]
    assert table.attrs["method_a"] == "meanfield" and table.attrs["method_b"] == "nuts"
    # Seeds 0-4: NUTS sd -0.2% to +5.1% off the closed form; mean-field sd -10% to +9.5% off its optimum
    # 1 / sqrt(precision_jj) (Adam's noise at lr 0.03), so sd_ratio 0.232-0.288 against 0.267; W1 within 5% of
    # the two-Gaussian formula; NUTS means within 0.03 of the closed form.
    np.testing.assert_allclose(table["sd_b"], sd.numpy(), rtol=0.08)
    np.testing.assert_allclose(table["sd_ratio"], expected_ratio, rtol=0.15)
    assert (table["sd_ratio"] < 0.5).all()  # the under-estimate is reported
    np.testing.assert_allclose(table["mean_b"], mean.numpy(), atol=0.1)  # sd ~0.5: 0.2 sd
    # equal means: W1 of N(m, s_a) and N(m, s_b) is |s_a - s_b| E|Z| = |s_a - s_b| sqrt(2 / pi)
    gap = (table["sd_b"] - table["sd_a"]) * math.sqrt(2 / math.pi)
    np.testing.assert_allclose(table["wasserstein"], gap, rtol=0.15)


def test_a_fit_against_itself_has_no_distance(float64):
    x = torch.randn(30, dtype=torch.float64)
    fit = lvm.infer(normal_normal, x, method="meanfield", steps=200, seed=0)
    table = lvm.compare_posteriors(fit, fit, num_samples=300, seed=3)
    assert table.loc["mu", "mean_diff"] == 0.0
    assert table.loc["mu", "sd_ratio"] == pytest.approx(1.0, abs=1e-12)
    assert table.loc["mu", "wasserstein"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(TypeError, match="fit_b is a dict"):
        lvm.compare_posteriors(fit, {})
    with pytest.raises(ValueError, match=r"var_names \['sigma'\]"):
        lvm.compare_posteriors(fit, fit, var_names=["sigma"])
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        lvm.compare_posteriors(fit, fit, num_samples=0)
