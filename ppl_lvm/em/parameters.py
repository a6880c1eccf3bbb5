"""How many free parameters and data points an EM fit has: the ``p`` and ``N`` of its BIC and AIC."""

from __future__ import annotations

from typing import Any

import torch
from pyro.distributions import constraints

from .hmm import hmm_n_parameters
from .mixture import mixture_n_parameters

__all__ = ["count_free_parameters", "n_free_parameters", "n_data_points"]


def _free_size(value: torch.Tensor, constraint: Any) -> int:
    """Free (unconstrained) dimensions of one parameter, as BIC counts them."""
    if constraint is constraints.simplex:
        return value.numel() - value.numel() // value.shape[-1]
    if constraint in (constraints.lower_cholesky, constraints.positive_definite, constraints.corr_cholesky):
        d = value.shape[-1]
        per = d * (d + 1) // 2 if constraint is not constraints.corr_cholesky else d * (d - 1) // 2
        return per * (value.numel() // (d * d))
    return value.numel()


def count_free_parameters(params: dict[str, torch.Tensor], constraint_of: dict[str, Any]) -> int:
    """Number of free parameters: simplex rows lose one, Cholesky factors count their lower triangle."""
    return sum(_free_size(v, constraint_of.get(k, constraints.real)) for k, v in params.items())


def n_free_parameters(pattern: Any, params: dict[str, torch.Tensor], constraint_of: dict[str, Any]) -> int:
    """Free parameters of a fit: hmmlearn's count for a recognised chain, scikit-learn's for a recognised mixture,
    else :func:`count_free_parameters` of the model's (constrained) parameters."""
    if pattern is not None and hasattr(pattern, "trans"):
        return int(hmm_n_parameters(pattern.family, pattern.to_kernel(params)))
    if pattern is not None:
        return int(mixture_n_parameters(pattern.family, pattern.to_kernel(params)))
    return int(count_free_parameters(params, constraint_of))


def n_data_points(pattern: Any, per_point: torch.Tensor | None, structure: Any) -> int:
    """The ``N`` of BIC: observations of a chain, else the points scored, else the data plate's size."""
    if pattern is not None and hasattr(pattern, "trans"):
        return int(pattern.lengths.sum())
    if per_point is not None:
        return int(per_point.numel())
    return int(structure.n_data or 1)
