"""Models with known answers, shared by the tests (the data they are fitted to are in ``demo_data.py``)."""

import math

import torch

import ppl_lvm as lvm
from ppl_lvm import constraints, dist

PRIOR_SD = 2.0
NOISE_SD = 1.0


@lvm.model
def normal_normal(x):
    """mu ~ N(0, PRIOR_SD^2); x_i ~ N(mu, NOISE_SD^2): the posterior of mu is normal in closed form."""
    mu = lvm.latent(dist.Normal(0.0, PRIOR_SD))
    with lvm.plate(len(x)):
        lvm.observe(dist.Normal(mu, NOISE_SD), x)


def normal_normal_posterior(x):
    precision = 1 / PRIOR_SD**2 + len(x) / NOISE_SD**2
    mean = float(x.sum()) / NOISE_SD**2 / precision
    return mean, math.sqrt(1 / precision)


@lvm.model
def ppca(x, q=2):
    """Probabilistic PCA with a local latent per row; W, mu, sigma are parameters (maximum likelihood)."""
    n, d = x.shape
    W = lvm.param(lambda: 0.5 * torch.randn(d, q))
    mu = lvm.param(lambda: torch.zeros(d))
    sigma = lvm.param(lambda: torch.ones(()), constraint=constraints.positive)
    with lvm.plate(n):
        z = lvm.latent(dist.Normal(torch.zeros(q), 1.0).to_event(1))
        lvm.observe(dist.Normal(z @ W.T + mu, sigma).to_event(1), x)


def ppca_log_marginal(x, W, mu, sigma):
    """Exact log p(x) of PPCA: x_i ~ N(mu, W W^T + sigma^2 I)."""
    d = x.shape[1]
    cov = W @ W.T + sigma**2 * torch.eye(d, dtype=x.dtype)
    return float(dist.MultivariateNormal(mu, covariance_matrix=cov).log_prob(x).sum())


@lvm.model
def gmm_map(x, K=3):
    """A Gaussian mixture with priors on its globals (for MAP) and an enumerated assignment per row."""
    d = x.shape[1]
    weights = lvm.latent(dist.Dirichlet(torch.ones(K)))
    with lvm.plate(K, name="components"):
        locs = lvm.latent(dist.Normal(torch.zeros(d), 10.0).to_event(1))
        scales = lvm.latent(dist.LogNormal(torch.zeros(d), 2.0).to_event(1))
    with lvm.plate(len(x)):
        z = lvm.latent(dist.Categorical(weights))
        lvm.observe(dist.Normal(locs[z], scales[z]).to_event(1), x)



@lvm.model
def loc_gmm(x, K=2):
    """Unit-variance mixture: normal priors on the means (the guide's latents), weights a parameter, z enumerated."""
    d = x.shape[1]
    weights = lvm.param(lambda: torch.ones(K) / K, constraint=constraints.simplex)
    with lvm.plate(K, name="components"):
        locs = lvm.latent(dist.Normal(torch.zeros(d), 10.0).to_event(1))
    with lvm.plate(len(x)):
        z = lvm.latent(dist.Categorical(weights))
        lvm.observe(dist.Normal(locs[z], 1.0).to_event(1), x)

class Encoder(torch.nn.Module):
    """An amortised encoder x -> (loc, scale) of q(z | x): linear, or one tanh layer of ``hidden`` units."""

    def __init__(self, d=5, q=2, hidden=None):
        super().__init__()
        if hidden is None:
            self.net = torch.nn.Linear(d, 2 * q)
        else:
            self.net = torch.nn.Sequential(torch.nn.Linear(d, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 2 * q))

    def forward(self, x):
        loc, log_scale = self.net(x).chunk(2, -1)
        return loc, log_scale.exp()


@lvm.model
def bayes_linreg(X, y):
    """beta ~ N(0, 10^2 I); y_i ~ N(X_i beta, 1): a Gaussian posterior in closed form, correlated when X's columns are."""
    beta = lvm.latent(dist.Normal(torch.zeros(X.shape[1]), 10.0).to_event(1))
    with lvm.plate(len(y)):
        lvm.observe(dist.Normal((X * beta).sum(-1), 1.0), y)  # (X * beta): broadcasts over a plate of draws


def bayes_linreg_posterior(X, y):
    """Posterior mean and covariance of ``bayes_linreg``; mean-field's optimum has sds 1 / sqrt(diag(precision))."""
    precision = X.T @ X + torch.eye(X.shape[1], dtype=X.dtype) / 100.0
    cov = torch.linalg.inv(precision)
    return cov @ X.T @ y, cov, 1 / torch.sqrt(torch.diagonal(precision))


@lvm.model
def one_way_random_effects(y):
    """One-way ANOVA with random effects: b_i ~ N(0, tau^2), y_ij ~ N(mu + b_i, sigma^2); mu, tau, sigma are
    parameters (maximum likelihood, closed form in :func:`one_way_mle` for a balanced design)."""
    a, m = y.shape
    mu = lvm.param(lambda: y.mean())
    tau = lvm.param(lambda: y.mean(1).std(), constraint=constraints.positive)
    sigma = lvm.param(lambda: y.std(), constraint=constraints.positive)
    with lvm.plate(a) as groups:  # noqa: F841 - names the plate
        b = lvm.latent(dist.Normal(torch.zeros((), dtype=y.dtype), tau))
        lvm.observe(dist.Normal((mu + b[..., None]).expand(b.shape + (m,)), sigma).to_event(1), y)


def one_way_mle(y):
    """The maximum-likelihood (mu, tau^2, sigma^2) of the balanced one-way random-effects model (a groups of m):
    sigma^2 = SSW / (a (m - 1)), tau^2 = (SSB / a - sigma^2) / m (when positive), mu = the grand mean, with
    SSW = sum_ij (y_ij - ybar_i)^2 and SSB = m sum_i (ybar_i - ybar)^2 (Searle, Casella and McCulloch 1992, 4.7)."""
    a, m = y.shape
    group_means = y.mean(1)
    ssw = float(((y - group_means[:, None]) ** 2).sum())
    ssb = m * float(((group_means - y.mean()) ** 2).sum())
    sigma2 = ssw / (a * (m - 1))
    return float(y.mean()), max(0.0, (ssb / a - sigma2) / m), sigma2
