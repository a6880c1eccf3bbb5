"""PPCA and factor analysis: closed forms against scikit-learn, and SVI fits against the closed-form maximum.

Data are simulated from each model with known parameters. ``W`` is identifiable only up to a rotation, so loadings
are compared through ``W W^T`` and the principal angles between column spaces. Tolerances are about twice the
values measured with these seeds (stated at each assertion).
"""

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA, FactorAnalysis

import ppl_lvm as lvm
from ppl_lvm.models.factor import (
    factor_analysis,
    factor_analysis_log_marginal,
    factor_analysis_mle,
    loading_subspace_angles,
    ppca,
    ppca_log_marginal,
    ppca_mle,
)

N, D, Q = 500, 8, 2


def _simulate(noise_sd):
    g = torch.Generator().manual_seed(30)
    W = torch.randn(D, Q, generator=g) * 1.5
    mu = torch.randn(D, generator=g)
    x = torch.randn(N, Q, generator=g) @ W.T + mu + noise_sd * torch.randn(N, D, generator=g)
    return x, W


def _decaying(steps, lr, final_fraction):
    """Adam with a learning rate decaying geometrically to ``final_fraction * lr`` over the fit."""
    return dict(steps=steps, lr=lr, optimizer="clippedadam", optim_args={"lrd": final_fraction ** (1 / steps)})


def test_closed_forms_agree_with_scikit_learn():
    x, _ = _simulate(0.5)
    xn = x.double().numpy()
    # sklearn's PCA.score is the PPCA log-likelihood at Tipping & Bishop's parameters from the covariance divided
    # by N - 1; the maximum likelihood (ours) divides by N: the same parameters scaled by (N - 1) / N
    pca = PCA(Q).fit(xn)
    noise = torch.tensor(pca.noise_variance_, dtype=torch.float64)
    W_sk = torch.tensor(pca.components_.T * np.sqrt(pca.explained_variance_ - pca.noise_variance_))
    mean = torch.tensor(pca.mean_)
    assert ppca_log_marginal(x, W_sk, mean, noise.sqrt()) == pytest.approx(pca.score(xn) * N, rel=1e-10)
    mle = ppca_mle(x, Q)
    np.testing.assert_allclose((mle["W"] @ mle["W"].T).numpy(), (W_sk @ W_sk.T).numpy() * (N - 1) / N, atol=1e-9)
    assert float(mle["sigma"]) ** 2 == pytest.approx(float(noise) * (N - 1) / N, rel=1e-9)
    assert ppca_log_marginal(x, **mle) > pca.score(xn) * N
    # and it is a stationary point of the exact log-likelihood
    W, mu, log_sigma = (mle["W"].clone().requires_grad_(), mle["mu"].clone().requires_grad_(),
                        mle["sigma"].log().clone().requires_grad_())
    cov = W @ W.T + log_sigma.exp() ** 2 * torch.eye(D, dtype=torch.float64)
    lvm.dist.MultivariateNormal(mu, cov).log_prob(x.double()).sum().backward()
    assert max(float(t.grad.abs().max()) for t in (W, mu, log_sigma)) < 1e-8
    psi = torch.rand(D, generator=torch.Generator().manual_seed(1)) + 0.2
    x, _ = _simulate(psi.sqrt())
    xn = x.double().numpy()
    sk = FactorAnalysis(Q, tol=1e-12, max_iter=20000).fit(xn)
    mle = factor_analysis_mle(x, Q)
    # measured: the two maxima agree to 2e-10 relative; the unique variances to 1e-4
    assert factor_analysis_log_marginal(x, **mle) == pytest.approx(sk.score(xn) * N, rel=1e-7)
    np.testing.assert_allclose(mle["psi"].numpy(), sk.noise_variance_, atol=1e-3)
    np.testing.assert_allclose((mle["W"] @ mle["W"].T).numpy(), sk.components_.T @ sk.components_, atol=1e-3)


def test_ppca_by_svi_reaches_the_closed_form_maximum():
    x, W_true = _simulate(0.5)
    fit = lvm.infer(ppca, {"x": x, "q": Q}, method="svi", num_particles=2, seed=0, **_decaying(1000, 0.05, 0.1))
    assert fit.guide_name.startswith("user guide")
    W, mu, sigma = fit.params["W"], fit.params["mu"], fit.params["sigma"]
    exact = ppca_log_marginal(x, W, mu, sigma)
    mle = ppca_mle(x, Q)
    best = ppca_log_marginal(x, **mle)
    cov_err = float(torch.linalg.matrix_norm(W.double() @ W.double().T - mle["W"] @ mle["W"].T)
                    / torch.linalg.matrix_norm(mle["W"] @ mle["W"].T))
    angle_true = float(loading_subspace_angles(W, W_true).max())
    mle_err = float(torch.linalg.matrix_norm(mle["W"] @ mle["W"].T - (W_true @ W_true.T).double())
                    / torch.linalg.matrix_norm((W_true @ W_true.T).double()))
    print(f"ppca: WW^T of the MLE vs the truth {mle_err:.4f} relative")
    print(f"ppca: log p(x) gap to the MLE {best - exact:.3f} nats; |WW^T - WW^T_mle|/|WW^T_mle| {cov_err:.4f}; "
          f"sigma {float(sigma):.4f} vs MLE {float(mle['sigma']):.4f}; largest angle to the true subspace "
          f"{angle_true:.4f} rad")
    # measured over fit seeds 0-5 (N=500, D=8, q=2, 1000 steps x 2 particles): gap 0.85-2.84 nats; WW^T 0.043-0.110
    # from the MLE's (which is itself 0.069 from the truth: the likelihood is flat along the large-variance
    # directions); sigma 0.0000-0.0059 from the MLE's; largest principal angle to the true subspace 0.012-0.015 rad.
    # With 400 steps the gap spread over 2.3-8.2 nats: the fit had not settled, and the seed decided the test.
    assert 0 <= best - exact < 5.0
    assert cov_err < 0.2
    assert abs(float(sigma) - float(mle["sigma"])) < 0.02
    assert angle_true < 0.05

    # the bounds at the learned parameters sit below the exact log-likelihood, ELBO <= IWAE_K
    elbo = fit.elbo_estimate(num_particles=200, seed=0)
    iwae = fit.log_evidence(num_particles=200, seed=0)
    print(f"ppca: ELBO {elbo:.3f} <= IWAE_200 {iwae:.3f} <= log p(x) {exact:.3f}")
    # measured: ELBO -5277.62, IWAE_200 -5267.92, exact -5267.78 (the guide family contains the exact posterior;
    # the ELBO's gap is KL(q || p(z | x)) summed over rows, 0.02 nats per row)
    # IWAE_K is below log p(x) in expectation; one estimate (float32, 500 rows) may land a little above
    assert elbo < iwae <= exact + 0.5
    assert exact - elbo < 40.0


def test_factor_analysis_by_svi_reaches_the_maximum():
    psi_true = torch.rand(D, generator=torch.Generator().manual_seed(1)) + 0.2
    x, W_true = _simulate(psi_true.sqrt())
    fit = lvm.infer(factor_analysis, {"x": x, "q": Q}, method="svi", num_particles=2, seed=0,
                    **_decaying(400, 0.05, 0.1))
    W, mu, psi = fit.params["W"], fit.params["mu"], fit.params["psi"]
    exact = factor_analysis_log_marginal(x, W, mu, psi)
    mle = factor_analysis_mle(x, Q)
    best = factor_analysis_log_marginal(x, **mle)
    cov_err = float(torch.linalg.matrix_norm(W.double() @ W.double().T - mle["W"] @ mle["W"].T)
                    / torch.linalg.matrix_norm(mle["W"] @ mle["W"].T))
    psi_err = float((psi.double() - mle["psi"]).abs().max())
    angle_true = float(loading_subspace_angles(W, W_true).max())
    mle_err = float(torch.linalg.matrix_norm(mle["W"] @ mle["W"].T - (W_true @ W_true.T).double())
                    / torch.linalg.matrix_norm((W_true @ W_true.T).double()))
    print(f"fa: WW^T of the MLE vs the truth {mle_err:.4f} relative")
    print(f"fa: log p(x) gap to the MLE {best - exact:.3f} nats; WW^T {cov_err:.4f} relative; psi {psi_err:.4f} "
          f"from the MLE's; largest angle to the true subspace {angle_true:.4f} rad")
    # measured over fit seeds 0-5 (N=500, D=8, q=2, 400 steps x 2 particles): gap 1.26-2.63 nats; WW^T 0.033-0.074
    # from the MLE's (the MLE is 0.069 from the truth); psi 0.040-0.092 from the MLE's (max abs.); largest angle to
    # the true subspace 0.027-0.030 rad.
    # (method="meanfield" with the same budget ends 13-15 nats below the maximum: see models/factor.py)
    assert 0 <= best - exact < 8.0
    assert cov_err < 0.2
    assert psi_err < 0.15
    assert angle_true < 0.06
    elbo = fit.elbo_estimate(num_particles=200, seed=0)
    iwae = fit.log_evidence(num_particles=200, seed=0)
    print(f"fa: ELBO {elbo:.3f} <= IWAE_200 {iwae:.3f} <= log p(x) {exact:.3f}")
    # measured: ELBO -6722.03, IWAE_200 -6717.28, exact -6717.53: the estimate lands 0.25 nats above log p(x), within
    # its Monte Carlo and float32 error (it is a bound in expectation)
    assert elbo < iwae <= exact + 0.5


def test_inputs_are_checked():
    with pytest.raises(ValueError, match=r"q must be an integer in \[1, D-1\] = \[1, 2\], got 5"):
        lvm.infer(ppca, {"x": torch.randn(10, 3), "q": 5}, steps=1)
    with pytest.raises(ValueError, match="x must be a float tensor of shape"):
        ppca_mle(torch.randn(10), 1)
    with pytest.raises(ValueError, match="psi must be D positive variances"):
        factor_analysis_log_marginal(torch.zeros(4, 3), torch.zeros(3, 1), torch.zeros(3), -torch.ones(3))
    with pytest.raises(ValueError, match="sigma must be one positive number"):
        ppca_log_marginal(torch.zeros(4, 3), torch.zeros(3, 1), torch.zeros(3), torch.ones(2))
