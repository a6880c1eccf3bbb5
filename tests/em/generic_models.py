"""Small Pyro models for the generic exact-EM tests (tests/em/test_generic.py)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.ops.indexing import Vindex


def coupled(x: torch.Tensor, K1: int = 2, K2: int = 2) -> None:
    """Two coupled discrete latents per point: z1 ~ Cat(pi), z2 | z1 ~ Cat(A[z1]), x ~ N(mu[z1, z2], 1)."""
    pi = pyro.param(
        "pi", lambda: torch.tensor([0.6, 0.4][:K1]) if K1 == 2 else torch.ones(K1) / K1, constraint=constraints.simplex
    )
    A = pyro.param(
        "A", lambda: torch.full((K1, K2), 1.0 / K2) + 0.1 * torch.arange(K2) / K2, constraint=constraints.simplex
    )
    mu = pyro.param("mu", lambda: torch.arange(K1 * K2, dtype=torch.get_default_dtype()).reshape(K1, K2) - 1.5)
    with pyro.plate("data", len(x)):
        z1 = pyro.sample("z1", dist.Categorical(pi))
        z2 = pyro.sample("z2", dist.Categorical(Vindex(A)[z1]))
        pyro.sample("x", dist.Normal(Vindex(mu)[z1, z2], 1.0), obs=x)


def hmm(x: torch.Tensor, K: int = 3) -> None:
    """A K-state HMM with Gaussian emissions written with pyro.markov (enumeration dims reused)."""
    pi0 = pyro.param("pi0", lambda: torch.ones(K) / K, constraint=constraints.simplex)
    A = pyro.param("A", lambda: 0.6 * torch.eye(K) + 0.4 / K, constraint=constraints.simplex)
    locs = pyro.param("locs", lambda: torch.linspace(-2.0, 2.0, K))
    scale = pyro.param("scale", lambda: torch.tensor(1.0), constraint=constraints.positive)
    z = None
    for t in pyro.markov(range(len(x))):
        probs = pi0 if z is None else A[z]
        z = pyro.sample(f"z_{t}", dist.Categorical(probs))
        pyro.sample(f"x_{t}", dist.Normal(locs[z], scale), obs=x[t])


def student_mixture(x: torch.Tensor, K: int = 2, df: float = 4.0) -> None:
    """A mixture of Student-t (fixed df): no closed-form M-step."""
    w = pyro.param("w", lambda: torch.ones(K) / K, constraint=constraints.simplex)
    locs = pyro.param("locs", lambda: torch.linspace(-1.0, 1.0, K))
    scales = pyro.param("scales", lambda: torch.ones(K), constraint=constraints.positive)
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(w))
        pyro.sample("x", dist.StudentT(df, locs[z], scales[z]), obs=x)


def laplace_mixture(x: torch.Tensor, K: int = 3) -> None:
    """A mixture of Laplace distributions (median M-step in closed form only with weights; here generic)."""
    w = pyro.param("w", lambda: torch.ones(K) / K, constraint=constraints.simplex)
    locs = pyro.param("locs", lambda: torch.linspace(-1.0, 1.0, K))
    scales = pyro.param("scales", lambda: torch.ones(K), constraint=constraints.positive)
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(w))
        pyro.sample("x", dist.Laplace(locs[z], scales[z]), obs=x)


def gmm(x: torch.Tensor, K: int = 3) -> None:
    """A diagonal Gaussian mixture over rows of x (N, D)."""
    D = x.shape[1]
    w = pyro.param("w", lambda: torch.ones(K) / K, constraint=constraints.simplex)
    locs = pyro.param("locs", lambda: x[:K].clone())
    scales = pyro.param("scales", lambda: torch.ones(K, D), constraint=constraints.positive)
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(w))
        pyro.sample("x", dist.Normal(locs[z], scales[z]).to_event(1), obs=x)


def many_coupled(x: torch.Tensor, n_latents: int = 12, K: int = 30) -> None:
    """``n_latents`` independent latents of K states all feeding one observation: joint enumeration K**n."""
    mu = pyro.param("mu", lambda: torch.randn(n_latents, K))
    total = 0.0
    for i in range(n_latents):
        z = pyro.sample(f"z{i}", dist.Categorical(torch.ones(K) / K))
        total = total + mu[i][z]
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(total, 1.0), obs=x)
