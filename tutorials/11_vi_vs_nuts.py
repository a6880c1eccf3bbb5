# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 11. Variational inference against NUTS: where mean-field under-covers
#
# A variational fit is an approximation chosen for speed: mean-field q(z) = prod_j q_j(z_j) minimises
# KL(q || p(z | x)), and that divergence punishes q for putting mass where the posterior has little, not for
# missing mass. The result is well known (tutorial 4): when the posterior is correlated, mean-field is too narrow.
# How much too narrow, on *your* model, is a question you can only answer against a reference that is exact up to
# Monte Carlo error: Markov chain Monte Carlo.
#
# `lvm.infer(model, data, method="nuts")` runs Pyro's No-U-Turn sampler on the same DSL model (discrete latents
# summed out, several chains), and `lvm.compare_posteriors(vi_fit, nuts_fit)` puts the two side by side, element
# by element: both means, both standard deviations, their ratio and the Wasserstein-1 distance of the marginals.
#
# 1. First we check NUTS itself against a closed form (a Bayesian linear regression with correlated predictors).
# 2. Then a hierarchical model without a closed form, the eight schools, where mean-field under-covers the
#    population parameters.

# %%
import math
import os
import time
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import ppl_lvm as lvm  # noqa: E402
from ppl_lvm import dist  # noqa: E402

torch.set_num_threads(1)
torch.set_default_dtype(torch.float64)
FAST = os.environ.get("PPL_LVM_FAST", "0") not in ("", "0")
FIGURES = Path(__file__).resolve().parent / "figures" if not FAST else os.environ.get("PPL_LVM_FIGURES")
STEPS = 600 if FAST else 4000  # SVI steps
DRAWS, WARMUP = (300, 200) if FAST else (2000, 1000)  # NUTS draws and warm-up per chain (two chains)
t_start = time.perf_counter()


def save(fig, name):
    if FIGURES:
        Path(FIGURES).mkdir(parents=True, exist_ok=True)
        fig.savefig(Path(FIGURES) / name, dpi=110, bbox_inches="tight")
    plt.close(fig)


# %% [markdown]
# ## 1. NUTS against a closed form
#
# y_i = x_i^T beta + noise with beta ~ N(0, 10^2 I) and unit noise: the posterior is Normal with precision
# P = X^T X + I / 100. The two predictors are correlated (0.95), so the posterior of (beta_1, beta_2) is strongly
# negatively correlated. Mean-field's optimum has sd 1 / sqrt(P_jj) (the *conditional* sd), the exact marginal sd
# is sqrt((P^-1)_jj): their ratio is sqrt(1 - rho^2).

# %%
@lvm.model
def regression(X, y):
    beta = lvm.latent(dist.Normal(torch.zeros(X.shape[1]), 10.0).to_event(1))
    with lvm.plate(len(y)):
        lvm.observe(dist.Normal((X * beta).sum(-1), 1.0), y)


g = torch.Generator().manual_seed(0)
n = 50
x1 = torch.randn(n, generator=g)
X = torch.stack([x1, 0.95 * x1 + math.sqrt(1 - 0.95**2) * torch.randn(n, generator=g)], 1)
y = X @ torch.tensor([1.0, -0.5]) + torch.randn(n, generator=g)
precision = X.T @ X + torch.eye(2) / 100
cov = torch.linalg.inv(precision)
exact_mean, exact_sd = cov @ X.T @ y, cov.diagonal().sqrt()
mf_sd = 1 / precision.diagonal().sqrt()
rho = float(cov[0, 1] / (exact_sd[0] * exact_sd[1]))
print(f"closed form: mean = {exact_mean.numpy().round(4)}, sd = {exact_sd.numpy().round(4)}, "
      f"correlation = {rho:.4f}")
print(f"optimal mean-field sd = {mf_sd.numpy().round(4)}, ratio to the exact sd {float(mf_sd[0] / exact_sd[0]):.4f}")

data = {"X": X, "y": y}
t0 = time.perf_counter()
vi = lvm.infer(regression, data, method="meanfield", steps=STEPS, lr=0.03, num_particles=4, seed=0)
t_vi = time.perf_counter() - t0
t0 = time.perf_counter()
nuts = lvm.infer(regression, data, method="nuts", num_samples=DRAWS, warmup_steps=WARMUP, dense_mass=True, seed=0)
t_nuts = time.perf_counter() - t0
print(nuts)
table = lvm.compare_posteriors(vi, nuts)
print(table.round(4).to_string())
summary = nuts.summary()
print(f"NUTS sd / exact sd = {(table['sd_b'].to_numpy() / exact_sd.numpy()).round(4)}, "
      f"R-hat = {summary['r_hat'].to_numpy().round(4)}, bulk ESS = {summary['ess_bulk'].to_numpy().round(0)}")
print(f"reported sd ratio mean-field / NUTS = {table['sd_ratio'].to_numpy().round(3)} "
      f"(closed form {float(mf_sd[0] / exact_sd[0]):.3f}); meanfield {t_vi:.1f} s, nuts {t_nuts:.1f} s")

# %% [markdown]
# On this machine the full run prints: closed-form sd [0.5062, 0.4839] with correlation -0.9637, so mean-field's
# best sd is 0.267 of the exact one. NUTS (2 chains x 2000 draws after 1000 warm-up, dense mass matrix) reports
# sds 1.0089 and 1.0063 times the closed form, R-hat 1.0005 and 1.0004, bulk ESS about 3550 of 4000 draws. The
# mean-field fit's reported sd ratio is 0.247 and 0.238 (below the optimum 0.267 by Adam's noise), and the
# Wasserstein distance of each marginal is 0.31 and 0.30: for two Normals with equal means W1 = |sd_a - sd_b|
# sqrt(2 / pi), here 0.31 and 0.29. The means agree to 0.03: mean-field gets the centre right and the width wrong.

# %%
draws_vi = vi.sample_posterior(2000, seed=1)["beta"].numpy()
draws_nuts = nuts.sample_posterior(2000)["beta"].numpy()
fig, ax = plt.subplots(figsize=(4.5, 4.5))
ax.scatter(draws_nuts[:, 0], draws_nuts[:, 1], s=3, alpha=0.3, label="NUTS")
ax.scatter(draws_vi[:, 0], draws_vi[:, 1], s=3, alpha=0.3, label="mean-field")
ax.set(xlabel="beta_1", ylabel="beta_2", title="posterior draws")
ax.legend()
save(fig, "11_regression_draws.png")

# %% [markdown]
# ## 2. A hierarchical model: the eight schools
#
# Eight schools ran a coaching programme; school j reports an estimated effect y_j with a known standard error
# sigma_j (Rubin 1981). The effects share a population: theta_j = mu + tau * eta_j with eta_j ~ N(0, 1), the
# *non-centred* form that NUTS samples well. The population sd tau is weakly identified by eight noisy numbers: its
# posterior is wide and skewed, and mu and tau are coupled to every eta_j.

# %%
y8 = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
sigma8 = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


@lvm.model
def schools(y, sigma):
    mu = lvm.latent(dist.Normal(0.0, 5.0))
    tau = lvm.latent(dist.HalfCauchy(5.0))
    with lvm.plate(len(y)):
        eta = lvm.latent(dist.Normal(0.0, 1.0))
        lvm.observe(dist.Normal(mu + tau * eta, sigma), y)


data8 = {"y": y8, "sigma": sigma8}
vi8 = lvm.infer(schools, data8, method="svi", guide="normal", steps=STEPS, lr=0.02, num_particles=8, seed=0)
nuts8 = lvm.infer(schools, data8, method="nuts", num_samples=DRAWS, warmup_steps=WARMUP, target_accept_prob=0.9,
                  seed=0)
print(nuts8)
table8 = lvm.compare_posteriors(vi8, nuts8, var_names=["mu", "tau", "eta"])
print(table8.round(3).to_string())
s8 = nuts8.summary()
print(f"NUTS: largest R-hat {s8['r_hat'].max():.4f}, smallest bulk ESS {s8['ess_bulk'].min():.0f}, "
      f"{nuts8.divergences} divergences")

# %% [markdown]
# How badly does mean-field *cover*? Take the variational posterior's central 90% interval of each quantity and ask
# how much of the NUTS posterior falls inside it. A calibrated 90% interval holds 0.90.

# %%
def coverage(vi_draws, nuts_draws, level=0.9):
    low, high = np.quantile(vi_draws, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return ((nuts_draws >= low) & (nuts_draws <= high)).mean(0)


dv, dn = vi8.sample_posterior(4000, seed=1), nuts8.sample_posterior(2 * DRAWS)
theta_vi = (dv["mu"][:, None] + dv["tau"][:, None] * dv["eta"]).numpy()
theta_nuts = (dn["mu"][:, None] + dn["tau"][:, None] * dn["eta"]).numpy()
cover = {"mu": coverage(dv["mu"].numpy(), dn["mu"].numpy()), "tau": coverage(dv["tau"].numpy(), dn["tau"].numpy())}
cover_theta = coverage(theta_vi, theta_nuts)
print(f"NUTS mass inside mean-field's 90% interval: mu {cover['mu']:.3f}, tau {cover['tau']:.3f}, "
      f"theta_j {cover_theta.min():.3f} to {cover_theta.max():.3f}")
print(f"sd ratio mean-field / NUTS: mu {table8.loc['mu', 'sd_ratio']:.3f}, tau {table8.loc['tau', 'sd_ratio']:.3f}")

fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
for ax, name in zip(axes, ["mu", "tau"], strict=True):
    ax.hist(dn[name].numpy(), bins=60, density=True, alpha=0.5, label="NUTS")
    ax.hist(dv[name].numpy(), bins=60, density=True, alpha=0.5, label="mean-field")
    ax.set(xlabel=name)
axes[0].legend()
save(fig, "11_schools_marginals.png")
print(f"total time {time.perf_counter() - t_start:.0f} s")

# %% [markdown]
# On this machine the full run (4000 SVI steps with 8 particles; NUTS 2 chains x 2000 draws after 1000 warm-up at
# target_accept_prob 0.9) prints:
#
# | | mean-field mean | NUTS mean | mean-field sd | NUTS sd | sd ratio | W1 | NUTS mass in mean-field's 90% interval |
# |---|---:|---:|---:|---:|---:|---:|---:|
# | mu | 4.63 | 4.39 | 3.07 | 3.31 | 0.928 | 0.28 | 0.872 |
# | tau | 2.89 | 3.45 | 2.48 | 3.12 | 0.796 | 0.72 | 0.765 |
#
# and for the school effects theta_j the mean-field 90% intervals hold 0.864 to 0.902 of the NUTS mass. NUTS
# converged: largest R-hat 1.0005, smallest bulk ESS 2385 of 4000 draws, no divergence. The eta_j, which the
# non-centred form makes nearly independent of the rest a priori, come out almost right (sd ratios 0.95-1.11).
# The population sd tau is where mean-field fails: its posterior is 20% too narrow, its mean 0.56 too small (the
# long right tail of large between-school variation is cut off), and its nominal 90% interval holds 77% of the
# reference mass. In fast mode (600 SVI steps, 300 draws per chain) the numbers move (tau's sd ratio 0.52,
# coverage 0.62) but the picture is the same.
#
# The lesson: a variational fit's point summaries can be fine while its uncertainty is not, and the place where
# it is not is the scale parameter of a hierarchy. Before trusting mean-field intervals on a hierarchical model,
# fit it once with `method="nuts"` and read `lvm.compare_posteriors`.
