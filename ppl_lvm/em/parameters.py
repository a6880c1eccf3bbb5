"""Counting free parameters as BIC and AIC count them."""

from __future__ import annotations

from typing import Any

import torch
from pyro.distributions import constraints

__all__ = ["count_free_parameters"]


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

