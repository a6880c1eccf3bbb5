"""Mixture of linear regressions (mixture of experts with constant gates).

``z_n ~ Categorical(weights)``, ``y_n | x_n, z_n = k ~ N(alpha_k + x_n^T beta_k, sigma_k^2)``.

``method="em"`` sums ``z`` out exactly and, since the mean is linear in ``intercepts`` and ``coefs`` given ``z``,
runs the closed-form route: each M-step is a weighted least-squares fit per component (``ppl_lvm.em.linear``);
``method="svi"`` fits the same model with ``z`` enumerated.
Components are identifiable only up to relabelling.
"""

from __future__ import annotations

import torch

import ppl_lvm as lvm
from ppl_lvm import constraints, dist

from ._checks import check_k

__all__ = ["regression_mixture", "simulate_regression_mixture"]


def _check(x, y, K, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name}: x must be a float tensor of shape (N, P) (the covariates), got {shape}; "
                         "reshape one covariate with x[:, None]")
    if y is not None and (not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],)):
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"{name}: y must be a tensor of shape ({x.shape[0]},), one response per row of x, got {shape}")
    check_k(K, name, "components")


def _least_squares(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ordinary least squares with an intercept: (intercept, slopes, residual standard deviation)."""
    design = torch.cat([torch.ones(len(x), 1, dtype=x.dtype), x], dim=1)
    coef = torch.linalg.lstsq(design, y.unsqueeze(-1)).solution.squeeze(-1)
    residual = y - design @ coef
    return coef[0], coef[1:], residual.std()


def _initial(x: torch.Tensor, y: torch.Tensor, K: int) -> dict[str, torch.Tensor]:
    """One least-squares line for all components, intercepts spread over +-1.5 residual sd: deterministic, and
    distinct enough that the first E-step tells the components apart."""
    alpha, beta, sd = _least_squares(x, y)
    spread = torch.linspace(-1.5, 1.5, K, dtype=x.dtype) if K > 1 else torch.zeros(1, dtype=x.dtype)
    return {"intercepts": alpha + sd * spread, "coefs": beta.expand(K, -1).clone(), "scales": sd.expand(K).clone()}


@lvm.model
def regression_mixture(x: torch.Tensor, y: torch.Tensor, K: int = 2) -> None:
    """A mixture of K linear regressions of ``y`` on ``x``, each with its own intercept, slopes and noise.

    ``z_n ~ Categorical(weights)``, ``y_n | x_n, z_n = k ~ N(intercepts[k] + x_n . coefs[k], scales[k]^2)``.

    Parameters
    ----------
    x : Tensor, shape (N, P)
        Covariates (no column of ones: each component has its own intercept).
    y : Tensor, shape (N,)
        Responses.
    K : int
        Number of components.

    Notes
    -----
    Parameters: ``weights`` (K,), ``intercepts`` (K,), ``coefs`` (K, P), ``scales`` (K,). They start from one
    least-squares fit with the intercepts spread by +-1.5 residual standard deviations (deterministic); for other
    starts pass ``init_params={...}`` to ``method="em"``.

    Examples
    --------
    >>> import torch, ppl_lvm as lvm
    >>> from ppl_lvm.models.regression import regression_mixture, simulate_regression_mixture
    >>> x, y, z = simulate_regression_mixture(100, weights=[0.5, 0.5], intercepts=[-3.0, 3.0],
    ...                                       coefs=[[2.0], [-1.0]], scales=[0.5, 0.5], seed=0)
    >>> fit = lvm.infer(regression_mixture, {"x": x, "y": y, "K": 2}, method="em", max_iter=20)
    >>> fit.responsibilities["z"].shape
    torch.Size([100, 2])
    >>> sorted(round(float(c), 0) for c in fit.params["coefs"].squeeze(-1))
    [-1.0, 2.0]
    """
    _check(x, y, K, "regression_mixture")
    weights = lvm.param(lambda: torch.ones(K, dtype=x.dtype) / K, constraint=constraints.simplex)
    intercepts = lvm.param(lambda: _initial(x, y, K)["intercepts"])
    coefs = lvm.param(lambda: _initial(x, y, K)["coefs"])
    scales = lvm.param(lambda: _initial(x, y, K)["scales"], constraint=constraints.positive)
    with lvm.plate(len(x)) as data:  # noqa: F841 - names the plate
        z = lvm.latent(dist.Categorical(weights))
        lvm.observe(dist.Normal(intercepts[z] + (x * coefs[z]).sum(-1), scales[z]), y)


def simulate_regression_mixture(
    n: int,
    weights,
    intercepts,
    coefs,
    scales,
    x_scale: float = 1.0,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw ``(x, y, z)`` from :func:`regression_mixture` with the given parameters; ``x_n ~ N(0, x_scale^2 I)``.

    Parameters
    ----------
    n : int
        Number of rows.
    weights : sequence of float, shape (K,)
    intercepts : sequence of float, shape (K,)
    coefs : nested sequence, shape (K, P)
    scales : sequence of float, shape (K,)
    x_scale : float
    seed : int

    Returns
    -------
    x : Tensor (n, P), y : Tensor (n,), z : Tensor of int64 (n,)

    Examples
    --------
    >>> x, y, z = simulate_regression_mixture(5, [0.3, 0.7], [0.0, 1.0], [[1.0, 2.0], [0.0, -1.0]], [0.1, 0.2])
    >>> x.shape, y.shape, z.shape
    (torch.Size([5, 2]), torch.Size([5]), torch.Size([5]))
    """
    dtype = torch.get_default_dtype()
    weights = torch.as_tensor(weights, dtype=dtype)
    intercepts = torch.as_tensor(intercepts, dtype=dtype)
    coefs = torch.as_tensor(coefs, dtype=dtype)
    scales = torch.as_tensor(scales, dtype=dtype)
    k = len(weights)
    if coefs.dim() != 2 or intercepts.shape != (k,) or scales.shape != (k,) or coefs.shape[0] != k:
        raise ValueError(f"expected weights, intercepts, scales of shape (K,) and coefs (K, P) with K={k}; got "
                         f"intercepts {tuple(intercepts.shape)}, coefs {tuple(coefs.shape)}, scales {tuple(scales.shape)}")
    if bool((weights < 0).any()) or abs(float(weights.sum()) - 1) > 1e-6 or bool((scales <= 0).any()):
        raise ValueError("weights must be non-negative and sum to 1, scales must be positive")
    g = torch.Generator().manual_seed(int(seed))
    z = torch.multinomial(weights, n, replacement=True, generator=g)
    x = x_scale * torch.randn(n, coefs.shape[1], generator=g, dtype=dtype)
    y = intercepts[z] + (x * coefs[z]).sum(-1) + scales[z] * torch.randn(n, generator=g, dtype=dtype)
    return x, y, z
