"""Baum-Welch: the closed-form transition M-step, the parameter count and the fitting loop."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch

from ...errors import EMDegeneracyWarning
from ..accumulate import Source
from ..convergence import KernelFit, iterate
from ..mixture import EmissionFamily
from .estep import hmm_e_step
from .layout import _Buckets

__all__ = ["HMMFitResult", "chain_source", "fit_hmm", "hmm_n_parameters", "transitions_m_step"]

Params = dict[str, torch.Tensor]


# --------------------------------------------------------------------------- M-step


def transitions_m_step(
    start_sum: torch.Tensor,
    xi_sum: torch.Tensor,
    previous: Params | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form start-probability and transition-matrix updates.

    Rows of ``xi_sum`` with no expected transitions keep their previous values
    (hmmlearn would leave a zero row) and raise :class:`EMDegeneracyWarning`.

    Returns
    -------
    startprob : (K,), transmat : (K, K)
    """
    startprob = start_sum / start_sum.sum()
    row = xi_sum.sum(1, keepdim=True)
    empty = (row <= 0).squeeze(1)
    transmat = xi_sum / torch.where(row > 0, row, torch.ones_like(row))
    if bool(empty.any()):
        k = xi_sum.shape[0]
        prev = None if previous is None else previous.get("transmat")
        transmat = transmat.clone()
        fallback = prev.to(transmat.dtype) if prev is not None else torch.full((k, k), 1.0 / k, dtype=transmat.dtype)
        transmat[empty] = fallback[empty]
        # A sequence set made only of length-1 sequences has no transitions at
        # all: that is expected, not degenerate.
        if bool((row > 0).any()):
            warnings.warn(
                f"{int(empty.sum())} states have no expected outgoing transitions; "
                "keeping their previous transition rows",
                EMDegeneracyWarning,
                stacklevel=2,
            )
    return startprob, transmat


def hmm_n_parameters(family: EmissionFamily, params: Params) -> int:
    """Free parameters: emissions + (K - 1) start + K (K - 1) transitions (hmmlearn)."""
    k = int(params["transmat"].shape[0])
    return int(family.n_parameters(params)) + (k - 1) + k * (k - 1)


# --------------------------------------------------------------------------- loop


HMMFitResult = KernelFit  # what fit_hmm returns; history: the total log-likelihood (hmmlearn's units)


def fit_hmm(
    X: Any,
    lengths: Sequence[int] | None,
    family: EmissionFamily,
    init_params: Params,
    max_iter: int = 100,
    tol: float | None = 1e-2,
    reg: float | None = None,
    *,
    cache: dict | None = None,
    method: str = "auto",
    callback: Any = None,
) -> HMMFitResult:
    """Fit an HMM by exact EM (Baum-Welch).

    Parameters
    ----------
    X : array-like, Chunks or Source
        All sequences concatenated, in the family's data format; or whole sequences read chunk by chunk
        (:func:`ppl_lvm.em.stream.chunks` with ``lengths``); or a :class:`~ppl_lvm.em.accumulate.Source`
        (a data-parallel fit's shard). See :mod:`ppl_lvm.em.accumulate`.
    lengths : sequence of int, optional
        Sequence lengths of data in memory; ``None`` = a single sequence.
    family : EmissionFamily
    init_params : dict
        ``"startprob"`` (K,), ``"transmat"`` (K, K) and the family's parameters.
    max_iter : int, default 100
    tol : float or None, default 1e-2
        Stop when the total log-likelihood (hmmlearn's units) changes by less
        than ``tol``; the rule of :mod:`ppl_lvm.em.convergence`.  ``None``:
        no early stop (``n_iter == len(history) == max_iter`` unless a
        callback stops).
    reg : float, optional
        Family regularisation (default ``family.default_reg``).  Use 0 with
        hmmlearn's ``covars_prior=0`` for identical numbers.
    method : {"auto", "scaled", "log", "loop"}
        Forward-backward implementation (see :func:`hmm_e_step`).
    callback : callable, optional
        ``callback(n_iter, log_likelihood, params)``; returning True stops.

    Returns
    -------
    HMMFitResult
    """
    if reg is None:
        reg = family.default_reg
    source = X if isinstance(X, Source) else chain_source(family, X, lengths, cache=cache)
    params = family.complete_params(dict(init_params))
    dtype = next(
        (v.dtype for v in params.values() if isinstance(v, torch.Tensor) and v.is_floating_point()),
        torch.float64,
    )
    params["startprob"] = torch.as_tensor(params["startprob"], dtype=dtype)
    params["transmat"] = torch.as_tensor(params["transmat"], dtype=dtype)

    def posterior(cache: dict, buckets: _Buckets, params: Params) -> tuple[torch.Tensor, dict]:
        log_em = family.log_prob(None, params, cache=cache)
        e = hmm_e_step(log_em, None, params["startprob"], params["transmat"], method=method, buckets=buckets)
        return e.gamma, {"log_likelihood": e.log_likelihood.sum(), "start_sum": e.start_sum, "xi_sum": e.xi_sum}

    def step(params: Params) -> tuple[float, Params]:
        stats = source.accumulate(posterior, params)
        new = family.m_step_statistics(stats, params, reg, source.template, source.data_pass(posterior, params))
        new["startprob"], new["transmat"] = transitions_m_step(stats["start_sum"], stats["xi_sum"], params)
        return float(stats["log_likelihood"]), new

    return iterate(step, params, max_iter, tol, callback)


def chain_source(family: EmissionFamily, X: Any, lengths: Sequence[int] | None = None, *, reducer: Any = None,
                 cache: dict | None = None) -> Source:
    """The :class:`~ppl_lvm.em.accumulate.Source` of a chain's data: chunks carry their sequences' length buckets."""
    return Source(family, X, lengths, layout=lambda lens, n: _Buckets(lens, n), reducer=reducer, cache=cache)
