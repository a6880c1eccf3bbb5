"""Helpers shared by the emission families: dtype handling and the repair of empty components."""

from __future__ import annotations

import warnings
from typing import Any

import torch

from ...errors import EMDegeneracyWarning

Params = dict[str, torch.Tensor]


def _as_float(X: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
    dtype = dtype or torch.get_default_dtype()
    if dtype not in (torch.float32, torch.float64):
        dtype = torch.float64
    if isinstance(X, torch.Tensor):
        return X.to(dtype) if X.dtype != dtype else X
    return torch.as_tensor(X, dtype=dtype)


def _check_dtype(dtype: torch.dtype) -> torch.dtype:
    if dtype not in (torch.float32, torch.float64):
        raise ValueError("dtype must be torch.float32 or torch.float64")
    return dtype


def _empty_components(resp_sum: torch.Tensor, n_samples: int) -> torch.Tensor:
    # "Empty" = less responsibility than rounding noise on a sum of n ones.
    return resp_sum < n_samples * torch.finfo(resp_sum.dtype).eps


def _warn(msg: str) -> None:
    warnings.warn(msg, EMDegeneracyWarning, stacklevel=3)


def _keep_previous(
    new: torch.Tensor, previous: torch.Tensor | None, fallback: torch.Tensor, empty: torch.Tensor
) -> torch.Tensor:
    """Replace the rows of ``new`` flagged in ``empty`` by ``previous`` (or ``fallback``)."""
    source = previous if previous is not None and previous.shape == new.shape else None
    out = new.clone()
    for k in torch.nonzero(empty).flatten().tolist():
        out[k] = source[k] if source is not None else fallback
    return out
