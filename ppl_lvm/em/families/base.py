"""Helpers shared by the emission families: dtype handling and the repair of empty components."""

from __future__ import annotations

import warnings
from typing import Any

import torch

from ...errors import EMDegeneracyWarning

Params = dict[str, torch.Tensor]


def local_centred_sums(xc: torch.Tensor, resp: torch.Tensor, mu: torch.Tensor, idx: torch.Tensor, full: bool) -> torch.Tensor:
    """``sum_i r_ik (xc_i - mu_k)(xc_i - mu_k)'`` for the components ``idx`` (their diagonals unless ``full``), in
    the dtype of ``mu`` (float64 means of float32 kernels: the data are converted)."""
    xc, resp = xc.to(mu.dtype), resp.to(mu.dtype)
    d = xc.shape[1]
    out = torch.empty((len(idx), d, d) if full else (len(idx), d), dtype=xc.dtype)
    for j, c in enumerate(idx.tolist()):
        diff = xc - mu[c]
        if full:
            out[j] = (resp[:, c].unsqueeze(0) * diff.T) @ diff
        else:
            out[j] = resp[:, c] @ (diff * diff)
    return out


class LocalPass:
    """What an M-step from statistics may need beyond them, for data held in memory: the cache and the resp.

    A stream over data too large for memory provides the same three things by reading the data again (see
    :mod:`ppl_lvm.em.accumulate`); only degenerate or badly centred components need them.

    Attributes
    ----------
    n : int
        Number of data points.
    """

    def __init__(self, family: Any, cache: dict, resp: torch.Tensor) -> None:
        self.family, self.cache, self.resp, self.n = family, cache, resp, int(cache["n"])

    def summary(self) -> dict[str, torch.Tensor]:
        """The family's additive data summary of the whole data (``family.summary``)."""
        return self.family.summary(self.cache["X"])

    def centred_sums(self, mu: torch.Tensor, idx: torch.Tensor, full: bool) -> torch.Tensor:
        """Gaussian two-pass sums ``sum_i r_ik (xc_i - mu_k)(xc_i - mu_k)'`` of the components ``idx``."""
        return local_centred_sums(self.cache["xc"], self.resp.to(self.cache["xc"].dtype), mu, idx, full)

    def second_moment(self) -> torch.Tensor:
        """``sum_i xc_i xc_i'`` of the centred data (the Gaussian fallback of an empty component)."""
        xc = self.cache["xc"].to(torch.float64)
        return xc.T @ xc

    def weighted_sum(self, part: Any) -> torch.Tensor:
        """``part(cache, resp)`` of the whole data (a family's own second pass, e.g. direct residual sums)."""
        return part(self.cache, self.resp)


def add_statistics(total: dict | None, part: dict) -> dict:
    """``total + part``, key by key (``None`` + part = part).

    A key missing from either side is dropped (a Gaussian chunk too large for its design matrix gives no
    ``s_quad``; the M-step then takes the two-pass route for every component).
    """
    if total is None:
        return dict(part)
    return {key: total[key] + value for key, value in part.items() if key in total}


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
