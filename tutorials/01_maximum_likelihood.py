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
# # 1. Maximum likelihood
#
# A statistical model is a family of densities $p(x \mid \theta)$. Given data $x_1, \dots, x_N$, maximum likelihood
# (ML) picks the $\theta$ under which the data we actually saw are most probable:
#
# $$\hat\theta = \arg\max_\theta \prod_{i=1}^N p(x_i \mid \theta) = \arg\max_\theta \sum_{i=1}^N \log p(x_i \mid \theta).$$
#
# This tutorial shows, with numbers:
#
# 1. why every implementation works with the **sum of logs** and never with the product (the product underflows);
# 2. that the two have the same maximiser (the log is increasing);
# 3. how **gradient ascent** finds the maximiser when no formula does, and how it compares with the closed form for
#    a Normal;
# 4. the same fit written as a ppl_lvm model and handed to `lvm.infer`.
#
# Run it as `python tutorials/01_maximum_likelihood.py`; with `PPL_LVM_FAST=1` it uses a smaller budget (the test
# suite does this). The numbers quoted in the text are from one full run on a 2-core CPU machine.

# %%
import math
import os
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import ppl_lvm as lvm  # noqa: E402
from ppl_lvm import constraints, dist  # noqa: E402

torch.set_num_threads(1)
torch.set_default_dtype(torch.float64)
FAST = os.environ.get("PPL_LVM_FAST", "0") not in ("", "0")
# figures: tutorials/figures in full mode; in fast mode only if PPL_LVM_FIGURES names a directory
FIGURES = Path(__file__).resolve().parent / "figures" if not FAST else os.environ.get("PPL_LVM_FIGURES")
STEPS = 300 if FAST else 600  # gradient-ascent iterations
t_start = time.perf_counter()


def save(fig, name):
    if FIGURES:
        Path(FIGURES).mkdir(parents=True, exist_ok=True)
        fig.savefig(Path(FIGURES) / name, dpi=110, bbox_inches="tight")
    plt.close(fig)


# %% [markdown]
# ## The data
#
# 1000 draws from a Normal with mean 2 and standard deviation 1.5. We know the truth, so we can judge the estimates.

# %%
g = torch.Generator().manual_seed(0)
N = 1000
TRUE_MU, TRUE_SIGMA = 2.0, 1.5
x = TRUE_MU + TRUE_SIGMA * torch.randn(N, generator=g)
print(f"N = {N}, sample mean = {x.mean():.4f}, sample sd = {x.std():.4f}")

# %% [markdown]
# ## Why the log: the product of 1000 densities is exactly zero
#
# Each density value $p(x_i \mid \theta)$ here is at most 0.27 (the peak of this Normal) and 0.16 on geometric
# average. A product of a thousand such numbers is
# about $10^{-790}$, far below the smallest positive float64 ($\approx 4.9 \times 10^{-324}$, and $2.2 \times
# 10^{-308}$ for full precision). The computer rounds it to `0.0`, and then *every* $\theta$ has likelihood zero: the
# likelihood can no longer tell a good parameter from a bad one.
#
# The log turns the product into a sum of moderate negative numbers, which float64 represents without trouble.

# %%
normal = torch.distributions.Normal(TRUE_MU, TRUE_SIGMA)
dens = normal.log_prob(x).exp()  # p(x_i | theta) for every point, float64
product = torch.prod(dens).item()
log_sum = normal.log_prob(x).sum().item()
print(f"float64 product of {N} densities  = {product!r}")
print(f"sum of the {N} log-densities      = {log_sum:.4f}   (so the product is 10^{log_sum / math.log(10):.1f})")
print(f"smallest positive float64         = {5e-324!r}")

# where does the running product die?
running = torch.cumprod(dens, 0)
first_zero = int((running == 0).nonzero()[0]) + 1
print(f"the running product first becomes 0.0 after {first_zero} points")

# a wrong parameter is exactly as 'likely' as the right one once the product has underflowed
wrong = torch.distributions.Normal(5.0, 1.5)
print(f"product at mu=2 (true): {torch.prod(dens).item()!r}, at mu=5 (wrong): "
      f"{torch.prod(wrong.log_prob(x).exp()).item()!r}")
print(f"log-likelihood at mu=2: {log_sum:.2f}, at mu=5: {wrong.log_prob(x).sum().item():.2f}")

# %% [markdown]
# On this machine this prints: the product is `0.0`; the sum of logs is **-1818.75** (the product would be
# $10^{-789.9}$); the running product hits zero after **410** points. At $\mu=5$ the product is also `0.0`, so the
# likelihood cannot rank the two, while the log-likelihoods (-1818.75 vs -3807.95) differ by about 1990 nats.
#
# The second reason for the log is that it does not move the maximum: $\log$ is strictly increasing, so
# $\arg\max_\theta L(\theta) = \arg\max_\theta \log L(\theta)$. With a *small* sample, where the product is still
# representable, we can check that directly.

# %%
few = x[:20]
mus = torch.linspace(0, 4, 401)
lik = torch.stack([torch.distributions.Normal(m, TRUE_SIGMA).log_prob(few).exp().prod() for m in mus])
loglik = torch.stack([torch.distributions.Normal(m, TRUE_SIGMA).log_prob(few).sum() for m in mus])
print(f"20 points: argmax of the likelihood mu = {mus[lik.argmax()]:.2f}, argmax of the log-likelihood "
      f"mu = {mus[loglik.argmax()]:.2f}, sample mean = {few.mean():.4f}")

fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
ax[0].plot(mus, lik, color="C0", label="likelihood $\\prod_i p(x_i\\mid\\mu)$")
ax[0].axvline(mus[lik.argmax()], color="k", ls="--", lw=1, label="maximum")
ax[0].set(xlabel="$\\mu$", ylabel="likelihood", title="20 points: the likelihood")
ax[1].plot(mus, loglik, color="C1", label="log-likelihood $\\sum_i \\log p(x_i\\mid\\mu)$")
ax[1].axvline(mus[loglik.argmax()], color="k", ls="--", lw=1, label="maximum")
ax[1].set(xlabel="$\\mu$", ylabel="log-likelihood (nats)", title="20 points: the log-likelihood")
for a in ax:
    a.legend(fontsize=9)
fig.tight_layout()
save(fig, "01_likelihood_vs_log.png")

# %% [markdown]
# ![likelihood vs log-likelihood](figures/01_likelihood_vs_log.png)
#
# Same peak, different shape: the likelihood is a tiny sharp bump ($\sim 10^{-17}$ at its top with only 20 points),
# the log-likelihood a smooth parabola, which is also the easier shape for an optimiser.
#
# ## The closed form for a Normal
#
# For $p(x \mid \mu, \sigma) = \mathcal N(x \mid \mu, \sigma^2)$ the log-likelihood is
# $\ell(\mu, \sigma) = -N \log \sigma - \frac{1}{2\sigma^2}\sum_i (x_i - \mu)^2 - \frac N2 \log 2\pi$. Setting both
# partial derivatives to zero gives the sample mean and the *biased* standard deviation (divide by $N$, not $N-1$):
# $\hat\mu = \bar x$, $\hat\sigma^2 = \frac1N \sum_i (x_i - \bar x)^2$.

# %%
mu_hat = x.mean().item()
sigma_hat = x.std(unbiased=False).item()
ll_hat = torch.distributions.Normal(mu_hat, sigma_hat).log_prob(x).sum().item()
print(f"closed form: mu_hat = {mu_hat:.6f}, sigma_hat = {sigma_hat:.6f}, log-likelihood = {ll_hat:.4f}")

# %% [markdown]
# ## Gradient ascent
#
# Most models have no closed form (a mixture, a neural decoder), so we climb the log-likelihood instead:
# $\theta \leftarrow \theta + \alpha \nabla_\theta \frac1N \ell(\theta)$. Two practical choices:
#
# * we ascend the **mean** log-likelihood $\ell/N$: the gradient then does not grow with $N$ and the same step size
#   works for 100 or 100 000 points;
# * $\sigma$ must stay positive, so we optimise $s = \log\sigma$, which can be any real number. (ppl_lvm does the same
#   for every `constraint=constraints.positive` parameter.)
#
# Below: plain gradient ascent with a fixed step size, written out in torch, starting far from the answer.

# %%
mu = torch.tensor(-1.0, requires_grad=True)
log_sigma = torch.tensor(math.log(4.0), requires_grad=True)
lr = 0.1
path = []
for step in range(STEPS):
    ll = torch.distributions.Normal(mu, log_sigma.exp()).log_prob(x).mean()
    mu.grad = log_sigma.grad = None
    ll.backward()
    path.append((mu.item(), log_sigma.exp().item(), ll.item() * N))
    with torch.no_grad():
        mu += lr * mu.grad
        log_sigma += lr * log_sigma.grad
    if step in (0, 10, 50, 100) or step == STEPS - 1:
        print(f"step {step:4d}: mu = {mu.item():.6f}, sigma = {log_sigma.exp().item():.6f}, "
              f"log-likelihood = {ll.item() * N:.4f}")
mu_gd, sigma_gd = mu.item(), log_sigma.exp().item()
print(f"gradient ascent after {STEPS} steps: mu = {mu_gd:.6f} (closed form {mu_hat:.6f}), "
      f"sigma = {sigma_gd:.6f} (closed form {sigma_hat:.6f})")
print(f"largest difference to the closed form: {max(abs(mu_gd - mu_hat), abs(sigma_gd - sigma_hat)):.2e}")

# %% [markdown]
# On this machine the full run prints, for step 0, 10, 50, 100 and 599:
#
# | step | $\mu$ | $\sigma$ | log-likelihood |
# |---:|---:|---:|---:|
# | 0 | -0.9812 | 3.8836 | -2657.52 |
# | 10 | -0.7523 | 3.3001 | -2572.17 |
# | 50 | 0.3748 | 2.3289 | -2225.33 |
# | 100 | 1.6485 | 1.5597 | -1849.64 |
# | 599 | 2.008098 | 1.491473 | -1818.7026 |
#
# and the closed form is $\hat\mu = 2.008098$, $\hat\sigma = 1.491473$, log-likelihood -1818.7026: after 600 steps the
# two agree to $4 \times 10^{-11}$. Note that the ML log-likelihood (-1818.70) is *higher* than the log-likelihood at the
# true parameters (-1818.75): ML fits this sample, including its noise.
#
# The path on the log-likelihood surface: from the start at $(\mu, \sigma) = (-1, 4)$ the fixed step first shrinks
# $\sigma$ while $\mu$ moves slowly (a wide $\sigma$ makes the surface flat in $\mu$), then both settle on the top;
# after about 150 steps the log-likelihood no longer changes visibly.

# %%
path_t = torch.tensor(path)
mg, sg = torch.meshgrid(torch.linspace(-1.5, 3.5, 120), torch.linspace(0.9, 4.3, 120), indexing="ij")
surface = torch.distributions.Normal(mg.unsqueeze(-1), sg.unsqueeze(-1)).log_prob(x).sum(-1)
fig, ax = plt.subplots(1, 2, figsize=(11, 4))
cs = ax[0].contour(mg, sg, surface, levels=torch.quantile(surface.flatten(), torch.linspace(0.02, 0.995, 14)).numpy(),
                   cmap="viridis")
ax[0].clabel(cs, fontsize=7, fmt="%.0f")
ax[0].plot(path_t[:, 0], path_t[:, 1], ".-", color="C3", ms=3, lw=1, label="gradient ascent")
ax[0].plot(mu_hat, sigma_hat, "k*", ms=12, label="closed form $(\\bar x, \\hat\\sigma)$")
ax[0].set(xlabel="$\\mu$", ylabel="$\\sigma$", title="log-likelihood surface and the ascent path")
ax[0].legend(fontsize=9)
ax[1].plot(path_t[:, 2], color="C3", label="gradient ascent")
ax[1].axhline(ll_hat, color="k", ls="--", lw=1, label=f"maximum {ll_hat:.2f}")
ax[1].set(xlabel="step", ylabel="log-likelihood (nats)", title="log-likelihood during the ascent",
          ylim=(ll_hat - 800, ll_hat + 50))
ax[1].legend(fontsize=9)
fig.tight_layout()
save(fig, "01_gradient_ascent.png")

# %% [markdown]
# ![gradient ascent](figures/01_gradient_ascent.png)
#
# ## The same fit with ppl_lvm
#
# In ppl_lvm the model is written the way it reads on paper: two parameters, and $N$ independent observations in a
# plate. `lvm.infer` maximises the same objective with Adam (an adaptive step size per parameter) instead of a fixed
# step. With no latent variable, the ELBO that `"svi"` maximises *is* the log-likelihood (there is nothing to
# approximate), so `-fit.losses[-1]` is $\ell(\hat\theta)$.

# %%
@lvm.model
def normal_model(x):
    mu = lvm.param(torch.tensor(0.0))
    sigma = lvm.param(torch.tensor(1.0), constraint=constraints.positive)
    with lvm.plate(len(x)):
        lvm.observe(dist.Normal(mu, sigma), x)


with warnings.catch_warnings():
    # Pyro remarks that this model has no discrete latent to enumerate: true, and harmless here
    warnings.filterwarnings("ignore", message="TraceEnum_ELBO found no sample sites")
    fit = lvm.infer(normal_model, x, method="svi", steps=STEPS, lr=0.05, seed=0)
mu_lvm, sigma_lvm = fit.params["mu"].item(), fit.params["sigma"].item()
print(fit)
print(f"lvm.infer: mu = {mu_lvm:.6f}, sigma = {sigma_lvm:.6f}, log-likelihood = {-fit.losses[-1]:.4f}")
print(f"closed form: mu = {mu_hat:.6f}, sigma = {sigma_hat:.6f}, log-likelihood = {ll_hat:.4f}")

# %% [markdown]
# On this machine (600 Adam steps, learning rate 0.05): $\mu = 2.008098$, $\sigma = 1.491473$, log-likelihood
# -1818.7026, equal to the closed form to the printed digits.
#
# ## Summary
#
# * Never multiply densities: with 1000 ordinary data points the float64 product is `0.0` (after 410 points here) and
#   all parameters look alike. Sum the log-densities instead; the maximiser is the same.
# * Closed forms exist for simple models (for the Normal: sample mean and the $1/N$ standard deviation); gradient
#   ascent on the mean log-likelihood reaches the same point, and is what we use when no formula exists.
# * Tutorial 2 meets a model where neither a closed form nor plain gradient ascent is the natural tool: a mixture,
#   whose log-likelihood has a sum *inside* the log. EM handles it.

# %%
print(f"tutorial 1 finished in {time.perf_counter() - t_start:.1f} s ({'fast' if FAST else 'full'} mode)")
