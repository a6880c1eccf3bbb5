"""Finite mixtures: Gaussian (full, diag, spherical, tied covariance), Bernoulli and Poisson.

Each is a plain ppl_lvm model: ``method="em"`` recognises it and runs the closed-form kernels, and the same model
fits with ``method="svi"`` (the assignment ``z`` is then summed out by enumeration).
"""

from __future__ import annotations

import torch

import ppl_lvm as lvm
from ppl_lvm import constraints, dist

from ._checks import check_k, check_measurements

__all__ = ["gaussian_mixture", "bernoulli_mixture", "poisson_mixture", "COVARIANCE_TYPES"]

COVARIANCE_TYPES = ("full", "diag", "spherical", "tied")


def _spread_rows(x: torch.Tensor, k: int) -> torch.Tensor:
    """K rows of the data spread over its order: a deterministic starting point for the means."""
    return x[torch.linspace(0, len(x) - 1, k).long()].clone()


def _check_rows(x, name: str, K) -> None:
    check_k(K, name, "components")
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name}: x must be a tensor of shape (N, D), got {shape}; reshape 1-d data with x[:, None]")


@lvm.model
def gaussian_mixture(x: torch.Tensor, K: int = 3, covariance_type: str = "full") -> None:
    """A mixture of K multivariate normals; ``covariance_type`` as in scikit-learn.

    Parameters
    ----------
    x : Tensor, shape (N, D)
    K : int
        Number of components.
    covariance_type : {"full", "diag", "spherical", "tied"}

    Examples
    --------
    >>> import torch, ppl_lvm as lvm
    >>> from ppl_lvm.models.mixtures import gaussian_mixture
    >>> x = torch.cat([torch.randn(50, 2) - 3, torch.randn(50, 2) + 3]).double()
    >>> fit = lvm.infer(gaussian_mixture, {"x": x, "K": 2, "covariance_type": "diag"}, method="em")
    >>> fit.closed_form, fit.responsibilities["z"].shape
    (True, torch.Size([100, 2]))
    """
    _check_rows(x, "gaussian_mixture", K)
    check_measurements(x, "gaussian_mixture")
    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(f"covariance_type must be one of {COVARIANCE_TYPES}, got {covariance_type!r}")
    d = x.shape[1]
    weights = lvm.param(lambda: torch.ones(K) / K, constraint=constraints.simplex)
    locs = lvm.param(lambda: _spread_rows(x, K))
    if covariance_type == "full":
        scale_trils = lvm.param(lambda: torch.eye(d).expand(K, d, d).clone(), constraint=constraints.lower_cholesky)
    elif covariance_type == "tied":
        scale_tril = lvm.param(lambda: torch.eye(d), constraint=constraints.lower_cholesky)
    elif covariance_type == "diag":
        scales = lvm.param(lambda: torch.ones(K, d), constraint=constraints.positive)
    else:
        scales = lvm.param(lambda: torch.ones(K), constraint=constraints.positive)
    with lvm.plate(len(x)):
        z = lvm.latent(dist.Categorical(weights))
        if covariance_type == "full":
            lvm.observe(dist.MultivariateNormal(locs[z], scale_tril=scale_trils[z]), x)
        elif covariance_type == "tied":
            lvm.observe(dist.MultivariateNormal(locs[z], scale_tril=scale_tril), x)
        elif covariance_type == "diag":
            lvm.observe(dist.Normal(locs[z], scales[z]).to_event(1), x)
        else:
            lvm.observe(dist.Normal(locs[z], scales[z].unsqueeze(-1)).to_event(1), x)


@lvm.model
def bernoulli_mixture(x: torch.Tensor, K: int = 3) -> None:
    """A mixture of K products of Bernoullis over D binary features.

    ``z_n ~ Categorical(weights)``, ``x_nd | z_n ~ Bernoulli(probs[z_n, d])``.

    Parameters
    ----------
    x : Tensor, shape (N, D)
        0/1 data.
    K : int
        Number of components.

    Examples
    --------
    >>> import torch, ppl_lvm as lvm
    >>> from ppl_lvm.models.mixtures import bernoulli_mixture
    >>> probs = torch.tensor([[0.9, 0.9, 0.1, 0.1], [0.1, 0.1, 0.9, 0.9]])
    >>> x = torch.bernoulli(probs[torch.arange(200) % 2])
    >>> fit = lvm.infer(bernoulli_mixture, {"x": x, "K": 2}, method="em", n_init=2)
    >>> fit.closed_form, fit.params["probs"].shape
    (True, torch.Size([2, 4]))
    >>> learned = fit.params["probs"][fit.params["probs"][:, 0].argsort(descending=True)]
    >>> bool((learned - probs).abs().max() < 0.15)
    True
    """
    _check_rows(x, "bernoulli_mixture", K)
    d = x.shape[1]
    weights = lvm.param(lambda: torch.ones(K) / K, constraint=constraints.simplex)
    probs = lvm.param(lambda: 0.25 + 0.5 * torch.rand(K, d), constraint=constraints.unit_interval)
    with lvm.plate(len(x)):
        z = lvm.latent(dist.Categorical(weights))
        lvm.observe(dist.Bernoulli(probs[z]).to_event(1), x)


@lvm.model
def poisson_mixture(x: torch.Tensor, K: int = 3) -> None:
    """A mixture of K products of Poissons over D count features.

    ``z_n ~ Categorical(weights)``, ``x_nd | z_n ~ Poisson(rates[z_n, d])``.

    Parameters
    ----------
    x : Tensor, shape (N, D)
        Non-negative integer counts.
    K : int
        Number of components.

    Examples
    --------
    >>> import torch, ppl_lvm as lvm
    >>> from ppl_lvm.models.mixtures import poisson_mixture
    >>> rates = torch.tensor([[1.0, 10.0], [10.0, 1.0]])
    >>> x = torch.poisson(rates[torch.arange(200) % 2]).long()
    >>> fit = lvm.infer(poisson_mixture, {"x": x, "K": 2}, method="em", n_init=2)
    >>> learned = fit.params["rates"][fit.params["rates"][:, 0].argsort()]
    >>> fit.closed_form, bool(((learned - rates).abs() / rates).max() < 0.3)
    (True, True)
    """
    _check_rows(x, "poisson_mixture", K)
    d = x.shape[1]
    weights = lvm.param(lambda: torch.ones(K) / K, constraint=constraints.simplex)
    rates = lvm.param(lambda: x.to(torch.get_default_dtype()).mean(0).expand(K, d) * (0.5 + torch.rand(K, d)), constraint=constraints.positive)
    with lvm.plate(len(x)):
        z = lvm.latent(dist.Categorical(weights))
        lvm.observe(dist.Poisson(rates[z]).to_event(1), x)
